//! The maintenance run on the simulated host: the whole cycle, a patch that
//! does not take, a failed drain, and a crash (process killed, or power cut)
//! at every journal write, each time checking the safety contract: every
//! guest comes back exactly once, with its name, UUID and MACs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xenmaint::address::{Neighbour, Source};

use xenmaint::boot::BootLoader;
use xenmaint::plan::{Action, GuestPolicy, HostFacts, OnFailure, Policy};
use xenmaint::sequencer::{GuestState, Outcome, Phase, SeqError, Sequencer, Step};
use xenmaint::sim::{Fault, Sim, SimHost};
use xenmaint::toolstack::{Call, Toolstack};

mod common;

use common::run::*;

#[test]
fn the_whole_cycle_brings_every_guest_back_on_the_patched_hypervisor() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);

    let (_, drained) = s.drain().unwrap();
    assert_eq!(drained.phase, Phase::Drained);
    assert!(guests(&ts).is_empty(), "every guest saved and destroyed");
    assert!(drained
        .guests
        .values()
        .all(|g| matches!(g, GuestState::Saved { .. })));

    s.patch("true", "xen-new").unwrap();
    assert_eq!(boot.next_entry().unwrap().as_deref(), Some("xen-new"));
    let fallback = boot.default_entry().unwrap().unwrap();
    assert!(fallback.starts_with("xenmaint-fallback-"), "{fallback}");
    s.reboot("true", Some("4.17.7")).unwrap();

    let after = rebooted(&h, &boot);
    let s2 = seq(&after, &boot, t.path(), policy(t.path(), 2), &never);
    let (_, done) = s2.resume().unwrap().unwrap();
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    assert_eq!(done.expect_build_id.as_deref(), Some("77777777"));
    assert!(done.booted.as_ref().unwrap().1, "patch took");
    assert_eq!(
        boot.default_entry().unwrap().as_deref(),
        Some("xen-new"),
        "committed"
    );
    assert_all_back(&after, &want, "after resume");
    // Restored from images, not cold booted.
    assert!(done.guests.values().all(|g| matches!(
        g,
        GuestState::Back {
            step: xenmaint::sequencer::Step::Restore,
            ..
        }
    )));
    // A second resume changes nothing.
    s2.resume().unwrap();
    assert_all_back(&after, &want, "after a second resume");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// drain, patch (boot once xen-new), reboot, resume with `facts` and
/// `policy`: the resume's result and the host after it.
fn cycle(
    dir: &Path,
    h: &SimHost,
    facts: &dyn HostFacts,
    p: &Policy,
) -> (
    Result<Option<(String, xenmaint::sequencer::RunState)>, SeqError>,
    Sim,
) {
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let s = Sequencer {
        facts,
        ..seq(&ts, &boot, dir, p.clone(), &never)
    };
    s.drain().unwrap();
    s.patch("true", "xen-new").unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(h, &boot);
    let s2 = Sequencer {
        facts,
        ..seq(&after, &boot, dir, p.clone(), &never)
    };
    (s2.resume(), after)
}

#[test]
fn addresses_from_config_xenstore_and_neighbours_are_recorded_and_probed() {
    let t = tempfile::tempdir().unwrap();
    let mut h = host(t.path());
    let web = h
        .domains
        .iter_mut()
        .find(|d| d.detail.info.name == "web-1")
        .unwrap();
    web.published = vec![ip("10.0.9.1"), ip("127.0.0.1")];
    let facts = Probed {
        neighbours: vec![Neighbour {
            ip: ip("10.0.2.121"),
            mac: "00:16:3e:5a:00:01".parse().unwrap(),
            device: "xenbr0".into(),
        }],
        ..Probed::default()
    };
    let (r, after) = cycle(t.path(), &h, &facts, &policy(t.path(), 2));
    let (_, done) = r.unwrap().unwrap();
    let web = after.resolve(&"web-1".parse().unwrap()).unwrap().uuid;
    let seen: Vec<(String, Vec<Source>)> = done.observed[&web]
        .addresses
        .iter()
        .map(|a| (a.ip.to_string(), a.sources.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("10.0.2.21".into(), vec![Source::Config]),
            ("10.0.2.121".into(), vec![Source::Neighbour]),
            ("10.0.9.1".into(), vec![Source::Xenstore]),
        ],
        "loopback published by the guest is dropped"
    );
    assert_eq!(done.observed[&web].disks.len(), 1);
    // Every recorded address of every guest was probed after the resume.
    let probes = facts.probes.lock().unwrap().clone();
    for a in [
        "10.0.2.121",
        "10.0.2.21",
        "10.0.9.1",
        "10.0.2.22",
        "10.0.2.23",
    ] {
        assert!(probes.contains(&ip(a)), "{a} not probed: {probes:?}");
    }
    assert!(done.verified.values().all(|v| v.ok()) && done.verified.len() == 3);
    assert_eq!(done.trouble(), None);
    // Images are kept by default.
    assert!(done.images.values().all(|p| p.exists()));
}

#[test]
fn a_guest_silent_at_its_address_fails_the_resume_and_keeps_its_image() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let facts = Probed {
        silent: vec![ip("10.0.2.22")],
        ..Probed::default()
    };
    let mut p = policy(t.path(), 2);
    p.verify_s = 0.3;
    p.keep_images = false;
    let (r, after) = cycle(t.path(), &h, &facts, &p);
    assert!(matches!(r, Err(SeqError::ChecksFailed(1))), "{r:?}");
    let boot = boot_loader();
    let s = seq(&after, &boot, t.path(), p, &never);
    let (_, st) = s.state().unwrap().unwrap();
    let db = after.resolve(&"db-1".parse().unwrap()).unwrap().uuid;
    assert_eq!(st.verified[&db].silent, [ip("10.0.2.22")]);
    assert!(st.trouble().unwrap().contains("failed their checks"));
    // keep_images = false: the guests that checked out lost their images,
    // the silent one kept its own.
    for (uuid, image) in &st.images {
        assert_eq!(image.exists(), *uuid == db, "{uuid}");
    }
    // Tried again before giving up.
    let tries = facts
        .probes
        .lock()
        .unwrap()
        .iter()
        .filter(|a| **a == ip("10.0.2.22"))
        .count();
    assert!(tries >= 2, "{tries}");
}

