//! The xenmaint binary as a user and a script see it, on the simulated host
//! (and, for the dom0 check, on this machine's real state).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

/// The bundled example host, copied into a folder of its own: a simulated
/// host keeps its state beside its description, and each caller gets the
/// host as the example describes it, never the source tree's.
fn example() -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("cli-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let host = dir.join("sim-host.json");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json"),
        &host,
    )
    .unwrap();
    host
}

fn xenmaint() -> Command {
    let mut c = Command::cargo_bin("xenmaint").unwrap();
    c.env_remove("XENMAINT_LOG");
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let o = xenmaint().args(args).output().unwrap();
    Run {
        code: o.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    }
}

fn sim(args: &[&str]) -> Run {
    let ex = example();
    let mut all = vec!["--sim", ex.to_str().unwrap()];
    all.extend_from_slice(args);
    run(&all)
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Writes a simulated host: the example with `edit` applied.
fn custom_host(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut host: Value =
        serde_json::from_str(&std::fs::read_to_string(example()).unwrap()).unwrap();
    edit(&mut host);
    let path = dir.join("host.json");
    std::fs::write(&path, serde_json::to_string(&host).unwrap()).unwrap();
    path
}

#[test]
fn help_lists_the_verbs_and_exit_codes() {
    let r = run(&["--help"]);
    assert_eq!(r.code, 0);
    for verb in ["list", "info", "version", "--sim", "--json", "Exit codes"] {
        assert!(r.stdout.contains(verb), "{verb} missing from --help");
    }
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(run(&["frobnicate"]).code, 2);
    assert_eq!(run(&["info"]).code, 2);
}

#[test]
fn list_off_dom0_is_one_clear_line() {
    if Path::new("/dev/xen/privcmd").exists() {
        // A dom0: the real list must work instead.
        assert_eq!(run(&["list"]).code, 0);
        return;
    }
    let r = run(&["list"]);
    assert_eq!(r.code, 3, "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
    assert!(
        r.stderr.starts_with("xenmaint: not a Xen dom0: "),
        "{}",
        r.stderr
    );
}

/// A host whose Xen tools are gone (libxenlight not installed): xenmaint
/// cannot start, and the dynamic loader says so in one line naming the
/// library. Needs root to hide the library in a private mount namespace
/// (CI runs as root); elsewhere it says why it checked nothing.
#[test]
fn libxenlight_missing_is_one_line_naming_it() {
    let lib = Path::new("/lib/x86_64-linux-gnu/libxenlight.so.4.17");
    let root = nix::unistd::geteuid().is_root();
    if !root || !lib.exists() || Command::new("unshare").arg("--help").output().is_err() {
        eprintln!("skipped: needs root, unshare and {}", lib.display());
        return;
    }
    let bin = assert_cmd::cargo::cargo_bin("xenmaint");
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind /dev/null {} && exec {} list",
            lib.display(),
            bin.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(127), "{stderr}");
    assert_eq!(o.stdout, b"");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("error while loading shared libraries")
            && stderr.contains("libxenlight.so"),
        "{stderr}"
    );
}

