//! The sequencer's own cost at fleet scale, on the simulator (not Xen: the
//! simulated toolstack does no guest work, so what is measured is planning,
//! journaling, image bookkeeping and the lanes). 10,000 guests are planned,
//! drained, rebooted and resumed; the process's CPU time (user + system,
//! all threads) is printed per phase. Target (issue 7): under 1 s in all.
//!
//!     cargo bench --bench sequencer_scale [-- GUESTS [CONCURRENCY]]
//!
//! The state and image directories live on tmpfs (/dev/shm when present):
//! the figure is the sequencer's CPU, not a disk's fsync latency.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use xenmaint::address::Neighbour;
use xenmaint::boot::{BootEntry, BootLoader, MemoryBoot};
use xenmaint::guest::PowerOptions;
use xenmaint::plan::{self, HostFacts, Policy};
use xenmaint::sequencer::{Outcome, Sequencer};
use xenmaint::sim::Sim;
use xenmaint::toolstack::Toolstack;

#[path = "../tests/common/mod.rs"]
mod common;

struct Roomy;
impl HostFacts for Roomy {
    fn free_bytes(&self, _: &Path) -> std::io::Result<u64> {
        Ok(1 << 50)
    }
    fn xendomains_conflict(&self, _: bool) -> Option<String> {
        None
    }
    fn neighbours(&self) -> Vec<Neighbour> {
        Vec::new()
    }
    fn probe(&self, _: IpAddr, _: Duration) -> bool {
        true
    }
}

static NO_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn never(_: &str) -> bool {
    false
}

/// CPU seconds (user + system) this process has used so far, all threads.
fn cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse().ok());
    let n: usize = numbers.next().unwrap_or(10_000);
    let lanes: usize = numbers.next().unwrap_or(Policy::default().concurrency);
    let base = ["/dev/shm", "/tmp"]
        .iter()
        .find(|p| Path::new(p).is_dir())
        .unwrap();
    let t = tempfile::tempdir_in(base).unwrap();
    let h = common::many_guests(t.path(), n);
    let ts = Sim::new(h.clone()).unwrap();
    let boot = MemoryBoot::default();
    boot.state.lock().unwrap().entries = vec![BootEntry {
        id: "xen".into(),
        title: "Xen 4.17".into(),
        hypervisor: Some("/boot/xen-4.17-amd64.gz".into()),
    }];
    boot.commit("xen").unwrap();
    let policy = Policy {
        image_dir: t.path().join("state/images"),
        concurrency: lanes,
        ..Policy::default()
    };
    let seq = |ts| Sequencer {
        ts,
        boot: &boot,
        facts: &Roomy,
        policy: policy.clone(),
        state_dir: t.path().join("state"),
        lock_path: t.path().join("run/xenmaint.lock"),
        power: PowerOptions {
            wait: true,
            timeout: Duration::from_millis(300),
            force: true,
            poll: Duration::from_millis(5),
            reap_grace: Duration::ZERO,
        },
        failpoint: &never,
        stop: &NO_STOP,
    };

    let mut phases = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut()| {
        let (c0, w0) = (cpu(), Instant::now());
        f();
        phases.push((name, cpu() - c0, w0.elapsed().as_secs_f64()));
    };
    let s = seq(&ts);
    step("plan", &mut || {
        let p = plan::plan(&ts, &policy, &Roomy).unwrap();
        assert_eq!(p.guests.len(), n);
    });
    step("drain", &mut || {
        if let Err(e) = s.drain() {
            panic!("drain: {e}");
        }
    });
    step("reboot", &mut || s.reboot("true", None).unwrap());
    let mut after = h.clone();
    after.domains.retain(|d| d.detail.info.domid == 0);
    let after = Sim::new(after).unwrap();
    let r = seq(&after);
    step("resume", &mut || {
        let (_, done) = r.resume().unwrap().unwrap();
        assert_eq!(done.outcome, Some(Outcome::Resumed));
        assert_eq!(done.verified.len(), n);
    });
    assert_eq!(after.list_domains().unwrap().len(), n + 1);

    let total: f64 = phases.iter().map(|p| p.1).sum();
    println!(
        "bench sequencer on the simulator (not Xen): {n} guests, concurrency {lanes}, state on tmpfs"
    );
    for (name, c, w) in &phases {
        println!(
            "  {name:7} cpu {c:7.3} s  wall {w:7.3} s  ({:6.1} us cpu per guest)",
            c / n as f64 * 1e6
        );
    }
    println!(
        "  total   cpu {total:7.3} s  (target < 1 s for 10,000 guests: {})",
        if n >= 10_000 && total < 1.0 {
            "met"
        } else if n >= 10_000 {
            "NOT met"
        } else {
            "n/a"
        }
    );
}
