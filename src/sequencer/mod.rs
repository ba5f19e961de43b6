//! The maintenance run: drain a host (save or shut down every guest),
//! patch it, reboot it into the patched hypervisor, and bring every guest
//! back. Every step is journaled before and after, and every step checks
//! what is actually there before acting, so `resume` after a crash or power
//! cut at any point continues correctly, and running it twice is harmless.
//!
//! The sequencer speaks only the `Toolstack` and `BootLoader` traits.
//!
//! Each phase has its own file (drain, reboot, resume, rollback, prune);
//! this one holds what they share: the run's journal and state, the lock,
//! the failpoints, and the loop that works on every guest.

mod accounting;
mod drain;
mod lanes;
mod notices;
mod prune;
mod reboot;
mod record;
mod resume;
mod rollback;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use prune::Pruned;
pub use record::{
    GuestState, Hypervisor, Observation, Outcome, Phase, Record, RunState, Step, Verification,
};

use crate::hooks;

use crate::boot::{BootError, BootLoader};
use crate::domain::{DomainInfo, Uuid};
use crate::durable::{self, DurableError};
use crate::guest::PowerOptions;
use crate::journal::{Journal, JournalError};
use crate::lock::{HostLock, LockError};
use crate::plan::{HostFacts, PlannedGuest, Policy};
use crate::toolstack::{Toolstack, ToolstackError};
use lanes::Lanes;

/// Why a run step failed. One message each.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The patch or reboot command names a file that is not root's alone.
    #[error(transparent)]
    Untrusted(#[from] crate::trust::TrustError),
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
    #[error(
        "{step} refused: the host holds domain(s) that the run has not accounted for and a \
         reboot would lose: {domains}. Nothing was changed: `xenmaint drain` takes them into the \
         run (or stop them), `xenmaint rollback` ends it"
    )]
    HostChanged { step: &'static str, domains: String },
    /// A failpoint fired: the run stops as if the process had died here.
    #[error("simulated crash at {0}")]
    Crashed(String),
}

pub type Result<T> = std::result::Result<T, SeqError>;

/// The buffer a run's status file is written through.
const STATUS_BUFFER: usize = 64 << 10;

/// Decides, for tests, where the run "dies". Called with a description of
/// each journal write, before and after it.
pub type Failpoint<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// Told of each record as it is journaled, with the run's state before it
/// (None for the first): how a verb shows its progress. Called under the
/// run's locks: it must be quick and must not call the sequencer.
pub trait Observer: Sync {
    fn journaled(&self, rec: &Record, before: Option<&RunState>);
}

/// An observer that looks at nothing.
pub struct Unobserved;

impl Observer for Unobserved {
    fn journaled(&self, _: &Record, _: Option<&RunState>) {}
}

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
    pub observer: &'a dyn Observer,
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

impl Sequencer<'_> {
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
        let tell = notices::tell(&rec);
        {
            // One lock for both: the fold follows the journal's order.
            let mut journal = run.journal.lock().unwrap_or_else(|p| p.into_inner());
            journal.append(&rec)?;
            let mut state = run.state.lock().unwrap_or_else(|p| p.into_inner());
            self.observer.journaled(&rec, state.as_ref());
            match state.as_mut() {
                Some(s) => s.apply(rec),
                // The first record's plan moves into the state, uncopied.
                None => *state = RunState::replay_owned(vec![rec]),
            }
            if let (Some(tell), Some(s)) = (tell, state.as_ref()) {
                self.tell(run, s, tell);
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
            // Private if made here: it may be the state folder too (--sim).
            use std::os::unix::fs::DirBuilderExt;
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true).mode(0o700);
            builder.create(dir).map_err(|source| DurableError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok(HostLock::acquire(&self.lock_path, what)?)
    }

    /// A guest's step failed: logged and journaled; the run goes on (Ok(false)).
    fn failed(&self, run: &Run, g: &PlannedGuest, step: Step, error: String) -> Result<bool> {
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

    fn hypervisor(&self) -> Result<Hypervisor> {
        let v = self.ts.version()?;
        Ok(Hypervisor {
            release: v.release(),
            build_id: v.build_id,
        })
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

    /// The domain with this UUID now.
    fn find(&self, uuid: Uuid) -> Result<Option<DomainInfo>> {
        Ok(self.ts.find_uuid(uuid)?)
    }

    /// The domains, listed again every 200 ms for up to `bound` while any
    /// that `which` picks is dying (libxl still destroying it): the last
    /// listing, which may still hold some.
    fn list_after_dying(
        &self,
        which: impl Fn(&DomainInfo) -> bool,
        bound: Duration,
    ) -> Result<Vec<DomainInfo>> {
        let deadline = std::time::Instant::now() + bound;
        let mut said = false;
        loop {
            let domains = self.ts.list_domains()?;
            let dying: Vec<&str> = domains
                .iter()
                .filter(|d| d.state == crate::domain::DomainState::Dying && which(d))
                .map(|d| d.name.as_str())
                .collect();
            if dying.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(domains);
            }
            if !said {
                log::warn!("waiting up to {bound:?} for dying domain(s) to go: {dying:?}");
                said = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
