//! The host changes under the run, on the simulated host: guests created
//! after the plan or during the drain, a saved guest restored by hand, a
//! guest that shuts itself down or reboots itself mid-drain, a domain under
//! a guest's name at resume. The contract each time: nothing reboots while
//! a domain the run has not accounted for is in memory, and no guest ever
//! runs twice.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use xenmaint::boot::BootLoader;
use xenmaint::domain::{DomId, DomainState, Uuid};
use xenmaint::guest::{self, RestoreOptions};
use xenmaint::sequencer::{GuestState, Outcome, Phase, SeqError, Step};
use xenmaint::sim::{Sim, SimHost};
use xenmaint::toolstack::{Request, Toolstack};

mod common;

use common::run::*;

const LATE_UUID: &str = "6f1c00ff-5b2e-4d7a-9c3e-0a1b2c3d4eff";

/// A guest made from web-1's config (its own name, UUID, MAC and disk),
/// started on `ts` as an administrator's `xl create` would.
fn start_newcomer(ts: &Sim, h: &SimHost, dir: &Path, name: &str) -> DomId {
    let mut config = h
        .domains
        .iter()
        .find(|d| d.detail.info.name == "web-1")
        .and_then(|d| d.detail.config.clone())
        .unwrap();
    let disk = dir.join(format!("{name}.img"));
    std::fs::write(&disk, b"disk").unwrap();
    config["c_info"]["name"] = name.into();
    config["c_info"]["uuid"] = LATE_UUID.into();
    config["nics"][0]["mac"] = "00:16:3e:00:ff:ff".into();
    config["nics"][0]["ip"] = "192.0.2.250".into();
    config["disks"][0]["pdev_path"] = disk.display().to_string().into();
    let domid = ts.create(&config).unwrap();
    ts.unpause(domid).unwrap();
    domid
}

fn uuid_of(ts: &dyn Toolstack, name: &str) -> Uuid {
    ts.list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.name == name)
        .unwrap()
        .uuid
}

fn copies(ts: &dyn Toolstack, uuid: Uuid) -> usize {
    ts.list_domains()
        .unwrap()
        .iter()
        .filter(|d| d.uuid == uuid)
        .count()
}

/// Drains `ts` (one run, `lanes` at a time), then restores web-1 from the
/// run's image of it, as an administrator's `xl restore` would. Returns
/// web-1's UUID.
fn drained_then_web_restored_by_hand(
    ts: &Sim,
    boot: &dyn BootLoader,
    dir: &Path,
    lanes: usize,
) -> Uuid {
    let web = uuid_of(ts, "web-1");
    let (_, state) = seq(ts, boot, dir, policy(dir, lanes), &never)
        .drain()
        .unwrap();
    let Some(GuestState::Saved { image }) = state.guests.get(&web) else {
        panic!("web-1 not saved: {:?}", state.guests.get(&web))
    };
    guest::restore(ts, image, &RestoreOptions::default(), &|_| {}).unwrap();
    web
}

fn refused(r: Result<impl std::fmt::Debug, SeqError>, step: &str, naming: &str) {
    match r {
        Err(e @ SeqError::HostChanged { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with(&format!("{step} refused")), "{text}");
            assert!(text.contains(naming), "{text}");
        }
        other => panic!("{step}: want HostChanged naming {naming}, got {other:?}"),
    }
}

#[test]
fn a_guest_started_after_the_drain_blocks_patch_and_reboot_until_a_drain_takes_it_in() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let mut want = guests(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
    s.drain().unwrap();

    let late = start_newcomer(&ts, &h, t.path(), "late-1");
    want.extend(guests(&ts));
    refused(s.patch("true", "xen-new"), "patch", "\"late-1\"");
    assert_eq!(
        boot.next_entry().unwrap(),
        None,
        "nothing of the patch was done"
    );
    let marker = t.path().join("rebooted");
    let reboot = format!("touch {}", marker.display());
    refused(s.reboot(&reboot, None), "reboot", &format!("domain {late}"));
    assert!(!marker.exists(), "the reboot command never ran");
    let (_, state) = s.state().unwrap().unwrap();
    assert_eq!(state.phase, Phase::Drained, "the run is as it was");

    // A drain of the same run takes the newcomer in.
    let (_, state) = s.drain().unwrap();
    assert_eq!(state.phase, Phase::Drained);
    let uuid: Uuid = LATE_UUID.parse().unwrap();
    assert!(matches!(
        state.guests.get(&uuid),
        Some(GuestState::Saved { .. })
    ));
    assert_eq!(copies(&ts, uuid), 0);
    s.patch("true", "xen-new").unwrap();
    s.reboot(&reboot, None).unwrap();
    assert!(marker.exists());

    let after = rebooted(&h, &boot);
    let s2 = seq(&after, &boot, t.path(), policy(t.path(), 2), &never);
    let (_, done) = s2.resume().unwrap().unwrap();
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    assert_all_back(&after, &want, "after resume");
}

