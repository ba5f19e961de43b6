//! Every state a guest can be in when a run starts, on the simulated host:
//! the drain refuses before it touches anything unless the policy chose
//! what happens to the guest, and with that choice the whole run (drain,
//! reboot, resume) brings every other guest back and does what was chosen.

use std::collections::BTreeMap;

use xenmaint::boot::MemoryBoot;
use xenmaint::condition::Condition;
use xenmaint::domain::{DomainInfo, DomainState, ShutdownReason};
use xenmaint::guest::{self, OpError, SaveOptions};
use xenmaint::plan::{Action, GuestPolicy, KeptChoice, PausedChoice, Policy};
use xenmaint::sequencer::{GuestState, Outcome, RunState, SeqError, Sequencer, Step};
use xenmaint::sim::{Fault, Sim, SimDomain, SimHost};
use xenmaint::toolstack::{Call, Toolstack};

mod common;

use common::run::*;

/// The example host with web-1 put in `condition`.
fn with_web(h: &SimHost, condition: Condition) -> Sim {
    let mut h = h.clone();
    let web: &mut SimDomain = h
        .domains
        .iter_mut()
        .find(|d| d.detail.info.name == "web-1")
        .unwrap();
    let info = &mut web.detail.info;
    match condition {
        Condition::Saveable => {}
        Condition::Paused => info.state = DomainState::Paused,
        Condition::Preserved => {
            info.state = DomainState::Shutdown;
            info.shutdown_reason = Some(ShutdownReason::Poweroff);
        }
        Condition::Crashed => {
            info.state = DomainState::Crashed;
            info.shutdown_reason = Some(ShutdownReason::Crash);
        }
        Condition::Suspended => {
            info.state = DomainState::Shutdown;
            info.shutdown_reason = Some(ShutdownReason::Suspend);
        }
        Condition::Dying => info.state = DomainState::Dying,
        Condition::Migrating => info.name = "web-1--incoming".into(),
        Condition::NoSuspend => web.no_suspend = true,
    }
    Sim::new(h).unwrap()
}

const NOT_SAVEABLE: [Condition; 7] = [
    Condition::Paused,
    Condition::Preserved,
    Condition::Crashed,
    Condition::Suspended,
    Condition::Dying,
    Condition::Migrating,
    Condition::NoSuspend,
];

/// What every domain is now: name -> (state, domid).
fn domains(ts: &dyn Toolstack) -> BTreeMap<String, (DomainState, u32)> {
    ts.list_domains()
        .unwrap()
        .into_iter()
        .map(|d| (d.name, (d.state, d.domid)))
        .collect()
}

#[test]
fn the_drain_refuses_before_touching_anything() {
    for c in NOT_SAVEABLE {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        let ts = with_web(&h, c);
        let before = domains(&ts);
        let boot = boot_loader();
        let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
        assert!(
            matches!(s.drain(), Err(SeqError::PlanBlocked)),
            "{c:?}: the drain must refuse"
        );
        assert_eq!(domains(&ts), before, "{c:?}: nothing touched");
        assert!(s.state().unwrap().is_none(), "{c:?}: no run begun");
    }
}

/// With the policy's choice (skip; shutdown for a guest that cannot
/// suspend) the run goes through: the chosen guest is not saved, every
/// other one is back after the reboot, once.
#[test]
fn with_the_policy_s_choice_the_run_brings_the_others_back() {
    for c in NOT_SAVEABLE {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        let ts = with_web(&h, c);
        let name = if c == Condition::Migrating {
            "web-1--incoming"
        } else {
            "web-1"
        };
        let action = if c == Condition::NoSuspend {
            Action::Shutdown
        } else {
            Action::Skip
        };
        let mut p: Policy = policy(t.path(), 2);
        p.guests.insert(
            name.into(),
            GuestPolicy {
                action: Some(action),
                priority: 0,
            },
        );
        let mut want = guests(&ts);
        if action == Action::Skip {
            want.remove(name);
        }
        let boot = boot_loader();
        let s = seq(&ts, &boot, t.path(), p.clone(), &never);
        let (_, drained) = s.drain().unwrap_or_else(|e| panic!("{c:?}: {e}"));
        let web = drained.plan.guests.iter().find(|g| g.name == name).unwrap();
        assert_eq!(web.condition, c, "the run's plan records it");
        if action == Action::Shutdown {
            assert_eq!(drained.guests.get(&web.uuid), Some(&GuestState::ShutDown));
        }
        let (after, done) = patched_and_resumed(&s, &h, &boot, t.path(), p);
        assert_eq!(done.outcome, Some(Outcome::Resumed), "{c:?}");
        assert_all_back(&after, &want, &format!("{c:?}"));
    }
}

