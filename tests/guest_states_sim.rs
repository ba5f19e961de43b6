//! Every state a guest can be in when a run starts, on the simulated host:
//! the drain refuses before it touches anything unless the policy chose
//! what happens to the guest, and with that choice the whole run (drain,
//! reboot, resume) brings every other guest back and does what was chosen.

use std::collections::BTreeMap;

use xenmaint::condition::Condition;
use xenmaint::domain::{DomainState, ShutdownReason};
use xenmaint::plan::{Action, GuestPolicy, Policy};
use xenmaint::sequencer::{GuestState, Outcome, SeqError};
use xenmaint::sim::{Sim, SimDomain, SimHost};
use xenmaint::toolstack::Toolstack;

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
        s.patch("true", "xen-new").unwrap();
        s.reboot("true", None).unwrap();
        let after = rebooted(&h, &boot);
        let s2 = seq(&after, &boot, t.path(), p, &never);
        let (_, done) = s2.resume().unwrap().unwrap();
        assert_eq!(done.outcome, Some(Outcome::Resumed), "{c:?}");
        assert_all_back(&after, &want, &format!("{c:?}"));
    }
}
