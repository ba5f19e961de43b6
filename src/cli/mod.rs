//! The `xenmaint` command line: parses arguments, opens the toolstack (real
//! or simulated), runs one verb and maps the outcome to an exit code.

mod guest;
mod inventory;
mod notify;
mod output;
mod plan;
mod run;
mod simulated;
mod steps;

use std::io;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::domain::DomainRef;
use crate::exit;
use crate::guest::OpError;
use crate::image::ImageError;
use crate::libxl::Libxl;
use crate::sim::{Sim, SimError};
use crate::toolstack::{Toolstack, ToolstackError};
use output::Output;

/// Safe, resumable hypervisor maintenance for Xen dom0 hosts.
#[derive(Debug, Parser)]
#[command(name = "xenmaint", version, about, long_about = None)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Run against a simulated host described in FILE (JSON), not this host's Xen.
    /// Its journals, images and lock go in FILE's folder, under FILE.xenmaint
    /// (or --state-dir), and this host's policy file is not read (give one
    /// with --config).
    #[arg(long, global = true, value_name = "FILE")]
    pub sim: Option<PathBuf>,

    /// Machine-readable output: JSON Lines, one object per record.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output (-v info, -vv debug, -vvv trace, libxl's included).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Where maintenance runs keep their journals and saved configs
    /// [default: /var/lib/xenmaint].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The lock that allows one run per host [default: /run/xenmaint.lock].
    #[arg(long, global = true, value_name = "FILE", hide = true)]
    pub lock: Option<PathBuf>,

    #[command(subcommand)]
    pub verb: Verb,
}

