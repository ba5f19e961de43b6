//! Any bytes as an image's manifest: load must refuse or parse, and the
//! checksum kind it names be known or refused, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xenmaint::image::{manifest_path, Checksum, Manifest};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.xl");
    std::fs::write(manifest_path(&image), data).unwrap();
    if let Ok(Some(m)) = Manifest::load_for(&image) {
        let _ = Checksum::like(&m.checksum);
    }
});