/// Drains the example host (its disks files in `dir`) and reboots it with
/// no patch; `change` then acts on `dir` as the host comes back, and resume
/// runs on a host whose disks are those files. Resume's result, the disk
/// changes its checks recorded, the disk checks it made while it waited,
/// and how long it took.
fn resume_after(
    dir: &Path,
    p: Policy,
    change: impl FnOnce(&Path),
) -> (Result<(), SeqError>, Vec<String>, Vec<PathBuf>, Duration) {
    let h = host(dir);
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let s = seq(&ts, &boot, dir, p.clone(), &never);
    s.drain().unwrap();
    s.reboot("true", None).unwrap();
    change(dir);
    let after = rebooted(&h, &boot);
    let facts = Probed {
        real_disks: true,
        ..Probed::default()
    };
    let mut s2 = seq(&after, &boot, dir, p, &never);
    s2.facts = &facts;
    let t0 = Instant::now();
    let r = s2.resume().map(|_| ());
    let took = t0.elapsed();
    let (_, st) = s.state().unwrap().unwrap();
    let changed = st
        .verified
        .values()
        .flat_map(|v| v.disks_changed.clone())
        .collect();
    let checks = facts.disk_checks.lock().unwrap().clone();
    (r, changed, checks, took)
}

#[test]
fn a_disk_that_is_not_the_same_file_fails_the_checks() {
    let t = tempfile::tempdir().unwrap();
    let (r, changed, _, _) = resume_after(t.path(), policy(t.path(), 1), |dir| {
        // Someone replaced cache-1's disk by another file of the same name.
        let disk = dir.join("cache-1.img");
        std::fs::remove_file(&disk).unwrap();
        std::fs::write(&disk, b"another disk").unwrap();
    });
    assert!(matches!(r, Err(SeqError::ChecksFailed(1))), "{r:?}");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].contains("inode"), "{changed:?}");
}

#[test]
fn resume_waits_for_a_disk_that_appears_after_it_starts() {
    let t = tempfile::tempdir().unwrap();
    let (r, changed, checks, took) = resume_after(t.path(), policy(t.path(), 1), |dir| {
        // cache-1's disk is not there yet at boot (its volume group is
        // being activated): it comes, the same file, while resume waits.
        let disk = dir.join("cache-1.img");
        let away = dir.join("cache-1.img.away");
        std::fs::rename(&disk, &away).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            std::fs::rename(away, disk).unwrap();
        });
    });
    assert!(r.is_ok() && changed.is_empty(), "{r:?} {changed:?}");
    assert!(took >= Duration::from_millis(600), "{took:?}");
    let of_cache = checks.iter().filter(|p| p.ends_with("cache-1.img")).count();
    assert!(of_cache >= 2, "{checks:?}");
}

#[test]
fn resume_goes_on_without_a_disk_that_never_appears_and_names_it() {
    let t = tempfile::tempdir().unwrap();
    let p = Policy {
        device_wait_s: 0.3,
        ..policy(t.path(), 1)
    };
    let (r, changed, _, took) = resume_after(t.path(), p, |dir| {
        std::fs::remove_file(dir.join("cache-1.img")).unwrap();
    });
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(matches!(r, Err(SeqError::ChecksFailed(1))), "{r:?}");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].contains("missing"), "{changed:?}");
}

#[test]
fn hooks_run_at_every_phase_with_the_run_and_its_status_file() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let log = t.path().join("hooks.log");
    let mut p = policy(t.path(), 2);
    p.hooks = vec![
        format!(
            "grep -q \"$XENMAINT_RUN\" \"$XENMAINT_STATUS\" && echo \"$XENMAINT_PHASE\" >> {}",
            log.display()
        ),
        "exit 1".into(), // a failing hook is logged; the run goes on
    ];
    let (r, after) = cycle(t.path(), &h, &ROOMY, &p);
    r.unwrap();
    let phases = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        phases.lines().collect::<Vec<_>>(),
        [
            "started",
            "drained",
            "patched",
            "rebooting",
            "booted",
            "finished"
        ]
    );
    assert_eq!(guests(&after).len(), 3);
}

#[test]
fn a_patch_that_does_not_boot_keeps_the_old_default_and_still_brings_guests_back() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &never);
    s.drain().unwrap();
    s.patch("true", "xen-new").unwrap();
    s.reboot("true", None).unwrap();
    // The new hypervisor panicked; GRUB's next boot took the default.
    boot.boot();
    let after = rebooted(&h, &boot);
    let s2 = seq(&after, &boot, t.path(), policy(t.path(), 1), &never);
    let e = s2.resume().unwrap_err();
    assert!(matches!(e, SeqError::PatchDidNotTake { .. }), "{e}");
    assert!(e.to_string().contains("THE PATCH DID NOT TAKE"), "{e}");
    let (_, done) = s2.state().unwrap().unwrap();
    assert_eq!(done.phase, Phase::Finished);
    assert!(!done.booted.as_ref().unwrap().1, "patch did not take");
    assert!(done.trouble().unwrap().contains("did not take"));
    assert!(boot
        .default_entry()
        .unwrap()
        .unwrap()
        .starts_with("xenmaint-fallback-"));
    assert_all_back(&after, &want, "after resume on the old hypervisor");
    // Resume is idempotent: the finished run is reported, not redone.
    assert!(s2.resume().unwrap().is_some());

    // The next run keeps the kept entry as its fallback (no copy of a copy).
    let kept = boot.default_entry().unwrap().unwrap();
    s2.drain().unwrap();
    s2.patch("true", "xen-new").unwrap();
    let (_, st) = s2.state().unwrap().unwrap();
    assert_eq!(st.fallback_entry.as_deref(), Some(kept.as_str()));
    assert_eq!(boot.default_entry().unwrap(), Some(kept));
}

