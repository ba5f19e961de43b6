//! The `xenmaint` command line: parses arguments, opens the toolstack (real
//! or simulated), runs one verb and maps the outcome to an exit code.

mod output;
mod verbs;

use std::io;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::domain::DomainRef;
use crate::exit;
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

    #[command(subcommand)]
    pub verb: Verb,
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  an operation failed
  2  bad command line
  3  no usable Xen toolstack here (not a dom0, not root)
  4  no such domain
  5  an input file is missing or invalid";

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
}

/// Everything that can end a command unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("cannot write output: {0}")]
    Output(io::Error),
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Output(e)
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Toolstack(ToolstackError::NotDom0(_))
            | CliError::Toolstack(ToolstackError::PermissionDenied { .. }) => exit::NOT_DOM0,
            CliError::Toolstack(ToolstackError::NoSuchDomain(_)) => exit::NO_SUCH_DOMAIN,
            CliError::Sim(_) => exit::BAD_INPUT,
            CliError::Toolstack(_) | CliError::Output(_) => exit::FAILURE,
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
    match run(&args, Box::new(io::stdout().lock())) {
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
pub fn run(args: &Args, out: Box<dyn io::Write>) -> Result<(), CliError> {
    let ts: Box<dyn Toolstack> = match &args.sim {
        Some(path) => Box::new(Sim::load(path)?),
        None => Box::new(Libxl::new()?),
    };
    let simulated = ts.simulated().then(|| {
        args.sim
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string())
    });
    let mut out = Output::new(args.json, simulated, out);
    out.banner()?;
    match &args.verb {
        Verb::List => verbs::list(ts.as_ref(), &mut out)?,
        Verb::Info { domain } => verbs::info(ts.as_ref(), domain, &mut out)?,
        Verb::Version => verbs::version(ts.as_ref(), &mut out)?,
    }
    out.flush()?;
    Ok(())
}
