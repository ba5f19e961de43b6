//! The maintenance run: drain a host (save or shut down every guest),
//! patch it, reboot it into the patched hypervisor, and bring every guest
//! back. Every step is journaled before and after, and every step checks
//! what is actually there before acting, so `resume` after a crash or power
//! cut at any point continues correctly, and running it twice is harmless.
//!
//! The sequencer speaks only the `Toolstack` and `BootLoader` traits.

mod lanes;
mod record;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use record::{
    GuestState, Hypervisor, Observation, Outcome, Phase, Record, RunState, Step, Verification,
};

use crate::address;
use crate::hooks;
use crate::image::{DiskIdentity, Manifest};

use crate::boot::{BootError, BootLoader};
use crate::domain::{DomId, DomainInfo, DomainRef, DomainState, ShutdownReason, Uuid};
use crate::durable::{self, DurableError};
use crate::guest::{
    self, AfterSave, OpError, PauseGate, PowerOptions, RestoreOptions, SaveOptions,
};
use crate::journal::{Journal, JournalError};
use crate::lock::{HostLock, LockError};
use crate::plan::{self, Action, HostFacts, PlannedGuest, Policy};
use crate::toolstack::{Request, Toolstack, ToolstackError};
use lanes::Lanes;

/// Why a run step failed. One message each.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("the plan has errors (see `xenmaint plan`): nothing was done")]
    PlanBlocked,
    #[error("run {0} is not finished: `xenmaint status` shows it; `resume` or `rollback` ends it")]
    RunInProgress(String),
    #[error("no maintenance run to {0}")]
    NoRun(&'static str),
    #[error("run {run} is {phase:?}; `{verb}` needs it {want}")]
    WrongPhase {
        run: String,
        phase: Phase,
        verb: &'static str,
        want: &'static str,
    },
    #[error("{failed} guest(s) could not be drained; {outcome}")]
    DrainFailed { failed: usize, outcome: String },
    #[error("{0} guest(s) could not be brought back: `xenmaint status` lists them")]
    Incomplete(usize),
    #[error(
        "THE PATCH DID NOT TAKE: Xen {booted} booted, not the patched hypervisor; every guest \
         is back on it and the boot default stays {default}"
    )]
    PatchDidNotTake { booted: String, default: String },
    #[error(
        "{0} guest(s) are back but do not answer at their recorded addresses or have other \
         disks: `xenmaint status` lists them"
    )]
    ChecksFailed(usize),
    #[error("{what} `{command}` failed: {detail}")]
    Command {
        what: &'static str,
        command: String,
        detail: String,
    },
    #[error("the booted boot entry has no hypervisor image to keep as a fallback: {0}")]
    NoFallback(String),
    #[error(
        "interrupted: the step in progress was finished and the run stopped at {0:?}; \
         `xenmaint status` shows where, `resume` or `rollback` goes on from there"
    )]
    Interrupted(Phase),
    /// A failpoint fired: the run stops as if the process had died here.
    #[error("simulated crash at {0}")]
    Crashed(String),
}

pub type Result<T> = std::result::Result<T, SeqError>;

/// Guests checked at once after they are back.
const VERIFY_LANES: usize = 64;
/// Live saves that may wait at the pause gate at once, each a running guest
/// in log-dirty mode with a libxl save helper blocked on its stream. More
/// guests than this pause in waves of this many.
const HELD_SAVES: usize = 16;

/// How long one probe of an address waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The buffer a run's status file is written through.
const STATUS_BUFFER: usize = 64 << 10;

/// Boot entries xenmaint adds to keep a hypervisor bootable.
const FALLBACK_PREFIX: &str = "xenmaint-fallback-";

/// Decides, for tests, where the run "dies". Called with a description of
/// each journal write, before and after it.
pub type Failpoint<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// Everything a run needs.
pub struct Sequencer<'a> {
    pub ts: &'a dyn Toolstack,
    pub boot: &'a dyn BootLoader,
    pub facts: &'a dyn HostFacts,
    pub policy: Policy,
    /// /var/lib/xenmaint: runs/, the `current` pointer.
    pub state_dir: PathBuf,
    pub lock_path: PathBuf,
    /// What shutdown and reboot requests may take.
    pub power: PowerOptions,
    pub failpoint: Failpoint<'a>,
    /// Set (by SIGINT/SIGTERM) to stop starting new steps.
    pub stop: &'a AtomicBool,
}