#[test]
fn a_guest_created_during_the_drain_halts_it_and_the_next_drain_takes_it_in() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let made = std::sync::Once::new();
    // Someone runs `xl create` while the drain saves its first guest.
    let f = |at: &str| {
        if at.starts_with("after begin Save") {
            made.call_once(|| {
                start_newcomer(&ts, &h, t.path(), "late-1");
            });
        }
        false
    };
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &f);
    refused(s.drain(), "drain", "\"late-1\"");
    let (_, state) = s.state().unwrap().unwrap();
    assert_eq!(state.phase, Phase::Halted);
    assert!(state.halted.unwrap().contains("late-1"));
    assert!(
        matches!(s.reboot("true", None), Err(SeqError::WrongPhase { .. })),
        "a halted run does not reboot"
    );
    let (_, state) = s.drain().unwrap();
    assert_eq!(state.phase, Phase::Drained);
    assert_eq!(guests(&ts).len(), 0, "every guest saved, the newcomer too");
}

#[test]
fn a_saved_guest_restored_by_hand_blocks_the_reboot_and_is_not_restored_again() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let web = drained_then_web_restored_by_hand(&ts, &boot, t.path(), 2);
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
    refused(s.reboot("true", None), "reboot", "\"web-1\"");
    assert!(
        refused_text(s.reboot("true", None)).contains("running again"),
        "says why"
    );

    // Rolled back: the others are restored, web-1 is left as it runs.
    let (_, done) = s.rollback().unwrap().unwrap();
    assert_eq!(done.outcome, Some(Outcome::RolledBack));
    assert!(matches!(
        done.guests.get(&web),
        Some(GuestState::Back {
            step: Step::Outside,
            ..
        })
    ));
    assert_all_back(&ts, &want, "after rollback");
}

fn refused_text(r: Result<(), SeqError>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn a_saved_guest_restored_by_hand_is_saved_again_by_the_next_drain_and_restored_once() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let web = drained_then_web_restored_by_hand(&ts, &boot, t.path(), 2);
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
    refused(s.patch("true", "xen-new"), "patch", "\"web-1\"");
    let (_, state) = s.drain().unwrap();
    assert_eq!(state.phase, Phase::Drained);
    assert!(matches!(
        state.guests.get(&web),
        Some(GuestState::Saved { .. })
    ));
    assert_eq!(copies(&ts, web), 0);
    s.patch("true", "xen-new").unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    let (_, done) = seq(&after, &boot, t.path(), policy(t.path(), 2), &never)
        .resume()
        .unwrap()
        .unwrap();
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    assert_all_back(&after, &want, "after resume");
}

#[test]
fn a_guest_that_shuts_itself_down_mid_drain_is_left_stopped_and_the_run_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let mut want = guests(&ts);
    let db = uuid_of(&ts, "db-1");
    let boot = boot_loader();
    // Its owner shuts db-1 down just as the run turns to it.
    let f = |at: &str| {
        if at == format!("after begin Save {db}") {
            let d = ts.find_uuid(db).unwrap().unwrap();
            ts.request(d.domid, Request::Shutdown).unwrap();
        }
        false
    };
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &f);
    let (_, state) = s.drain().unwrap();
    assert_eq!(state.phase, Phase::Drained, "not a failed drain");
    match state.guests.get(&db) {
        Some(GuestState::Gone { how }) => assert!(how.contains("during its step"), "{how}"),
        other => panic!("db-1: {other:?}"),
    }
    s.patch("true", "xen-new").unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    let (_, done) = seq(&after, &boot, t.path(), policy(t.path(), 1), &never)
        .resume()
        .unwrap()
        .unwrap();
    assert_eq!(done.outcome, Some(Outcome::Resumed));
    want.remove("db-1");
    assert_all_back(&after, &want, "the others back, db-1 left stopped");
}

