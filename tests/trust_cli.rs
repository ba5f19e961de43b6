//! Root's commands come only from root: the policy file, its hooks and the
//! patch command are refused (exit 10, one line, nothing run) when someone
//! else can change them; a simulated host writes only beside its own file;
//! a verb that needs the real toolstack tells a non-root user so (exit 3).
//! On the simulated host, which runs hooks and patch commands as a dom0 does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

const UNTRUSTED: i32 = xenmaint::exit::UNTRUSTED;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn xenmaint(args: &[&str]) -> Out {
    let o = Command::cargo_bin("xenmaint")
        .unwrap()
        .env_remove("XENMAINT_LOG")
        .args(args)
        .output()
        .unwrap();
    Out {
        code: o.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A folder only its owner can write, under the build's target folder (a
/// temporary folder under /tmp would itself be refused: /tmp is everyone's).
fn trusted_dir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("trust-cli")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    chmod(t.path(), 0o755);
    t
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The example simulated host, copied into `dir` (its runs go beside it).
fn host_in(dir: &Path) -> PathBuf {
    let host = dir.join("host.json");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json"),
        &host,
    )
    .unwrap();
    host
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    chmod(path, mode);
}

/// A script that leaves `mark` when it runs.
fn marking_script(path: &Path, mark: &Path, mode: u32) {
    write(path, &format!("#!/bin/sh\nid > {}\n", mark.display()), mode);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_refused(r: &Out, path: &Path, needle: &str) {
    assert_eq!(r.code, UNTRUSTED, "{}{}", r.stdout, r.stderr);
    let line = r.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(line.contains(s(path)) && line.contains(needle), "{line}");
}

#[test]
fn a_policy_file_others_can_write_is_refused_and_its_hook_never_runs() {
    let t = trusted_dir();
    let host = host_in(t.path());
    let mark = t.path().join("hook-ran");
    let cfg = t.path().join("xenmaint.toml");
    write(
        &cfg,
        &format!("hooks = [\"id > {}\"]\n", mark.display()),
        0o666,
    );
    for verb in ["plan", "drain"] {
        let r = xenmaint(&["--sim", s(&host), verb, "--config", s(&cfg)]);
        assert_refused(&r, &cfg, "writable by others");
        assert!(r.stderr.contains("mode 0666"), "{}", r.stderr);
    }
    assert!(!mark.exists(), "the hook ran");
    assert!(
        !t.path().join("host.xenmaint").exists(),
        "a run was started"
    );

    // The same file, root's alone: read, and the drain runs its hook.
    chmod(&cfg, 0o644);
    let r = xenmaint(&["--sim", s(&host), "drain", "--config", s(&cfg)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(mark.exists(), "the hook of a good policy file did not run");
}

#[test]
fn a_policy_file_below_a_folder_others_can_write_is_refused() {
    let t = trusted_dir();
    let host = host_in(t.path());
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o775);
    let cfg = open.join("xenmaint.toml");
    write(&cfg, "keep_images = true\n", 0o644);
    let r = xenmaint(&["--sim", s(&host), "plan", "--config", s(&cfg)]);
    assert_refused(
        &r,
        &cfg,
        &format!("the folder {} is writable by its group", open.display()),
    );

    // The attack as first seen: a policy file in /tmp.
    let tmp = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile_in("/tmp")
        .unwrap();
    std::fs::write(tmp.path(), "keep_images = true\n").unwrap();
    let r = xenmaint(&["--sim", s(&host), "plan", "--config", s(tmp.path())]);
    assert_refused(&r, tmp.path(), "the folder /tmp is writable by others");

    // A link in a good folder to a file in the open one: judged by its target.
    let link = t.path().join("link.toml");
    std::os::unix::fs::symlink(&cfg, &link).unwrap();
    let r = xenmaint(&["--sim", s(&host), "plan", "--config", s(&link)]);
    assert_refused(&r, &link, &format!("the folder {}", open.display()));
}

#[test]
fn a_hook_or_patch_command_others_can_write_is_refused_before_anything_runs() {
    let t = trusted_dir();
    let host = host_in(t.path());
    let mark = t.path().join("script-ran");
    let script = t.path().join("notify");
    marking_script(&script, &mark, 0o777);
    let cfg = t.path().join("xenmaint.toml");
    write(
        &cfg,
        &format!("hooks = [\"{} --all\"]\n", script.display()),
        0o644,
    );
    let r = xenmaint(&["--sim", s(&host), "plan", "--config", s(&cfg)]);
    assert_refused(&r, &script, "the hook");

    // The patch command of `run`: refused before the plan or any save.
    let good = t.path().join("good.toml");
    write(&good, "keep_images = true\n", 0o644);
    let r = xenmaint(&[
        "--sim",
        s(&host),
        "run",
        "--config",
        s(&good),
        "--patch-cmd",
        &format!("sh {}", script.display()),
        "--boot-entry",
        "xen",
    ]);
    assert_refused(&r, &script, "patch command");
    assert!(!mark.exists(), "the script ran");
    assert!(
        !t.path().join("host.xenmaint/runs").exists(),
        "a run was started"
    );
    assert!(!r.stdout.contains("plan:"), "{}", r.stdout);
}

#[test]
fn a_simulated_host_writes_only_beside_its_file() {
    let t = trusted_dir();
    let host = host_in(t.path());
    let system = Path::new("/var/lib/xenmaint");
    let listing = |p: &Path| -> Vec<PathBuf> { walk(p) };
    let before = listing(system);
    let r = xenmaint(&["--sim", s(&host), "drain", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let state = t.path().join("host.xenmaint");
    let images: Vec<PathBuf> = walk(&state.join("images"));
    assert!(
        images
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "xl")),
        "no image beside the simulated host: {images:?}"
    );
    assert!(
        state.join("runs").is_dir(),
        "no journal beside the simulated host"
    );
    assert!(
        state.join("xenmaint.lock").exists(),
        "no lock beside the simulated host"
    );
    assert_eq!(
        listing(system),
        before,
        "the simulation wrote under {}",
        system.display()
    );
    let r = xenmaint(&["--sim", s(&host), "rollback"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out.sort();
    out
}

/// Runs the binary as `nobody` when this test runs as root (setpriv), else
/// as the user running the tests, who is not root either.
fn as_non_root(args: &[&str]) -> Option<Out> {
    let bin = assert_cmd::cargo::cargo_bin("xenmaint");
    let mut cmd = if nix::unistd::geteuid().is_root() {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("skipped: running as root without setpriv");
            return None;
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let o = cmd.env_remove("XENMAINT_LOG").args(args).output().unwrap();
    Some(Out {
        code: o.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

#[test]
fn a_user_who_is_not_root_is_told_in_one_line_and_needs_root_only_for_xen() {
    let t = trusted_dir();
    let host = host_in(t.path());
    chmod(&host, 0o644);
    for verb in [&["list"][..], &["plan"], &["drain"], &["status"]] {
        let Some(r) = as_non_root(verb) else { return };
        assert_eq!(r.code, xenmaint::exit::NOT_DOM0, "{verb:?}: {}", r.stderr);
        let line = r.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "{verb:?}: {line}");
        assert!(line.contains("must run as root"), "{verb:?}: {line}");
    }
    let Some(r) = as_non_root(&["--help"]) else {
        return;
    };
    assert_eq!(r.code, 0);
    let Some(r) = as_non_root(&["--sim", s(&host), "plan"]) else {
        return;
    };
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("plan: ready"), "{}", r.stdout);
    // verify needs no Xen: a file that is no image is bad input, not "root".
    let junk = t.path().join("junk.xl");
    write(&junk, "not an image\n", 0o644);
    let Some(r) = as_non_root(&["verify", s(&junk)]) else {
        return;
    };
    assert_eq!(r.code, xenmaint::exit::BAD_INPUT, "{}", r.stderr);
}