#[test]
fn a_failed_save_rolls_back_and_nothing_reboots() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    let want = guests(&ts);
    let db = ts
        .list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.name == "db-1")
        .unwrap();
    ts.inject(Fault {
        call: Call::Save,
        domid: Some(db.domid),
        message: "disk error".into(),
        times: None,
    });
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &never);
    let e = s.drain().unwrap_err();
    assert!(matches!(e, SeqError::DrainFailed { failed: 1, .. }), "{e}");
    assert!(e.to_string().contains("rolled back"), "{e}");
    ts.clear_faults();
    assert_all_back(&ts, &want, "after rollback");
    let (_, st) = s.state().unwrap().unwrap();
    assert_eq!(st.outcome, Some(Outcome::RolledBack));
    assert!(matches!(
        s.reboot("true", None),
        Err(SeqError::NoRun(_) | SeqError::WrongPhase { .. })
    ));
    // The host is free for a new run.
    s.drain().unwrap();
}

#[test]
fn halt_policy_stops_and_rollback_finishes_it() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    let want = guests(&ts);
    ts.inject(Fault {
        call: Call::Save,
        domid: Some(ts.resolve(&"cache-1".parse().unwrap()).unwrap().domid),
        message: "disk error".into(),
        times: None,
    });
    let boot = boot_loader();
    let mut p = policy(t.path(), 1);
    p.on_failure = OnFailure::Halt;
    let s = seq(&ts, &boot, t.path(), p, &never);
    assert!(s.drain().unwrap_err().to_string().contains("halted"));
    let (run, _) = s.state().unwrap().unwrap();
    // A second drain goes on with the halted run, retrying what failed:
    // here it fails again, and the run halts again. Still one run.
    assert!(s.drain().unwrap_err().to_string().contains("halted"));
    assert_eq!(s.state().unwrap().unwrap().0, run, "one run at a time");
    assert!(matches!(
        s.patch("true", "xen-new"),
        Err(SeqError::WrongPhase { .. })
    ));
    ts.clear_faults();
    s.rollback().unwrap();
    assert_all_back(&ts, &want, "after rollback of a halted run");
}

#[test]
fn shutdown_guests_are_cold_booted_after_the_reboot() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let mut p = policy(t.path(), 2);
    p.guests.insert(
        "web-1".into(),
        GuestPolicy {
            action: Some(Action::Shutdown),
            priority: 5,
        },
    );
    let s = seq(&ts, &boot, t.path(), p.clone(), &never);
    let (_, st) = s.drain().unwrap();
    assert!(st.guests.values().any(|g| *g == GuestState::ShutDown));
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    let (_, done) = seq(&after, &boot, t.path(), p, &never)
        .resume()
        .unwrap()
        .unwrap();
    assert_all_back(&after, &want, "after resume");
    assert!(done.guests.values().any(|g| matches!(
        g,
        GuestState::Back {
            step: xenmaint::sequencer::Step::ColdBoot,
            ..
        }
    )));
}

/// An image damaged between the drain and the resume (a flipped bit, or one
/// cut short): the restore's own checks refuse it before the guest runs, and
/// the guest is cold booted from its saved config; the others are restored.
#[test]
fn a_damaged_image_is_refused_and_its_guest_cold_booted() {
    for damage in ["flip", "truncate"] {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        let ts = Sim::new(h.clone()).unwrap();
        let want = guests(&ts);
        let boot = boot_loader();
        let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
        let (_, drained) = s.drain().unwrap();
        let (&victim, image) = drained.images.iter().next().unwrap();
        let mut bytes = std::fs::read(image).unwrap();
        match damage {
            "flip" => {
                let at = bytes.len() / 2;
                bytes[at] ^= 0x40;
            }
            _ => bytes.truncate(bytes.len() - 100),
        }
        std::fs::write(image, &bytes).unwrap();
        s.reboot("true", None).unwrap();
        let after = rebooted(&h, &boot);
        let (_, done) = seq(&after, &boot, t.path(), policy(t.path(), 2), &never)
            .resume()
            .unwrap()
            .unwrap();
        assert_all_back(&after, &want, damage);
        for (uuid, g) in &done.guests {
            let want_step = if *uuid == victim {
                xenmaint::sequencer::Step::ColdBoot
            } else {
                xenmaint::sequencer::Step::Restore
            };
            assert!(
                matches!(g, GuestState::Back { step, .. } if *step == want_step),
                "{damage}: {uuid} is {g:?}"
            );
        }
    }
}

/// How many failpoints a clean drain passes.
fn failpoints_in_drain(dir: &Path) -> usize {
    let ts = Sim::new(host(dir)).unwrap();
    let boot = boot_loader();
    let count = CrashAt::new(usize::MAX);
    let f = |w: &str| count.hit(w);
    seq(&ts, &boot, dir, policy(dir, 1), &f).drain().unwrap();
    count.seen.load(Ordering::SeqCst)
}

