//! One xenmaint run per host: an exclusive flock on a lock file whose
//! content names the holder, so a second run can say who it is waiting on.
//! The kernel drops the lock when the holder dies, however it dies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where the lock lives on a real host (/run: gone after a reboot, as the
/// holder is).
pub const DEFAULT_LOCK: &str = "/run/xenmaint.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another xenmaint run holds {path}: {holder}")]
    Held { path: PathBuf, holder: String },
    #[error("cannot open lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held until dropped.
#[derive(Debug)]
pub struct HostLock {
    _lock: Flock<File>,
    path: PathBuf,
}

/// A lock file, made if missing (0600, no symlink followed), kept as it is.
pub fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl HostLock {
    /// Takes the lock without waiting; `what` describes this run to others.
    pub fn acquire(path: &Path, what: &str) -> Result<HostLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        let file = open(path).map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path: path.to_owned(),
                    holder: if holder.is_empty() {
                        "unknown holder".into()
                    } else {
                        crate::domain::printable(holder)
                    },
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        // Only the holder writes here, so this cannot race another writer.
        let note = format!("pid {} ({what})\n", std::process::id());
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(note.as_bytes()))
            .map_err(io)?;
        Ok(HostLock {
            _lock: lock,
            path: path.to_owned(),
        })
    }

    /// Whether a live xenmaint process holds (or last held) the lock at
    /// `path`, judged from the pid it wrote there: no locking, so a run
    /// starting at that moment is never disturbed.
    pub fn holder_alive(path: &Path) -> bool {
        let Ok(note) = std::fs::read_to_string(path) else {
            return false;
        };
        let Some(pid) = note
            .strip_prefix("pid ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "xenmaint")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_of_a_dead_or_foreign_process_has_no_live_holder() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("lock");
        assert!(!HostLock::holder_alive(&p), "no file");
        std::fs::write(&p, "pid 1 (init is not xenmaint)\n").unwrap();
        assert!(!HostLock::holder_alive(&p));
        std::fs::write(&p, "pid 4294967295 (gone)\n").unwrap();
        assert!(!HostLock::holder_alive(&p));
        std::fs::write(&p, "garbage").unwrap();
        assert!(!HostLock::holder_alive(&p));
    }

    #[test]
    fn a_second_run_is_refused_and_told_who_holds_the_lock() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("xenmaint.lock");
        let first = HostLock::acquire(&p, "drain run 42").unwrap();
        let e = HostLock::acquire(&p, "resume").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("drain run 42"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = HostLock::acquire(&p, "resume").unwrap();
        assert_eq!(again.path(), p);
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        let p = t.path().join("lock");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(matches!(
            HostLock::acquire(&p, "x"),
            Err(LockError::Io { .. })
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
