//! The sequencer's own cost at fleet scale, on the simulator (not Xen: the
//! simulated toolstack does no guest work, so what is measured is planning,
//! journaling, image bookkeeping and the lanes). 10,000 guests are planned,
//! drained, rebooted and resumed; the process's CPU time (user + system,
//! all threads) is printed per phase. Target (issue 7): under 1 s in all.
//!
//!     cargo bench --bench sequencer_scale [-- [--allocs] [--rounds R] GUESTS [CONCURRENCY]]
//!
//! Each of R rounds (5 unless told) runs in a fresh process, after a
//! warm-up round not counted; the round with the median total is printed,
//! and every round's total.
//!
//! The state and image directories live on tmpfs (/dev/shm when present):
//! the figure is the sequencer's CPU, not a disk's fsync latency. With
//! `--allocs`, heap allocations are counted per phase too (the count costs
//! CPU of its own: two threads bumping one counter).

use std::alloc::{GlobalAlloc, Layout};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xenmaint::address::Neighbour;
use xenmaint::allocator::Allocator;
use xenmaint::boot::{BootEntry, BootLoader, MemoryBoot};
use xenmaint::guest::PowerOptions;
use xenmaint::plan::{self, Concurrency, HostFacts, Policy};
use xenmaint::sequencer::{Outcome, Sequencer, Unobserved};
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
    /// Two, whatever machine this runs on: the figure is for two lanes.
    fn dom0_cpus(&self) -> usize {
        2
    }
}

/// The binary's allocator (xenmaint::allocator), counting allocations (a
/// realloc counts as one) when COUNT is set.
struct Counting;

static COUNT: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if COUNT.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed straight to the binary's allocator, whose
// contract the caller keeps; the counter adds no state the heap depends on.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { Allocator {}.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from this allocator with this layout.
        unsafe { Allocator {}.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: ptr came from this allocator with this layout.
        unsafe { Allocator {}.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

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

/// Set in the fresh processes the rounds run in.
const ROUND: &str = "XENMAINT_BENCH_ROUND";

fn main() {
    let (mut numbers, mut rounds) = (Vec::new(), 5);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--allocs" => COUNT.store(true, Ordering::Relaxed),
            "--rounds" => rounds = args.next().and_then(|r| r.parse().ok()).unwrap_or(1),
            _ => numbers.extend(a.parse::<usize>().ok()),
        }
    }
    if rounds > 1 && std::env::var_os(ROUND).is_none() {
        return median_of(rounds);
    }
    let n: usize = numbers.first().copied().unwrap_or(10_000);
    let lanes: usize = numbers
        .get(1)
        .copied()
        .unwrap_or_else(|| Policy::default().concurrency.lanes(Roomy.dom0_cpus()));
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
        concurrency: Concurrency::Lanes(lanes),
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
        observer: &Unobserved,
    };

    let mut phases = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut()| {
        let (c0, w0, a0) = (cpu(), Instant::now(), ALLOCS.load(Ordering::Relaxed));
        f();
        let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
        phases.push((name, cpu() - c0, w0.elapsed().as_secs_f64(), allocs));
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
    for (name, c, w, allocs) in &phases {
        let allocs = if COUNT.load(Ordering::Relaxed) {
            format!(", {:5.0} allocations", *allocs as f64 / n as f64)
        } else {
            String::new()
        };
        println!(
            "  {name:7} cpu {c:7.3} s  wall {w:7.3} s  ({:6.1} us cpu{allocs} per guest)",
            c / n as f64 * 1e6,
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

/// Runs the benchmark in `rounds` fresh processes, as each xenmaint run is
/// one (a process that already grew its heap pays less for memory), after
/// one more that is not counted (just after a build, this VM's first rounds
/// touch memory its host took back, and ran 30% slower), and prints the
/// round with the median total, then every round's total.
fn median_of(rounds: usize) {
    let mut runs: Vec<(f64, String)> = (0..=rounds)
        .map(|_| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(std::env::args().skip(1))
                .env(ROUND, "1")
                .output()
                .expect("the benchmark runs");
            assert!(out.status.success(), "a round failed: {out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            let total = text
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("total   cpu"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .expect("a round prints its total");
            (total, text)
        })
        .collect();
    let warm_up = runs.remove(0).0;
    let totals: Vec<String> = runs.iter().map(|r| format!("{:.3}", r.0)).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    print!("{}", runs[rounds / 2].1);
    println!(
        "  rounds  {rounds} fresh processes, total cpu {} s: the median's shown \
         (a warm-up before them, not counted: {warm_up:.3} s)",
        totals.join(", ")
    );
}
