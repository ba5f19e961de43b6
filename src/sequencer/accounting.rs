//! What on the host the run has not accounted for. A reboot loses every
//! domain in memory, so before the steps that lead to one (the end of the
//! drain, the patch, the reboot) the run lists the domains again and
//! refuses while any would be lost that it did not save, shut down, or
//! leave by policy: a guest created since the plan, or one the run saved
//! that someone has started again.

use std::fmt;

use super::{GuestState, Result, RunState, SeqError, Sequencer};
use crate::domain::{DomId, DomainInfo, DomainState, Uuid};
use crate::plan::Action;

/// A domain that a reboot now would lose, and why the run has not
/// accounted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub name: String,
    pub domid: DomId,
    pub uuid: Uuid,
    pub why: Why,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Not in the run's plan: created after it.
    NotInRun,
    /// The run saved or shut it down (or it stopped on its own), and it
    /// runs again: restored or started by hand.
    RunsAgain,
    /// In the plan, but its drain step has not succeeded.
    NotDrained,
}

impl fmt::Display for Stray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.why {
            Why::NotInRun => "not in the run (created after its plan)",
            Why::RunsAgain => "stopped by the run and running again (started by hand?)",
            Why::NotDrained => "not drained",
        };
        // {:?}: a guest chooses its name; quoted and escaped, it cannot
        // pass for another line of the message.
        write!(
            f,
            "{:?} (domain {}, {}): {why}",
            self.name, self.domid, self.uuid
        )
    }
}

/// Whether a reboot would lose what this domain holds: it runs, is paused,
/// or is being built (paused until its builder unpauses it). A domain shut
/// down (a guest left suspended after its save included), crashed or dying
/// holds nothing that runs.
fn in_memory(d: &DomainInfo) -> bool {
    d.domid != 0
        && matches!(
            d.state,
            DomainState::Running | DomainState::Blocked | DomainState::Paused
        )
}

/// The domains among `domains` that the run in `state` has not accounted for.
pub fn strays(state: &RunState, domains: &[DomainInfo]) -> Vec<Stray> {
    domains
        .iter()
        .filter(|d| in_memory(d))
        .filter_map(|d| {
            let why = match state.plan.guests.iter().find(|g| g.uuid == d.uuid) {
                None => Why::NotInRun,
                // Left to the reboot by policy (the plan said so).
                Some(g) if g.action == Action::Skip => return None,
                Some(g) => match state.guests.get(&g.uuid) {
                    Some(
                        GuestState::Saved { .. } | GuestState::ShutDown | GuestState::Gone { .. },
                    ) => Why::RunsAgain,
                    _ => Why::NotDrained,
                },
            };
            Some(Stray {
                name: d.name.clone(),
                domid: d.domid,
                uuid: d.uuid,
                why,
            })
        })
        .collect()
}

impl Sequencer<'_> {
    /// Refuses `step` while the host holds domains the run has not
    /// accounted for (see `strays`).
    pub(super) fn refuse_strays(&self, state: &RunState, step: &'static str) -> Result<()> {
        let strays = strays(state, &self.ts.list_domains()?);
        if strays.is_empty() {
            return Ok(());
        }
        for s in &strays {
            log::error!("{step} refused: {s}");
        }
        Err(SeqError::HostChanged {
            step,
            domains: strays
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// The check `reboot` makes, for a caller that announces the reboot
    /// before asking for it.
    pub fn refuse_reboot_now(&self) -> Result<()> {
        match self.state()? {
            Some((_, state)) => self.refuse_strays(&state, "reboot"),
            None => Ok(()),
        }
    }
}