impl Args {
    /// The journals' folder: as given; for a simulated host FILE.json,
    /// FILE.xenmaint beside it (a simulation never writes to this host's
    /// system paths); else the system's.
    pub fn state_dir(&self) -> PathBuf {
        match (&self.state_dir, &self.sim) {
            (Some(dir), _) => dir.clone(),
            (None, Some(sim)) => {
                let stem = sim.file_stem().unwrap_or(sim.as_os_str());
                let mut name = stem.to_owned();
                name.push(".xenmaint");
                sim.with_file_name(name)
            }
            (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
        }
    }

    pub fn lock(&self) -> PathBuf {
        match (&self.lock, &self.sim) {
            (Some(lock), _) => lock.clone(),
            (None, Some(_)) => self.state_dir().join("xenmaint.lock"),
            (None, None) => PathBuf::from(crate::lock::DEFAULT_LOCK),
        }
    }

    /// Where images go unless a flag or the policy file says otherwise.
    pub fn image_dir(&self) -> PathBuf {
        match &self.sim {
            Some(_) => self.state_dir().join("images"),
            None => PathBuf::from(crate::guest::DEFAULT_IMAGE_DIR),
        }
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/xenmaint";

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  an operation failed (a failed save leaves its guest running)
  2  bad command line
  3  no usable Xen toolstack here (not a dom0, not root)
  4  no such domain
  5  an input file (image, manifest, simulated host) is missing or invalid
  6  a guest did not do as asked in time
  7  the plan has errors: a maintenance run would be refused
  8  another xenmaint run holds this host's lock
  9  refused: domains the run has not accounted for are on the host
 10  refused: a file xenmaint would run as root (policy, hook, patch command)
     can be changed by someone other than root";

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// List domains with their state, memory, network and disks.
    List,
    /// Show one domain: devices and its full libxl configuration.
    Info {
        /// Domain name, or numeric domain id.
        domain: DomainRef,
    },
    /// Show the running hypervisor, the host's memory and xenmaint's version.
    Version,
    /// What a maintenance run would do, changing nothing: per guest its action
    /// and order, image space and time needed, and what blocks the run.
    Plan {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Tell every guest of the coming maintenance, in its own xenstore area
    /// (`xenmaint/scheduled-events`, an EC2-style scheduled event the guest
    /// can read); a run then marks it active and completed as it goes.
    Notify {
        /// When the window opens: RFC 3339 (2026-12-24T06:00:00Z) or +DURATION from now (+2h).
        #[arg(long, value_name = "TIME", required_unless_present = "cancel")]
        not_before: Option<String>,
        /// When it closes (as --not-before).
        #[arg(long, value_name = "TIME", required_unless_present = "cancel")]
        not_after: Option<String>,
        /// What the guests' owners read.
        #[arg(long, value_name = "TEXT", default_value = "host maintenance")]
        description: String,
        /// Withdraw the scheduled maintenance: each guest's event is canceled.
        #[arg(long, conflicts_with_all = ["not_before", "not_after"])]
        cancel: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Save a guest to an xl-format image; it is destroyed only once the image
    /// checked out (header, config, stream through its END record, checksum)
    /// and is on disk (fsync'd).
    Save {
        domain: DomainRef,
        /// Image file (default: IMAGE_DIR/<uuid>.xl). Never overwritten.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Directory for images named by UUID (created 0700)
        /// [default: /var/lib/xenmaint/images].
        #[arg(long, value_name = "DIR")]
        image_dir: Option<PathBuf>,
        /// Copy memory while the guest runs; it pauses only for the last round.
        #[arg(long)]
        live: bool,
        /// Leave the guest running after the save (a checkpoint, as xl save -c).
        #[arg(long)]
        keep_running: bool,
        /// Before the guest goes, also read the image back from the device
        /// (page cache dropped): for storage you distrust.
        #[arg(long)]
        read_back: bool,
    },
    /// Restore a guest from an image (xenmaint's or xl's); it is unpaused only
    /// after the image checked out.
    Restore {
        image: PathBuf,
        /// Leave the restored guest paused.
        #[arg(long)]
        paused: bool,
        /// Restore even if the image's configuration names programs for dom0
        /// (hotplug scripts, bootloader, device model) outside Xen's own
        /// folders, or that others can change: only for an image you trust.
        #[arg(long)]
        allow_image_programs: bool,
    },
    /// Read an image end to end and check it against its manifest.
    Verify { image: PathBuf },
    /// Ask a guest to shut down.
    Shutdown {
        domain: DomainRef,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Ask a guest to reboot; or, with --host, reboot the host into the
    /// patched hypervisor (after `drain` and `patch`).
    Reboot {
        #[arg(required_unless_present = "host")]
        domain: Option<DomainRef>,
        #[command(flatten)]
        wait: WaitArgs,
        /// Reboot the host (records the hypervisor expected to boot first).
        #[arg(long, conflicts_with = "domain")]
        host: bool,
        #[command(flatten)]
        host_args: HostRebootArgs,
    },
    /// Save or shut down every guest, as planned, journaling each step. Run
    /// again before the reboot, it takes in the guests started since.
    Drain {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Keep the running hypervisor as a fallback boot entry, run the patch
    /// command, and boot ENTRY once at the next boot.
    Patch {
        /// The command that installs the new hypervisor (run by /bin/sh).
        #[arg(long = "command", value_name = "CMD")]
        command: String,
        /// The boot entry (GRUB id or title) of the patched hypervisor.
        #[arg(long, value_name = "ENTRY")]
        entry: String,
    },
    /// After the reboot (run at boot by xenmaint-resume.service): check the
    /// hypervisor, commit or keep the boot default, bring every guest back.
    Resume,
    /// Bring the saved guests back without rebooting.
    Rollback,
    /// Delete the images of finished runs but the newest ones (journals
    /// stay). Runs not finished, or that left a guest down, keep theirs.
    Prune {
        /// Finished runs whose images are kept.
        #[arg(long, default_value_t = 1, value_name = "N")]
        keep: usize,
    },
    /// The current or last maintenance run, per guest.
    Status {
        /// Wait until the run has finished (for scripts).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait.
        #[arg(long, default_value_t = 3600, value_name = "SECS")]
        timeout: u64,
        /// Seconds an unfinished run may go without a xenmaint working on
        /// it before --wait gives up (tests shorten it).
        #[arg(long, default_value_t = 30, value_name = "SECS", hide = true)]
        idle_grace: u64,
    },
    /// plan, drain, patch and reboot in one command.
    Run {
        #[command(flatten)]
        policy: PolicyArgs,
        /// The command that installs the new hypervisor.
        #[arg(long, value_name = "CMD")]
        patch_cmd: String,
        /// The boot entry of the patched hypervisor.
        #[arg(long, value_name = "ENTRY")]
        boot_entry: String,
        #[command(flatten)]
        host_args: HostRebootArgs,
        /// Stop before the reboot (then `xenmaint reboot --host`).
        #[arg(long)]
        no_reboot: bool,
    },
    /// Destroy a guest at once (its memory state is lost).
    Destroy {
        domain: DomainRef,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Pause a guest.
    Pause { domain: DomainRef },
    /// Unpause a guest.
    Unpause { domain: DomainRef },
}

impl Verb {
    /// Verbs whose steps must not be cut half way (a save cut short leaves
    /// its guest suspended): SIGINT/SIGTERM let the step in progress finish.
    /// The others (listing, waiting) stop at once as usual.
    fn takes_steps(&self) -> bool {
        matches!(
            self,
            Verb::Save { .. }
                | Verb::Restore { .. }
                | Verb::Drain { .. }
                | Verb::Patch { .. }
                | Verb::Resume
                | Verb::Rollback
                | Verb::Run { .. }
                | Verb::Reboot { host: true, .. }
        )
    }
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Wait until the guest is down (shutdown) or back up (reboot).
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// Seconds to wait.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// Destroy the guest if it does not comply in time (reboot then boots it
    /// again from its configuration).
    #[arg(long, short = 'F')]
    pub force: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Policy file (default /etc/xenmaint/xenmaint.toml, if present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the images (overrides the config).
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Guests saved or restored at once (overrides the config).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,
}

impl PolicyArgs {
    pub fn policy(&self, args: &Args) -> Result<crate::plan::Policy, CliError> {
        let mut policy = load_policy(args, self.config.as_deref())?;
        if let Some(dir) = &self.image_dir {
            policy.image_dir = dir.clone();
        }
        if let Some(n) = self.concurrency {
            policy.concurrency = crate::plan::Concurrency::Lanes(usize::from(n));
        }
        Ok(policy)
    }
}

/// The policy file as given, else the system's, except for a simulated host:
/// this host's policy is not the simulated one's, and its image folder is
/// replaced by one beside the simulated host's file.
pub fn load_policy(
    args: &Args,
    config: Option<&std::path::Path>,
) -> Result<crate::plan::Policy, CliError> {
    if args.sim.is_none() {
        return Ok(crate::config::load_policy(config)?);
    }
    let mut policy = match config {
        Some(path) => crate::config::load_policy(Some(path))?,
        None => crate::plan::Policy::default(),
    };
    if policy.image_dir == std::path::Path::new(crate::guest::DEFAULT_IMAGE_DIR) {
        policy.image_dir = args.image_dir();
    }
    Ok(policy)
}

#[derive(Debug, Clone, clap::Args)]
pub struct HostRebootArgs {
    /// The Xen release expected after the reboot (e.g. 4.17.7).
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<String>,
    /// How to reboot the host [default: systemctl reboot]. A simulated host
    /// (--sim) reboots itself and starts its resume, as its unit would.
    #[arg(long, value_name = "CMD")]
    pub reboot_command: Option<String>,
}

/// Everything that can end a command unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Notice(#[from] crate::notice::NoticeError),
    #[error("the notice could not be written to {0} guest(s) (see above)")]
    NoticeUnwritten(usize),
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("refusing to destroy {0} without --yes when not asked on a terminal")]
    NotConfirmed(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the plan has {0} error(s): a maintenance run would be refused")]
    PlanBlocked(usize),
    #[error(transparent)]
    Run(#[from] crate::sequencer::SeqError),
    #[error("the run did not finish within {0} s")]
    StatusTimeout(u64),
    #[error("run {run}: {trouble}")]
    RunTrouble { run: String, trouble: String },
    #[error(
        "run {run} is {phase:?} and no xenmaint is working on it: run `xenmaint resume` \
         (after a reboot, see `systemctl status xenmaint-resume`) or `xenmaint rollback`"
    )]
    NobodyWorking {
        run: String,
        phase: crate::sequencer::Phase,
    },
    #[error("cannot write output: {0}")]
    Output(io::Error),
    #[error(
        "not root: xenmaint must run as root to use the host's Xen toolstack (`verify` \
         and --sim FILE need no root)"
    )]
    NotRoot,
    #[error("a simulated host reboots itself: --reboot-command is for a real host")]
    SimRebootCommand,
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Output(e)
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        let ts = match self {
            CliError::Toolstack(e) | CliError::Op(OpError::Toolstack(e)) => e,
            CliError::Config(crate::config::ConfigError::Untrusted(_))
            | CliError::Run(crate::sequencer::SeqError::Untrusted(_)) => return exit::UNTRUSTED,
            CliError::Sim(_) | CliError::Config(_) => return exit::BAD_INPUT,
            CliError::Notice(crate::notice::NoticeError::BadTime(_))
            | CliError::Notice(crate::notice::NoticeError::EmptyWindow { .. }) => {
                return exit::USAGE
            }
            CliError::PlanBlocked(_) | CliError::Run(crate::sequencer::SeqError::PlanBlocked) => {
                return exit::PLAN_BLOCKED
            }
            CliError::Run(crate::sequencer::SeqError::Lock(_)) => return exit::LOCKED,
            CliError::Run(crate::sequencer::SeqError::HostChanged { .. }) => {
                return exit::HOST_CHANGED
            }
            CliError::Run(crate::sequencer::SeqError::Interrupted(_)) => return exit::INTERRUPTED,
            CliError::Run(crate::sequencer::SeqError::Toolstack(e)) => e,
            CliError::StatusTimeout(_) => return exit::TIMEOUT,
            CliError::NotRoot => return exit::NOT_DOM0,
            CliError::SimRebootCommand => return exit::USAGE,
            CliError::Op(OpError::Image(_) | OpError::Manifest(_)) => return exit::BAD_INPUT,
            CliError::Op(OpError::UntrustedProgram { .. }) => return exit::UNTRUSTED,
            CliError::Op(OpError::Timeout { .. }) => return exit::TIMEOUT,
            CliError::Op(OpError::SaveFailed { cause, .. })
                if matches!(**cause, OpError::Toolstack(ToolstackError::NoSuchDomain(_))) =>
            {
                return exit::NO_SUCH_DOMAIN
            }
            CliError::Op(_)
            | CliError::Notice(_)
            | CliError::NoticeUnwritten(_)
            | CliError::NotConfirmed(_)
            | CliError::Output(_)
            | CliError::RunTrouble { .. }
            | CliError::NobodyWorking { .. }
            | CliError::Run(_) => return exit::FAILURE,
        };
        match ts {
            ToolstackError::NotDom0(_) | ToolstackError::PermissionDenied { .. } => exit::NOT_DOM0,
            ToolstackError::NoSuchDomain(_) => exit::NO_SUCH_DOMAIN,
            _ => exit::FAILURE,
        }
    }
}

/// Entry point of the binary: returns the process exit code.
pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are not errors; clap knows which is which.
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
        }
    };
    init_logging(&args);
    if args.verb.takes_steps() {
        if let Err(e) = crate::interrupt::install() {
            log::warn!("cannot handle SIGINT/SIGTERM ({e}): a signal ends xenmaint at once");
        }
    }
    match run(&args, Box::new(io::stdout())) {
        Ok(()) if crate::interrupt::requested() => {
            eprintln!("xenmaint: stopping on a signal: the step in progress was finished first");
            exit::SUCCESS
        }
        Ok(()) => exit::SUCCESS,
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => exit::SUCCESS,
        Err(e) => {
            eprintln!("xenmaint: {e}");
            e.exit_code()
        }
    }
}

