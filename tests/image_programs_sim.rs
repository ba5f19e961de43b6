//! The programs an image's configuration makes dom0 run at a restore (hotplug
//! scripts, bootloader, device model): `verify` lists them, `restore` refuses
//! one outside Xen's own folders unless allowed, `plan` blocks a guest whose
//! restore would be refused, and `resume` leaves such a guest down, its image
//! kept, rather than cold booting it with the same program. On the simulated
//! host; the same refusal on real Xen is the nested suite's (guest-ops).

use std::path::Path;

use xenmaint::domain::DomainRef;
use xenmaint::guest::{self, OpError, RestoreOptions};
use xenmaint::sequencer::{GuestState, SeqError, Step};
use xenmaint::sim::{Sim, SimHost};
use xenmaint::toolstack::Toolstack;

mod common;

use common::run::*;

const EVIL: &str = "/tmp/xenmaint-test-untrusted/vif-evil";

/// The example host with web-1's vif script set to `EVIL`.
fn host_with_script(dir: &Path) -> SimHost {
    let mut h = serde_json::to_value(common::example_host(dir)).unwrap();
    for d in h["domains"].as_array_mut().unwrap() {
        if d["name"] == "web-1" {
            d["config"]["nics"][0]["script"] = EVIL.into();
        }
    }
    serde_json::from_value(h).unwrap()
}

fn save_web(ts: &Sim, dir: &Path) -> std::path::PathBuf {
    guest::save(
        ts,
        &DomainRef::Name("web-1".into()),
        &common::save_opts(dir),
        &|_| {},
    )
    .unwrap()
    .image
}

fn running(ts: &Sim, name: &str) -> bool {
    ts.list_domains().unwrap().iter().any(|d| d.name == name)
}

#[test]
fn verify_lists_the_programs_and_restore_refuses_one_outside_xens_folders() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host_with_script(t.path())).unwrap();
    let image = save_web(&ts, t.path());

    let v = guest::verify(&image).unwrap();
    let vif = v
        .programs
        .iter()
        .find(|p| p.path == Path::new(EVIL))
        .expect("verify lists the vif script");
    assert_eq!(vif.role, "vif 0 hotplug script");
    assert!(vif.refused.is_some());

    let e = guest::restore(&ts, &image, &RestoreOptions::default(), &|_| {}).unwrap_err();
    assert!(matches!(e, OpError::UntrustedProgram { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(EVIL) && msg.contains("--allow-image-programs"),
        "{msg}"
    );
    assert!(!running(&ts, "web-1"), "a refused restore left a domain");

    // Allowed explicitly: restored.
    let opts = RestoreOptions {
        allow_programs: true,
        ..Default::default()
    };
    guest::restore(&ts, &image, &opts, &|_| {}).unwrap();
    assert!(running(&ts, "web-1"));
}

#[test]
fn a_guest_whose_restore_would_be_refused_blocks_the_plan() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host_with_script(t.path())).unwrap();
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
    let e = s.drain().unwrap_err();
    assert!(matches!(e, SeqError::PlanBlocked), "{e}");
    assert!(running(&ts, "web-1"), "nothing was touched");

    let mut allowing = policy(t.path(), 2);
    allowing.allow_image_programs = true;
    let s = seq(&ts, &boot, t.path(), allowing, &never);
    s.drain().unwrap();
}

#[test]
fn resume_leaves_such_a_guest_down_with_its_image_instead_of_cold_booting_it() {
    let t = tempfile::tempdir().unwrap();
    let h = host_with_script(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let mut allowing = policy(t.path(), 2);
    allowing.allow_image_programs = true;
    seq(&ts, &boot, t.path(), allowing, &never).drain().unwrap();
    seq(&ts, &boot, t.path(), policy(t.path(), 2), &never)
        .reboot("true", None)
        .unwrap();
    // The policy no longer allows it when the host comes back.
    let after = rebooted(&h, &boot);
    let s = seq(&after, &boot, t.path(), policy(t.path(), 2), &never);
    let e = s.resume().unwrap_err();
    assert!(matches!(e, SeqError::Incomplete(1)), "{e}");
    assert!(!running(&after, "web-1"), "web-1 was brought back");
    assert!(running(&after, "db-1"), "the other guests come back");
    let (_, state) = s.state().unwrap().unwrap();
    let web = state
        .plan
        .guests
        .iter()
        .find(|g| g.name == "web-1")
        .unwrap();
    match state.guests.get(&web.uuid) {
        Some(GuestState::Failed { step, error, .. }) => {
            assert_eq!(*step, Step::Restore);
            assert!(error.contains(EVIL), "{error}");
        }
        other => panic!("web-1: {other:?}"),
    }
    let images = walk(&t.path().join("state/images"));
    assert!(
        images
            .iter()
            .any(|p| p.ends_with(format!("{}.xl", web.uuid))),
        "its image was not kept: {images:?}"
    );
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}
