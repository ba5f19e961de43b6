//! The drain: save or shut down every planned guest, before the patch.
//! Its own file as the one phase that creates a run (directory, configs, journal).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::lanes::Lanes;
use super::{
    config_path, GuestState, Observation, Outcome, Phase, Record, Result, Run, RunState, SeqError,
    Sequencer, Step,
};
use crate::address;
use crate::condition::Condition;
use crate::domain::{DomId, DomainInfo, DomainRef, DomainState, ShutdownReason, Uuid};
use crate::durable;
use crate::guest::{self, AfterSave, PauseGate, SaveOptions};
use crate::image::DiskIdentity;
use crate::journal::Journal;
use crate::plan::{self, Action, PausedChoice, PlannedGuest, Severity};
use crate::toolstack::Request;

/// Live saves that may wait at the pause gate at once, each a running guest
/// in log-dirty mode with a libxl save helper blocked on its stream. More
/// guests than this pause in waves of this many.
const HELD_SAVES: usize = 16;

impl Sequencer<'_> {
    /// Saves or shuts down every planned guest. On a failure the policy
    /// decides: roll back (restore what was saved; the default) or halt.
    /// Run again on a run that is drained, patched or halted (not yet
    /// rebooting), it goes on with that run: it takes in the guests started
    /// since (newcomers, and guests the run saved that were started again by
    /// hand) and retries the guests whose step failed.
    pub fn drain(&self) -> Result<(String, RunState)> {
        let _lock = self.lock("drain")?;
        let (id, run, guests) = match self.open_current()? {
            Some((id, run)) => match run.read(|s| s.phase)? {
                Phase::Finished => self.start_run()?,
                Phase::Drained | Phase::Patched | Phase::Halted => {
                    let guests = self.take_in(&run)?;
                    (id, run, guests)
                }
                _ => return Err(SeqError::RunInProgress(id)),
            },
            None => self.start_run()?,
        };
        let concurrency = run.read(|s| s.plan.concurrency)?;

        // Live saves pausing together get a worker each (up to HELD_SAVES)
        // so that their pauses come at the end; lanes still bound the copying.
        let together = self.policy.live && self.policy.pause_together;
        let workers = if together {
            guests.len().min(HELD_SAVES)
        } else {
            0
        };
        // The lanes the plan settled on (and journaled).
        let lanes = Lanes::new(concurrency, self.stop);
        let gate = Some(&lanes as &dyn PauseGate).filter(|_| together);
        let results = self.each_guest(&run, &guests, false, &lanes, workers, |g| {
            self.drain_guest(&run, &id, g, gate)
        });
        let failed = results?;
        if self.stop.load(Ordering::SeqCst) {
            // Guests saved so far stay saved, the others run on: rollback
            // brings the saved ones back.
            self.record(
                &run,
                Record::Halted {
                    reason: "interrupted (SIGINT/SIGTERM) during the drain".into(),
                },
            )?;
            return Err(SeqError::Interrupted(Phase::Halted));
        }
        if failed == 0 {
            self.settle(&run)?;
        } else if self.policy_rolls_back() {
            let left = self.bring_back_all(&run, &run.state()?)?;
            let outcome = if left == 0 {
                Outcome::RolledBack
            } else {
                Outcome::Incomplete
            };
            self.record(&run, Record::Finished { outcome })?;
            return Err(SeqError::DrainFailed {
                failed,
                outcome: if left == 0 {
                    "rolled back: every guest runs again, nothing was rebooted".into()
                } else {
                    format!("rolled back, but {left} guest(s) could not be brought back")
                },
            });
        } else {
            self.record(
                &run,
                Record::Halted {
                    reason: format!("{failed} guest(s) could not be drained"),
                },
            )?;
            return Err(SeqError::DrainFailed {
                failed,
                outcome: "halted: no reboot will happen; `rollback` brings the saved guests back"
                    .into(),
            });
        }
        Ok((id, run.into_state()?))
    }

    /// A new run: its directory, every guest's config, its journal, and
    /// `current` naming it. Returns it with the guests to drain.
    fn start_run(&self) -> Result<(String, Run, Vec<PlannedGuest>)> {
        let (plan, configs) =
            plan::plan_with_configs(self.ts, &*self.planning_policy()?, self.facts)?;
        if plan.blocked() {
            return Err(SeqError::PlanBlocked);
        }
        let id = new_run_id();
        let dir = self.runs_dir().join(&id);
        durable::private_dir(&self.state_dir)?;
        durable::private_dir(&self.runs_dir())?;
        durable::private_dir(&dir)?;
        durable::private_dir(&dir.join("configs"))?;
        durable::private_dir(&self.policy.image_dir)?;
        durable::private_dir(&self.policy.image_dir.join(&id))?;
        // Every guest's config, so that any of them can be cold booted later.
        // One directory fsync for all of them (a group commit), before the
        // journal is created: a crash before that leaves no run to resume,
        // and once the journal exists every config is durable. Each is
        // written under its own name (no temp name and rename): nothing
        // reads this run's configs before `current` names the run, which
        // is after the journal exists, so a torn one is never read. The
        // configs are those the plan read a moment ago, not asked again.
        let mut files = durable::Batch::new();
        for (g, text) in plan.guests.iter().zip(&configs) {
            if let Some(text) = text {
                files.create(&config_path(&dir, g.uuid), text)?;
            }
        }
        drop(configs);
        files.commit()?;
        let journal = Journal::create(&dir.join("journal"), &id, unix_now())?;
        let run = Run {
            dir,
            journal: Mutex::new(journal),
            state: Mutex::new(None),
            crashed: AtomicBool::new(false),
        };
        // From here a crash leaves a run for `resume` to find.
        durable::replace(&self.current_file(), id.as_bytes())?;
        let guests = plan.guests.clone();
        self.record(
            &run,
            Record::Started {
                plan: Box::new(plan),
                hypervisor: self.hypervisor()?,
                boot_default: self.boot.default_entry()?,
            },
        )?;
        Ok((id, run, guests))
    }

    /// For a drain that goes on with `run`: what runs now that the run has
    /// not drained. A guest new to the run joins it (its config written
    /// first, as a new run's are); a guest the run stopped that runs again
    /// is recorded as started outside the run, and its image, older than
    /// its disk now, is deleted; a guest whose step failed is tried again.
    fn take_in(&self, run: &Run) -> Result<Vec<PlannedGuest>> {
        let (plan, configs) =
            plan::plan_with_configs(self.ts, &*self.planning_policy()?, self.facts)?;
        let state = run.state()?;
        // A guest this run stopped whose domain holds nothing that runs
        // (left suspended, shut down and kept, dying) is accounted for,
        // whatever the plan says of it now. Paused or driverless is a
        // domain in memory again (restored by hand), crashed is a guest
        // that ran again: those block, as they would a new run.
        let stopped_by_run = |g: &PlannedGuest| {
            matches!(
                g.condition,
                Condition::Suspended | Condition::Preserved | Condition::Dying
            ) && matches!(
                state.guests.get(&g.uuid),
                Some(GuestState::Saved { .. } | GuestState::ShutDown | GuestState::Gone { .. })
            )
        };
        let blocked = plan.findings.iter().any(|f| {
            f.severity == Severity::Error
                && !plan
                    .guests
                    .iter()
                    .any(|g| f.guest.as_deref() == Some(g.name.as_str()) && stopped_by_run(g))
        });
        if blocked {
            return Err(SeqError::PlanBlocked);
        }
        let mut todo = Vec::new();
        let mut joined = Vec::new();
        let mut files = durable::Batch::new();
        for (g, text) in plan.guests.iter().zip(&configs) {
            if g.action == Action::Skip || stopped_by_run(g) {
                continue;
            }
            let Some(ours) = state.plan.guests.iter().find(|p| p.uuid == g.uuid) else {
                if let Some(text) = text {
                    files.create(&config_path(&run.dir, g.uuid), text)?;
                }
                joined.push(g.clone());
                continue;
            };
            if matches!(
                state.guests.get(&g.uuid),
                Some(GuestState::Saved { .. } | GuestState::ShutDown | GuestState::Gone { .. })
            ) {
                log::warn!(
                    "{}: stopped by this run, and running again: draining it again",
                    g.name
                );
                self.record(
                    run,
                    Record::Done {
                        uuid: g.uuid,
                        step: Step::Outside,
                        image: None,
                        domid: Some(g.domid),
                    },
                )?;
                if let Some(image) = state.images.get(&g.uuid) {
                    guest::remove_image(image)?;
                }
            }
            todo.push(ours.clone());
        }
        drop(configs);
        files.commit()?;
        for g in joined {
            log::warn!("{}: started since the run began: taking it in", g.name);
            self.record(run, Record::Joined { guest: g.clone() })?;
            todo.push(g);
        }
        Ok(todo)
    }

    /// The end of a drain in which every step succeeded: if the host holds
    /// nothing the run has not accounted for, the run is drained (or, its
    /// patch already made, patched) again; otherwise it halts, naming them.
    fn settle(&self, run: &Run) -> Result<()> {
        let state = run.state()?;
        if let Err(e) = self.refuse_strays(&state, "drain") {
            if let SeqError::HostChanged { domains, .. } = &e {
                self.record(
                    run,
                    Record::Halted {
                        reason: format!("domains the run has not accounted for: {domains}"),
                    },
                )?;
            }
            return Err(e);
        }
        match (&state.patched_entry, state.phase) {
            (None, Phase::Drained) | (Some(_), Phase::Patched) => Ok(()),
            (None, _) => self.record(run, Record::Drained),
            (Some(entry), _) => self.record(
                run,
                Record::Patched {
                    entry: entry.clone(),
                    fallback: state.fallback_entry.clone(),
                },
            ),
        }
    }

    fn policy_rolls_back(&self) -> bool {
        self.policy.on_failure == plan::OnFailure::Rollback
    }

    /// Ok(false): this guest failed (recorded); Err: the run cannot go on.
    /// A guest that stopped on its own before or during its step is left
    /// stopped (recorded as gone); one that rebooted itself during its step
    /// (a new domain, the same UUID) is taken once more.
    fn drain_guest(
        &self,
        run: &Run,
        id: &str,
        g: &PlannedGuest,
        gate: Option<&dyn PauseGate>,
    ) -> Result<bool> {
        let step = match g.action {
            Action::Save => Step::Save,
            Action::Shutdown => Step::Shutdown,
            Action::Skip => return Ok(true),
            Action::Dump => return self.dump_guest(run, id, g),
        };
        let mut retried = false;
        let mut during = false;
        loop {
            let found = self.find(g.uuid)?;
            let Some(domid) = found.as_ref().filter(|d| !stopped(d)).map(|d| d.domid) else {
                return self.gone(run, id, g, during, found.is_some());
            };
            self.record(
                run,
                Record::Begin {
                    uuid: g.uuid,
                    step,
                    observation: Some(self.observe(domid)),
                },
            )?;
            let error = match self.step_once(id, g, step, domid, gate) {
                Ok(image) => {
                    self.record(
                        run,
                        Record::Done {
                            uuid: g.uuid,
                            step,
                            image,
                            domid: None,
                        },
                    )?;
                    return Ok(true);
                }
                Err(error) => error,
            };
            // Look again: the guest may have stopped, or rebooted itself
            // (a new domain with its UUID), during the step.
            during = true;
            match self.find(g.uuid)? {
                Some(d) if !stopped(&d) && (d.domid == domid || retried) => {
                    return self.failed(run, g, step, error);
                }
                Some(d) if !stopped(&d) => {
                    log::warn!(
                        "{}: rebooted itself during its {step:?} ({error}): once more",
                        g.name
                    );
                    retried = true;
                }
                // Stopped or gone: the next look finds it so.
                _ => {}
            }
        }
    }

    fn step_once(
        &self,
        id: &str,
        g: &PlannedGuest,
        step: Step,
        domid: DomId,
        gate: Option<&dyn PauseGate>,
    ) -> std::result::Result<Option<PathBuf>, String> {
        // A guest planned paused, under `paused = "save"`: unpaused for the
        // suspend handshake only, so never saved live (it would run for the
        // whole copy).
        let paused = g.condition == Condition::Paused && self.policy.paused == PausedChoice::Save;
        match step {
            Step::Save => guest::save(
                self.ts,
                &DomainRef::Id(domid),
                &SaveOptions {
                    out: Some(self.image_path(id, g.uuid)),
                    image_dir: self.policy.image_dir.clone(),
                    live: self.policy.live && !paused,
                    then: if self.policy.leave_suspended {
                        AfterSave::LeaveSuspended
                    } else {
                        AfterSave::Destroy
                    },
                    read_back: self.policy.read_back,
                    gate,
                    // The run's own image directory, made by this drain.
                    fresh_dir: true,
                    paused_ok: paused,
                },
                &|_| {},
            )
            .map(|r| Some(r.image))
            .map_err(|e| e.to_string()),
            _ => guest::power(
                self.ts,
                &DomainRef::Id(domid),
                Request::Shutdown,
                &self.power,
            )
            .map(|_| None)
            .map_err(|e| e.to_string()),
        }
    }

    /// The policy a drain plans with. With `dying_wait_s`, the dying
    /// domains are waited for first (bounded); the plan is then made with a
    /// policy that waits no more, so one still dying blocks it.
    fn planning_policy(&self) -> Result<std::borrow::Cow<'_, plan::Policy>> {
        let wait = self.policy.dying_wait_s;
        if wait <= 0.0 {
            return Ok(std::borrow::Cow::Borrowed(&self.policy));
        }
        self.list_after_dying(|d| d.domid != 0, Duration::from_secs_f64(wait))?;
        Ok(std::borrow::Cow::Owned(plan::Policy {
            dying_wait_s: 0.0,
            ..self.policy.clone()
        }))
    }

    /// A domain kept after a shutdown or crash, action "dump": its core to
    /// the run's image directory, then destroyed. Not brought back later.
    fn dump_guest(&self, run: &Run, id: &str, g: &PlannedGuest) -> Result<bool> {
        let Some(d) = self.find(g.uuid)? else {
            return self.gone(run, id, g, false, false);
        };
        self.record(
            run,
            Record::Begin {
                uuid: g.uuid,
                step: Step::Dump,
                observation: None,
            },
        )?;
        let core = self
            .policy
            .image_dir
            .join(id)
            .join(format!("{}.core", g.uuid));
        match guest::dump_core(self.ts, d.domid, &core) {
            Ok(()) => {
                log::warn!("{}: core written to {}; destroyed", g.name, core.display());
                self.record(
                    run,
                    Record::Done {
                        uuid: g.uuid,
                        step: Step::Dump,
                        image: Some(core),
                        domid: None,
                    },
                )?;
                Ok(true)
            }
            Err(e) => self.failed(run, g, Step::Dump, e.to_string()),
        }
    }

    /// The guest is not running (gone, or shut down). A save of it that got
    /// as far as its manifest holds it (the run was the one to stop it):
    /// that counts as its save. Otherwise it stopped on its own, before or
    /// during its step: nothing runs that a reboot would lose, and it is
    /// left stopped, as its owner or someone on the host left it.
    fn gone(
        &self,
        run: &Run,
        id: &str,
        g: &PlannedGuest,
        during: bool,
        present: bool,
    ) -> Result<bool> {
        if during
            && g.action == Action::Save
            && self
                .finish_cut_save(run, g, &self.policy.image_dir)?
                .is_some()
        {
            return Ok(true);
        }
        let how = match (during, present) {
            (false, false) => "was gone before its step (shut down on its own, or destroyed)",
            (false, true) => "was shut down before its step",
            (true, false) => "went away during its step (shut down on its own, or destroyed)",
            (true, true) => "shut down during its step",
        };
        log::warn!("{}: {how}: left stopped (run {id})", g.name);
        self.record(
            run,
            Record::Gone {
                uuid: g.uuid,
                how: how.into(),
            },
        )?;
        Ok(true)
    }

    /// Where a running guest answers and what its disks are, from every
    /// source there is; a source that fails adds nothing (the others count).
    fn observe(&self, domid: DomId) -> Observation {
        let detail = self.ts.domain_devices(domid).ok();
        let published = self.ts.published_addresses(domid).unwrap_or_default();
        let nics = detail.as_ref().map_or(&[][..], |d| &d.nics[..]);
        Observation {
            addresses: address::collect(nics, &published, &self.facts.neighbours()),
            disks: detail.map_or_else(Vec::new, |d| DiskIdentity::of_all(&d.disks)),
        }
    }

    /// `<image_dir>/<run>/<uuid>.xl`: named by UUID, never by a guest's
    /// chosen name, and per run, so runs never collide.
    fn image_path(&self, run: &str, uuid: Uuid) -> PathBuf {
        self.policy.image_dir.join(run).join(format!("{uuid}.xl"))
    }
}

/// Shut down (not suspended: a suspended guest is mid-save) or dying:
/// nothing left to save.
fn stopped(d: &DomainInfo) -> bool {
    match d.state {
        DomainState::Shutdown => d.shutdown_reason != Some(ShutdownReason::Suspend),
        DomainState::Dying => true,
        _ => false,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run ids sort by time and never collide within a host.
fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    format!(
        "{}-{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}