fn init_logging(args: &Args) {
    let level = if args.quiet {
        log::LevelFilter::Error
    } else {
        match args.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("XENMAINT_LOG")
        .format_timestamp(None)
        .init();
}

/// Runs one parsed command, writing results to `out`.
pub fn run(args: &Args, out: Box<dyn io::Write + Send>) -> Result<(), CliError> {
    // Verifying an image needs no toolstack: it works on any machine.
    if let Verb::Verify { image } = &args.verb {
        let out = Output::new(args.json, None, out);
        return guest::verify(image, &out, args.quiet);
    }
    let sim = match &args.sim {
        Some(file) => Some(Sim::open(file, &args.state_dir())?),
        None => None,
    };
    if sim.is_none() && !nix::unistd::geteuid().is_root() {
        return Err(CliError::NotRoot);
    }
    let libxl = match &sim {
        Some(_) => None,
        None => Some(Libxl::new()?),
    };
    let ts: &dyn Toolstack = match (&sim, &libxl) {
        (Some(sim), _) => sim,
        (None, Some(libxl)) => libxl,
        (None, None) => unreachable!("one of them is set"),
    };
    let simulated = ts.simulated().then(|| {
        args.sim
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string())
    });
    let out = Output::new(args.json, simulated, out);
    out.banner()?;
    let done = dispatch(args, ts, sim.as_ref(), &out);
    // A simulated host whose state could not be kept is not what the
    // command's output says: that fails the command.
    match sim.as_ref().and_then(Sim::broken) {
        Some(why) if done.is_ok() => Err(ToolstackError::SimState(why).into()),
        _ => done,
    }
}

