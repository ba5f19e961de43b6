//! Any bytes as a run journal: read must refuse or replay, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xenmaint::journal::Journal;
use xenmaint::sequencer::{Record, RunState};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    std::fs::write(&path, data).unwrap();
    if let Ok((_, records)) = Journal::<Record>::read(&path) {
        let _ = RunState::replay(&records).map(|s| s.trouble());
    }
});
