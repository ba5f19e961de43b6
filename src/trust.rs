//! Files whose contents xenmaint runs as root (its policy file, which names
//! hooks; the hooks and the patch command themselves) must be root's alone:
//! owned by root (or by the user running xenmaint) and writable by no one
//! else, and so must every folder above them. Otherwise whoever can write one
//! of them runs commands as root. The rule is sshd's StrictModes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "refusing {what} {path}: {culprit} is {problem} (owner {owner}, mode {mode:04o}); \
         it and every folder above it must be owned by root and writable by no one else"
    )]
    Untrusted {
        what: &'static str,
        path: PathBuf,
        culprit: String,
        problem: &'static str,
        owner: String,
        mode: u32,
    },
    #[error("cannot check {what} {path}: {source}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads `path` if it and every folder above it (those of the path as given
/// and those of the file it resolves to) are root's alone. The file's own
/// check is made on the open file, so what is read is what was checked.
pub fn read(what: &'static str, path: &Path) -> Result<String, TrustError> {
    let unreadable = |source| TrustError::Unreadable {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let md = file.metadata().map_err(unreadable)?;
    judge(what, path, "it", &md)?;
    folders(what, path)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(unreadable)?;
    Ok(text)
}

/// Checks the file `path` names, as `read` does, without reading it.
pub fn check(what: &'static str, path: &Path) -> Result<(), TrustError> {
    let md = std::fs::metadata(path).map_err(|source| TrustError::Unreadable {
        what,
        path: path.to_owned(),
        source,
    })?;
    judge(what, path, "it", &md)?;
    folders(what, path)
}

/// Checks every file a shell command names: its first word (looked up in
/// PATH when it has no slash) and every later word that names an existing
/// file by a path (`sh /srv/patch.sh`, `dpkg -i /tmp/xen.deb`). Words the
/// shell resolves otherwise (builtins, options, package names) name no file,
/// and a redirection's file is written or read as data, not run.
pub fn check_command(what: &'static str, command: &str) -> Result<(), TrustError> {
    let mut first = true;
    let mut redirected = false;
    for raw in command.split_whitespace() {
        if std::mem::take(&mut redirected) {
            continue;
        }
        if raw.contains(['>', '<']) {
            // `> FILE` names its file in the next word, `2>FILE` in this one.
            redirected = raw.ends_with(['>', '<']);
            continue;
        }
        let word = raw.trim_matches(|c| matches!(c, '\'' | '"' | ';' | '&' | '|' | '(' | ')'));
        // `VAR=value` before the program, `--opt=/path` after it: the
        // value, which is a file only if it has a slash.
        let (word, assignment) = match word.split_once('=') {
            Some((_, value)) => (value, true),
            None => (word, false),
        };
        if word.is_empty() {
            continue;
        }
        let file = if word.contains('/') {
            Some(PathBuf::from(word))
        } else if first && !assignment {
            in_path(word)
        } else {
            None
        };
        first &= assignment;
        match file {
            Some(f) if f.is_file() => check(what, &f)?,
            _ => {}
        }
    }
    Ok(())
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|f| f.is_file())
}

/// The folders above `path` as given, then above the file it resolves to (a
/// symlink is judged by where it points, and by who can re-point it).
fn folders(what: &'static str, path: &Path) -> Result<(), TrustError> {
    let unreadable = |source| TrustError::Unreadable {
        what,
        path: path.to_owned(),
        source,
    };
    let absolute = std::path::absolute(path).map_err(unreadable)?;
    let real = std::fs::canonicalize(path).map_err(unreadable)?;
    for start in [absolute.parent(), real.parent()].into_iter().flatten() {
        for dir in start.ancestors() {
            let md = std::fs::metadata(dir).map_err(unreadable)?;
            judge(what, path, &format!("the folder {}", dir.display()), &md)?;
        }
    }
    if real != absolute {
        let md = std::fs::metadata(&real).map_err(unreadable)?;
        judge(what, path, &format!("its target {}", real.display()), &md)?;
    }
    Ok(())
}