/// Runs the verb on the host `ts` (`sim` when it is simulated).
fn dispatch(
    args: &Args,
    ts: &dyn Toolstack,
    sim: Option<&Sim>,
    out: &Output,
) -> Result<(), CliError> {
    match &args.verb {
        Verb::List => inventory::list(ts, out)?,
        Verb::Info { domain } => inventory::info(ts, domain, out)?,
        Verb::Version => inventory::version(ts, out)?,
        Verb::Plan { policy } => {
            let ctx = run::context(args, ts, sim, Some(policy))?;
            plan::plan(ts, &ctx.policy, ctx.facts.as_ref(), out)?
        }
        Verb::Notify {
            not_before,
            not_after,
            description,
            cancel,
            policy,
        } => {
            let ctx = run::context(args, ts, sim, Some(policy))?;
            let window = match (not_before, not_after, cancel) {
                (Some(from), Some(to), false) => {
                    Some((description.as_str(), from.as_str(), to.as_str()))
                }
                _ => None,
            };
            notify::notify(&ctx, &args.state_dir(), window, out)?
        }
        Verb::Save {
            domain,
            out: file,
            image_dir,
            live,
            keep_running,
            read_back,
        } => {
            let opts = crate::guest::SaveOptions {
                out: file.clone(),
                image_dir: image_dir.clone().unwrap_or_else(|| args.image_dir()),
                live: *live,
                then: if *keep_running {
                    crate::guest::AfterSave::Resume
                } else {
                    crate::guest::AfterSave::Destroy
                },
                read_back: *read_back,
                // One guest: nothing to pause together with.
                gate: None,
                fresh_dir: false,
                paused_ok: false,
            };
            guest::save(ts, domain, &opts, out, args.quiet)?
        }
        Verb::Restore {
            image,
            paused,
            allow_image_programs,
        } => guest::restore(
            ts,
            image,
            &crate::guest::RestoreOptions {
                paused: *paused,
                allow_programs: *allow_image_programs,
            },
            out,
            args.quiet,
        )?,
        Verb::Verify { .. } => unreachable!("handled above"),
        Verb::Shutdown { domain, wait } => guest::power(
            ts,
            domain,
            crate::toolstack::Request::Shutdown,
            wait,
            out,
            args.quiet,
        )?,
        Verb::Reboot {
            domain,
            wait,
            host,
            host_args,
        } => match (domain, host) {
            (_, true) => run::reboot_host(&run::context(args, ts, sim, None)?, host_args, out)?,
            (Some(domain), false) => guest::power(
                ts,
                domain,
                crate::toolstack::Request::Reboot,
                wait,
                out,
                args.quiet,
            )?,
            (None, false) => unreachable!("clap requires a domain without --host"),
        },
        Verb::Drain { policy } => run::drain(&run::context(args, ts, sim, Some(policy))?, out)?,
        Verb::Patch { command, entry } => {
            run::patch(&run::context(args, ts, sim, None)?, command, entry, out)?
        }
        Verb::Resume => run::resume(&run::context(args, ts, sim, None)?, false, out)?,
        Verb::Rollback => run::resume(&run::context(args, ts, sim, None)?, true, out)?,
        Verb::Prune { keep } => run::prune(&run::context(args, ts, sim, None)?, *keep, out)?,
        Verb::Status {
            wait,
            timeout,
            idle_grace,
        } => run::status(
            &run::context(args, ts, sim, None)?,
            *wait,
            (*timeout, *idle_grace),
            out,
        )?,
        Verb::Run {
            policy,
            patch_cmd,
            boot_entry,
            host_args,
            no_reboot,
        } => {
            let ctx = run::context(args, ts, sim, Some(policy))?;
            // Refused before anything runs, not after the drain.
            crate::trust::check_command("patch command", patch_cmd)
                .map_err(crate::sequencer::SeqError::from)?;
            plan::plan(ts, &ctx.policy, ctx.facts.as_ref(), out)?;
            run::drain(&ctx, out)?;
            run::patch(&ctx, patch_cmd, boot_entry, out)?;
            if crate::interrupt::requested() {
                // Patched, not rebooted: `reboot --host` or `rollback` next.
                return Err(crate::sequencer::SeqError::Interrupted(
                    crate::sequencer::Phase::Patched,
                )
                .into());
            }
            if !no_reboot {
                run::reboot_host(&ctx, host_args, out)?;
            }
        }
        Verb::Destroy { domain, yes } => guest::destroy(ts, domain, *yes, out)?,
        Verb::Pause { domain } => guest::pause(ts, domain, true, out)?,
        Verb::Unpause { domain } => guest::pause(ts, domain, false, out)?,
    }
    out.flush()?;
    Ok(())
}

/// Image errors reach the user through OpError.
impl From<ImageError> for CliError {
    fn from(e: ImageError) -> Self {
        CliError::Op(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_refused_for_domains_the_run_has_not_accounted_for_exits_host_changed() {
        let e = CliError::Run(crate::sequencer::SeqError::HostChanged {
            step: "reboot",
            domains: "\"late-1\" (domain 7, ...): not in the run".into(),
        });
        assert_eq!(e.exit_code(), exit::HOST_CHANGED);
        assert!(EXIT_CODES_HELP.contains(&format!("  {}  refused", exit::HOST_CHANGED)));
    }
}
