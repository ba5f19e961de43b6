//! What the run's journal holds, and the state a replay of it gives.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::domain::{DomId, Uuid};
use crate::image::DiskIdentity;
use crate::plan::{Action, Plan, PlannedGuest};

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
    /// Stopped by the run, then started again by someone else (restored or
    /// created by hand): running, but not by this run's doing.
    Outside,
    /// A domain kept after a shutdown or crash: its core written, then
    /// destroyed.
    Dump,
}

/// A journal record. Every step is recorded before (`Begin`) and after
/// (`Done`/`Failed`), so a replay knows what may have been under way.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Started {
        plan: Box<Plan>,
        hypervisor: Hypervisor,
        boot_default: Option<String>,
    },
    /// Written by earlier xenmaint before a guest's `Begin`; now the
    /// observation is in the `Begin` (one record less per guest). Still
    /// read.
    Observed {
        uuid: Uuid,
        observation: Observation,
    },
    Begin {
        uuid: Uuid,
        step: Step,
        /// Where the guest answered and what its disks were, looked at
        /// just before its step (a drain's steps; None for the others).
        #[serde(skip_serializing_if = "Option::is_none")]
        observation: Option<Observation>,
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
    /// A guest that was not running when the run began, taken in by a
    /// later `drain` of the same run.
    Joined {
        guest: PlannedGuest,
    },
    /// A guest that stopped on its own (shut down, or destroyed by someone)
    /// before the run got to it: left stopped, not brought back.
    Gone {
        uuid: Uuid,
        how: String,
    },
}

/// How a record is read. serde reads an internally tagged enum (as the
/// derived reader of `Record` did) by buffering the whole record first, the
/// start record's plan of every guest included, and then reading the buffer:
/// most of a replay's time. The fields of every kind of record, read
/// straight from the text, and the tag then picking a kind's own, read the
/// same records: the tag anywhere, unknown fields ignored, a missing
/// optional field None, a missing required one refused.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Started,
    Observed,
    Begin,
    Done,
    Failed,
    Verified,
    Drained,
    Patched,
    Rebooting,
    Booted,
    Halted,
    Finished,
    Joined,
    Gone,
}