/// The example host with web-1 in `c`: its folder, the host as built, the
/// simulator, web-1 as it is, and the other guests as they are.
fn web_in(c: Condition) -> (tempfile::TempDir, SimHost, Sim, DomainInfo, Guests) {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = with_web(&h, c);
    let web = ts.resolve(&"web-1".parse().unwrap()).unwrap();
    let mut others = guests(&ts);
    others.remove("web-1");
    (t, h, ts, web, others)
}

/// The rest of a run drained by `s`: patched, rebooted into the patch, and
/// resumed on the host that booted (returned, with the run's end state).
fn patched_and_resumed(
    s: &Sequencer,
    before: &SimHost,
    boot: &MemoryBoot,
    dir: &std::path::Path,
    p: Policy,
) -> (Sim, RunState) {
    s.patch("true", "xen-new").unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(before, boot);
    let (_, done) = seq(&after, boot, dir, p, &never).resume().unwrap().unwrap();
    (after, done)
}

type Guests = BTreeMap<String, (xenmaint::domain::Uuid, Vec<String>)>;

/// `paused = "save"`: the paused guest is unpaused for the suspend
/// handshake only, saved, and after the reboot restored paused from its
/// image (not cold booted), never probed at its addresses (it cannot
/// answer); the others come back running.
#[test]
fn a_paused_guest_is_saved_and_comes_back_paused() {
    let (t, h, ts, web, want) = web_in(Condition::Paused);
    let p = Policy {
        paused: PausedChoice::Save,
        ..policy(t.path(), 2)
    };
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), p.clone(), &never);
    let (_, drained) = s.drain().unwrap();
    assert!(
        matches!(drained.guests[&web.uuid], GuestState::Saved { .. }),
        "{:?}",
        drained.guests[&web.uuid]
    );
    assert!(
        ts.suspends().iter().any(|(d, _)| *d == web.domid),
        "suspended through the handshake: {:?}",
        ts.suspends()
    );
    let (after, done) = patched_and_resumed(&s, &h, &boot, t.path(), p);
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    assert!(
        matches!(
            done.guests[&web.uuid],
            GuestState::Back {
                step: Step::Restore,
                ..
            }
        ),
        "{:?}",
        done.guests[&web.uuid]
    );
    let now = after.find_uuid(web.uuid).unwrap().expect("web-1 is back");
    assert_eq!(now.state, DomainState::Paused, "back paused, as it was");
    assert!(done.verified[&web.uuid].ok(), "not probed while paused");
    after.destroy(now.domid).unwrap();
    assert_all_back(&after, &want, "the others");
}

/// A save of a paused guest that fails pauses it again once resumed: the
/// administrator finds it as they left it, and the error says so.
#[test]
fn a_failed_save_of_a_paused_guest_leaves_it_paused() {
    let t = tempfile::tempdir().unwrap();
    let ts = with_web(&host(t.path()), Condition::Paused);
    ts.inject(Fault {
        call: Call::Save,
        domid: None,
        message: "disk full".into(),
        times: None,
    });
    let opts = SaveOptions {
        paused_ok: true,
        ..common::save_opts(t.path())
    };
    let e = guest::save(&ts, &"web-1".parse().unwrap(), &opts, &|_| {}).unwrap_err();
    assert!(e.to_string().contains("paused again"), "{e}");
    assert_eq!(domains(&ts)["web-1"].0, DomainState::Paused);
    let refused = guest::save(
        &ts,
        &"web-1".parse().unwrap(),
        &common::save_opts(t.path()),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(refused, OpError::Paused(_)), "{refused}");
}