#[test]
fn a_crash_at_any_journal_write_of_a_drain_loses_no_guest() {
    let n = failpoints_in_drain(tempfile::tempdir().unwrap().path());
    assert!(
        n >= 14,
        "expected a failpoint either side of every record, saw {n}"
    );
    for k in 0..n {
        for power_cut in [false, true] {
            let t = tempfile::tempdir().unwrap();
            let h = host(t.path());
            let ts = Sim::new(h.clone()).unwrap();
            let want = guests(&ts);
            let boot = boot_loader();
            let crash = CrashAt::new(k);
            let f = |w: &str| crash.hit(w);
            let e = seq(&ts, &boot, t.path(), policy(t.path(), 1), &f).drain();
            assert!(matches!(e, Err(SeqError::Crashed(_))), "k={k}: {e:?}");
            let ctx = format!(
                "crash at failpoint {k} ({}), power cut: {power_cut}",
                if power_cut {
                    "host rebooted"
                } else {
                    "process killed"
                }
            );
            let host_now = if power_cut { rebooted(&h, &boot) } else { ts };
            let s = seq(&host_now, &boot, t.path(), policy(t.path(), 1), &never);
            // After a power cut the unit runs resume; after a kill, the admin
            // rolls back. Either way every guest comes back.
            let r = if power_cut { s.resume() } else { s.rollback() };
            if let Err(e) = r {
                panic!("{ctx}: {e}");
            }
            assert_all_back(&host_now, &want, &ctx);
        }
    }
}

/// A drain cut (power lost) right before its first Done record of a save,
/// `between` run on the run's files, then the host rebooted and resumed:
/// the state resume leaves, every guest checked back.
fn resume_after_a_cut_before_the_first_save_record(
    between: &dyn Fn(&Path),
) -> xenmaint::sequencer::RunState {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let crash = |w: &str| w.starts_with("before done Save");
    let e = seq(&ts, &boot, t.path(), policy(t.path(), 1), &crash).drain();
    assert!(matches!(e, Err(SeqError::Crashed(_))), "{e:?}");
    between(t.path());
    let after = rebooted(&h, &boot);
    let (_, done) = seq(&after, &boot, t.path(), policy(t.path(), 1), &never)
        .resume()
        .unwrap()
        .unwrap();
    assert_all_back(&after, &want, "after the cut");
    done
}

/// How each guest came back.
fn steps_back(state: &xenmaint::sequencer::RunState) -> Vec<xenmaint::sequencer::Step> {
    state
        .guests
        .values()
        .map(|g| match g {
            GuestState::Back { step, .. } => *step,
            other => panic!("not back: {other:?}"),
        })
        .collect()
}

#[test]
fn a_cut_between_a_saved_image_and_its_record_restores_from_the_image() {
    // The save finished (image and manifest durable, guest destroyed), the
    // host went down before the Done record: the guest's memory is in the
    // image, and resume must restore it, not cold boot it.
    let done = resume_after_a_cut_before_the_first_save_record(&|_| {});
    let steps = steps_back(&done);
    // The first guest was saved: restored. The others were never touched
    // by the run and cold boot from their configs after the power cut.
    assert!(
        steps.contains(&xenmaint::sequencer::Step::Restore),
        "the saved guest was not restored: {steps:?}"
    );
    // Its Done record was written then: the image counts as the run's.
    assert_eq!(done.images.len(), 1, "{:?}", done.images);
}

#[test]
fn a_cut_save_without_its_manifest_is_not_restored() {
    // Cut before the manifest: the image may be whole, but nothing says so.
    let remove_manifests = |dir: &Path| {
        let mut manifests = 0;
        for run in std::fs::read_dir(dir.join("state/images")).unwrap() {
            for f in std::fs::read_dir(run.unwrap().path()).unwrap() {
                let f = f.unwrap().path();
                if f.to_string_lossy().ends_with(".manifest.json") {
                    std::fs::remove_file(f).unwrap();
                    manifests += 1;
                }
            }
        }
        assert_eq!(manifests, 1);
    };
    let done = resume_after_a_cut_before_the_first_save_record(&remove_manifests);
    let steps = steps_back(&done);
    assert!(
        steps
            .iter()
            .all(|s| *s == xenmaint::sequencer::Step::ColdBoot),
        "{steps:?}"
    );
}

#[test]
fn a_guest_that_was_back_is_never_restored_from_its_old_image_again() {
    // Resume brings one guest back and not another; the first is then shut
    // down by its owner (it has run, its disk moved on). A second resume,
    // once the other can come back, must not restore the first from the
    // drain's image over its newer disk: it cold boots it.
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &never);
    let (_, drained) = s.drain().unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    // One guest's image gone, and cold boots failing: that guest stays down.
    let (lost, _) = drained
        .images
        .iter()
        .next()
        .map(|(u, p)| (*u, std::fs::remove_file(p).unwrap()))
        .unwrap();
    after.inject(Fault {
        call: Call::Create,
        domid: None,
        message: "no memory".into(),
        times: None,
    });
    let s2 = seq(&after, &boot, t.path(), policy(t.path(), 1), &never);
    let e = s2.resume();
    assert!(matches!(e, Err(SeqError::Incomplete(1))), "{e:?}");
    let (_, first) = s2.state().unwrap().unwrap();
    assert_eq!(first.outcome, Some(Outcome::Incomplete));
    let (back, domid) = first
        .guests
        .iter()
        .find_map(|(u, g)| match g {
            GuestState::Back { domid, .. } if *u != lost => Some((*u, *domid)),
            _ => None,
        })
        .expect("some guest came back");
    after.destroy(domid).unwrap();
    after.clear_faults();
    let (_, second) = s2.resume().unwrap().unwrap();
    assert_all_back(&after, &want, "after the second resume");
    assert!(
        matches!(
            second.guests[&back],
            GuestState::Back {
                step: xenmaint::sequencer::Step::ColdBoot,
                ..
            }
        ),
        "{:?}",
        second.guests[&back]
    );
}

