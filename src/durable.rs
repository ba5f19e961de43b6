//! Files that must survive a crash or power cut, and must not be planted or
//! read by others: write, fsync, rename, fsync the directory; 0600 files in
//! 0700 directories; O_EXCL|O_NOFOLLOW so no symlink or stale file is reused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a durable write or a private directory failed. One message each.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path} is not a private directory: {why}")]
    Insecure { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DurableError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            DurableError::Exists {
                path: path.to_owned(),
            }
        } else {
            DurableError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// Creates `dir` (0700) if missing, else checks it is a real directory owned
/// by us that nobody else can write or read.
pub fn private_dir(dir: &Path) -> Result<(), DurableError> {
    // Missing parents are made private too: the first of them is ours (the
    // image folder's parent /var/lib/xenmaint is the state folder, which must
    // be 0700). Parents that exist are left as they are.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io(parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    let insecure = |why: String| DurableError::Insecure {
        path: dir.to_owned(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(insecure("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(insecure("it is not a directory".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(insecure(format!("owned by uid {}, not {euid}", meta.uid())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(insecure(format!("mode {mode:04o}; it must be 0700")));
    }
    Ok(())
}

/// A new 0600 file that must not exist yet (no symlink followed).
pub fn create_new(path: &Path) -> Result<File, DurableError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))
}

/// `create_new` for a temp name that only a crashed writer can have left
/// behind (it was never published): such a leftover is removed first.
pub fn create_fresh(tmp: &Path) -> Result<File, DurableError> {
    match create_new(tmp) {
        Err(DurableError::Exists { .. }) => {
            std::fs::remove_file(tmp).map_err(io(tmp))?;
            create_new(tmp)
        }
        other => other,
    }
}

/// Flushes a directory's entries (a rename or create in it) to disk.
pub fn fsync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Flushes `file` and reports a failure of the data reaching the disk
/// (which is where ENOSPC and EIO on delayed allocation surface).
pub fn sync(file: &File, path: &Path) -> Result<(), DurableError> {
    file.sync_all().map_err(io(path))
}

/// Moves a finished file into place without replacing anything there, then
/// makes the rename durable.
pub fn publish_new(tmp: &Path, dest: &Path) -> Result<(), DurableError> {
    rename_new(tmp, dest)?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// `publish_new` without the directory fsync: the rename is not durable
/// until the caller fsyncs `dest`'s directory (e.g. by a later `replace` in
/// it), and nothing may rely on `dest` surviving a crash before that.
pub fn rename_new(tmp: &Path, dest: &Path) -> Result<(), DurableError> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        tmp,
        nix::fcntl::AT_FDCWD,
        dest,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| io(dest)(std::io::Error::from(e)))
}

/// Replaces `dest` atomically with `data`: a reader sees the old content or
/// the new, never a mix, also after a power cut.
pub fn replace(dest: &Path, data: &[u8]) -> Result<(), DurableError> {
    replace_with(dest, |f| f.write_all(data))
}

