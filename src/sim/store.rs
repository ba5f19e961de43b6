//! A simulated host that outlives one command: its state in a file that
//! every call reads, and every change writes, under an flock. A maintenance
//! run then goes on across separate `xenmaint --sim` commands (drain, patch,
//! reboot, the resume at boot, status) and commands may run at once, each
//! call whole, as they do on one real host.
//!
//! The description given with `--sim` is never written: the host as it is
//! now lives in the state folder (`host.json`), and removing that folder
//! starts the host again from its description.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use super::{SimError, SimHost};

/// The state file's name in the state folder.
pub const STATE_FILE: &str = "host.json";

/// Which version of the state file was last read or written: every write
/// is a new file renamed into place, so a new inode, change time or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
}

#[derive(Debug)]
pub(super) struct Store {
    dir: PathBuf,
    path: PathBuf,
    lock: PathBuf,
    seen: Mutex<Option<FileId>>,
    /// The first failure to read or write the state: every later call
    /// fails with it, as the simulated host is no longer what it says.
    broken: Mutex<Option<String>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_owned(),
            path: dir.join(STATE_FILE),
            lock: dir.join("host.lock"),
            seen: Mutex::new(None),
            broken: Mutex::new(None),
        }
    }

    fn id(&self) -> std::io::Result<Option<FileId>> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(Some(FileId {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                ctime: (m.ctime(), m.ctime_nsec()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The host as a command last left it; None before any command changed
    /// it.
    pub fn load(&self) -> Result<Option<SimHost>, SimError> {
        let read = |source| SimError::Read {
            path: self.path.clone(),
            source,
        };
        let Some(id) = self.id().map_err(read)? else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&self.path).map_err(read)?;
        let host = serde_json::from_str(&text).map_err(|source| SimError::Parse {
            path: self.path.clone(),
            source,
        })?;
        *locked(&self.seen) = Some(id);
        Ok(Some(host))
    }

    /// Whether another command (or thread) wrote the state since this one
    /// last read or wrote it.
    pub fn changed(&self) -> bool {
        match self.id() {
            Ok(id) => id.is_some() && id != *locked(&self.seen),
            Err(e) => {
                self.fail(format!("{}: {e}", self.path.display()));
                false
            }
        }
    }

    /// The host's lock, for one call. A failure to take it is recorded and
    /// the call goes on unlocked: the next call reports it.
    pub fn hold(&self) -> Option<Flock<File>> {
        let held = crate::durable::private_dir(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                crate::lock::open(&self.lock).map_err(|e| format!("{}: {e}", self.lock.display()))
            })
            .and_then(|f| {
                Flock::lock(f, FlockArg::LockExclusive)
                    .map_err(|(_, e)| format!("{}: {e}", self.lock.display()))
            });
        held.map_err(|e| self.fail(e)).ok()
    }

    /// Writes the host crash-safely (write, fsync, rename, fsync the folder):
    /// a reader sees the state before a change or after it, never a mix.
    pub fn write(&self, host: &SimHost) {
        let written = serde_json::to_vec(host)
            .map_err(|e| e.to_string())
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                crate::durable::replace(&self.path, &bytes).map_err(|e| e.to_string())
            })
            .and_then(|()| {
                self.id()
                    .map_err(|e| format!("{}: {e}", self.path.display()))
            });
        match written {
            Ok(id) => *locked(&self.seen) = id,
            Err(e) => self.fail(e),
        }
    }

    pub fn fail(&self, why: String) {
        locked(&self.broken).get_or_insert(why);
    }

    pub fn broken(&self) -> Option<String> {
        locked(&self.broken).clone()
    }
}