/// A restore at resume that libxl fails once while the image is intact (a
/// hotplug script timed out on a loaded dom0, say) is tried once more, and
/// the guest comes back from its image with its memory; a second failure
/// stands, and only then is the guest cold booted.
#[test]
fn a_restore_that_fails_once_is_tried_again_before_a_cold_boot() {
    for (fails, step) in [(1, Step::Restore), (2, Step::ColdBoot)] {
        let t = tempfile::tempdir().unwrap();
        let Rebooted { after, want, boot } = drained_and_rebooted(t.path(), policy(t.path(), 1));
        after.inject(Fault {
            call: Call::Restore,
            domid: None,
            message: "hotplug script timed out".into(),
            times: Some(fails),
        });
        let s2 = seq(&after, &boot, t.path(), policy(t.path(), 1), &never);
        let (_, state) = s2.resume().unwrap().unwrap();
        assert_all_back(&after, &want, "after the resume");
        let mut steps: Vec<Step> = state
            .guests
            .values()
            .map(|g| match g {
                GuestState::Back { step, .. } => *step,
                other => panic!("{other:?}"),
            })
            .collect();
        steps.sort_by_key(|s| *s == Step::Restore);
        // The first guest restored met the fault; the others restored at once.
        assert_eq!(steps[0], step, "{fails} failure(s): {steps:?}");
        assert!(steps[1..].iter().all(|s| *s == Step::Restore), "{steps:?}");
    }
}

/// A drain writes every guest's config under its own name (no temp name)
/// before its journal exists: a crash then can leave one torn. Nothing may
/// read it: the run is not `current` yet, so resume finds the last run as it
/// was, cold boots nothing, and the next drain starts afresh.
#[test]
fn a_crash_while_a_drain_writes_its_configs_leaves_nothing_to_read() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &never);
    let (first, _) = s.drain().unwrap();
    s.rollback().unwrap();
    // The second drain's run directory as a crash left it: one config
    // whole, one torn, no journal.
    let configs = s.run_dir("9999999999-000000000-1").join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    let mut names = std::fs::read_dir(s.run_dir(&first).join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path());
    let (whole, torn) = (names.next().unwrap(), names.next().unwrap());
    std::fs::copy(&whole, configs.join(whole.file_name().unwrap())).unwrap();
    let text = std::fs::read(&torn).unwrap();
    std::fs::write(
        configs.join(torn.file_name().unwrap()),
        &text[..text.len() / 2],
    )
    .unwrap();

    let (id, st) = s.resume().unwrap().unwrap();
    assert_eq!(id, first, "the last run is still the current one");
    assert_eq!(st.outcome, Some(Outcome::RolledBack));
    assert_all_back(&ts, &want, "after the crash in the configs");
    s.drain().unwrap();
    s.rollback().unwrap();
    assert_all_back(&ts, &want, "after the next run");
}

#[test]
fn a_crash_during_resume_is_resumed_again() {
    let t0 = tempfile::tempdir().unwrap();
    // Count the failpoints of a clean resume.
    let count_resume = {
        let Rebooted { after, boot, .. } = drained_and_rebooted(t0.path(), policy(t0.path(), 1));
        let count = CrashAt::new(usize::MAX);
        let f = |w: &str| count.hit(w);
        seq(&after, &boot, t0.path(), policy(t0.path(), 1), &f)
            .resume()
            .unwrap();
        count.seen.load(Ordering::SeqCst)
    };
    assert!(count_resume >= 8, "{count_resume}");
    for k in 0..count_resume {
        let t = tempfile::tempdir().unwrap();
        let Rebooted { after, want, boot } = drained_and_rebooted(t.path(), policy(t.path(), 1));
        let crash = CrashAt::new(k);
        let f = |w: &str| crash.hit(w);
        let e = seq(&after, &boot, t.path(), policy(t.path(), 1), &f).resume();
        assert!(matches!(e, Err(SeqError::Crashed(_))), "k={k}: {e:?}");
        seq(&after, &boot, t.path(), policy(t.path(), 1), &never)
            .resume()
            .unwrap_or_else(|e| panic!("resume after a crash at {k}: {e}"));
        assert_all_back(&after, &want, &format!("crash in resume at {k}"));
    }
}

#[test]
fn a_guest_left_suspended_by_a_crash_mid_save_is_resumed_in_place() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    // Crash right after the first save began: then suspend that guest by
    // hand, as a save interrupted half way would leave it.
    let crash = |w: &str| w.starts_with("after begin Save");
    let e = seq(&ts, &boot, t.path(), policy(t.path(), 1), &crash).drain();
    assert!(matches!(e, Err(SeqError::Crashed(_))));
    let (_, st) = seq(&ts, &boot, t.path(), policy(t.path(), 1), &never)
        .state()
        .unwrap()
        .unwrap();
    let (uuid, _) = st
        .guests
        .iter()
        .find(|(_, g)| matches!(g, GuestState::InStep { .. }))
        .unwrap();
    let domid = ts
        .list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.uuid == *uuid)
        .unwrap()
        .domid;
    ts.save(domid, false, &mut std::io::sink()).unwrap();
    seq(&ts, &boot, t.path(), policy(t.path(), 1), &never)
        .rollback()
        .unwrap();
    assert_all_back(&ts, &want, "after rollback");
    let again = ts
        .list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.uuid == *uuid)
        .unwrap();
    assert_eq!(again.domid, domid, "resumed in place, not re-created");
}