/// `replace`, the content written by `write` straight into the temp file:
/// a large file (a run's status, megabytes for thousands of guests) is
/// streamed through a small buffer, never held whole in memory.
pub fn replace_with(
    dest: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), DurableError> {
    write_and_rename(dest, write)?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// `replace` for a name that must not exist yet: a file there is refused
/// (`Exists`), never replaced, atomically with the publish.
pub fn create(dest: &Path, data: &[u8]) -> Result<(), DurableError> {
    write_and_publish(dest, |f| f.write_all(data), rename_new)?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// The content durable under a temp name, then renamed over `dest`; the
/// rename itself is durable only once the directory is fsync'd. No temp
/// file is left on an error.
fn write_and_rename(
    dest: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), DurableError> {
    write_and_publish(dest, write, |tmp, dest| {
        std::fs::rename(tmp, dest).map_err(io(dest))
    })
}

/// The content durable under a temp name, then moved to `dest` by `publish`.
fn write_and_publish(
    dest: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
    publish: impl FnOnce(&Path, &Path) -> Result<(), DurableError>,
) -> Result<(), DurableError> {
    let tmp = tmp_path(dest);
    let mut f = create_fresh(&tmp)?;
    let written = write(&mut f)
        .map_err(io(&tmp))
        .and_then(|()| sync(&f, &tmp));
    drop(f);
    let renamed = written.and_then(|()| publish(&tmp, dest));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// Group commit: `replace` for many files, with one directory fsync per
/// directory at `commit` instead of one per file. Each file's content is
/// fsync'd before its rename, so after a crash each name holds its old
/// content or its new, never a mix; which renames survive a crash before
/// `commit` returns is not known, so nothing may point at these files
/// (e.g. a journal naming them) until it has.
#[derive(Default)]
pub struct Batch {
    dirs: Vec<PathBuf>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Writes `data` to `dest` as `replace` does, but leaves the rename to
    /// be made durable by `commit`.
    pub fn replace(&mut self, dest: &Path, data: &[u8]) -> Result<(), DurableError> {
        write_and_rename(dest, |f| f.write_all(data))?;
        self.note_dir(dest);
        Ok(())
    }

    /// A new file written under its own name, no temp name and no rename
    /// (a rename costs as much as the write), for a directory that nothing
    /// reads before `commit` has returned (a run's configs, before its
    /// journal exists). Its content is fsync'd here, its name by `commit`;
    /// a crash before that may leave it torn, or half there, for nobody
    /// to read. Refuses an existing `dest`; on an error removes the file.
    pub fn create(&mut self, dest: &Path, data: &[u8]) -> Result<(), DurableError> {
        let mut f = create_new(dest)?;
        let written = f
            .write_all(data)
            .map_err(io(dest))
            .and_then(|()| sync(&f, dest));
        drop(f);
        if written.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        written?;
        self.note_dir(dest);
        Ok(())
    }

    fn note_dir(&mut self, dest: &Path) {
        let dir = dest.parent().unwrap_or(Path::new("."));
        // Batches write into one or a few directories: a linear look-up.
        if !self.dirs.iter().any(|d| d == dir) {
            self.dirs.push(dir.to_owned());
        }
    }

    /// Makes every rename so far durable.
    pub fn commit(self) -> Result<(), DurableError> {
        self.dirs.iter().try_for_each(|d| fsync_dir(d))
    }
}

/// The temp name beside `dest` used while it is written.
pub fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_is_created_0700_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let system = t.path().join("lib");
        std::fs::create_dir(&system).unwrap();
        std::fs::set_permissions(&system, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = system.join("xenmaint/images");
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        private_dir(&d).unwrap();
        // The parent made on the way is private (the state folder, checked by
        // a run after a single-guest save made it); the one there is untouched.
        assert_eq!(mode(d.parent().unwrap()), 0o700);
        private_dir(d.parent().unwrap()).unwrap();
        assert_eq!(mode(&system), 0o755);

        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&d).unwrap_err();
        assert!(e.to_string().contains("mode 0777"), "{e}");

        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        let e = private_dir(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(private_dir(&file)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn create_new_never_reuses_or_follows() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.xl");
        drop(create_new(&p).unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(create_new(&p), Err(DurableError::Exists { .. })));

        let target = t.path().join("target");
        let planted = t.path().join("planted.xl");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(create_new(&planted).is_err());
        assert!(!target.exists(), "the symlink was followed");
    }

    #[test]
    fn publish_new_refuses_to_replace() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::write(&a, "new").unwrap();
        std::fs::write(&b, "old").unwrap();
        assert!(matches!(
            publish_new(&a, &b),
            Err(DurableError::Exists { .. })
        ));
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old");
        std::fs::remove_file(&b).unwrap();
        publish_new(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new");
        assert!(!a.exists());
    }

    #[test]
    fn replace_swaps_content_and_cleans_stale_temp_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.json");
        std::fs::write(tmp_path(&p), "stale from a crash").unwrap();
        replace(&p, b"one").unwrap();
        replace(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert!(!tmp_path(&p).exists());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// A writer that fails half way (a full disk while the status streams)
    /// leaves the old file whole and no temp file; one that succeeds
    /// replaces it with everything it wrote, in pieces.
    #[test]
    fn a_streamed_replace_that_fails_keeps_the_old_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("status.json");
        replace(&p, b"old").unwrap();
        let e = replace_with(&p, |f| {
            f.write_all(b"half of the new")?;
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        })
        .unwrap_err();
        assert!(
            e.to_string().contains(&tmp_path(&p).display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert!(!tmp_path(&p).exists());

        replace_with(&p, |f| {
            let mut w = std::io::BufWriter::with_capacity(4, f);
            w.write_all(b"new, ")?;
            w.write_all(b"in pieces")?;
            w.flush()
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new, in pieces");
        assert!(!tmp_path(&p).exists());
    }

    #[test]
    fn create_never_replaces_and_leaves_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.json");
        create(&p, b"one").unwrap();
        assert!(matches!(
            create(&p, b"two"),
            Err(DurableError::Exists { .. })
        ));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one");
        assert!(!tmp_path(&p).exists());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_batch_writes_every_file_and_leaves_no_temp_file_on_an_error() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("sub/b"));
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(&a, "old").unwrap();
        std::fs::write(tmp_path(&b), "stale from a crash").unwrap();
        let mut batch = Batch::new();
        batch.replace(&a, b"one").unwrap();
        batch.replace(&b, b"two").unwrap();
        batch.replace(&a, b"three").unwrap();
        assert_eq!(batch.dirs.len(), 2, "one fsync per directory");
        // A name that cannot be replaced (a directory): that one fails and
        // leaves nothing behind; the ones before stay written.
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        assert!(batch.replace(&d, b"four").is_err());
        assert!(!tmp_path(&d).exists(), "the failed file's temp is left");
        batch.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "three");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "two");
        assert!(d.is_dir());
        for dir in [t.path(), &t.path().join("sub")] {
            for e in std::fs::read_dir(dir).unwrap() {
                let name = e.unwrap().file_name();
                assert!(
                    !name.to_string_lossy().ends_with(".partial"),
                    "{name:?} left behind"
                );
            }
        }
        assert_eq!(
            std::fs::metadata(&b).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_batch_creates_new_files_in_place_and_never_over_one() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("sub/b"));
        std::fs::create_dir(t.path().join("sub")).unwrap();
        let mut batch = Batch::new();
        batch.create(&a, b"one").unwrap();
        batch.create(&b, b"two").unwrap();
        assert!(matches!(
            batch.create(&a, b"again"),
            Err(DurableError::Exists { .. })
        ));
        // A symlink planted at the name is not followed.
        let target = t.path().join("target");
        let planted = t.path().join("planted");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(batch.create(&planted, b"x").is_err());
        assert!(!target.exists(), "the symlink was followed");
        assert_eq!(batch.dirs.len(), 2, "one fsync per directory");
        batch.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&b).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(t.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b"], "no temp name used");
    }
}