/// `kept = "dump"`: a domain kept after a poweroff or a crash has its core
/// written to the run's image directory, durable, then is destroyed; the
/// run goes on, and the resume brings the others back and not it.
#[test]
fn a_kept_domain_is_dumped_and_not_brought_back() {
    for c in [Condition::Preserved, Condition::Crashed] {
        let (t, h, ts, web, want) = web_in(c);
        let uuid = web.uuid;
        let p = Policy {
            kept: KeptChoice::Dump,
            ..policy(t.path(), 2)
        };
        let boot = boot_loader();
        let s = seq(&ts, &boot, t.path(), p.clone(), &never);
        let (id, drained) = s.drain().unwrap_or_else(|e| panic!("{c:?}: {e}"));
        let core = p.image_dir.join(&id).join(format!("{uuid}.core"));
        assert_eq!(
            drained.guests[&uuid],
            GuestState::Dumped { core: core.clone() },
            "{c:?}"
        );
        let text = std::fs::read_to_string(&core).unwrap();
        assert!(text.contains("core of web-1"), "{text}");
        assert!(ts.find_uuid(uuid).unwrap().is_none(), "{c:?}: destroyed");
        let (after, done) = patched_and_resumed(&s, &h, &boot, t.path(), p);
        assert_eq!(done.outcome, Some(Outcome::Resumed), "{c:?}");
        assert_all_back(&after, &want, &format!("{c:?}"));
        assert!(core.exists(), "{c:?}: the core outlives the run");
    }
}

/// "dump" given to a guest that runs is a plan error: a running guest is
/// saved or shut down, never dumped and destroyed.
#[test]
fn dump_is_refused_for_a_running_guest() {
    let t = tempfile::tempdir().unwrap();
    let ts = with_web(&host(t.path()), Condition::Saveable);
    let mut p: Policy = policy(t.path(), 2);
    p.guests.insert(
        "web-1".into(),
        GuestPolicy {
            action: Some(Action::Dump),
            priority: 0,
        },
    );
    let before = domains(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), p, &never);
    assert!(matches!(s.drain(), Err(SeqError::PlanBlocked)));
    assert_eq!(domains(&ts), before);
}

/// A crash at every journal write of a run that dumps a crashed domain:
/// rollback (no power cut) or resume (power cut) brings every other guest
/// back, and the dumped domain is never started from an image or config.
#[test]
fn a_crash_at_any_point_of_a_dump_loses_nothing() {
    let p = |dir: &std::path::Path| Policy {
        kept: KeptChoice::Dump,
        ..policy(dir, 1)
    };
    let count = {
        let t = tempfile::tempdir().unwrap();
        let ts = with_web(&host(t.path()), Condition::Crashed);
        let boot = boot_loader();
        let count = CrashAt::new(usize::MAX);
        let f = |w: &str| count.hit(w);
        seq(&ts, &boot, t.path(), p(t.path()), &f).drain().unwrap();
        count.seen.into_inner()
    };
    assert!(count >= 4, "saw {count} failpoints");
    for k in 0..count {
        for power_cut in [false, true] {
            let (t, h, ts, web, want) = web_in(Condition::Crashed);
            let web = web.uuid;
            let boot = boot_loader();
            let crash = CrashAt::new(k);
            let f = |w: &str| crash.hit(w);
            let e = seq(&ts, &boot, t.path(), p(t.path()), &f).drain();
            assert!(matches!(e, Err(SeqError::Crashed(_))), "k={k}: {e:?}");
            let ctx = format!("crash at failpoint {k}, power cut: {power_cut}");
            let host_now = if power_cut { rebooted(&h, &boot) } else { ts };
            let s = seq(&host_now, &boot, t.path(), p(t.path()), &never);
            let r = if power_cut { s.resume() } else { s.rollback() };
            if let Err(e) = r {
                panic!("{ctx}: {e}");
            }
            let running = host_now
                .find_uuid(web)
                .unwrap()
                .filter(|d| matches!(d.state, DomainState::Running | DomainState::Blocked));
            assert!(running.is_none(), "{ctx}: the dumped domain was started");
            let mut others = guests(&host_now);
            others.remove("web-1");
            assert_eq!(others, want, "{ctx}");
        }
    }
}

