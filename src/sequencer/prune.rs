//! Prune: delete the images of old finished runs, keeping their journals.
//! Its own file: it reads every run, not the current one, and starts none.

use super::{Outcome, Phase, Record, Result, RunState, Sequencer};
use crate::durable::DurableError;
use crate::guest;
use crate::journal::Journal;

impl Sequencer<'_> {
    /// Deletes the images of finished runs but the newest `keep` ones (their
    /// journals stay, as history). A run that is not finished, or that left
    /// a guest not back, keeps its images whatever its age: they may still
    /// be the only copy of a guest.
    pub fn prune(&self, keep: usize) -> Result<Pruned> {
        let _lock = self.lock("prune")?;
        let mut ids: Vec<String> = match std::fs::read_dir(self.runs_dir()) {
            Ok(dir) => dir
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(DurableError::Io {
                    path: self.runs_dir(),
                    source,
                }
                .into())
            }
        };
        // Run ids start with their creation time: newest first.
        ids.sort_by_key(|id| std::cmp::Reverse(run_sort_key(id)));
        let mut pruned = Pruned::default();
        let mut finished_seen = 0;
        for id in ids {
            let journal = self.run_dir(&id).join("journal");
            let Ok((_, records)) = Journal::<Record>::read(&journal) else {
                pruned.kept.push(id);
                continue;
            };
            let Some(state) = RunState::replay_owned(records) else {
                pruned.kept.push(id);
                continue;
            };
            let done = state.phase == Phase::Finished && state.outcome != Some(Outcome::Incomplete);
            if !done {
                pruned.kept.push(id);
                continue;
            }
            finished_seen += 1;
            if finished_seen <= keep {
                pruned.kept.push(id);
                continue;
            }
            for image in state.images.values() {
                let size = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
                if image.exists() {
                    guest::remove_image(image)?;
                    pruned.bytes += size;
                    pruned.images += 1;
                }
                // The run's own image directory, once empty.
                if let Some(dir) = image.parent().filter(|d| d.ends_with(&id)) {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            pruned.runs.push(id);
        }
        Ok(pruned)
    }
}

/// What `prune` did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Pruned {
    /// Runs whose images were deleted.
    pub runs: Vec<String>,
    /// Runs left as they were.
    pub kept: Vec<String>,
    pub images: usize,
    pub bytes: u64,
}

/// "<secs>-<nanos>-<pid>" sorts by time; anything else sorts first.
fn run_sort_key(id: &str) -> (u64, u64) {
    let mut parts = id.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
