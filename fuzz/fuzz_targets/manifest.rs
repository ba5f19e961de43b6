//! Any bytes as an image's manifest: load must refuse or parse, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xenmaint::image::{manifest_path, Manifest};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.xl");
    std::fs::write(manifest_path(&image), data).unwrap();
    let _ = Manifest::load_for(&image);
});
