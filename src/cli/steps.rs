//! What the long verbs show on a terminal as they go: for the run verbs
//! (drain, run, resume, rollback) a line as each guest's step ends and a
//! spinner naming the steps under way; for `status --wait`, a guest's
//! `shutdown`/`reboot --wait` and `verify`, a spinner saying what is
//! awaited. Nothing in scripts (stderr not a terminal), with --json or
//! --quiet: the result and `status` say the rest.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::domain::{printable, Uuid};
use crate::sequencer::{GuestState, Observer, Record, RunState, Step};

pub struct Steps {
    hidden: bool,
    shown: Mutex<Shown>,
}

#[derive(Default)]
struct Shown {
    /// Made at the first record after the last `finish`: a verb that
    /// journals nothing draws nothing.
    bar: Option<ProgressBar>,
    /// The steps under way: their guest's name, what they do, since when.
    under_way: BTreeMap<Uuid, (String, Step, Instant)>,
}

impl Steps {
    /// Shown on a terminal unless `hidden`; indicatif draws nothing when
    /// stderr is not a terminal.
    pub fn new(hidden: bool) -> Steps {
        Steps {
            hidden,
            shown: Mutex::default(),
        }
    }

    /// Clears the spinner, before a verb prints its result.
    pub fn finish(&self) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = shown.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// While `status --wait` waits: where the run stands.
    pub fn waiting(&self, st: &RunState) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        let back = st
            .guests
            .values()
            .filter(|g| matches!(g, GuestState::Back { .. }))
            .count();
        let msg = format!(
            "waiting for the run to finish: {}, {back} of {} guest(s) back",
            format!("{:?}", st.phase).to_lowercase(),
            st.plan.guests.len()
        );
        shown
            .bar
            .get_or_insert_with(|| spinner(self.hidden, ""))
            .set_message(msg);
    }
}

/// A spinner with the time spent and `msg`, ticking on its own; drawn on a
/// terminal only, unless `hidden`.
pub fn spinner(hidden: bool, msg: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
    );
    bar.set_message(msg.to_owned());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

impl Observer for Steps {
    fn journaled(&self, rec: &Record, state: Option<&RunState>) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        let Shown { bar, under_way } = &mut *shown;
        let bar = bar.get_or_insert_with(|| spinner(self.hidden, ""));
        if let Some(line) = line(rec, state, under_way, Instant::now()) {
            bar.println(line);
        }
        bar.set_message(
            under_way
                .values()
                .map(|(name, step, _)| format!("{name}: {}", doing(*step)))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        self.finish();
    }
}

fn name_of(state: Option<&RunState>, uuid: &Uuid) -> String {
    state
        .and_then(|s| s.plan.guests.iter().find(|g| g.uuid == *uuid))
        .map_or_else(|| uuid.to_string(), |g| printable(&g.name))
}

fn doing(step: Step) -> &'static str {
    match step {
        Step::Save => "saving",
        Step::Shutdown => "shutting down",
        Step::Restore => "restoring",
        Step::ColdBoot => "booting",
        Step::Kept => "keeping",
        Step::Outside => "taking in",
        Step::Dump => "writing its core",
    }
}

fn done(step: Step) -> &'static str {
    match step {
        Step::Save => "saved",
        Step::Shutdown => "shut down",
        Step::Restore => "restored",
        Step::ColdBoot => "booted",
        Step::Kept => "kept running",
        Step::Outside => "started outside the run",
        Step::Dump => "core written, destroyed",
    }
}

/// The line a record makes, if any; keeps `under_way` up to date.
fn line(
    rec: &Record,
    state: Option<&RunState>,
    under_way: &mut BTreeMap<Uuid, (String, Step, Instant)>,
    now: Instant,
) -> Option<String> {
    let took = |under_way: &mut BTreeMap<_, (String, Step, Instant)>, uuid: &Uuid| {
        under_way
            .remove(uuid)
            .map(|(_, _, t)| format!(" in {:.1} s", now.duration_since(t).as_secs_f64()))
            .unwrap_or_default()
    };
    match rec {
        Record::Started { plan, .. } => Some(format!(
            "run started: {} guest(s), {} at a time",
            plan.guests.len(),
            plan.concurrency
        )),
        Record::Begin { uuid, step, .. } => {
            under_way.insert(*uuid, (name_of(state, uuid), *step, now));
            None
        }
        Record::Done { uuid, step, .. } => {
            let took = took(under_way, uuid);
            Some(format!("{}: {}{took}", name_of(state, uuid), done(*step)))
        }
        Record::Failed { uuid, step, error } => {
            let took = took(under_way, uuid);
            Some(format!(
                "{}: {} FAILED{took}: {}",
                name_of(state, uuid),
                format!("{step:?}").to_lowercase(),
                printable(error)
            ))
        }
        Record::Verified { uuid, verification } => Some(format!(
            "{}: {}",
            name_of(state, uuid),
            super::run::checks(verification)
        )),
        Record::Joined { guest } => Some(format!(
            "{}: started after the run began, taken in",
            printable(&guest.name)
        )),
        Record::Gone { uuid, .. } => Some(format!(
            "{}: stopped on its own, left stopped",
            name_of(state, uuid)
        )),
        Record::Halted { reason } => Some(format!("run halted: {}", printable(reason))),
        Record::Drained
        | Record::Patched { .. }
        | Record::Rebooting { .. }
        | Record::Booted { .. }
        | Record::Finished { .. } => Some(format!("run {}", rec.kind())),
        Record::Observed { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequencer::Verification;

    #[test]
    fn a_step_gives_one_line_when_it_ends_with_its_time_and_is_shown_while_under_way() {
        let uuid = Uuid([7; 16]);
        let mut under_way = BTreeMap::new();
        let t0 = Instant::now();
        let begin = Record::Begin {
            uuid,
            step: Step::Save,
            observation: None,
        };
        assert_eq!(line(&begin, None, &mut under_way, t0), None);
        assert_eq!(under_way[&uuid].1, Step::Save);
        let end = Record::Done {
            uuid,
            step: Step::Save,
            image: None,
            domid: None,
        };
        let text = line(&end, None, &mut under_way, t0 + Duration::from_millis(2500)).unwrap();
        assert_eq!(text, format!("{uuid}: saved in 2.5 s"));
        assert!(under_way.is_empty());

        under_way.insert(uuid, ("g1".into(), Step::Restore, t0));
        let failed = Record::Failed {
            uuid,
            step: Step::Restore,
            error: "no disk\x1b[2J".into(),
        };
        let text = line(&failed, None, &mut under_way, t0).unwrap();
        assert!(text.contains("restore FAILED in 0.0 s: no disk"), "{text}");
        assert!(
            !text.contains('\x1b'),
            "control characters escaped: {text:?}"
        );
        let checked = Record::Verified {
            uuid,
            verification: Verification {
                answered: vec![],
                silent: vec![],
                disks_changed: vec![],
            },
        };
        assert!(line(&checked, None, &mut under_way, t0)
            .unwrap()
            .contains("disks same"));
    }
}
