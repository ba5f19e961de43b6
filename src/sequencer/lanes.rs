//! Lanes: how many guests are worked on at once, and the pause gate that
//! lets live saves pause together.
//!
//! Workers take a lane before a guest and give it back after. A live save
//! whose first pass over memory is nearly sent gives its lane back and waits
//! at the gate, its guest running: another worker starts the next guest's
//! first pass. The gate opens when no worker can get on without it (every one is
//! waiting there or has run out of guests); the waiting saves then all go
//! on at once, each pausing its guest only for the rest of its first pass
//! and the pages it dirtied meanwhile, and hold their lanes again (no new
//! guest starts until enough of them are done). So with N workers, N
//! guests' first passes run a lane count at a time, and their pauses all
//! come together at the end. Waiting for a lane there would spread the
//! pauses out again: measured on the nested host, four 256 MiB guests on
//! two lanes took 82 s to drain that way, the last pauses 15 s apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::guest::PauseGate;

/// How often a waiting save looks whether its guest still runs.
const RUNNING_POLL: Duration = Duration::from_millis(200);

pub struct Lanes<'a> {
    lanes: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// Set on SIGINT/SIGTERM: nobody waits at the gate any more.
    stop: &'a AtomicBool,
}

struct State {
    /// Lanes taken.
    busy: usize,
    /// Workers neither waiting at the gate nor done.
    active: usize,
    /// Bumped each time the gate opens; a waiter leaves once it changed.
    opened: u64,
    /// Saves waiting at the gate.
    waiting: usize,
    /// Threads waiting on `changed`: with none, a lane given back wakes
    /// nobody (each wake is a system call, three per guest in a run).
    sleepers: usize,
}

impl<'a> Lanes<'a> {
    pub fn new(lanes: usize, stop: &'a AtomicBool) -> Lanes<'a> {
        Lanes {
            lanes: lanes.max(1),
            state: Mutex::new(State {
                busy: 0,
                active: 0,
                opened: 0,
                waiting: 0,
                sleepers: 0,
            }),
            changed: Condvar::new(),
            stop,
        }
    }

    pub fn count(&self) -> usize {
        self.lanes
    }

    /// `workers` threads are about to start; each holds a `worker()` guard
    /// while it runs.
    pub fn start_workers(&self, workers: usize) {
        self.lock().active = workers;
    }

    /// Held by a worker thread for as long as it runs: when it ends, the
    /// worker no longer keeps the gate shut.
    pub fn worker(&self) -> Worker<'_, 'a> {
        Worker(self)
    }

    /// Waits for a free lane and holds it until the guard is dropped.
    pub fn lane(&self) -> Lane<'_, 'a> {
        self.take();
        Lane(self)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn lane_if_free(&self) -> Option<Lane<'_, 'a>> {
        let mut s = self.lock();
        (s.busy < self.lanes).then(|| {
            s.busy += 1;
            Lane(self)
        })
    }

    fn take(&self) {
        let mut s = self.lock();
        while s.busy >= self.lanes {
            s.sleepers += 1;
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            s.sleepers -= 1;
        }
        s.busy += 1;
    }

    fn open_if_stuck(s: &mut State) {
        if s.active == 0 {
            s.opened += 1;
            if s.waiting > 0 {
                log::info!("pause gate opens: {} live saves go on", s.waiting);
            }
        }
    }
}

pub struct Worker<'l, 'a>(&'l Lanes<'a>);

impl Drop for Worker<'_, '_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.active -= 1;
        Lanes::open_if_stuck(&mut s);
        drop(s);
        self.0.changed.notify_all();
    }
}

pub struct Lane<'l, 'a>(&'l Lanes<'a>);

impl Drop for Lane<'_, '_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.busy -= 1;
        // Under the lock: a thread about to wait counted itself first.
        if s.sleepers > 0 {
            self.0.changed.notify_all();
        }
    }
}

