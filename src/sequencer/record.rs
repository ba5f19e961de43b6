//! What the run's journal holds, and the state a replay of it gives.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::domain::{DomId, Uuid};
use crate::image::DiskIdentity;
use crate::plan::{Action, Plan};

/// A guest as it was before its step: where it answered and what its disks
/// were, to be checked once it is back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub addresses: Vec<Address>,
    pub disks: Vec<DiskIdentity>,
}

/// A guest once it is back: which recorded addresses answered, and which
/// disks are not what they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub answered: Vec<std::net::IpAddr>,
    pub silent: Vec<std::net::IpAddr>,
    pub disks_changed: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.silent.is_empty() && self.disks_changed.is_empty()
    }
}

/// A hypervisor build, as the run compares them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hypervisor {
    pub release: String,
    pub build_id: Option<String>,
}

/// One step of one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Save,
    Shutdown,
    Restore,
    ColdBoot,
    /// The guest never stopped (not drained yet, or its save failed and it
    /// was resumed): back without a step of its own.
    Kept,
}

/// A journal record. Every step is recorded before (`Begin`) and after
/// (`Done`/`Failed`), so a replay knows what may have been under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Started {
        plan: Box<Plan>,
        hypervisor: Hypervisor,
        boot_default: Option<String>,
    },
    Observed {
        uuid: Uuid,
        observation: Observation,
    },
    Begin {
        uuid: Uuid,
        step: Step,
    },
    Done {
        uuid: Uuid,
        step: Step,
        image: Option<PathBuf>,
        domid: Option<DomId>,
    },
    Failed {
        uuid: Uuid,
        step: Step,
        error: String,
    },
    Verified {
        uuid: Uuid,
        verification: Verification,
    },
    Drained,
    Patched {
        entry: String,
        fallback: Option<String>,
    },
    Rebooting {
        expect_not_build_id: Option<String>,
        expect_release: Option<String>,
        /// The build-id read from the patched entry's hypervisor image.
        #[serde(default)]
        expect_build_id: Option<String>,
    },
    Booted {
        hypervisor: Hypervisor,
        patch_took: bool,
    },
    Halted {
        reason: String,
    },
    Finished {
        outcome: Outcome,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every guest is back after the reboot.
    Resumed,
    /// Every guest is back without a reboot.
    RolledBack,
    /// Some guests could not be brought back: see their errors.
    Incomplete,
}

/// Where a guest stands, from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GuestState {
    /// Not touched yet.
    Pending,
    /// A step began and did not finish (the run died in it).
    InStep {
        step: Step,
    },
    Saved {
        image: PathBuf,
    },
    ShutDown,
    /// Back and running (restored or cold booted).
    Back {
        domid: DomId,
        step: Step,
    },
    Failed {
        step: Step,
        error: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Draining,
    Drained,
    Patched,
    Rebooting,
    Booted,
    Halted,
    Finished,
}

/// A run replayed from its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub plan: Plan,
    pub hypervisor_before: Hypervisor,
    pub boot_default_before: Option<String>,
    pub phase: Phase,
    pub patched_entry: Option<String>,
    pub fallback_entry: Option<String>,
    pub expect_not_build_id: Option<String>,
    pub expect_release: Option<String>,
    pub expect_build_id: Option<String>,
    pub booted: Option<(Hypervisor, bool)>,
    pub halted: Option<String>,
    pub outcome: Option<Outcome>,
    pub guests: BTreeMap<Uuid, GuestState>,
    /// The image each saved guest was saved to (kept past later steps).
    pub images: BTreeMap<Uuid, PathBuf>,
    pub observed: BTreeMap<Uuid, Observation>,
    pub verified: BTreeMap<Uuid, Verification>,
}

impl Record {
    /// Whether this record starts a new phase of the run (hooks run then).
    pub fn phase_boundary(&self) -> bool {
        matches!(
            self,
            Record::Started { .. }
                | Record::Drained
                | Record::Patched { .. }
                | Record::Rebooting { .. }
                | Record::Booted { .. }
                | Record::Halted { .. }
                | Record::Finished { .. }
        )
    }

    /// A short name of the record, for logs and failpoints.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Started { .. } => "started",
            Record::Observed { .. } => "observed",
            Record::Verified { .. } => "verified",
            Record::Begin { .. } => "begin",
            Record::Done { .. } => "done",
            Record::Failed { .. } => "failed",
            Record::Drained => "drained",
            Record::Patched { .. } => "patched",
            Record::Rebooting { .. } => "rebooting",
            Record::Booted { .. } => "booted",
            Record::Halted { .. } => "halted",
            Record::Finished { .. } => "finished",
        }
    }
}

impl RunState {
    /// Folds the records; `None` for a journal without its Started record.
    pub fn replay(records: &[Record]) -> Option<RunState> {
        let mut it = records.iter();
        let Some(Record::Started {
            plan,
            hypervisor,
            boot_default,
        }) = it.next()
        else {
            return None;
        };
        let mut s = RunState::start((**plan).clone(), hypervisor.clone(), boot_default.clone());
        for r in it {
            s.apply(r);
        }
        Some(s)
    }