#[test]
fn sim_list_json_prints_every_guest_with_devices() {
    let r = sim(&["list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = json_lines(&r.stdout);
    let names: Vec<&str> = recs.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Domain-0", "web-1", "db-1", "cache-1"]);
    for v in &recs {
        assert_eq!(v["simulated"], true);
        assert!(v.get("config").is_none(), "list lines carry no config");
    }
    assert_eq!(recs[1]["nics"][0]["mac"], "00:16:3e:5a:00:01");
    assert_eq!(recs[1]["nics"][0]["ip"], "10.0.2.21");
    assert_eq!(recs[1]["disks"][0]["path"], "/var/lib/xen-guests/web-1.img");
    assert_eq!(recs[2]["memory_kib"], 524288);
}

#[test]
fn sim_human_output_is_marked_simulated() {
    for verb in ["list", "version"] {
        let r = sim(&[verb]);
        assert_eq!(r.code, 0);
        assert!(
            r.stdout.starts_with("# SIMULATED HOST ("),
            "{verb}: {}",
            r.stdout
        );
    }
    let r = sim(&["list"]);
    assert!(r.stdout.contains("web-1") && r.stdout.contains("10.0.2.21"));
}

#[test]
fn info_by_name_and_by_id_with_config() {
    let by_name = json_lines(&sim(&["info", "db-1", "--json"]).stdout);
    let by_id = json_lines(&sim(&["info", "2", "--json"]).stdout);
    assert_eq!(by_name, by_id);
    let d = &by_name[0];
    assert_eq!(d["domid"], 2);
    assert_eq!(d["config"]["c_info"]["name"], "db-1");
    assert_eq!(d["config"]["nics"][0]["mac"], d["nics"][0]["mac"]);
}

#[test]
fn unknown_domain_exits_4() {
    let r = sim(&["info", "no-such-guest"]);
    assert_eq!(r.code, 4);
    assert_eq!(r.stderr.trim(), "xenmaint: no such domain: no-such-guest");
    assert_eq!(sim(&["info", "77"]).code, 4);
}

#[test]
fn version_json_reports_the_hypervisor() {
    let v = &json_lines(&sim(&["version", "--json"]).stdout)[0];
    assert_eq!(v["hypervisor"]["release"], "4.17.5");
    assert_eq!(v["hypervisor"]["major"], 4);
    assert_eq!(v["xenmaint"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["host"]["nr_cpus"], 2);
    assert_eq!(v["simulated"], true);
}

#[test]
fn missing_or_corrupt_sim_file_exits_5_naming_it() {
    let r = run(&["--sim", "/nonexistent/host.json", "list"]);
    assert_eq!(r.code, 5);
    assert!(r.stderr.contains("/nonexistent/host.json"), "{}", r.stderr);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let r = run(&["--sim", bad.to_str().unwrap(), "list"]);
    assert_eq!(r.code, 5);
    assert!(
        r.stderr.contains("bad.json") && r.stderr.contains("not valid"),
        "{}",
        r.stderr
    );
}

#[test]
fn injected_fault_fails_the_verb() {
    let dir = tempfile::tempdir().unwrap();
    let host = custom_host(dir.path(), |h| {
        h["faults"] = serde_json::json!([{"call": "list_domains", "message": "xenstored hung"}]);
    });
    let r = run(&["--sim", host.to_str().unwrap(), "list"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("simulated failure of list_domains: xenstored hung"),
        "{}",
        r.stderr
    );
}

#[test]
fn hostile_names_cannot_break_tables_or_json() {
    let evil = "evil\n\u{1b}[2J\tname/../x";
    let dir = tempfile::tempdir().unwrap();
    let host = custom_host(dir.path(), |h| h["domains"][1]["name"] = evil.into());
    let h = host.to_str().unwrap();

    let r = run(&["--sim", h, "list"]);
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stdout.lines().count(),
        1 + 1 + 4,
        "banner, header, 4 domains"
    );
    assert!(!r.stdout.contains('\u{1b}'), "escape reached the terminal");

    let recs = json_lines(&run(&["--sim", h, "list", "--json"]).stdout);
    assert_eq!(recs[1]["name"], evil, "JSON keeps the exact name");
    assert_eq!(run(&["--sim", h, "info", evil]).code, 0);

    // A long name full of path syntax is never a path: the image is named
    // by the guest's UUID, inside the image directory.
    let long = format!("../../{}/x", "a/..".repeat(30));
    assert!(long.len() > 64);
    let host = custom_host(dir.path(), |h| {
        h["domains"][1]["name"] = long.clone().into()
    });
    let h = host.to_str().unwrap();
    let images = dir.path().join("images");
    let uuid = json_lines(&run(&["--sim", h, "list", "--json"]).stdout)[1]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = run(&[
        "--sim",
        h,
        "save",
        &long,
        "--image-dir",
        images.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut files: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [format!("{uuid}.manifest.json"), format!("{uuid}.xl")]
    );
}

#[test]
fn closed_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let host = custom_host(dir.path(), |h| {
        let template = h["domains"][1].clone();
        let domains = h["domains"].as_array_mut().unwrap();
        for i in 10..20010u32 {
            let mut d = template.clone();
            d["domid"] = i.into();
            d["name"] = format!("g{i}").into();
            d["uuid"] = format!("00000000-0000-0000-0000-{i:012}").into();
            domains.push(d);
        }
    });
    let mut child = xenmaint()
        .args(["--sim", host.to_str().unwrap(), "list", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: xenmaint now writes into a closed pipe.
    let out = child.wait_with_output().unwrap();
    assert!(first.contains("Domain-0"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn a_disk_that_fills_mid_save_keeps_the_guest_and_leaves_no_file() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let mut cmd = xenmaint();
    cmd.args([
        "--sim",
        example().to_str().unwrap(),
        "save",
        "web-1",
        "--image-dir",
    ])
    .arg(&images);
    // SAFETY: between fork and exec only async-signal-safe calls: setrlimit
    // and signal. An 8 KiB file size limit makes the image write (9 KiB)
    // fail mid-stream as a full disk would (EFBIG instead of ENOSPC); the
    // simulated host's own state (5 KiB) still fits.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 8192,
                rlim_max: 8192,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("saving web-1 failed"), "{stderr}");
    assert!(stderr.contains("resumed and keeps running"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&images).unwrap().collect();
    assert!(left.is_empty(), "partial image left behind: {left:?}");
}

#[test]
fn destroy_without_yes_off_a_terminal_is_refused() {
    let r = sim(&["destroy", "web-1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("without --yes"), "{}", r.stderr);
    let r = sim(&["destroy", "web-1", "--yes", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json_lines(&r.stdout)[0]["event"], "destroyed");
}

#[test]
fn save_json_reports_progress_and_result_then_verify_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let r = sim(&[
        "save",
        "db-1",
        "--json",
        "--image-dir",
        images.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = json_lines(&r.stdout);
    let saved = recs.last().unwrap();
    assert_eq!(saved["event"], "saved");
    assert_eq!(saved["name"], "db-1");
    let image = saved["image"].as_str().unwrap();
    assert!(image.ends_with(".xl"));

    let v = run(&["verify", image, "--json"]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    let v = &json_lines(&v.stdout)[0];
    assert_eq!(v["checksum"], saved["checksum"]);
    assert_eq!(v["manifest"], true);

    let mut bytes = std::fs::read(image).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 8);
    std::fs::write(image, &bytes).unwrap();
    let v = run(&["verify", image]);
    assert_eq!(v.code, 5);
    assert!(v.stderr.contains("truncated"), "{}", v.stderr);
}

#[test]
fn shutdown_of_unknown_domain_exits_4() {
    assert_eq!(sim(&["shutdown", "ghost", "--wait"]).code, 4);
    assert_eq!(sim(&["reboot", "77"]).code, 4);
}

#[test]
fn plan_lists_every_guest_and_changes_nothing() {
    let r = sim(&["plan", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = &json_lines(&r.stdout)[0];
    assert_eq!(p["event"], "plan");
    assert_eq!(p["simulated"], true);
    let guests = p["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 3, "dom0 is never planned");
    assert!(guests.iter().all(|g| g["action"] == "save"));
    let human = sim(&["plan"]);
    assert!(human.stdout.contains("nothing has been changed"));
    assert!(
        human.stdout.trim_end().ends_with("plan: ready"),
        "{}",
        human.stdout
    );
}

#[test]
fn plan_with_errors_exits_7_and_bad_config_exits_5() {
    // Under the build's folder: a policy file under /tmp is refused (exit 10).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let host = custom_host(dir.path(), |h| {
        h["domains"][1]["config"]["pcidevs"] = serde_json::json!([{"bus": 3}]);
    });
    let r = run(&["--sim", host.to_str().unwrap(), "plan"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(
        r.stdout.contains("ERROR: web-1 has PCI passthrough"),
        "{}",
        r.stdout
    );

    // The same guest set to shut down instead: the plan is ready.
    let cfg = dir.path().join("xenmaint.toml");
    std::fs::write(&cfg, "[guests.web-1]\naction = \"shutdown\"\n").unwrap();
    let r = run(&[
        "--sim",
        host.to_str().unwrap(),
        "plan",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    std::fs::write(&cfg, "concurency = 3\n").unwrap();
    let r = sim(&["plan", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code, 5);
    assert!(r.stderr.contains("xenmaint.toml"), "{}", r.stderr);
}

#[test]
fn a_single_guest_save_leaves_the_state_folder_fit_for_a_run() {
    // The default layout: images inside the state folder. A save that made
    // both made the state folder 0755, and the next run refused it; seen on
    // the nested Xen host (`xenmaint save g1`, then the fleet rollout's run).
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("xenmaint");
    let images = state.join("images");
    let ex = example();
    let h = ex.to_str().unwrap();
    let at = |verb: &[&str]| {
        let mut a = vec!["--sim", h, "--state-dir", state.to_str().unwrap()];
        a.extend_from_slice(verb);
        a.extend_from_slice(&["--image-dir", images.to_str().unwrap()]);
        run(&a)
    };
    let r = at(&["save", "web-1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state folder the save made");
    let r = at(&["drain", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json_lines(&r.stdout)[0]["state"]["phase"], "drained");
}

#[test]
fn drain_status_resume_on_the_simulator_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let lock = dir.path().join("lock");
    let base = |verb: &[&str]| {
        let ex = example();
        let mut a = vec![
            "--sim",
            ex.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--lock",
            lock.to_str().unwrap(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        a.extend(verb.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run(&refs)
    };
    let images = dir.path().join("images");
    let r = base(&["drain", "--json", "--image-dir", images.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let drained = &json_lines(&r.stdout)[0];
    assert_eq!(drained["event"], "drained");
    assert_eq!(drained["state"]["phase"], "drained");

    // Nobody works on the drained run: --wait says so instead of waiting
    // out its timeout.
    let t0 = std::time::Instant::now();
    let r = base(&["status", "--wait", "--idle-grace", "1", "--timeout", "60"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no xenmaint is working on it"),
        "{}",
        r.stderr
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));

    // A second drain goes on with the open run (nothing new runs: it stays
    // drained, the same run).
    let r = base(&["drain", "--json", "--image-dir", images.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let again = &json_lines(&r.stdout)[0];
    assert_eq!(again["run"], drained["run"], "{}", r.stdout);
    assert_eq!(again["state"]["phase"], "drained");
    // So is any run while another process holds the lock.
    let held = xenmaint::lock::HostLock::acquire(&lock, "test holder").unwrap();
    let r = base(&["resume"]);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("test holder"), "{}", r.stderr);
    drop(held);

    let r = base(&["resume", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json_lines(&r.stdout)[0]["state"]["outcome"], "rolled_back");
    let r = base(&["status", "--wait", "--timeout", "5", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json_lines(&r.stdout)[0]["state"]["phase"], "finished");
    // Each guest was checked at the address recorded before the drain (the
    // simulated guests answer at theirs; nothing real is probed).
    let r = base(&["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for ip in ["10.0.2.21", "10.0.2.22", "10.0.2.23"] {
        assert!(
            r.stdout.contains(&format!("answers at {ip}")),
            "{}",
            r.stdout
        );
    }
}

/// A run verb shows each guest's step as it ends on a terminal (stderr a
/// pty, as `script` gives it), and nothing of the kind to a script or with
/// --json, where stdout carries the result alone.
#[test]
fn run_verbs_show_their_steps_on_a_terminal_only() {
    let t = tempfile::tempdir().unwrap();
    let host = custom_host(t.path(), |_| {});
    let bin = assert_cmd::cargo::cargo_bin("xenmaint");
    let cmd = format!("{} --sim {} drain", bin.display(), host.display());
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("XENMAINT_LOG")
        .output()
        .expect("script(1), from util-linux");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    for guest in ["web-1", "db-1", "cache-1"] {
        assert!(
            shown.contains(&format!("{guest}: saved in ")),
            "{guest}: {shown}"
        );
    }
    assert!(shown.contains("run drained"), "{shown}");

    let r = run(&["--sim", host.to_str().unwrap(), "rollback"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("restored in"), "{}", r.stderr);
    assert!(!r.stdout.contains("restored in"), "{}", r.stdout);
    let r = run(&["--sim", host.to_str().unwrap(), "--json", "drain"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(json_lines(&r.stdout).len(), 1, "{}", r.stdout);
}