fn judge(
    what: &'static str,
    path: &Path,
    culprit: &str,
    md: &std::fs::Metadata,
) -> Result<(), TrustError> {
    let me = nix::unistd::geteuid().as_raw();
    let problem = if md.uid() != 0 && md.uid() != me {
        "owned by another user"
    } else if md.mode() & 0o002 != 0 {
        "writable by others"
    } else if md.mode() & 0o020 != 0 {
        "writable by its group"
    } else {
        return Ok(());
    };
    Err(TrustError::Untrusted {
        what,
        path: path.to_owned(),
        culprit: culprit.to_owned(),
        problem,
        owner: owner_name(md.uid()),
        mode: md.mode() & 0o7777,
    })
}

fn owner_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// A folder whose every ancestor passes, for tests: under the build's own
/// target folder (a temporary folder under /tmp would not: /tmp is everyone's).
#[cfg(test)]
pub(crate) fn trusted_test_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::Builder::new()
        .prefix("trust")
        .tempdir_in(env!("CARGO_MANIFEST_DIR").to_owned() + "/target")
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::trust::trusted_test_dir as trusted_dir;

    fn write(path: &Path, mode: u32) {
        std::fs::write(path, "x = 1\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refusal(r: Result<impl std::fmt::Debug, TrustError>) -> String {
        match r {
            Err(e @ TrustError::Untrusted { .. }) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_file_only_its_owner_can_write_in_such_folders_is_read() {
        let t = trusted_dir();
        let f = t.path().join("ok.toml");
        write(&f, 0o644);
        assert_eq!(read("the policy file", &f).unwrap(), "x = 1\n");
        check("the hook", &f).unwrap();
    }

    #[test]
    fn a_file_writable_by_group_or_others_is_refused_by_name_owner_and_mode() {
        let t = trusted_dir();
        let f = t.path().join("open.toml");
        for (mode, problem) in [
            (0o666, "writable by others"),
            (0o664, "writable by its group"),
        ] {
            write(&f, mode);
            let e = refusal(read("the policy file", &f));
            assert!(e.contains(&f.display().to_string()), "{e}");
            assert!(
                e.contains(problem) && e.contains(&format!("mode {mode:04o}")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_writable_folder_above_the_file_is_refused() {
        let t = trusted_dir();
        let sub = t.path().join("open");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
        let f = sub.join("x.toml");
        write(&f, 0o600);
        let e = refusal(read("the policy file", &f));
        assert!(e.contains(&format!("the folder {}", sub.display())), "{e}");
        assert!(e.contains("writable by others"), "{e}");
        // The world's temporary folder is everyone's too.
        let tmp = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        let e = refusal(read("the policy file", tmp.path()));
        assert!(e.contains("the folder /tmp"), "{e}");
    }

    #[test]
    fn a_symlink_is_judged_by_its_target_and_the_targets_folders() {
        let t = trusted_dir();
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let target = open.join("real.toml");
        write(&target, 0o644);
        let link = t.path().join("link.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = refusal(read("the policy file", &link));
        assert!(e.contains(&format!("the folder {}", open.display())), "{e}");
        // Pointed at a file in a good folder, the same link is read.
        let good = t.path().join("good.toml");
        write(&good, 0o644);
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert_eq!(read("the policy file", &link).unwrap(), "x = 1\n");
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to give a file away");
            return;
        }
        let t = trusted_dir();
        let f = t.path().join("theirs.toml");
        write(&f, 0o644);
        nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = refusal(read("the policy file", &f));
        assert!(e.contains("owned by another user"), "{e}");
    }

    #[test]
    fn a_command_is_judged_by_the_files_it_names() {
        let t = trusted_dir();
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = open.join("notify");
        write(&script, 0o755);
        let good = t.path().join("notify");
        write(&good, 0o755);
        for cmd in [
            script.display().to_string(),
            format!("sh {}", script.display()),
            format!("FOO=1 {} --all", script.display()),
            format!("logger --file={}", script.display()),
        ] {
            refusal(check_command("the hook", &cmd));
        }
        for cmd in [
            good.display().to_string(),
            "apt-get install -y xen-hypervisor-4.17-amd64".to_string(),
            "echo drained | logger -t xenmaint".to_string(),
            format!("echo patched > {}", script.display()),
            format!("echo patched 2>{} >>{}", script.display(), script.display()),
        ] {
            check_command("the hook", &cmd).unwrap();
        }
    }
}