#[test]
fn a_guest_that_reboots_itself_mid_drain_is_saved_as_its_new_domain() {
    let t = tempfile::tempdir().unwrap();
    let mut h = host(t.path());
    for d in &mut h.domains {
        d.xl_daemon = d.detail.info.domid != 0;
    }
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let web = uuid_of(&ts, "web-1");
    let before = ts.find_uuid(web).unwrap().unwrap().domid;
    let boot = boot_loader();
    let once = std::sync::Once::new();
    let f = |at: &str| {
        if at == format!("after begin Save {web}") {
            once.call_once(|| {
                let d = ts.find_uuid(web).unwrap().unwrap();
                ts.request(d.domid, Request::Reboot).unwrap();
            });
        }
        false
    };
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &f);
    let (_, state) = s.drain().unwrap();
    assert!(
        matches!(state.guests.get(&web), Some(GuestState::Saved { .. })),
        "{:?}",
        state.guests.get(&web)
    );
    // Saved as the domain its reboot made, not the one planned.
    let suspended: Vec<DomId> = ts.suspends().iter().map(|(d, _)| *d).collect();
    assert_eq!(suspended.len(), 3, "{suspended:?}");
    assert!(!suspended.contains(&before), "{suspended:?}");
    assert!(guests(&ts).is_empty());
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    seq(&after, &boot, t.path(), policy(t.path(), 1), &never)
        .resume()
        .unwrap();
    assert_all_back(&after, &want, "after resume");
}

#[test]
fn a_domain_under_a_guests_name_at_resume_is_never_joined_by_a_second_copy() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
    s.drain().unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&h, &boot);
    // Before the resume unit gets to it, someone starts a "web-1" of their own.
    start_newcomer(&after, &h, t.path(), "web-1");
    let s2 = seq(&after, &boot, t.path(), policy(t.path(), 2), &never);
    let e = s2.resume().unwrap_err();
    assert!(matches!(e, SeqError::Incomplete(1)), "{e}");
    let (_, state) = s2.state().unwrap().unwrap();
    let web = state
        .plan
        .guests
        .iter()
        .find(|g| g.name == "web-1")
        .unwrap()
        .uuid;
    match state.guests.get(&web) {
        Some(GuestState::Failed { error, .. }) => {
            assert!(error.contains("already runs under its name"), "{error}")
        }
        other => panic!("web-1: {other:?}"),
    }
    let named: Vec<_> = after
        .list_domains()
        .unwrap()
        .into_iter()
        .filter(|d| d.name == "web-1")
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(
        named[0].uuid.to_string(),
        LATE_UUID,
        "only the one started by hand"
    );
    assert!(matches!(
        named[0].state,
        DomainState::Running | DomainState::Blocked
    ));
}

/// A drained run, then a guest started by hand and a saved one restored by
/// hand: the host a second drain finds. Returns the guests that must run
/// once the run is over.
fn changed_after_drain(
    ts: &Sim,
    h: &SimHost,
    dir: &Path,
    boot: &dyn BootLoader,
) -> std::collections::BTreeMap<String, (Uuid, Vec<String>)> {
    let mut want = guests(ts);
    drained_then_web_restored_by_hand(ts, boot, dir, 1);
    start_newcomer(ts, h, dir, "late-1");
    want.extend(guests(ts));
    want
}

#[test]
fn a_crash_at_any_journal_write_of_a_drain_that_takes_guests_in_loses_no_guest() {
    let count = {
        let t = tempfile::tempdir().unwrap();
        let h = host(t.path());
        let ts = Sim::new(h.clone()).unwrap();
        let boot = boot_loader();
        changed_after_drain(&ts, &h, t.path(), &boot);
        let count = CrashAt::new(usize::MAX);
        let f = |w: &str| count.hit(w);
        seq(&ts, &boot, t.path(), policy(t.path(), 1), &f)
            .drain()
            .unwrap();
        count.seen.into_inner()
    };
    // Outside and image removal, the join, two saves, the end: each either side.
    assert!(count >= 10, "saw {count} failpoints");
    for k in 0..count {
        for power_cut in [false, true] {
            let t = tempfile::tempdir().unwrap();
            let h = host(t.path());
            let ts = Sim::new(h.clone()).unwrap();
            let boot = boot_loader();
            let mut want = changed_after_drain(&ts, &h, t.path(), &boot);
            let crash = CrashAt::new(k);
            let f = |w: &str| crash.hit(w);
            let e = seq(&ts, &boot, t.path(), policy(t.path(), 1), &f).drain();
            assert!(matches!(e, Err(SeqError::Crashed(_))), "k={k}: {e:?}");
            let ctx = format!("crash at failpoint {k}, power cut: {power_cut}");
            let host_now = if power_cut { rebooted(&h, &boot) } else { ts };
            let s = seq(&host_now, &boot, t.path(), policy(t.path(), 1), &never);
            let r = if power_cut { s.resume() } else { s.rollback() };
            if let Err(e) = r {
                panic!("{ctx}: {e}");
            }
            let late: Uuid = LATE_UUID.parse().unwrap();
            let joined = s
                .state()
                .unwrap()
                .unwrap()
                .1
                .plan
                .guests
                .iter()
                .any(|g| g.uuid == late);
            if power_cut && !joined {
                // Cut before the run took it in: the run never had it, and
                // a power cut takes it, as it would without xenmaint.
                want.remove("late-1");
            }
            assert_all_back(&host_now, &want, &ctx);
        }
    }
}