/// `dying_wait_s`: a drain waits for a dying domain to go, then plans
/// without it; one that stays dying blocks the drain once the wait is up.
#[test]
fn a_dying_domain_is_waited_for_within_a_bound() {
    let t = tempfile::tempdir().unwrap();
    let ts = with_web(&host(t.path()), Condition::Dying);
    let web = ts.resolve(&"web-1".parse().unwrap()).unwrap();
    let boot = boot_loader();
    let p = Policy {
        dying_wait_s: 0.3,
        ..policy(t.path(), 2)
    };
    let started = std::time::Instant::now();
    let s = seq(&ts, &boot, t.path(), p.clone(), &never);
    assert!(matches!(s.drain(), Err(SeqError::PlanBlocked)));
    assert!(started.elapsed().as_secs_f64() >= 0.3, "waited its bound");
    let p = Policy {
        dying_wait_s: 30.0,
        ..p
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            ts.destroy(web.domid).unwrap();
        });
        let s = seq(&ts, &boot, t.path(), p, &never);
        let (_, drained) = s.drain().unwrap();
        assert!(!drained.plan.guests.iter().any(|g| g.uuid == web.uuid));
    });
}

/// A paused guest saved and left suspended (`leave_suspended`), then the
/// run rolled back without a reboot: resumed in place, and paused again.
#[test]
fn a_paused_guest_left_suspended_is_paused_again_by_a_rollback() {
    let (t, _, ts, web, want) = web_in(Condition::Paused);
    let p = Policy {
        paused: PausedChoice::Save,
        leave_suspended: true,
        ..policy(t.path(), 2)
    };
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), p, &never);
    s.drain().unwrap();
    let (_, done) = s.rollback().unwrap().unwrap();
    assert_eq!(done.outcome, Some(Outcome::RolledBack));
    let now = ts.find_uuid(web.uuid).unwrap().unwrap();
    assert_eq!(now.domid, web.domid, "resumed in place");
    assert_eq!(now.state, DomainState::Paused, "paused again, as it was");
    ts.destroy(now.domid).unwrap();
    assert_all_back(&ts, &want, "the others");
}

/// `dump_core` takes only a domain kept stopped: one that runs, or one
/// shut down for a save (another tool's), is refused and left as it is; a
/// dump libxl fails leaves the domain kept and no file behind.
#[test]
fn a_dump_is_refused_or_fails_without_losing_the_domain() {
    let t = tempfile::tempdir().unwrap();
    let core = t.path().join("web-1.core");
    for c in [Condition::Saveable, Condition::Suspended] {
        let ts = with_web(&host(t.path()), c);
        let web = ts.resolve(&"web-1".parse().unwrap()).unwrap();
        let e = guest::dump_core(&ts, web.domid, &core).unwrap_err();
        assert!(matches!(e, OpError::NotKept { .. }), "{c:?}: {e}");
        assert_eq!(domains(&ts)["web-1"].0, web.state, "{c:?}: untouched");
        assert!(!core.exists());
    }
    let ts = with_web(&host(t.path()), Condition::Crashed);
    ts.inject(Fault {
        call: Call::CoreDump,
        domid: None,
        message: "no space left on device".into(),
        times: None,
    });
    let web = ts.resolve(&"web-1".parse().unwrap()).unwrap();
    let e = guest::dump_core(&ts, web.domid, &core).unwrap_err();
    assert!(e.to_string().contains("no space left"), "{e}");
    assert_eq!(domains(&ts)["web-1"].0, DomainState::Crashed, "still kept");
    assert_eq!(
        std::fs::read_dir(t.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("core")
            })
            .count(),
        0,
        "no core or partial left"
    );
}

/// A dump that fails in a run fails the drain like a failed save: the run
/// rolls back, the others run again, the crashed domain is still kept.
#[test]
fn a_failed_dump_rolls_the_run_back_and_keeps_the_domain() {
    let (t, _, ts, web, want) = web_in(Condition::Crashed);
    ts.inject(Fault {
        call: Call::CoreDump,
        domid: None,
        message: "no space left on device".into(),
        times: None,
    });
    let p = Policy {
        kept: KeptChoice::Dump,
        ..policy(t.path(), 2)
    };
    let boot = boot_loader();
    let e = seq(&ts, &boot, t.path(), p, &never).drain().unwrap_err();
    assert!(matches!(e, SeqError::DrainFailed { failed: 1, .. }), "{e}");
    assert_eq!(
        ts.find_uuid(web.uuid).unwrap().map(|d| d.state),
        Some(DomainState::Crashed)
    );
    let mut others = guests(&ts);
    others.remove("web-1");
    assert_eq!(others, want, "the others, as they were");
    for (name, (state, _)) in domains(&ts) {
        if name != "web-1" && name != "Domain-0" {
            assert!(
                matches!(state, DomainState::Running | DomainState::Blocked),
                "{name} is {state}"
            );
        }
    }
}
