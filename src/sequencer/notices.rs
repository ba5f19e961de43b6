//! Each guest's maintenance notice (`crate::notice`) follows the journal: a
//! guest whose drain step begins is told its maintenance is active; back
//! (restored or cold booted), it is told again in its new domain; once it
//! passed its checks, completed. When the run finishes, the host's schedule
//! is used up. Best effort: a notice that cannot be written is logged and
//! never stops the run (the guest is worked on all the same).

use std::time::{Duration, SystemTime};

use super::{GuestState, Record, Run, RunState, Sequencer, Step};
use crate::domain::Uuid;
use crate::notice::{self, State};

/// What a host reboot adds to the run's own window, when no schedule set one.
const REBOOT_ALLOWANCE_S: f64 = 600.0;

/// What a record tells a guest, if anything.
pub(super) enum Tell {
    Guest(Uuid, State),
    /// The run is over: its schedule is used up.
    Done,
}

pub(super) fn tell(rec: &Record) -> Option<Tell> {
    match rec {
        Record::Begin {
            uuid,
            step: Step::Save | Step::Shutdown,
            ..
        } => Some(Tell::Guest(*uuid, State::Active)),
        Record::Done {
            uuid,
            step: Step::Restore | Step::ColdBoot,
            domid: Some(_),
            ..
        } => Some(Tell::Guest(*uuid, State::Active)),
        Record::Verified { uuid, verification } if verification.ok() => {
            Some(Tell::Guest(*uuid, State::Completed))
        }
        Record::Finished { .. } => Some(Tell::Done),
        _ => None,
    }
}

impl Sequencer<'_> {
    pub(super) fn tell(&self, run: &Run, state: &RunState, what: Tell) {
        let (uuid, st) = match what {
            Tell::Guest(uuid, st) => (uuid, st),
            Tell::Done => {
                if let Err(e) = notice::store(&self.state_dir, None) {
                    log::warn!("{e}");
                }
                return;
            }
        };
        let Some(g) = state.plan.guests.iter().find(|g| g.uuid == uuid) else {
            return;
        };
        let domid = match state.guests.get(&uuid) {
            Some(GuestState::Back { domid, .. }) => *domid,
            _ => g.domid,
        };
        let schedule = notice::load(&self.state_dir).unwrap_or_else(|e| {
            log::warn!("{e}: each guest is told of this run's own window");
            None
        });
        let id = super::run_id(run);
        // A run's id begins with the second it was made.
        let secs = id
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let window = state.plan.est_drain_s + state.plan.est_resume_s + REBOOT_ALLOWANCE_S;
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let event = notice::event(schedule.as_ref(), g.action, st, (&id, start, window));
        if let Err(e) = self.ts.set_notice(domid, &notice::text(&event)) {
            log::warn!(
                "{}: its maintenance notice could not be written: {e}",
                g.name
            );
        }
    }
}
