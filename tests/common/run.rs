//! The maintenance run's test harness on the simulator: a host, its boot
//! loader, a sequencer over them, and the contract's checks, shared by the
//! test crates that drive runs.
#![allow(dead_code)] // not every test crate that includes `common` uses it

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use xenmaint::address::Neighbour;
use xenmaint::boot::{BootEntry, BootLoader, MemoryBoot};
use xenmaint::domain::{DomainState, Uuid};
use xenmaint::guest::PowerOptions;
use xenmaint::plan::{Concurrency, HostFacts, Policy};
use xenmaint::sequencer::{Sequencer, Unobserved};
use xenmaint::sim::{Sim, SimHost};
use xenmaint::toolstack::Toolstack;

/// A host with room for every image, a neighbour table, some addresses that
/// never answer, and a record of every probe; its guests' disks are all
/// there, or (`real_disks`) where this machine's file system has them, each
/// check recorded.
#[derive(Default)]
pub struct Probed {
    pub neighbours: Vec<Neighbour>,
    pub silent: Vec<IpAddr>,
    pub probes: Mutex<Vec<IpAddr>>,
    pub real_disks: bool,
    pub disk_checks: Mutex<Vec<PathBuf>>,
}
/// The usual host: no neighbours to read, every address answers.
pub static ROOMY: Probed = Probed {
    neighbours: Vec::new(),
    silent: Vec::new(),
    probes: Mutex::new(Vec::new()),
    real_disks: false,
    disk_checks: Mutex::new(Vec::new()),
};

impl HostFacts for Probed {
    fn free_bytes(&self, _: &Path) -> std::io::Result<u64> {
        Ok(1 << 40)
    }
    fn xendomains_conflict(&self, _: bool) -> Option<String> {
        None
    }
    fn neighbours(&self) -> Vec<Neighbour> {
        self.neighbours.clone()
    }
    fn probe(&self, ip: IpAddr, _: Duration) -> bool {
        self.probes.lock().unwrap().push(ip);
        !self.silent.contains(&ip)
    }
    fn disk_present(&self, path: &Path) -> bool {
        self.disk_checks.lock().unwrap().push(path.to_path_buf());
        !self.real_disks || path.exists()
    }
}

pub fn host(dir: &Path) -> SimHost {
    super::example_host(dir)
}

/// The same host after a reboot: only dom0 runs, on whichever hypervisor
/// the boot loader picked.
pub fn rebooted(before: &SimHost, boot: &MemoryBoot) -> Sim {
    let mut h = before.clone();
    h.domains.retain(|d| d.detail.info.domid == 0);
    h.faults.clear();
    if boot.boot().as_deref() == Some("xen-new") {
        h.hypervisor.extra = ".7".into();
        h.hypervisor.build_id = Some("77777777".into());
    }
    Sim::new(h).unwrap()
}

pub fn boot_loader() -> MemoryBoot {
    let b = MemoryBoot::default();
    b.state.lock().unwrap().entries = vec![
        BootEntry {
            id: "xen".into(),
            title: "Xen 4.17 (package)".into(),
            hypervisor: Some("/boot/xen-4.17-amd64.gz".into()),
        },
        BootEntry {
            id: "xen-new".into(),
            title: "Xen 4.17.7".into(),
            hypervisor: Some("/boot/xen-4.17.7-amd64.gz".into()),
        },
    ];
    b.commit("xen").unwrap();
    // What rebooted() boots for xen-new: the build the patched image holds.
    b.state
        .lock()
        .unwrap()
        .build_ids
        .insert("xen-new".into(), "77777777".into());
    b
}

pub fn policy(dir: &Path, concurrency: usize) -> Policy {
    Policy {
        image_dir: dir.join("state/images"),
        concurrency: Concurrency::Lanes(concurrency),
        ..Policy::default()
    }
}

pub fn power() -> PowerOptions {
    PowerOptions {
        wait: true,
        timeout: Duration::from_millis(300),
        force: true,
        poll: Duration::from_millis(5),
        reap_grace: Duration::ZERO,
    }
}

pub fn never(_: &str) -> bool {
    false
}

pub fn seq<'a>(
    ts: &'a dyn Toolstack,
    boot: &'a dyn BootLoader,
    dir: &Path,
    policy: Policy,
    failpoint: &'a (dyn Fn(&str) -> bool + Sync),
) -> Sequencer<'a> {
    Sequencer {
        ts,
        boot,
        facts: &ROOMY,
        policy,
        state_dir: dir.join("state"),
        lock_path: dir.join("run/xenmaint.lock"),
        power: power(),
        failpoint,
        stop: &NO_STOP,
        observer: &Unobserved,
    }
}

pub static NO_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// name -> (uuid, MACs) of the guests (dom0 excluded).
pub fn guests(ts: &dyn Toolstack) -> BTreeMap<String, (Uuid, Vec<String>)> {
    ts.list_domains()
        .unwrap()
        .into_iter()
        .filter(|d| d.domid != 0)
        .map(|d| {
            let macs = ts
                .domain_detail(d.domid)
                .unwrap()
                .nics
                .iter()
                .map(|n| n.mac.to_string())
                .collect();
            (d.name, (d.uuid, macs))
        })
        .collect()
}

/// The contract after a run ends: every guest runs, once, as it was.
pub fn assert_all_back(
    ts: &dyn Toolstack,
    want: &BTreeMap<String, (Uuid, Vec<String>)>,
    ctx: &str,
) {
    let list = ts.list_domains().unwrap();
    for (name, (uuid, _)) in want {
        let copies: Vec<_> = list.iter().filter(|d| d.uuid == *uuid).collect();
        assert_eq!(copies.len(), 1, "{ctx}: {name} runs {} times", copies.len());
        assert!(
            matches!(copies[0].state, DomainState::Running | DomainState::Blocked),
            "{ctx}: {name} is {}",
            copies[0].state
        );
    }
    assert_eq!(&guests(ts), want, "{ctx}");
}

/// Counts journal writes and crashes at the n-th.
pub struct CrashAt {
    n: usize,
    pub seen: AtomicUsize,
}

impl CrashAt {
    pub fn new(n: usize) -> CrashAt {
        CrashAt {
            n,
            seen: AtomicUsize::new(0),
        }
    }
    pub fn hit(&self, _: &str) -> bool {
        self.seen.fetch_add(1, Ordering::SeqCst) == self.n
    }
}

/// The example host after a run drained it with `policy` and rebooted it
/// (no patch): where a resume starts.
pub struct Rebooted {
    /// The host after the reboot: only dom0 runs.
    pub after: Sim,
    /// The guests before the drain.
    pub want: BTreeMap<String, (Uuid, Vec<String>)>,
    pub boot: MemoryBoot,
}

pub fn drained_and_rebooted(dir: &Path, policy: Policy) -> Rebooted {
    let h = host(dir);
    let ts = Sim::new(h.clone()).unwrap();
    let want = guests(&ts);
    let boot = boot_loader();
    let s = seq(&ts, &boot, dir, policy, &never);
    s.drain().unwrap();
    s.reboot("true", None).unwrap();
    Rebooted {
        after: rebooted(&h, &boot),
        want,
        boot,
    }
}
