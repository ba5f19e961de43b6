//! A whole maintenance run on a persistent simulated host, as separate
//! commands would drive a real one: `run` drains, patches and reboots (the
//! simulated host starts its own resume, as its unit would), `status --wait`
//! sees it finish on the patched build.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

fn host(dir: &Path) -> PathBuf {
    let path = dir.join("host.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&common::example_host(dir)).unwrap(),
    )
    .unwrap();
    path
}

fn xenmaint(host: &Path, args: &[&str]) -> (i32, Vec<Value>, String) {
    let o = Command::cargo_bin("xenmaint")
        .unwrap()
        .env_remove("XENMAINT_LOG")
        .arg("--sim")
        .arg(host)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let records = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        o.status.code().unwrap(),
        records,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const RUN: &[&str] = &["run", "--patch-cmd", "true", "--boot-entry", "xen-4.17.7"];

#[test]
fn a_run_goes_on_across_commands_into_the_patched_build() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let (_, before, _) = xenmaint(&h, &["list"]);
    let (code, out, err) = xenmaint(&h, RUN);
    assert_eq!(code, 0, "{err}");
    let rebooted = out.iter().find(|r| r["event"] == "rebooted").unwrap();
    assert_eq!(rebooted["entry"], "xen-4.17.7");

    let (code, out, err) = xenmaint(&h, &["status", "--wait", "--timeout", "120"]);
    assert_eq!(code, 0, "{err}");
    let state = &out[0]["state"];
    assert_eq!(state["phase"], "finished");
    assert_eq!(state["booted"][0]["release"], "4.17.7");
    assert_eq!(state["booted"][1], true, "the patch took");
    let guests = state["guests"].as_object().unwrap();
    assert_eq!(guests.len(), 3);
    for g in guests.values() {
        assert_eq!(g["step"], "restore", "{g}: not restored from its image");
    }
    // The same guests, by name and UUID, on the patched build.
    let (_, after, _) = xenmaint(&h, &["list"]);
    let ids = |l: &[Value]| {
        let mut v: Vec<_> = l
            .iter()
            .map(|d| (d["name"].to_string(), d["uuid"].to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&after), ids(&before));
    let (_, version, _) = xenmaint(&h, &["version"]);
    assert_eq!(version[0]["hypervisor"]["release"], "4.17.7");
    let log = std::fs::read_to_string(t.path().join("host.xenmaint/resume.log")).unwrap();
    assert!(log.contains("resumed") || log.contains("finished"), "{log}");

    // The patched build is the committed default: a second run starts
    // from it.
    let (code, _, err) = xenmaint(&h, &["run", "--patch-cmd", "true", "--boot-entry", "xen"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = xenmaint(&h, &["status", "--wait", "--timeout", "120"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out[0]["state"]["hypervisor_before"]["release"], "4.17.7");
}

#[test]
fn a_reboot_command_is_refused_on_a_simulated_host_before_anything_changes() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let (code, _, err) = xenmaint(
        &h,
        &[
            "run",
            "--no-reboot",
            "--patch-cmd",
            "true",
            "--boot-entry",
            "xen-4.17.7",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = xenmaint(&h, &["reboot", "--host", "--reboot-command", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("reboots itself"), "{err}");
    let (_, out, _) = xenmaint(&h, &["status"]);
    assert_eq!(
        out[0]["state"]["phase"], "patched",
        "the refused reboot changed the run"
    );
    // The plain reboot goes on from there.
    let (code, _, err) = xenmaint(&h, &["reboot", "--host"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = xenmaint(&h, &["status", "--wait", "--timeout", "120"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out[0]["state"]["phase"], "finished");
}

/// Each guest's notice, by name, from the simulated host's state.
fn notices(dir: &Path) -> Vec<(String, Option<Value>)> {
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("host.xenmaint/host.json")).unwrap())
            .unwrap();
    state["domains"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["domid"] != 0)
        .map(|d| {
            let n = d["notice"]
                .as_str()
                .map(|t| serde_json::from_str(t).unwrap());
            (d["name"].as_str().unwrap().to_owned(), n)
        })
        .collect()
}

#[test]
fn notify_tells_every_guest_then_cancel_withdraws_it() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let window = [
        "notify",
        "--not-before",
        "2026-12-24T06:00:00Z",
        "--not-after",
        "+9999h",
        "--description",
        "XSA-999",
    ];
    let (code, out, err) = xenmaint(&h, &window);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|r| r["written"] == true), "{out:?}");
    assert!(
        out.iter().all(|r| r["notice"]["State"] == "scheduled"),
        "{out:?}"
    );
    for (name, n) in notices(t.path()) {
        let e = &n.unwrap_or_else(|| panic!("{name} not told"))[0];
        assert_eq!(e["State"], "scheduled");
        assert_eq!(e["NotBefore"], "2026-12-24T06:00:00Z");
        assert!(e["Description"].as_str().unwrap().starts_with("XSA-999: "));
    }
    let (code, _, err) = xenmaint(&h, &["notify", "--cancel"]);
    assert_eq!(code, 0, "{err}");
    for (name, n) in notices(t.path()) {
        assert_eq!(n.unwrap()[0]["State"], "canceled", "{name}");
    }
    // Nothing left to cancel.
    let (code, _, _) = xenmaint(&h, &["notify", "--cancel"]);
    assert_eq!(code, 0);
    // A time that is none: a usage error, nothing written.
    let (code, _, err) = xenmaint(
        &h,
        &["notify", "--not-before", "soon", "--not-after", "+1h"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("\"soon\" is not a time"), "{err}");
}

#[test]
fn a_guest_that_cannot_be_told_fails_notify_and_the_others_are_told() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("host.json");
    let mut h = serde_json::to_value(common::example_host(t.path())).unwrap();
    h["faults"] = serde_json::json!([{"call": "notice", "domid": 2, "message": "xenstore quota"}]);
    std::fs::write(&path, h.to_string()).unwrap();
    let (code, out, err) = xenmaint(
        &path,
        &["notify", "--not-before", "+1h", "--not-after", "+2h"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1 guest(s)"), "{err}");
    let written: Vec<_> = out
        .iter()
        .map(|r| (r["domid"].clone(), r["written"].clone()))
        .collect();
    assert_eq!(written.len(), 3);
    for (domid, ok) in written {
        assert_eq!(ok, domid != 2, "domain {domid}");
    }
}
