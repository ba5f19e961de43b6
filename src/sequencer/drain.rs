//! The drain: save or shut down every planned guest, before the patch.
//! Its own file as the one phase that creates a run (directory, configs, journal).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::lanes::Lanes;
use super::{
    config_path, Observation, Outcome, Phase, Record, Result, Run, RunState, SeqError, Sequencer,
    Step,
};
use crate::address;
use crate::domain::{DomId, DomainRef, Uuid};
use crate::durable;
use crate::guest::{self, AfterSave, PauseGate, SaveOptions};
use crate::image::DiskIdentity;
use crate::journal::Journal;
use crate::plan::{self, Action, PlannedGuest};
use crate::toolstack::Request;

/// Live saves that may wait at the pause gate at once, each a running guest
/// in log-dirty mode with a libxl save helper blocked on its stream. More
/// guests than this pause in waves of this many.
const HELD_SAVES: usize = 16;

impl Sequencer<'_> {
    /// Saves or shuts down every planned guest. On a failure the policy
    /// decides: roll back (restore what was saved; the default) or halt.
    pub fn drain(&self) -> Result<(String, RunState)> {
        let _lock = self.lock("drain")?;
        if let Some((id, s)) = self.state()? {
            if s.phase != Phase::Finished {
                return Err(SeqError::RunInProgress(id));
            }
        }
        let (plan, configs) = plan::plan_with_configs(self.ts, &self.policy, self.facts)?;
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
        self.record(
            &run,
            Record::Started {
                plan: Box::new(plan.clone()),
                hypervisor: self.hypervisor()?,
                boot_default: self.boot.default_entry()?,
            },
        )?;

        // Live saves pausing together get a worker each (up to HELD_SAVES)
        // so that their pauses come at the end; lanes still bound the copying.
        let together = self.policy.live && self.policy.pause_together;
        let workers = if together {
            plan.guests.len().min(HELD_SAVES)
        } else {
            0
        };
        // The lanes the plan settled on (and journaled).
        let lanes = Lanes::new(plan.concurrency, self.stop);
        let gate = Some(&lanes as &dyn PauseGate).filter(|_| together);
        let results = self.each_guest(&run, &plan.guests, false, &lanes, workers, |g| {
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
            self.record(&run, Record::Drained)?;
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

    fn policy_rolls_back(&self) -> bool {
        self.policy.on_failure == plan::OnFailure::Rollback
    }

    /// Ok(false): this guest failed (recorded); Err: the run cannot go on.
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
        };
        let domid = self.find(g.uuid)?.map(|d| d.domid);
        self.record(
            run,
            Record::Begin {
                uuid: g.uuid,
                step,
                observation: domid.map(|domid| self.observe(domid)),
            },
        )?;
        let outcome = match domid {
            None => Err(format!("{} is no longer running", g.name)),
            Some(domid) => match step {
                Step::Save => guest::save(
                    self.ts,
                    &DomainRef::Id(domid),
                    &SaveOptions {
                        out: Some(self.image_path(id, g.uuid)),
                        image_dir: self.policy.image_dir.clone(),
                        live: self.policy.live,
                        then: if self.policy.leave_suspended {
                            AfterSave::LeaveSuspended
                        } else {
                            AfterSave::Destroy
                        },
                        read_back: self.policy.read_back,
                        gate,
                        // The run's own image directory, made by this drain.
                        fresh_dir: true,
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
            },
        };
        match outcome {
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
                Ok(true)
            }
            Err(error) => {
                log::error!("{}: {error}", g.name);
                self.record(
                    run,
                    Record::Failed {
                        uuid: g.uuid,
                        step,
                        error,
                    },
                )?;
                Ok(false)
            }
        }
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