/// The run being worked on: its journal and where it lives.
struct Run {
    dir: PathBuf,
    journal: Mutex<Journal<Record>>,
    /// The fold of every record journaled so far (None before Started): what
    /// a replay of the journal would give, without reading it again.
    state: Mutex<Option<RunState>>,
    crashed: AtomicBool,
}

impl Run {
    /// The run's state as journaled up to now: a copy, which with
    /// thousands of guests costs (and so does dropping it); `read` and
    /// `into_state` do not copy.
    fn state(&self) -> Result<RunState> {
        self.read(RunState::clone)
    }

    /// Looks at the run's state as journaled up to now, under its lock.
    fn read<T>(&self, f: impl FnOnce(&RunState) -> T) -> Result<T> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .as_ref()
            .map(f)
            .ok_or_else(|| no_start_record(&self.dir))
    }

    /// The run's state, for a caller done with the run.
    fn into_state(self) -> Result<RunState> {
        let Run { dir, state, .. } = self;
        let state = state.into_inner().unwrap_or_else(|p| p.into_inner());
        state.ok_or_else(|| no_start_record(&dir))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub run: String,
    pub phase: Phase,
    pub guests: Vec<(String, Uuid, GuestState)>,
}

impl<'a> Sequencer<'a> {
    fn runs_dir(&self) -> PathBuf {
        self.state_dir.join("runs")
    }

    fn current_file(&self) -> PathBuf {
        self.state_dir.join("current")
    }

    /// The id of the run `current` points at, if any.
    pub fn current_id(&self) -> Result<Option<String>> {
        match std::fs::read_to_string(self.current_file()) {
            Ok(id) => Ok(Some(id.trim().to_owned()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DurableError::Io {
                path: self.current_file(),
                source,
            }
            .into()),
        }
    }

    /// The state of the current (or last) run.
    pub fn state(&self) -> Result<Option<(String, RunState)>> {
        let Some(id) = self.current_id()? else {
            return Ok(None);
        };
        let path = self.runs_dir().join(&id).join("journal");
        let (_, records) = Journal::<Record>::read(&path)?;
        Ok(RunState::replay_owned(records).map(|s| (id, s)))
    }

    /// The current run opened for appending, its state in it: one read of
    /// its journal. None, as for `state`, when there is no run or it died
    /// before its start record.
    fn open_current(&self) -> Result<Option<(String, Run)>> {
        let Some(id) = self.current_id()? else {
            return Ok(None);
        };
        let dir = self.runs_dir().join(&id);
        let (journal, _, records) = Journal::<Record>::open(&dir.join("journal"))?;
        let Some(state) = RunState::replay_owned(records) else {
            return Ok(None);
        };
        let run = Run {
            dir,
            journal: Mutex::new(journal),
            state: Mutex::new(Some(state)),
            crashed: AtomicBool::new(false),
        };
        Ok(Some((id, run)))
    }

    /// Journals a record, with the failpoints either side of it. A record
    /// that moves the run to a new phase also updates the run's status file
    /// and runs the hooks.
    fn record(&self, run: &Run, rec: Record) -> Result<()> {
        // One string for both failpoints (they are asked on every record).
        let mut at = String::with_capacity(64);
        at.push_str("before ");
        describe(&mut at, &rec);
        self.crash_point(run, &at)?;
        let (boundary, kind) = (rec.phase_boundary(), rec.kind());
        {
            // One lock for both: the fold follows the journal's order.
            let mut journal = run.journal.lock().unwrap_or_else(|p| p.into_inner());
            journal.append(&rec)?;
            let mut state = run.state.lock().unwrap_or_else(|p| p.into_inner());
            match state.as_mut() {
                Some(s) => s.apply(rec),
                // The first record's plan moves into the state, uncopied.
                None => *state = RunState::replay_owned(vec![rec]),
            }
        }
        at.replace_range(.."before".len(), "after");
        self.crash_point(run, &at)?;
        if boundary {
            self.phase_changed(run, kind)?;
        }
        Ok(())
    }

    /// `<run>/status.json` (what `status --json` prints), then the hooks,
    /// with the run id, the phase and that file's path in their environment.
    fn phase_changed(&self, run: &Run, kind: &'static str) -> Result<()> {
        #[derive(serde::Serialize)]
        struct Status<'s> {
            event: &'static str,
            run: &'s str,
            state: &'s RunState,
        }
        let id = run_id(run);
        let path = run.dir.join("status.json");
        {
            let state = run.state.lock().unwrap_or_else(|p| p.into_inner());
            let state = state.as_ref().ok_or_else(|| no_start_record(&run.dir))?;
            let status = Status {
                event: "status",
                run: &id,
                state,
            };
            // Streamed: megabytes for thousands of guests, never held whole.
            // The state stays locked through the write and its fsyncs: phases
            // change between the lanes' work, so that holds nobody up.
            durable::replace_with(&path, |f| {
                let mut w = std::io::BufWriter::with_capacity(STATUS_BUFFER, f);
                serde_json::to_writer(&mut w, &status)?;
                std::io::Write::flush(&mut w)
            })?;
        }
        if !self.policy.hooks.is_empty() {
            let env = [
                ("XENMAINT_RUN", id),
                ("XENMAINT_PHASE", kind.to_owned()),
                ("XENMAINT_STATUS", path.to_string_lossy().into_owned()),
            ];
            hooks::run_all(
                &self.policy.hooks,
                &env,
                Duration::from_secs_f64(self.policy.hook_s),
            );
        }
        Ok(())
    }