    /// `replay`, taking the records: the plan (every guest's) moves into
    /// the state instead of being copied, and the copy dropped.
    pub fn replay_owned(records: Vec<Record>) -> Option<RunState> {
        let mut it = records.into_iter();
        let Some(Record::Started {
            plan,
            hypervisor,
            boot_default,
        }) = it.next()
        else {
            return None;
        };
        let mut s = RunState::start(*plan, hypervisor, boot_default);
        for r in it {
            s.apply(&r);
        }
        Some(s)
    }

    /// The state right after the Started record.
    fn start(plan: Plan, hypervisor: Hypervisor, boot_default: Option<String>) -> RunState {
        RunState {
            guests: plan
                .guests
                .iter()
                .map(|g| (g.uuid, GuestState::Pending))
                .collect(),
            plan,
            hypervisor_before: hypervisor,
            boot_default_before: boot_default,
            phase: Phase::Draining,
            patched_entry: None,
            fallback_entry: None,
            expect_not_build_id: None,
            expect_release: None,
            expect_build_id: None,
            booted: None,
            halted: None,
            outcome: None,
            images: BTreeMap::new(),
            observed: BTreeMap::new(),
            verified: BTreeMap::new(),
        }
    }

    pub(crate) fn apply(&mut self, r: &Record) {
        match r {
            Record::Started { .. } => {}
            Record::Observed { uuid, observation } => {
                self.observed.insert(*uuid, observation.clone());
            }
            Record::Verified { uuid, verification } => {
                self.verified.insert(*uuid, verification.clone());
            }
            Record::Begin { uuid, step } => {
                // A new step makes an earlier verification stale.
                self.verified.remove(uuid);
                self.guests
                    .insert(*uuid, GuestState::InStep { step: *step });
            }
            Record::Done {
                uuid,
                step,
                image,
                domid,
            } => {
                if let (Step::Save, Some(image)) = (step, image) {
                    self.images.insert(*uuid, image.clone());
                }
                let state = match (step, image, domid) {
                    (Step::Save, Some(image), _) => GuestState::Saved {
                        image: image.clone(),
                    },
                    (Step::Shutdown, _, _) => GuestState::ShutDown,
                    (step, _, Some(domid)) => GuestState::Back {
                        domid: *domid,
                        step: *step,
                    },
                    (step, _, None) => GuestState::Failed {
                        step: *step,
                        error: "recorded done without its result".into(),
                    },
                };
                self.guests.insert(*uuid, state);
            }
            Record::Failed { uuid, step, error } => {
                self.guests.insert(
                    *uuid,
                    GuestState::Failed {
                        step: *step,
                        error: error.clone(),
                    },
                );
            }
            Record::Drained => self.phase = Phase::Drained,
            Record::Patched { entry, fallback } => {
                self.phase = Phase::Patched;
                self.patched_entry = Some(entry.clone());
                self.fallback_entry = fallback.clone();
            }
            Record::Rebooting {
                expect_not_build_id,
                expect_release,
                expect_build_id,
            } => {
                self.phase = Phase::Rebooting;
                self.expect_not_build_id = expect_not_build_id.clone();
                self.expect_release = expect_release.clone();
                self.expect_build_id = expect_build_id.clone();
            }
            Record::Booted {
                hypervisor,
                patch_took,
            } => {
                self.phase = Phase::Booted;
                self.booted = Some((hypervisor.clone(), *patch_took));
            }
            Record::Halted { reason } => {
                self.phase = Phase::Halted;
                self.halted = Some(reason.clone());
            }
            Record::Finished { outcome } => {
                self.phase = Phase::Finished;
                self.outcome = Some(*outcome);
            }
        }
    }

    /// What went wrong in a finished or halted run, for an exit status.
    pub fn trouble(&self) -> Option<String> {
        if let Some(reason) = &self.halted {
            return Some(format!("halted: {reason}"));
        }
        let failed = self
            .guests
            .values()
            .filter(|g| matches!(g, GuestState::Failed { .. }))
            .count();
        if self.outcome == Some(Outcome::Incomplete) {
            return Some(format!("{failed} guest(s) could not be brought back"));
        }
        let unverified = self.verified.values().filter(|v| !v.ok()).count();
        if unverified > 0 {
            return Some(format!(
                "{unverified} guest(s) are back but failed their checks (silent addresses or \
                 changed disks)"
            ));
        }
        match &self.booted {
            Some((hv, false)) => Some(format!(
                "the patch did not take: Xen {} booted, not the patched hypervisor",
                hv.release
            )),
            _ => None,
        }
    }

    /// The planned action of a guest.
    pub fn action(&self, uuid: Uuid) -> Action {
        self.plan
            .guests
            .iter()
            .find(|g| g.uuid == uuid)
            .map_or(Action::Skip, |g| g.action)
    }
}