impl PauseGate for Lanes<'_> {
    /// Called holding a lane: gives it back while waiting, and holds it
    /// again (even if that makes more lanes busy than there are) as the
    /// save goes on.
    fn hold(&self, running: &dyn Fn() -> bool) {
        let mut s = self.lock();
        s.busy -= 1;
        s.active -= 1;
        s.waiting += 1;
        let arrived = s.opened;
        Self::open_if_stuck(&mut s);
        self.changed.notify_all();
        while s.opened == arrived && !self.stop.load(Ordering::SeqCst) {
            // The guest's state is asked with the lock released: the
            // toolstack can be slow, and other workers must get on.
            drop(s);
            let still = running();
            s = self.lock();
            if !still || s.opened != arrived {
                break;
            }
            s.sleepers += 1;
            s = self
                .changed
                .wait_timeout(s, RUNNING_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.sleepers -= 1;
        }
        s.waiting -= 1;
        s.active += 1;
        s.busy += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// Four workers, two lanes, every save waits at the gate: all four
    /// first passes are done, never more than two at once, before any save
    /// goes on; then all four go on together.
    #[test]
    fn the_gate_opens_once_every_worker_waits_then_all_go_on() {
        static STOP: AtomicBool = AtomicBool::new(false);
        let lanes = Arc::new(Lanes::new(2, &STOP));
        lanes.start_workers(4);
        let (working, most, most_after, first_passes) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let seen_at_release = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|sc| {
            for _ in 0..4 {
                let (lanes, working, most, most_after, first_passes, seen) = (
                    lanes.clone(),
                    working.clone(),
                    most.clone(),
                    most_after.clone(),
                    first_passes.clone(),
                    seen_at_release.clone(),
                );
                sc.spawn(move || {
                    let _worker = lanes.worker();
                    let _lane = lanes.lane();
                    let n = working.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    first_passes.fetch_add(1, Ordering::SeqCst);
                    working.fetch_sub(1, Ordering::SeqCst);
                    lanes.hold(&|| true);
                    let n = working.fetch_add(1, Ordering::SeqCst) + 1;
                    most_after.fetch_max(n, Ordering::SeqCst);
                    seen.lock()
                        .unwrap()
                        .push(first_passes.load(Ordering::SeqCst));
                    std::thread::sleep(Duration::from_millis(300));
                    working.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(*seen_at_release.lock().unwrap(), [4, 4, 4, 4]);
        assert_eq!(most.load(Ordering::SeqCst), 2, "first passes two at a time");
        assert_eq!(
            most_after.load(Ordering::SeqCst),
            4,
            "then all four together"
        );
        let s = lanes.lock();
        assert_eq!((s.busy, s.active, s.waiting), (0, 0, 0));
    }

    /// Saves let go by the gate hold lanes again, beyond the lane count: no
    /// new guest starts until enough of them are done.
    #[test]
    fn saves_let_go_by_the_gate_keep_new_guests_waiting_for_a_lane() {
        static STOP: AtomicBool = AtomicBool::new(false);
        let lanes = Lanes::new(1, &STOP);
        lanes.start_workers(2);
        let (first, second) = (lanes.lane(), lanes.lane_if_free());
        assert!(second.is_none(), "one lane");
        drop(second);
        lanes.hold(&|| false); // its guest paused anyway: back at once, lane held
        assert!(lanes.lane_if_free().is_none(), "the lane is held again");
        drop(first);
        assert!(lanes.lane_if_free().is_some());
    }

    /// A guest that stops running (libxc paused it anyway) does not wait
    /// for the others; nor does anyone once the run is stopped.
    #[test]
    fn a_paused_guest_or_a_stop_ends_the_wait() {
        static STOP: AtomicBool = AtomicBool::new(false);
        let lanes = Lanes::new(1, &STOP);
        lanes.start_workers(2);
        let lane = lanes.lane();
        let polls = AtomicUsize::new(0);
        lanes.hold(&|| polls.fetch_add(1, Ordering::SeqCst) < 2);
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "left when running() said no"
        );
        drop(lane);
        assert_eq!(
            lanes.lock().busy,
            0,
            "the lane was taken again, then given back"
        );

        static STOPPED: AtomicBool = AtomicBool::new(true);
        let lanes = Lanes::new(1, &STOPPED);
        lanes.start_workers(2);
        let _lane = lanes.lane();
        lanes.hold(&|| true);
    }
}