/// Every guest's (domid, suspended) by name.
fn domains(ts: &dyn Toolstack) -> BTreeMap<String, (u32, bool)> {
    ts.list_domains()
        .unwrap()
        .into_iter()
        .filter(|d| d.domid != 0)
        .map(|d| {
            let suspended = d.shutdown_reason == Some(xenmaint::domain::ShutdownReason::Suspend);
            (d.name, (d.domid, suspended))
        })
        .collect()
}

#[test]
fn guests_left_suspended_come_back_from_images_after_the_reboot_or_in_place_on_a_rollback() {
    let p = |dir: &Path| Policy {
        leave_suspended: true,
        ..policy(dir, 2)
    };
    // Drain, reboot, resume: the reboot ended the suspended domains.
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), p(t.path()), &never);
    let (_, drained) = s.drain().unwrap();
    let left = domains(&ts);
    assert_eq!(left.len(), want.len(), "no guest destroyed");
    assert!(left.values().all(|&(_, suspended)| suspended), "{left:?}");
    assert!(drained
        .guests
        .values()
        .all(|g| matches!(g, GuestState::Saved { .. })));
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    let (_, done) = seq(&after, &boot, t.path(), p(t.path()), &never)
        .resume()
        .unwrap()
        .unwrap();
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    assert_all_back(&after, &want, "after the reboot");

    // Drain, then roll back without a reboot: each guest runs on in the
    // domain it stopped in, nothing restored.
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    let s = seq(&ts, &boot, t.path(), p(t.path()), &never);
    s.drain().unwrap();
    let left = domains(&ts);
    s.rollback().unwrap();
    assert_all_back(&ts, &want, "after the rollback");
    let now = domains(&ts);
    for (name, (domid, _)) in &left {
        assert_eq!(now[name], (*domid, false), "{name} resumed in place");
    }
}

#[test]
fn the_run_lock_refuses_a_second_run() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &never);
    std::fs::create_dir_all(t.path().join("run")).unwrap();
    let _held =
        xenmaint::lock::HostLock::acquire(&t.path().join("run/xenmaint.lock"), "another drain")
            .unwrap();
    let e = s.drain().unwrap_err();
    assert!(e.to_string().contains("another drain"), "{e}");
    let _unused: PathBuf = t.path().to_owned();
}

/// A toolstack call that fails, for one guest or for all, during the drain
/// or during the resume: the run never reboots with a guest unaccounted
/// for, says which guests it could not bring back, and once the fault is
/// gone a `resume` brings every guest back exactly once.
#[test]
fn a_failing_toolstack_call_at_any_step_loses_no_guest() {
    let drain_calls = [
        Call::DomainDetail,
        Call::PublishedAddresses,
        Call::Save,
        Call::Destroy,
        Call::Resume,
    ];
    let resume_calls = [Call::Restore, Call::Create, Call::Unpause, Call::Destroy];
    let (mut rolled_back, mut incomplete, mut refused) = (0, 0, 0);
    for (call, at_drain) in drain_calls
        .iter()
        .map(|c| (*c, true))
        .chain(resume_calls.iter().map(|c| (*c, false)))
    {
        for one_guest in [true, false] {
            let ctx = format!(
                "{call} failing for {} at {}",
                if one_guest { "one guest" } else { "all" },
                if at_drain { "drain" } else { "resume" }
            );
            let t = tempfile::tempdir().unwrap();
            let h = host(t.path());
            let ts = Sim::new(h.clone()).unwrap();
            let want = guests(&ts);
            let boot = boot_loader();
            let domid = one_guest.then(|| ts.resolve(&"db-1".parse().unwrap()).unwrap().domid);
            let fault = Fault {
                call,
                domid,
                message: "injected".into(),
                times: None,
            };
            if at_drain {
                ts.inject(fault.clone());
            }
            let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
            let drained = s.drain();
            ts.clear_faults();
            let host_now = match drained {
                Ok(_) => {
                    s.reboot("true", None).unwrap();
                    rebooted(&h, &boot)
                }
                Err(SeqError::DrainFailed { .. }) => {
                    assert!(at_drain, "{ctx}: the drain failed");
                    assert!(
                        matches!(
                            s.reboot("true", None),
                            Err(SeqError::WrongPhase { .. } | SeqError::NoRun(_))
                        ),
                        "{ctx}: no reboot after a failed drain"
                    );
                    assert_all_back(&ts, &want, &format!("{ctx}: after the rollback"));
                    rolled_back += 1;
                    continue;
                }
                // Failing while planning: nothing was started or touched.
                Err(SeqError::Toolstack(_)) if s.state().unwrap().is_none() => {
                    assert_all_back(&ts, &want, &format!("{ctx}: refused before starting"));
                    refused += 1;
                    continue;
                }
                Err(e) => panic!("{ctx}: {e}"),
            };
            if !at_drain {
                // Faults on the rebooted host hit the domains it creates.
                host_now.inject(Fault {
                    domid: None,
                    ..fault
                });
            }
            let s2 = seq(&host_now, &boot, t.path(), policy(t.path(), 2), &never);
            match s2.resume() {
                Ok(_) => {}
                Err(SeqError::Incomplete(n)) => {
                    assert!(n >= 1, "{ctx}");
                    incomplete += 1;
                    let (_, st) = s2.state().unwrap().unwrap();
                    assert!(st.trouble().is_some(), "{ctx}");
                }
                Err(e) => panic!("{ctx}: resume: {e}"),
            }
            host_now.clear_faults();
            s2.resume()
                .unwrap_or_else(|e| panic!("{ctx}: resume once the fault is gone: {e}"));
            assert_all_back(&host_now, &want, &ctx);
        }
    }
    // Each way a run can end was taken by some fault.
    assert!(
        rolled_back > 0 && incomplete > 0 && refused > 0,
        "{rolled_back} {incomplete} {refused}"
    );
}

