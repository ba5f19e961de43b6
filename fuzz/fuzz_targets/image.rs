//! Any bytes as an image: the whole-file verifier (xl header, config JSON,
//! libxl/libxc stream through END) and the push scanner in odd chunks must
//! return an error or a result, never panic, and agree with each other.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xenmaint::image::{verify_reader, Checksum, StreamScanner};

fuzz_target!(|data: &[u8]| {
    let whole = verify_reader(data, Checksum::new());
    // The stream alone, fed in chunks of a size the input picks.
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut scanner = StreamScanner::new();
    let mut fed = Ok(());
    for chunk in data.chunks(step) {
        fed = scanner.feed(chunk);
        if fed.is_err() {
            break;
        }
    }
    if fed.is_ok() {
        let _ = scanner.finish();
    }
    let _ = whole;
});