    fn crash_point(&self, run: &Run, at: &str) -> Result<()> {
        if run.crashed.load(Ordering::SeqCst) || (self.failpoint)(at) {
            run.crashed.store(true, Ordering::SeqCst);
            return Err(SeqError::Crashed(at.to_owned()));
        }
        Ok(())
    }

    fn lock(&self, what: &str) -> Result<HostLock> {
        if let Some(dir) = self.lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DurableError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok(HostLock::acquire(&self.lock_path, what)?)
    }

    /// Guests restored at once, on the dom0 this runs on now: the reboot
    /// may have changed dom0's vCPUs since the plan.
    fn lanes(&self) -> usize {
        self.policy.concurrency.lanes(self.facts.dom0_cpus())
    }

    fn hypervisor(&self) -> Result<Hypervisor> {
        let v = self.ts.version()?;
        Ok(Hypervisor {
            release: v.release(),
            build_id: v.build_id,
        })
    }

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

    /// Runs `f` on every guest, in plan order (or reverse), on `workers`
    /// threads (at least one per lane), each guest holding one of `lanes`.
    /// Returns how many failed; a crash stops everything.
    fn each_guest(
        &self,
        run: &Run,
        guests: &[PlannedGuest],
        reverse: bool,
        lanes: &Lanes<'_>,
        workers: usize,
        f: impl Fn(&PlannedGuest) -> Result<bool> + Sync,
    ) -> Result<usize> {
        let mut order: Vec<&PlannedGuest> = guests.iter().collect();
        if reverse {
            order.reverse();
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        let crash: Mutex<Option<SeqError>> = Mutex::new(None);
        let workers = workers.max(lanes.count()).min(order.len()).max(1);
        lanes.start_workers(workers);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let _worker = lanes.worker();
                    loop {
                        if run.crashed.load(Ordering::SeqCst) || self.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let _lane = lanes.lane();
                        // Taken with the lane: guests start in order.
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(g) = order.get(i) else { return };
                        match f(g) {
                            Ok(true) => {}
                            Ok(false) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                run.crashed.store(true, Ordering::SeqCst);
                                let mut c = crash.lock().unwrap_or_else(|p| p.into_inner());
                                c.get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = crash.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(failed.into_inner())
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

    /// Checks a guest that is back against what was observed before its
    /// step: its addresses answer (a cold booted guest gets `verify_s` to
    /// boot), its disks are the same. Records the result; with
    /// `keep_images` off, a guest that checks out loses its image.
    fn verify(
        &self,
        run: &Run,
        before: &Observation,
        image: Option<&Path>,
        g: &PlannedGuest,
        domid: DomId,
    ) -> Result<()> {
        let now = self
            .ts
            .domain_devices(domid)
            .map(|d| DiskIdentity::of_all(&d.disks))
            .unwrap_or_default();
        let disks_changed = before
            .disks
            .iter()
            .filter_map(|b| match now.iter().find(|n| n.vdev == b.vdev) {
                Some(n) => b.differs_from(n),
                None => Some(format!("{}: gone", b.vdev)),
            })
            .collect();
        let mut silent: Vec<IpAddr> = if self.policy.probe_addresses {
            before.addresses.iter().map(|a| a.ip).collect()
        } else {
            Vec::new()
        };
        let mut answered = Vec::new();
        let deadline = Instant::now() + Duration::from_secs_f64(self.policy.verify_s);
        loop {
            silent.retain(|ip| {
                let ok = self.facts.probe(*ip, PROBE_TIMEOUT);
                if ok {
                    answered.push(*ip);
                }
                !ok
            });
            if silent.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(PROBE_TIMEOUT);
        }
        let verification = Verification {
            answered,
            silent,
            disks_changed,
        };
        if !verification.ok() {
            log::error!(
                "{}: back, but silent at {:?}, disks changed: {:?}",
                g.name,
                verification.silent,
                verification.disks_changed
            );
        }
        let ok = verification.ok();
        self.record(
            run,
            Record::Verified {
                uuid: g.uuid,
                verification,
            },
        )?;
        if ok && !self.policy.keep_images {
            if let Some(image) = image {
                guest::remove_image(image)?;
            }
        }
        Ok(())
    }

    /// `<image_dir>/<run>/<uuid>.xl`: named by UUID, never by a guest's
    /// chosen name, and per run, so runs never collide.
    fn image_path(&self, run: &str, uuid: Uuid) -> PathBuf {
        self.policy.image_dir.join(run).join(format!("{uuid}.xl"))
    }

    /// The domain with this UUID now.
    fn find(&self, uuid: Uuid) -> Result<Option<DomainInfo>> {
        Ok(self.ts.find_uuid(uuid)?)
    }

    /// Keeps the running hypervisor bootable, runs the patch command, and
    /// sets `entry` to boot once; the default stays the kept hypervisor, so
    /// a patched one that does not boot falls back to it.
    pub fn patch(&self, command: &str, entry: &str) -> Result<()> {
        let _lock = self.lock("patch")?;
        let (id, run) = self.open_current()?.ok_or(SeqError::NoRun("patch"))?;
        let (phase, release) = run.read(|s| (s.phase, s.hypervisor_before.release.clone()))?;
        if phase != Phase::Drained && phase != Phase::Patched {
            return Err(SeqError::WrongPhase {
                run: id,
                phase,
                verb: "patch",
                want: "drained",
            });
        }
        let default = self.boot.default_entry()?;
        let current = match &default {
            Some(d) => self.boot.find(d)?,
            None => return Err(SeqError::NoFallback("no saved_entry".into())),
        };
        let hv_file = current
            .hypervisor
            .clone()
            .ok_or_else(|| SeqError::NoFallback(current.id.clone()))?;
        // The default may already be a copy kept by an earlier run (whose
        // patch did not take): it is the fallback as it is.
        let kept = current.id.starts_with(FALLBACK_PREFIX);
        let fallback = if kept {
            current.id.clone()
        } else {
            format!("{FALLBACK_PREFIX}xen-{release}")
        };
        let copy = format!("/boot/xen-{release}-xenmaint-fallback.gz");
        if !kept {
            self.boot.keep_entry(
                &hv_file,
                &copy,
                &fallback,
                &format!("Xen {release} (kept by xenmaint as a fallback)"),
            )?;
            self.boot.commit(&fallback)?;
        }
        run_command("patch command", command)?;
        self.boot.find(entry)?;
        self.boot.boot_once(entry)?;
        self.record(
            &run,
            Record::Patched {
                entry: entry.to_owned(),
                fallback: Some(fallback),
            },
        )
    }

    /// Records what should boot, then reboots the host with `command`.
    pub fn reboot(&self, command: &str, expect_release: Option<&str>) -> Result<()> {
        let lock = self.lock("reboot")?;
        let (id, run) = self.open_current()?.ok_or(SeqError::NoRun("reboot"))?;
        let (phase, patched_entry, build_id_before) = run.read(|s| {
            (
                s.phase,
                s.patched_entry.clone(),
                s.hypervisor_before.build_id.clone(),
            )
        })?;
        if phase != Phase::Patched && phase != Phase::Drained {
            return Err(SeqError::WrongPhase {
                run: id,
                phase,
                verb: "reboot",
                want: "drained (and patched)",
            });
        }
        let patched = phase == Phase::Patched;
        let expect_build_id = match (&patched_entry, patched) {
            (Some(entry), true) => self.boot.build_id_of(entry)?,
            _ => None,
        };
        self.record(
            &run,
            Record::Rebooting {
                expect_not_build_id: if patched { build_id_before } else { None },
                expect_release: expect_release.map(str::to_owned),
                expect_build_id,
            },
        )?;
        drop(lock);
        nix::unistd::sync();
        run_command("reboot command", command)
    }

    /// After the reboot (or to finish a crashed run): checks which
    /// hypervisor booted, commits the boot default if it is the patched one,
    /// and brings every guest back, most important first.
    pub fn resume(&self) -> Result<Option<(String, RunState)>> {
        let _lock = self.lock("resume")?;
        let Some((id, run)) = self.open_current()? else {
            self.recover_unstarted()?;
            return Ok(None);
        };
        let (phase, outcome) = run.read(|s| (s.phase, s.outcome))?;
        // A finished run is done, unless it left guests down: then resume
        // tries them again (once whatever stopped them is fixed).
        if phase == Phase::Finished && outcome != Some(Outcome::Incomplete) {
            return Ok(Some((id, run.into_state()?)));
        }
        if phase == Phase::Rebooting {
            let now = self.hypervisor()?;
            let (took, patched_entry, expect_build_id) = run.read(|state| {
                // A build other than the one that ran before, and, when the
                // patched image told us its build-id, exactly that build.
                let is_new = match (&state.expect_not_build_id, &now.build_id) {
                    (Some(before), Some(now)) => before != now,
                    (Some(_), None) => now.release != state.hypervisor_before.release,
                    (None, _) => true,
                };
                let is_expected = match (&state.expect_build_id, &now.build_id) {
                    (Some(want), Some(now)) => want == now,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let differs = is_new && is_expected;
                let release_ok = state
                    .expect_release
                    .as_deref()
                    .is_none_or(|want| now.release == want);
                (
                    differs && release_ok,
                    state.patched_entry.clone(),
                    state.expect_build_id.clone(),
                )
            })?;
            if took {
                if let Some(entry) = &patched_entry {
                    self.boot.commit(entry)?;
                }
            } else {
                log::error!(
                    "THE PATCH DID NOT TAKE: Xen {} ({}) booted, not the patched hypervisor \
                     ({}); the boot default stays {}; bringing every guest back on it",
                    now.release,
                    now.build_id.as_deref().unwrap_or("no build-id"),
                    expect_build_id.as_deref().unwrap_or("build-id unknown"),
                    self.boot.default_entry()?.unwrap_or_default()
                );
            }
            self.record(
                &run,
                Record::Booted {
                    hypervisor: now,
                    patch_took: took,
                },
            )?;
        }
        let state = run.state()?;
        self.wait_for_bridges(&state);
        let left = self.bring_back_all(&run, &state)?;
        if self.stop.load(Ordering::SeqCst) {
            // Not finished: the next resume brings back the rest.
            return Err(SeqError::Interrupted(run.read(|s| s.phase)?));
        }
        let outcome = if left > 0 {
            Outcome::Incomplete
        } else if state.phase >= Phase::Rebooting {
            Outcome::Resumed
        } else {
            Outcome::RolledBack
        };
        self.record(&run, Record::Finished { outcome })?;
        if left > 0 {
            return Err(SeqError::Incomplete(left));
        }
        let state = run.into_state()?;
        if let Some((hv, false)) = &state.booted {
            return Err(SeqError::PatchDidNotTake {
                booted: hv.release.clone(),
                default: self.boot.default_entry()?.unwrap_or_default(),
            });
        }
        let unchecked = state.verified.values().filter(|v| !v.ok()).count();
        if unchecked > 0 {
            return Err(SeqError::ChecksFailed(unchecked));
        }
        Ok(Some((id, state)))
    }

    /// At boot the network may still be coming up: give the bridges the
    /// guests plug into a while to appear (a vif on a missing bridge fails
    /// its restore), then go on regardless; a guest that then fails is
    /// cold booted or reported like any other.
    fn wait_for_bridges(&self, state: &RunState) {
        let deadline =
            std::time::Instant::now() + Duration::from_secs_f64(self.policy.bridge_wait_s);
        let mut bridges: Vec<&str> = state
            .plan
            .guests
            .iter()
            .flat_map(|g| g.nics.iter().filter_map(|n| n.bridge.as_deref()))
            .collect();
        bridges.sort_unstable();
        bridges.dedup();
        loop {
            let missing: Vec<&str> = bridges
                .iter()
                .copied()
                .filter(|b| !self.facts.bridge_present(b))
                .collect();
            if missing.is_empty() {
                return;
            }
            if std::time::Instant::now() >= deadline {
                log::warn!("bridge(s) {} still missing: going on", missing.join(", "));
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

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

    /// A run that died before its start record: nothing was touched, but a
    /// power cut may have stopped its guests. Boot any whose saved config
    /// has no running domain.
    fn recover_unstarted(&self) -> Result<()> {
        let Some(id) = self.current_id()? else {
            return Ok(());
        };
        let configs = self.runs_dir().join(&id).join("configs");
        let Ok(dir) = std::fs::read_dir(&configs) else {
            return Ok(());
        };
        let running: Vec<Uuid> = self.ts.list_domains()?.iter().map(|d| d.uuid).collect();
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(uuid) = name
                .strip_suffix(".json")
                .and_then(|u| u.parse::<Uuid>().ok())
            else {
                continue;
            };
            if running.contains(&uuid) {
                continue;
            }
            let text = std::fs::read(entry.path()).map_err(|source| DurableError::Io {
                path: entry.path(),
                source,
            })?;
            match serde_json::from_slice(&text)
                .map_err(|e| e.to_string())
                .and_then(|c| self.ts.create(&c).map_err(|e| e.to_string()))
                .and_then(|domid| self.ts.unpause(domid).map_err(|e| e.to_string()))
            {
                Ok(()) => log::warn!("run {id} never started; cold booted {uuid} from its config"),
                Err(e) => log::error!("run {id}: cannot cold boot {uuid}: {e}"),
            }
        }
        Ok(())
    }

    /// Brings back every guest that is not back; returns how many could not be.
    fn bring_back_all(&self, run: &Run, state: &RunState) -> Result<usize> {
        let lanes = Lanes::new(self.lanes(), self.stop);
        let failed = self.each_guest(run, &state.plan.guests, true, &lanes, 0, |g| {
            let st = state
                .guests
                .get(&g.uuid)
                .cloned()
                .unwrap_or(GuestState::Pending);
            let image = state.images.get(&g.uuid).cloned();
            self.bring_back(run, g, &st, image, &state.plan.image_dir)
        })?;
        // Then the checks, all guests at once: a probe costs nothing, and a
        // guest still booting must not hold up another's restore. A check
        // the journal already holds (for the guest as it runs now) is not
        // repeated by a second resume. Each guest's entries are read as
        // journaled now, under the run's lock, not from a copy of the whole
        // state: only the worker on a guest journals about it.
        let checks = Lanes::new(VERIFY_LANES, self.stop);
        self.each_guest(run, &state.plan.guests, true, &checks, 0, |g| {
            let (back, checked, before, image) = run.read(|now| {
                (
                    matches!(now.guests.get(&g.uuid), Some(GuestState::Back { .. })),
                    now.verified.contains_key(&g.uuid),
                    now.observed.get(&g.uuid).cloned(),
                    now.images.get(&g.uuid).cloned(),
                )
            })?;
            if back && !checked {
                if let Some(d) = self.find(g.uuid)? {
                    // Nothing observed before its step: nothing to check.
                    if let Some(before) = &before {
                        self.verify(run, before, image.as_deref(), g, d.domid)?;
                    }
                }
            }
            Ok(true)
        })?;
        Ok(failed)
    }

    fn bring_back(
        &self,
        run: &Run,
        g: &PlannedGuest,
        st: &GuestState,
        image: Option<PathBuf>,
        image_dir: &Path,
    ) -> Result<bool> {
        if g.action == Action::Skip {
            return Ok(true);
        }
        let found = self.find(g.uuid)?;
        let mut image = image;
        if let GuestState::Back { .. } = st {
            // Back once: it has run, and written to its disk, since its
            // image was taken, so that image must never be restored again.
            // Whoever has it now (paused, shut down, saved) keeps it; gone
            // (a power cut since, or stopped), it can only be cold booted.
            if found.is_some() {
                return Ok(true);
            }
            log::warn!(
                "{}: was back, and is gone: cold booting it (its image is older than its disk)",
                g.name
            );
            image = None;
        }
        // What is really there decides, whatever the journal last said.
        match found {
            Some(d) if matches!(d.state, DomainState::Running | DomainState::Blocked) => {
                let how = match st {
                    GuestState::Back { .. } => return Ok(true),
                    // Stopped by the run, then brought back by someone else.
                    GuestState::Saved { .. } => Step::Restore,
                    GuestState::ShutDown => Step::ColdBoot,
                    _ => Step::Kept,
                };
                self.record(run, back(g.uuid, how, d.domid))?;
                return Ok(true);
            }
            Some(d) if d.shutdown_reason == Some(ShutdownReason::Suspend) => {
                // The run died inside a save: the guest is suspended, not
                // destroyed. Resuming it continues it where it stopped.
                if self.ts.resume(d.domid).is_ok() {
                    self.record(run, back(g.uuid, Step::Restore, d.domid))?;
                    return Ok(true);
                }
                self.ts.destroy(d.domid)?;
            }
            // Half-built (paused after a restore the run did not finish) or
            // shut down: start again from the image or the config.
            Some(d) => self.ts.destroy(d.domid)?,
            None => {}
        }
        if image.is_none() && matches!(st, GuestState::InStep { step: Step::Save }) {
            image = self.finish_cut_save(run, g, image_dir)?;
        }
        // No separate verification first: the restore checks the image as it
        // streams it (structure, then checksum before the guest is unpaused),
        // and a second full read per guest after a cold boot is downtime.
        let image = image.filter(|p| p.is_file());
        if let Some(image) = image {
            self.record(
                run,
                Record::Begin {
                    uuid: g.uuid,
                    step: Step::Restore,
                    observation: None,
                },
            )?;
            match guest::restore(self.ts, &image, &RestoreOptions { paused: false }, &|_| {}) {
                Ok(r) => {
                    self.record(run, back(g.uuid, Step::Restore, r.domid))?;
                    return Ok(true);
                }
                Err(e) => {
                    log::error!(
                        "{}: restore failed ({e}); cold booting it from its config",
                        g.name
                    );
                    self.record(
                        run,
                        Record::Failed {
                            uuid: g.uuid,
                            step: Step::Restore,
                            error: e.to_string(),
                        },
                    )?;
                }
            }
        }
        self.record(
            run,
            Record::Begin {
                uuid: g.uuid,
                step: Step::ColdBoot,
                observation: None,
            },
        )?;
        match self.cold_boot(run, g.uuid) {
            Ok(domid) => {
                self.record(run, back(g.uuid, Step::ColdBoot, domid))?;
                Ok(true)
            }
            Err(e) => {
                log::error!("{}: cannot be brought back: {e}", g.name);
                self.record(
                    run,
                    Record::Failed {
                        uuid: g.uuid,
                        step: Step::ColdBoot,
                        error: e.to_string(),
                    },
                )?;
                Ok(false)
            }
        }
    }

    /// A save the run was in when it was cut off, its guest gone: if the
    /// save got as far as its manifest (written after the image was synced
    /// and published, before the guest was destroyed), the image holds the
    /// guest, and its Done record is written now, so that the image counts
    /// as the run's (restored from again after another cut, deleted with
    /// the run's images). Without that manifest the save never finished.
    fn finish_cut_save(
        &self,
        run: &Run,
        g: &PlannedGuest,
        image_dir: &Path,
    ) -> Result<Option<PathBuf>> {
        let path = image_dir.join(run_id(run)).join(format!("{}.xl", g.uuid));
        match Manifest::load_for(&path) {
            Ok(Some(m)) if m.uuid == g.uuid && path.is_file() => {}
            _ => return Ok(None),
        }
        log::warn!(
            "{}: the run was cut off after its save finished: restoring from {}",
            g.name,
            path.display()
        );
        self.record(
            run,
            Record::Done {
                uuid: g.uuid,
                step: Step::Save,
                image: Some(path.clone()),
                domid: None,
            },
        )?;
        Ok(Some(path))
    }

    fn cold_boot(&self, run: &Run, uuid: Uuid) -> std::result::Result<DomId, OpError> {
        let path = config_path(&run.dir, uuid);
        let text = std::fs::read(&path).map_err(|source| DurableError::Io {
            path: path.clone(),
            source,
        })?;
        let config: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
            OpError::Toolstack(ToolstackError::BadJson {
                call: "saved config",
                detail: e.to_string(),
            })
        })?;
        let domid = self.ts.create(&config)?;
        self.ts.unpause(domid)?;
        Ok(domid)
    }

    /// The current run, per guest, for `status`.
    pub fn summary(&self) -> Result<Option<Summary>> {
        Ok(self.state()?.map(|(run, s)| Summary {
            run,
            phase: s.phase,
            guests: s
                .plan
                .guests
                .iter()
                .map(|g| {
                    (
                        g.name.clone(),
                        g.uuid,
                        s.guests
                            .get(&g.uuid)
                            .cloned()
                            .unwrap_or(GuestState::Pending),
                    )
                })
                .collect(),
        }))
    }

    /// The run's directory (configs, journal).
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.runs_dir().join(id)
    }

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

/// A journal without its Started record cannot be acted on.
fn no_start_record(dir: &Path) -> SeqError {
    SeqError::Journal(JournalError::Corrupt {
        path: dir.join("journal"),
        line: 2,
        detail: "the run has no start record".into(),
    })
}

/// A run's id: the name of its directory.
fn run_id(run: &Run) -> String {
    run.dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn back(uuid: Uuid, step: Step, domid: DomId) -> Record {
    Record::Done {
        uuid,
        step,
        image: None,
        domid: Some(domid),
    }
}

fn config_path(dir: &Path, uuid: Uuid) -> PathBuf {
    dir.join("configs").join(format!("{uuid}.json"))
}

/// Appends what a failpoint is told about a record: "Begin Save <uuid>".
fn describe(to: &mut String, r: &Record) {
    use std::fmt::Write;
    match r {
        Record::Begin { uuid, step, .. }
        | Record::Done { uuid, step, .. }
        | Record::Failed { uuid, step, .. } => {
            let _ = write!(to, "{} {step:?} {uuid}", r.kind());
        }
        other => to.push_str(other.kind()),
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

fn run_command(what: &'static str, command: &str) -> Result<()> {
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .status()
        .map_err(|e| SeqError::Command {
            what,
            command: command.to_owned(),
            detail: e.to_string(),
        })?;
    if !status.success() {
        return Err(SeqError::Command {
            what,
            command: command.to_owned(),
            detail: status.to_string(),
        });
    }
    Ok(())
}