/// Many guests: every one drained, and back after the reboot, once.
#[test]
fn two_hundred_guests_go_and_come_back() {
    let t = tempfile::tempdir().unwrap();
    let h = common::many_guests(t.path(), 200);
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    assert_eq!(want.len(), 200);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 8), &never);
    s.drain().unwrap();
    assert!(guests(&ts).is_empty());
    s.patch("true", "xen-new").unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    let (_, done) = seq(&after, &boot, t.path(), policy(t.path(), 8), &never)
        .resume()
        .unwrap()
        .unwrap();
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    assert_eq!(done.verified.len(), 200);
    assert_all_back(&after, &want, "200 guests");
}

/// The patched entry's image says which build it is: another build booting
/// (say the entry was rewritten between patch and reboot) is not the patch;
/// neither is a "patch" whose entry boots the very build that ran before.
#[test]
fn only_the_patched_build_counts_as_the_patch() {
    for (patched_build, took) in [("77777777", true), ("88888888", false), ("55555555", false)] {
        let t = tempfile::tempdir().unwrap();
        let mut h = host(t.path());
        h.hypervisor.build_id = Some("55555555".into());
        let ts = Sim::new(h.clone()).unwrap();
        let boot = boot_loader();
        boot.state
            .lock()
            .unwrap()
            .build_ids
            .insert("xen-new".into(), patched_build.into());
        let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
        s.drain().unwrap();
        s.patch("true", "xen-new").unwrap();
        s.reboot("true", None).unwrap();
        let after = rebooted(&h, &boot); // boots build 77777777
        let s2 = seq(&after, &boot, t.path(), policy(t.path(), 2), &never);
        let r = s2.resume();
        assert_eq!(r.is_ok(), took, "{patched_build}: {r:?}");
        let (_, st) = s2.state().unwrap().unwrap();
        assert_eq!(st.booted.unwrap().1, took, "{patched_build}");
        assert_eq!(
            boot.default_entry().unwrap().as_deref() == Some("xen-new"),
            took
        );
        assert_eq!(
            guests(&after).len(),
            3,
            "{patched_build}: every guest back either way"
        );
    }
}

/// A failpoint that never crashes but raises `stop` (as the first SIGINT
/// would) at the journal write starting with `at`.
fn signal_at<'a>(
    stop: &'a std::sync::atomic::AtomicBool,
    at: &'a str,
) -> impl Fn(&str) -> bool + Sync + 'a {
    move |w| {
        if w.starts_with(at) {
            stop.store(true, Ordering::SeqCst);
        }
        false
    }
}

/// SIGINT/SIGTERM (the stop flag): the step in progress finishes, no new one
/// starts, and the journal is left where `rollback` or `resume` go on.
#[test]
fn a_stop_request_ends_drain_and_resume_at_a_consistent_point() {
    use std::sync::atomic::AtomicBool;
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let stop = AtomicBool::new(false);
    // The signal arrives while the first save is under way.
    let signal = signal_at(&stop, "before done Save");
    let s = Sequencer {
        stop: &stop,
        ..seq(&ts, &boot, t.path(), policy(t.path(), 1), &signal)
    };
    let e = s.drain().unwrap_err();
    assert!(matches!(e, SeqError::Interrupted(Phase::Halted)), "{e}");
    let (_, st) = s.state().unwrap().unwrap();
    assert_eq!(st.phase, Phase::Halted);
    let saved = st
        .guests
        .values()
        .filter(|g| matches!(g, GuestState::Saved { .. }))
        .count();
    let pending = st
        .guests
        .values()
        .filter(|g| **g == GuestState::Pending)
        .count();
    assert_eq!(
        (saved, pending),
        (1, 2),
        "the save in progress finished; no other began"
    );
    assert_eq!(guests(&ts).len(), 2, "the others run on");
    assert!(matches!(
        s.reboot("true", None),
        Err(SeqError::WrongPhase { .. })
    ));
    seq(&ts, &boot, t.path(), policy(t.path(), 1), &never)
        .rollback()
        .unwrap();
    assert_all_back(&ts, &want, "after rollback of an interrupted drain");
    let (_, st) = s.state().unwrap().unwrap();
    let mut steps: Vec<Step> = st
        .guests
        .values()
        .map(|g| match g {
            GuestState::Back { step, .. } => *step,
            other => panic!("not back: {other:?}"),
        })
        .collect();
    steps.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        steps,
        [Step::Kept, Step::Kept, Step::Restore],
        "the two never stopped"
    );

    // The same during a resume after the reboot: stopped before it finished,
    // the next resume brings back the rest.
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &never);
    s.drain().unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    stop.store(false, Ordering::SeqCst);
    let signal = signal_at(&stop, "after done Restore");
    let e = Sequencer {
        stop: &stop,
        ..seq(&after, &boot, t.path(), policy(t.path(), 1), &signal)
    }
    .resume()
    .unwrap_err();
    assert!(matches!(e, SeqError::Interrupted(_)), "{e}");
    assert_eq!(guests(&after).len(), 1, "one guest back, then it stopped");
    let s2 = seq(&after, &boot, t.path(), policy(t.path(), 1), &never);
    assert_ne!(s2.state().unwrap().unwrap().1.phase, Phase::Finished);
    s2.resume().unwrap();
    assert_all_back(&after, &want, "after the interrupted resume was resumed");
}

