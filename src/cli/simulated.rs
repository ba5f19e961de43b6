//! A simulated host's reboot: the host restarts (its guests gone, the build
//! its boot loader picks running), then its resume starts on its own, as
//! xenmaint-resume.service does at a real host's boot. A script waits for it
//! with `status --wait`, as on a real host.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::Args;
use crate::sequencer::SeqError;
use crate::sim::Sim;

/// The resume's output, in the simulated host's state folder.
const RESUME_LOG: &str = "resume.log";

/// Reboots `sim` and starts `xenmaint resume` for it in the background.
/// Returns the entry booted and the resume's log.
pub fn reboot(args: &Args, sim: &Sim) -> Result<(Option<String>, PathBuf), SeqError> {
    let entry = sim.restart();
    let log_path = args.state_dir().join(RESUME_LOG);
    // This very binary, as the unit would run the installed one.
    let mut resume = Command::new(std::env::current_exe().unwrap_or_else(|_| "xenmaint".into()));
    if let Some(file) = &args.sim {
        resume.arg("--sim").arg(file);
    }
    if let Some(dir) = &args.state_dir {
        resume.arg("--state-dir").arg(dir);
    }
    if let Some(lock) = &args.lock {
        resume.arg("--lock").arg(lock);
    }
    resume.arg("resume");
    let shown = format!("{resume:?}");
    let failed = |detail: String| SeqError::Command {
        what: "simulated host's resume",
        command: shown.clone(),
        detail,
    };
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&log_path)
        .map_err(|e| failed(format!("{}: {e}", log_path.display())))?;
    let err = log
        .try_clone()
        .map_err(|e| failed(format!("{}: {e}", log_path.display())))?;
    // Its own process group: a ^C at this terminal is not the host's.
    resume
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    Ok((entry, log_path))
}
