//! Each guest's maintenance notice through a run, on the simulator: the
//! host's schedule carried on to every guest brought back, `completed` once
//! it passed its checks and `active` while it has not, and a notice that
//! cannot be written never stopping the run.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use common::run::*;
use serde_json::Value;
use xenmaint::notice;
use xenmaint::plan::Policy;
use xenmaint::sequencer::Outcome;
use xenmaint::sim::{Fault, Sim};
use xenmaint::toolstack::{Call, Toolstack};

/// The notices of the guests on `ts`, by name.
fn notices(ts: &dyn Toolstack) -> Vec<(String, Option<Value>)> {
    ts.list_domains()
        .unwrap()
        .into_iter()
        .filter(|d| d.domid != 0)
        .map(|d| {
            let n = ts.notice(d.domid).unwrap();
            (d.name, n.map(|t| serde_json::from_str(&t).unwrap()))
        })
        .collect()
}

/// drain, reboot (no patch), resume with `facts`: the host after it, and
/// the run's outcome (None when the resume ended in an error: a guest that
/// failed its checks).
fn cycle(dir: &Path, ts: &Sim, facts: &Probed) -> (Sim, Option<Outcome>) {
    let boot = boot_loader();
    // A silent guest is given up on at once.
    let p = Policy {
        verify_s: 0.2,
        ..policy(dir, 2)
    };
    let s = seq(ts, &boot, dir, p.clone(), &never);
    s.drain().unwrap();
    s.reboot("true", None).unwrap();
    let after = rebooted(&ts.snapshot(), &boot);
    let mut s2 = seq(&after, &boot, dir, p, &never);
    s2.facts = facts;
    let outcome = s2
        .resume()
        .ok()
        .flatten()
        .and_then(|(_, done)| done.outcome);
    (after, outcome)
}

#[test]
fn each_guest_brought_back_is_told_under_the_hosts_schedule_completed_once_checked() {
    let t = tempfile::tempdir().unwrap();
    let schedule = notice::schedule("XSA-999", "+1h", "+3h", SystemTime::now()).unwrap();
    notice::store(&t.path().join("state"), Some(&schedule)).unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    // web-1 does not answer after the reboot: it fails its checks.
    let silent = Probed {
        silent: vec!["10.0.2.21".parse::<IpAddr>().unwrap()],
        ..Probed::default()
    };
    let (after, _) = cycle(t.path(), &ts, &silent);
    for (name, n) in notices(&after) {
        let e = &n.unwrap_or_else(|| panic!("{name} was not told"))[0];
        assert_eq!(e["EventId"], schedule.event_id.as_str(), "{name}");
        assert_eq!(e["NotBefore"], schedule.not_before.as_str(), "{name}");
        assert_eq!(e["Code"], "system-maintenance", "{name}");
        let want = if name == "web-1" {
            "active"
        } else {
            "completed"
        };
        assert_eq!(e["State"], want, "{name}");
    }
    assert_eq!(
        notice::load(&t.path().join("state")).unwrap(),
        None,
        "the finished run used the schedule up"
    );
}

#[test]
fn without_a_schedule_each_guest_is_told_of_the_runs_own_window() {
    let t = tempfile::tempdir().unwrap();
    let ts = Sim::new(host(t.path())).unwrap();
    let (after, outcome) = cycle(t.path(), &ts, &Probed::default());
    assert_eq!(outcome, Some(Outcome::Resumed));
    let run = std::fs::read_to_string(t.path().join("state/current")).unwrap();
    for (name, n) in notices(&after) {
        let e = &n.unwrap_or_else(|| panic!("{name} was not told"))[0];
        assert_eq!(e["EventId"], format!("xenmaint-{}", run.trim()), "{name}");
        assert_eq!(e["State"], "completed", "{name}");
    }
}

#[test]
fn a_notice_that_cannot_be_written_never_stops_the_run() {
    let t = tempfile::tempdir().unwrap();
    let mut h = host(t.path());
    h.faults.push(Fault {
        call: Call::Notice,
        domid: None,
        message: "xenstored quota".into(),
        times: None,
    });
    let ts = Sim::new(h).unwrap();
    let want = guests(&ts);
    let (after, outcome) = cycle(t.path(), &ts, &Probed::default());
    assert_eq!(outcome, Some(Outcome::Resumed));
    assert_all_back(&after, &want, "with every notice failing");
}
