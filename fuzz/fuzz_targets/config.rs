//! Any bytes as the policy file: load must refuse naming the file, or parse.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xenmaint.toml");
    std::fs::write(&path, data).unwrap();
    if let Err(e) = xenmaint::config::load_policy(Some(&path)) {
        assert!(e.to_string().contains("xenmaint.toml"), "{e}");
    }
});