#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "type")]
    kind: Kind,
    plan: Option<Box<Plan>>,
    hypervisor: Option<Hypervisor>,
    boot_default: Option<String>,
    uuid: Option<Uuid>,
    observation: Option<Observation>,
    step: Option<Step>,
    image: Option<PathBuf>,
    domid: Option<DomId>,
    error: Option<String>,
    verification: Option<Verification>,
    entry: Option<String>,
    fallback: Option<String>,
    expect_not_build_id: Option<String>,
    expect_release: Option<String>,
    expect_build_id: Option<String>,
    patch_took: Option<bool>,
    reason: Option<String>,
    outcome: Option<Outcome>,
    guest: Option<PlannedGuest>,
    how: Option<String>,
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Record, D::Error> {
        fn need<T, E: serde::de::Error>(field: Option<T>, name: &'static str) -> Result<T, E> {
            field.ok_or_else(|| E::missing_field(name))
        }
        let f = Fields::deserialize(d)?;
        Ok(match f.kind {
            Kind::Started => Record::Started {
                plan: need(f.plan, "plan")?,
                hypervisor: need(f.hypervisor, "hypervisor")?,
                boot_default: f.boot_default,
            },
            Kind::Observed => Record::Observed {
                uuid: need(f.uuid, "uuid")?,
                observation: need(f.observation, "observation")?,
            },
            Kind::Begin => Record::Begin {
                uuid: need(f.uuid, "uuid")?,
                step: need(f.step, "step")?,
                observation: f.observation,
            },
            Kind::Done => Record::Done {
                uuid: need(f.uuid, "uuid")?,
                step: need(f.step, "step")?,
                image: f.image,
                domid: f.domid,
            },
            Kind::Failed => Record::Failed {
                uuid: need(f.uuid, "uuid")?,
                step: need(f.step, "step")?,
                error: need(f.error, "error")?,
            },
            Kind::Verified => Record::Verified {
                uuid: need(f.uuid, "uuid")?,
                verification: need(f.verification, "verification")?,
            },
            Kind::Drained => Record::Drained,
            Kind::Patched => Record::Patched {
                entry: need(f.entry, "entry")?,
                fallback: f.fallback,
            },
            Kind::Rebooting => Record::Rebooting {
                expect_not_build_id: f.expect_not_build_id,
                expect_release: f.expect_release,
                expect_build_id: f.expect_build_id,
            },
            Kind::Booted => Record::Booted {
                hypervisor: need(f.hypervisor, "hypervisor")?,
                patch_took: need(f.patch_took, "patch_took")?,
            },
            Kind::Halted => Record::Halted {
                reason: need(f.reason, "reason")?,
            },
            Kind::Finished => Record::Finished {
                outcome: need(f.outcome, "outcome")?,
            },
            Kind::Joined => Record::Joined {
                guest: need(f.guest, "guest")?,
            },
            Kind::Gone => Record::Gone {
                uuid: need(f.uuid, "uuid")?,
                how: need(f.how, "how")?,
            },
        })
    }
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
    /// Stopped on its own before its step: left stopped.
    Gone {
        how: String,
    },
    /// Kept after a shutdown or crash: its core written here, the domain
    /// destroyed; not brought back.
    Dumped {
        core: PathBuf,
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
            Record::Joined { .. } => "joined",
            Record::Gone { .. } => "gone",
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
            s.apply(r.clone());
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
            s.apply(r);
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

    /// Folds one record in, taking it: what it holds moves into the state.
    pub(crate) fn apply(&mut self, r: Record) {
        match r {
            Record::Started { .. } => {}
            Record::Observed { uuid, observation } => {
                self.observed.insert(uuid, observation);
            }
            Record::Verified { uuid, verification } => {
                self.verified.insert(uuid, verification);
            }
            Record::Begin {
                uuid,
                step,
                observation,
            } => {
                if let Some(observation) = observation {
                    self.observed.insert(uuid, observation);
                }
                // A new step makes an earlier verification stale.
                self.verified.remove(&uuid);
                self.guests.insert(uuid, GuestState::InStep { step });
            }
            Record::Done {
                uuid,
                step,
                image,
                domid,
            } => {
                if let (Step::Save, Some(image)) = (step, &image) {
                    self.images.insert(uuid, image.clone());
                }
                let state = match (step, image, domid) {
                    (Step::Save, Some(image), _) => GuestState::Saved { image },
                    (Step::Shutdown, _, _) => GuestState::ShutDown,
                    (Step::Dump, Some(core), _) => GuestState::Dumped { core },
                    (step, _, Some(domid)) => GuestState::Back { domid, step },
                    (step, _, None) => GuestState::Failed {
                        step,
                        error: "recorded done without its result".into(),
                    },
                };
                self.guests.insert(uuid, state);
            }
            Record::Failed { uuid, step, error } => {
                self.guests.insert(uuid, GuestState::Failed { step, error });
            }
            Record::Drained => self.phase = Phase::Drained,
            Record::Patched { entry, fallback } => {
                self.phase = Phase::Patched;
                self.patched_entry = Some(entry);
                self.fallback_entry = fallback;
            }
            Record::Rebooting {
                expect_not_build_id,
                expect_release,
                expect_build_id,
            } => {
                self.phase = Phase::Rebooting;
                self.expect_not_build_id = expect_not_build_id;
                self.expect_release = expect_release;
                self.expect_build_id = expect_build_id;
            }
            Record::Booted {
                hypervisor,
                patch_took,
            } => {
                self.phase = Phase::Booted;
                self.booted = Some((hypervisor, patch_took));
            }
            Record::Halted { reason } => {
                self.phase = Phase::Halted;
                self.halted = Some(reason);
            }
            Record::Finished { outcome } => {
                self.phase = Phase::Finished;
                self.outcome = Some(outcome);
            }
            Record::Joined { guest } => {
                self.guests.insert(guest.uuid, GuestState::Pending);
                self.plan.guests.push(guest);
            }
            Record::Gone { uuid, how } => {
                self.guests.insert(uuid, GuestState::Gone { how });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Address, Source};
    use crate::domain::PhysInfo;
    use crate::image::DiskKind;

    #[test]
    fn a_replayed_plan_holds_the_same_floats() {
        // The plan's estimates go through the journal; serde_json reads
        // floats exactly only with float_roundtrip (0.1 / 7 came back one
        // digit off without it), and a replayed state must equal the one in
        // memory.
        for x in [0.1f64 / 7.0, 1.0 / 3.0, 123.456_789_012_345_67, 5e-324] {
            let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
    }
    fn every_kind() -> Vec<Record> {
        let uuid: Uuid = "6f1c0a52-3b1e-4c55-9e0a-2d1f7a3b9c10".parse().unwrap();
        let hv = Hypervisor {
            release: "4.17.5".into(),
            build_id: Some("abc".into()),
        };
        let plan = Plan {
            hypervisor: "4.17.5".into(),
            image_dir: "/var/lib/xenmaint/images".into(),
            space_needed: 1 << 30,
            space_free: 1 << 40,
            host_memory: PhysInfo {
                total_memory_kib: 1 << 24,
                free_memory_kib: 1 << 20,
                outstanding_memory_kib: 0,
                nr_cpus: 8,
                shadow_paging: true,
            },
            concurrency: 2,
            est_drain_s: 0.125,
            est_resume_s: 3.25,
            guests: vec![PlannedGuest {
                name: "web-1".into(),
                uuid,
                domid: 7,
                action: Action::Save,
                condition: crate::condition::Condition::Saveable,
                priority: 10,
                order: 1,
                memory_kib: 1 << 20,
                image_bytes: 1 << 30,
                est_drain_s: 1.5,
                est_resume_s: 2.5,
                nics: Vec::new(),
            }],
            findings: Vec::new(),
        };
        let step = Step::Save;
        let guest = plan.guests[0].clone();
        vec![
            Record::Started {
                plan: Box::new(plan),
                hypervisor: hv.clone(),
                boot_default: None,
            },
            Record::Observed {
                uuid,
                observation: Observation {
                    addresses: vec![Address {
                        ip: "192.0.2.7".parse().unwrap(),
                        mac: None,
                        sources: vec![Source::Config],
                    }],
                    disks: vec![DiskIdentity {
                        vdev: "xvda".into(),
                        path: Some("/dev/vg/web".into()),
                        kind: DiskKind::Block,
                        size: None,
                        dev: Some(0xfd00),
                        ino: None,
                        dm_uuid: Some("LVM-vgUUIDlvUUID".into()),
                    }],
                },
            },
            Record::Begin {
                uuid,
                step,
                observation: None,
            },
            Record::Begin {
                uuid,
                step,
                observation: Some(Observation {
                    addresses: Vec::new(),
                    disks: Vec::new(),
                }),
            },
            Record::Done {
                uuid,
                step,
                image: Some("/var/lib/xenmaint/images/r/x.xl".into()),
                domid: None,
            },
            Record::Failed {
                uuid,
                step,
                error: "it \"failed\"\n".into(),
            },
            Record::Verified {
                uuid,
                verification: Verification {
                    answered: vec!["192.0.2.7".parse().unwrap()],
                    silent: Vec::new(),
                    disks_changed: vec!["xvdb: gone".into()],
                },
            },
            Record::Drained,
            Record::Patched {
                entry: "xen-new".into(),
                fallback: Some("xenmaint-fallback-xen-4.17.5".into()),
            },
            Record::Rebooting {
                expect_not_build_id: Some("abc".into()),
                expect_release: None,
                expect_build_id: Some("def".into()),
            },
            Record::Booted {
                hypervisor: hv,
                patch_took: true,
            },
            Record::Halted {
                reason: "stopped".into(),
            },
            Record::Finished {
                outcome: Outcome::Resumed,
            },
            Record::Joined { guest },
            Record::Gone {
                uuid,
                how: "shut down on its own".into(),
            },
            Record::Done {
                uuid,
                step: Step::Outside,
                image: None,
                domid: Some(9),
            },
        ]
    }

    #[test]
    fn every_kind_of_record_reads_back_as_written() {
        for rec in every_kind() {
            let text = serde_json::to_string(&rec).unwrap();
            let back: Record = serde_json::from_str(&text).unwrap();
            assert_eq!(back, rec, "{text}");
        }
    }

    /// What the derived reader took: the tag anywhere, unknown fields
    /// ignored, optional fields missing; and what it refused.
    #[test]
    fn records_read_as_the_derived_reader_read_them() {
        let read = |t: &str| serde_json::from_str::<Record>(t);
        assert_eq!(
            read(r#"{"expect_release":"4.17.7","type":"rebooting","later":[1]}"#).unwrap(),
            Record::Rebooting {
                expect_not_build_id: None,
                expect_release: Some("4.17.7".into()),
                expect_build_id: None,
            }
        );
        assert_eq!(
            read(r#"{"type":"done","uuid":"6f1c0a52-3b1e-4c55-9e0a-2d1f7a3b9c10","step":"restore","domid":9}"#)
                .unwrap(),
            Record::Done {
                uuid: "6f1c0a52-3b1e-4c55-9e0a-2d1f7a3b9c10".parse().unwrap(),
                step: Step::Restore,
                image: None,
                domid: Some(9),
            }
        );
        let e = read(r#"{"type":"begin","step":"save"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `uuid`"), "{e}");
        assert!(read(r#"{"type":"sideways"}"#).is_err());
        assert!(read(r#"{"uuid":"6f1c0a52-3b1e-4c55-9e0a-2d1f7a3b9c10"}"#).is_err());
        assert!(read(r#"{"type":"finished","outcome":"maybe"}"#).is_err());
    }
}
