//! Rollback: before the reboot, keep the old boot default and bring the saved guests
//! back. Its own file as a phase of its own; resume.rs does the bringing back.

use super::{Phase, Result, RunState, SeqError, Sequencer};

impl Sequencer<'_> {
    /// Brings the saved guests back without rebooting (before `reboot`).
    pub fn rollback(&self) -> Result<Option<(String, RunState)>> {
        if let Some((id, state)) = self.state()? {
            if state.phase >= Phase::Rebooting && state.phase != Phase::Halted {
                return Err(SeqError::WrongPhase {
                    run: id,
                    phase: state.phase,
                    verb: "rollback",
                    want: "not yet rebooting (after a reboot, `resume`)",
                });
            }
            if state.phase == Phase::Patched {
                // The patch is installed but not booted: keep booting the old one.
                if let Some(fallback) = &state.fallback_entry {
                    self.boot.commit(fallback)?;
                }
            }
        }
        self.resume()
    }
}