#[test]
fn a_guest_paused_by_hand_mid_drain_fails_its_save_and_is_kept_paused_not_destroyed() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let web = uuid_of(&ts, "web-1");
    let domid = ts.find_uuid(web).unwrap().unwrap().domid;
    let first = AtomicBool::new(true);
    let boot = boot_loader();
    // Someone pauses web-1 (`xl pause`) while the drain saves another
    // guest. A paused PV guest cannot answer the suspend request: its save
    // fails, and the run rolls back.
    let f = |at: &str| {
        if at.starts_with("after begin Save")
            && !at.ends_with(&web.to_string())
            && first.swap(false, Ordering::SeqCst)
        {
            ts.pause(domid).unwrap();
        }
        false
    };
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 1), &f);
    let e = s.drain().unwrap_err();
    assert!(matches!(e, SeqError::DrainFailed { failed: 1, .. }), "{e}");
    let (_, state) = s.state().unwrap().unwrap();
    assert_eq!(state.outcome, Some(Outcome::RolledBack));
    // The same domain, still paused: its memory state kept, not destroyed
    // and cold booted by the rollback.
    let now = ts.find_uuid(web).unwrap().unwrap();
    assert_eq!((now.domid, now.state), (domid, DomainState::Paused));
    assert!(matches!(
        state.guests.get(&web),
        Some(GuestState::Back {
            step: Step::Kept,
            ..
        })
    ));
    ts.unpause(domid).unwrap();
    assert_all_back(&ts, &want, "after the rollback, web-1 unpaused");
}

/// A run that leaves its saved guests suspended (`leave_suspended`) still
/// takes a newcomer in on its next drain: the suspended domains it made are
/// its own, not blockers, though the plan now calls them suspended.
#[test]
fn a_drain_again_is_not_blocked_by_the_guests_the_run_left_suspended() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let mut p = policy(t.path(), 2);
    p.leave_suspended = true;
    let s = seq(&ts, &boot, t.path(), p.clone(), &never);
    let (_, first) = s.drain().unwrap();
    let suspended = ts
        .list_domains()
        .unwrap()
        .into_iter()
        .filter(|d| d.state == DomainState::Shutdown)
        .count();
    assert_eq!(
        suspended,
        first.guests.len(),
        "each saved guest left suspended"
    );
    let planned = xenmaint::plan::plan(&ts, &p, &ROOMY).unwrap();
    assert!(planned.blocked(), "a fresh plan sees suspended domains");

    start_newcomer(&ts, &h, t.path(), "late-1");
    let (_, state) = s.drain().unwrap();
    assert_eq!(state.phase, Phase::Drained);
    let uuid: Uuid = LATE_UUID.parse().unwrap();
    assert!(matches!(
        state.guests.get(&uuid),
        Some(GuestState::Saved { .. })
    ));
    for (u, g) in &first.guests {
        assert_eq!(state.guests.get(u), Some(g), "not drained a second time");
    }
}

/// A guest the run saved, restored by hand and left paused (`xl restore
/// -p`), is in memory again: a drain of the run refuses on it (the plan's
/// "is paused") before touching anything, rather than passing over it and
/// halting later on a guest it never looked at.
#[test]
fn a_saved_guest_restored_paused_by_hand_stops_the_next_drain_up_front() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let ts = Sim::new(h.clone()).unwrap();
    let boot = boot_loader();
    let s = seq(&ts, &boot, t.path(), policy(t.path(), 2), &never);
    let web = uuid_of(&ts, "web-1");
    let (_, drained) = s.drain().unwrap();
    let Some(GuestState::Saved { image }) = drained.guests.get(&web) else {
        panic!("web-1 not saved")
    };
    guest::restore(
        &ts,
        image,
        &RestoreOptions {
            paused: true,
            ..Default::default()
        },
        &|_| {},
    )
    .unwrap();
    start_newcomer(&ts, &h, t.path(), "late-1");
    assert!(matches!(s.drain(), Err(SeqError::PlanBlocked)));
    let (_, state) = s.state().unwrap().unwrap();
    assert_eq!(state.guests, drained.guests, "nothing recorded");
    assert_eq!(
        copies(&ts, LATE_UUID.parse().unwrap()),
        1,
        "the newcomer untouched"
    );
}
