//! Single-guest operations done more safely than xl does them: a save whose
//! guest is destroyed only once its image checked out and is durable, a
//! restore that unpauses only after the checksum matched, shutdown and
//! reboot that wait for the guest and say when it did not listen.
//!
//! Everything here speaks the `Toolstack` trait only.

mod core;
mod power;
mod restore;
mod save;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use core::dump_core;
pub use power::{destroy, pause, power, PowerOptions, PowerReport};
pub use restore::{restore, verify, RestoreOptions, RestoreReport, VerifyReport};
pub use save::{save, AfterSave, PauseGate, SaveOptions, SaveReport};

use crate::domain::{DomainRef, Uuid};
use crate::durable::DurableError;
use crate::image::{ImageError, ManifestError};
use crate::toolstack::ToolstackError;

/// Where images go unless `--out` says otherwise.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/xenmaint/images";

/// Bytes moved so far, and the expected total (0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub total: u64,
}

/// Receives progress from the thread that moves the stream.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Sync);

/// Why a guest operation failed. One message each.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error("refusing to {0} domain 0: it is the host itself")]
    Dom0(&'static str),
    #[error(
        "refusing to restore {image}: its configuration makes dom0 run {path} as root \
         ({role}), {why}; if you trust this image, restore it with --allow-image-programs \
         (a maintenance run: allow_image_programs = true in the policy file)",
        image = image.display(),
        path = path.display()
    )]
    UntrustedProgram {
        image: PathBuf,
        role: String,
        path: PathBuf,
        why: String,
    },
    #[error("domain {0} has no libxl configuration (libxl did not create it): it cannot be saved")]
    NoConfig(String),
    #[error(
        "refusing to save {0}: it is paused, and a paused guest cannot answer the suspend \
         request (libxl would wait for it, then fail); `xl unpause {0}` first"
    )]
    Paused(String),
    #[error(
        "refusing a live save of {0}: it is a PV guest, and this Xen is built without shadow \
         paging (xl info: no \"shadow\" in virt_caps; Debian 13's Xen is), which a live save \
         of a PV guest needs to track the pages it dirties; save it without --live (it then \
         pauses for its whole save)"
    )]
    LiveNeedsShadow(String),
    #[error("saving {name} failed: {cause}; {outcome}")]
    SaveFailed {
        name: String,
        cause: Box<OpError>,
        outcome: Recovery,
    },
    #[error("the image read back from {path} differs from what was written ({written} vs {read}): the storage lost data")]
    ReadBack {
        path: PathBuf,
        written: String,
        read: String,
    },
    #[error("a domain with name {name} or UUID {uuid} is already running: refusing to start a second copy")]
    AlreadyRunning { name: String, uuid: Uuid },
    #[error("disk {vdev} of {name}: backing {path} is missing: refusing to restore")]
    MissingDisk {
        name: String,
        vdev: String,
        path: String,
    },
    #[error("{name} did not {what} within {secs} s (it may ignore requests); --force destroys it")]
    Timeout {
        name: String,
        what: &'static str,
        secs: u64,
    },
    #[error(
        "refusing to dump the core of {name}: it is {state:?}, not kept after a shutdown or \
         crash (a guest that runs is saved)"
    )]
    NotKept {
        name: String,
        state: crate::domain::DomainState,
    },
    #[error("{0} did not come back after its reboot")]
    RebootLost(DomainRef),
}

/// What happened to the guest after a failed save.
#[derive(Debug)]
pub enum Recovery {
    /// It runs on where it stopped.
    Resumed,
    /// Resuming failed as well: it is left suspended, nothing destroyed.
    ResumeFailed(ToolstackError),
    /// The guest shut down on its own, or is gone: not resumed (a resume
    /// would undo its own shutdown).
    Stopped,
    /// The guest is paused (by someone), not suspended: left paused.
    Paused,
    /// A guest that was paused when its save began: resumed, and paused
    /// again as it was.
    PausedAgain,
    /// The save failed before it suspended the guest: it never stopped.
    NotSuspended,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::Resumed => f.write_str("the guest was resumed and keeps running"),
            Recovery::NotSuspended => {
                f.write_str("the guest was never suspended and keeps running")
            }
            Recovery::PausedAgain => {
                f.write_str("the guest was resumed and paused again, as it was before the save")
            }
            Recovery::Paused => f.write_str(
                "the guest is paused, not suspended (a paused PV guest cannot answer the \
                 suspend request): left paused, its memory intact; `xl unpause` it to go on",
            ),
            Recovery::Stopped => f.write_str(
                "the guest shut down on its own or is gone, and was left so (not resumed)",
            ),
            Recovery::ResumeFailed(e) => write!(
                f,
                "resuming the guest failed too ({e}); it is suspended, not destroyed: check `xl list`"
            ),
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Logs, at debug level, how long each step of one operation took: where a
/// slow save or restore spends its time (`XENMAINT_LOG=debug`).
struct Steps {
    what: String,
    start: Instant,
    last: std::cell::Cell<Instant>,
}

impl Steps {
    fn new(what: String) -> Steps {
        let now = Instant::now();
        Steps {
            what,
            start: now,
            last: now.into(),
        }
    }

    fn done(&self, step: &str) {
        let now = Instant::now();
        log::debug!(
            "{}: {step} in {} ms ({} ms in all)",
            self.what,
            millis(now - self.last.replace(now)),
            millis(now - self.start)
        );
    }
}

/// Deletes an image and its manifest (once its guest is back and checked),
/// durably: the directory is synced after. A file already gone is fine.
pub fn remove_image(image: &std::path::Path) -> Result<(), DurableError> {
    for path in [image.to_owned(), crate::image::manifest_path(image)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DurableError::Io { path, source }),
        }
    }
    match image.parent() {
        Some(dir) => crate::durable::fsync_dir(dir),
        None => Ok(()),
    }
}