#[test]
fn prune_deletes_old_finished_runs_images_only() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let p = policy(t.path(), 2);
    let mut finished = Vec::new();
    for _ in 0..3 {
        let (r, _) = cycle(t.path(), &h, &ROOMY, &p);
        let (id, st) = r.unwrap().unwrap();
        assert_eq!(st.images.len(), 3);
        finished.push((id, st));
    }
    // A fourth run, drained and not resumed: its images are its guests.
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), p.clone(), &never);
    let (open_id, open_run) = s.drain().unwrap();

    let pruned = s.prune(1).unwrap();
    assert_eq!(pruned.images, 6, "{pruned:?}");
    assert_eq!(pruned.runs.len(), 2);
    for (i, (id, st)) in finished.iter().enumerate() {
        let kept = i == 2;
        assert_eq!(pruned.runs.contains(id), !kept, "{id}");
        for image in st.images.values() {
            assert_eq!(image.exists(), kept, "{}", image.display());
            assert_eq!(xenmaint::image::manifest_path(image).exists(), kept);
        }
        assert!(s.run_dir(id).join("journal").exists(), "journals stay");
    }
    assert!(pruned.kept.contains(&open_id));
    assert!(
        open_run.images.values().all(|p| p.exists()),
        "an open run keeps its images"
    );
    // Nothing more to do the second time.
    assert_eq!(s.prune(1).unwrap().images, 0);
}

/// Live saves pause together: with two lanes and six guests, every save
/// has begun (its first pass sent with the guest running) before the first
/// guest pauses; two lanes still bound the copying, and the whole cycle
/// brings every guest back. Without the pause gate the first guest would
/// pause after at most two saves had begun.
#[test]
fn live_saves_pause_together_at_the_end_of_the_drain() {
    let t = tempfile::tempdir().unwrap();
    let h = common::many_guests(t.path(), 6);
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let p = Policy {
        live: true,
        pause_together: true,
        ..policy(t.path(), 2)
    };
    let s = seq(&ts, &boot, t.path(), p.clone(), &never);
    let (_, drained) = s.drain().unwrap();
    assert_eq!(drained.phase, Phase::Drained);
    let pauses = ts.suspends();
    assert_eq!(pauses.len(), 6, "{pauses:?}");
    assert!(pauses.iter().all(|&(_, begun)| begun == 6), "{pauses:?}");

    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    let s2 = seq(&after, &boot, t.path(), p, &never);
    let (_, done) = s2.resume().unwrap().unwrap();
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    assert_all_back(&after, &want, "after a live drain");

    // `pause_together = false` (the default): each guest pauses as its own save ends.
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(common::many_guests(t.path(), 6)).unwrap();
    let p = Policy {
        live: true,
        pause_together: false,
        ..policy(t.path(), 2)
    };
    seq(&ts, &boot_loader(), t.path(), p, &never)
        .drain()
        .unwrap();
    let pauses = ts.suspends();
    assert!(pauses[0].1 <= 2, "{pauses:?}");
}

/// A save that fails while others wait at the pause gate: the others still
/// go on (the failed guest's worker moves on, and the gate opens once every
/// worker waits or is done), all five pause together, and the failed drain
/// rolls back with every guest running again.
#[test]
fn a_failed_save_under_the_pause_gate_holds_nobody_up() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(common::many_guests(t.path(), 6)).unwrap();
    let want = guests(&ts);
    let third = ts.list_domains().unwrap()[3].domid;
    ts.inject(Fault {
        call: Call::Save,
        domid: Some(third),
        message: "disk error".into(),
        times: None,
    });
    let p = Policy {
        live: true,
        pause_together: true,
        ..policy(t.path(), 2)
    };
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), p, &never);
    let e = s.drain().unwrap_err();
    assert!(matches!(e, SeqError::DrainFailed { failed: 1, .. }), "{e}");
    let pauses = ts.suspends();
    assert_eq!(pauses.len(), 5, "{pauses:?}");
    assert!(pauses.iter().all(|&(_, begun)| begun == 5), "{pauses:?}");
    ts.clear_faults();
    assert_all_back(&ts, &want, "after the rollback");
}

/// What the run verbs show as they go comes from an observer told of every
/// record as it is journaled: it sees the journal, the same records in the
/// same order, across a drain, a reboot and a resume.
#[test]
fn the_observer_is_told_of_every_journal_record_in_order() {
    use xenmaint::journal::Journal;
    use xenmaint::sequencer::{Observer, Record, RunState};
    struct Recorder(std::sync::Mutex<Vec<Record>>);
    impl Observer for Recorder {
        fn journaled(&self, rec: &Record, _: Option<&RunState>) {
            self.0.lock().unwrap().push(rec.clone());
        }
    }
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let seen = Recorder(std::sync::Mutex::new(Vec::new()));
    let s = Sequencer {
        observer: &seen,
        ..seq(&ts, &boot, t.path(), policy(t.path(), 2), &never)
    };
    let (id, _) = s.drain().unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    Sequencer {
        observer: &seen,
        ..seq(&after, &boot, t.path(), policy(t.path(), 2), &never)
    }
    .resume()
    .unwrap();
    let (_, journal) = Journal::<Record>::read(&s.run_dir(&id).join("journal")).unwrap();
    let seen = seen.0.into_inner().unwrap();
    let saves = |recs: &[Record]| {
        recs.iter()
            .filter(|r| {
                matches!(
                    r,
                    Record::Done {
                        step: Step::Save,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(saves(&seen), 3, "every guest's save was seen");
    assert!(matches!(seen.last(), Some(Record::Finished { .. })));
    assert_eq!(seen, journal);
}
