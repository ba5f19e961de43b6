//! Resume: after the reboot (or a crash), see which hypervisor booted, bring every
//! guest back and check it. Its own file: a failed drain and a rollback end here too.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::lanes::Lanes;
use super::{
    config_path, run_id, GuestState, Observation, Outcome, Phase, Record, Result, Run, RunState,
    SeqError, Sequencer, Step, Verification,
};
use crate::condition::Condition;
use crate::domain::{DomId, DomainState, ShutdownReason, Uuid};
use crate::durable::DurableError;
use crate::guest::{self, OpError, RestoreOptions};
use crate::image::{DiskIdentity, DiskKind, Manifest};
use crate::plan::{Action, PlannedGuest};
use crate::toolstack::ToolstackError;

/// Guests checked at once after they are back.
const VERIFY_LANES: usize = 64;

/// How long one probe of an address waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a guest plugs into, that resume waits for at boot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Device {
    Bridge(String),
    Disk(PathBuf),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Bridge(name) => write!(f, "bridge {name}"),
            Device::Disk(path) => write!(f, "disk {}", path.display()),
        }
    }
}

impl Sequencer<'_> {
    /// After the reboot (or to finish a crashed run): checks which
    /// hypervisor booted, commits the boot default if it is the patched one,
    /// and brings every guest back, most important first.
    pub fn resume(&self) -> Result<Option<(String, RunState)>> {
        let _lock = self.lock("resume")?;
        let Some((id, run)) = self.open_current()? else {
            self.recover_unstarted()?;
            return Ok(None);
        };
        let (phase, outcome) = run.read(|s| (s.phase, s.outcome))?;
        // A finished run is done, unless it left guests down: then resume
        // tries them again (once whatever stopped them is fixed).
        if phase == Phase::Finished && outcome != Some(Outcome::Incomplete) {
            return Ok(Some((id, run.into_state()?)));
        }
        if phase == Phase::Rebooting {
            let now = self.hypervisor()?;
            let (took, patched_entry, expect_build_id) = run.read(|state| {
                // A build other than the one that ran before, and, when the
                // patched image told us its build-id, exactly that build.
                let is_new = match (&state.expect_not_build_id, &now.build_id) {
                    (Some(before), Some(now)) => before != now,
                    (Some(_), None) => now.release != state.hypervisor_before.release,
                    (None, _) => true,
                };
                let is_expected = match (&state.expect_build_id, &now.build_id) {
                    (Some(want), Some(now)) => want == now,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let differs = is_new && is_expected;
                let release_ok = state
                    .expect_release
                    .as_deref()
                    .is_none_or(|want| now.release == want);
                (
                    differs && release_ok,
                    state.patched_entry.clone(),
                    state.expect_build_id.clone(),
                )
            })?;
            if took {
                if let Some(entry) = &patched_entry {
                    self.boot.commit(entry)?;
                }
            } else {
                log::error!(
                    "THE PATCH DID NOT TAKE: Xen {} ({}) booted, not the patched hypervisor \
                     ({}); the boot default stays {}; bringing every guest back on it",
                    now.release,
                    now.build_id.as_deref().unwrap_or("no build-id"),
                    expect_build_id.as_deref().unwrap_or("build-id unknown"),
                    self.boot.default_entry()?.unwrap_or_default()
                );
            }
            self.record(
                &run,
                Record::Booted {
                    hypervisor: now,
                    patch_took: took,
                },
            )?;
        }
        let state = run.state()?;
        self.wait_for_devices(&state);
        let left = self.bring_back_all(&run, &state)?;
        if self.stop.load(Ordering::SeqCst) {
            // Not finished: the next resume brings back the rest.
            return Err(SeqError::Interrupted(run.read(|s| s.phase)?));
        }
        let outcome = if left > 0 {
            Outcome::Incomplete
        } else if state.phase >= Phase::Rebooting {
            Outcome::Resumed
        } else {
            Outcome::RolledBack
        };
        self.record(&run, Record::Finished { outcome })?;
        if left > 0 {
            return Err(SeqError::Incomplete(left));
        }
        let state = run.into_state()?;
        if let Some((hv, false)) = &state.booted {
            return Err(SeqError::PatchDidNotTake {
                booted: hv.release.clone(),
                default: self.boot.default_entry()?.unwrap_or_default(),
            });
        }
        let unchecked = state.verified.values().filter(|v| !v.ok()).count();
        if unchecked > 0 {
            return Err(SeqError::ChecksFailed(unchecked));
        }
        Ok(Some((id, state)))
    }

    /// At boot the network may still be coming up, and volume groups being
    /// activated: give the guests' bridges, and the disks they had when
    /// they were drained, a while to appear (a vif on a missing bridge or a
    /// missing disk fails its restore), then go on regardless; a guest that
    /// then fails is cold booted or reported like any other.
    fn wait_for_devices(&self, state: &RunState) {
        let deadline = Instant::now() + Duration::from_secs_f64(self.policy.device_wait_s);
        let bridges = state
            .plan
            .guests
            .iter()
            .flat_map(|g| g.nics.iter().filter_map(|n| n.bridge.clone()))
            .map(Device::Bridge);
        let disks = state
            .observed
            .values()
            .flat_map(|o| &o.disks)
            .filter(|d| matches!(d.kind, DiskKind::File | DiskKind::Block))
            .filter_map(|d| d.path.clone())
            .map(|p| Device::Disk(PathBuf::from(p)));
        let mut needed: Vec<Device> = bridges.chain(disks).collect();
        needed.sort();
        needed.dedup();
        loop {
            needed.retain(|d| match d {
                Device::Bridge(name) => !self.facts.bridge_present(name),
                Device::Disk(path) => !self.facts.disk_present(path),
            });
            if needed.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = needed.iter().map(Device::to_string).collect();
                log::warn!("still missing: {}: going on", names.join(", "));
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A run that died before its start record: nothing was touched, but a
    /// power cut may have stopped its guests. Boot any whose saved config
    /// has no running domain.
    fn recover_unstarted(&self) -> Result<()> {
        let Some(id) = self.current_id()? else {
            return Ok(());
        };
        let configs = self.runs_dir().join(&id).join("configs");
        let Ok(dir) = std::fs::read_dir(&configs) else {
            return Ok(());
        };
        let running: Vec<Uuid> = self.ts.list_domains()?.iter().map(|d| d.uuid).collect();
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(uuid) = name
                .strip_suffix(".json")
                .and_then(|u| u.parse::<Uuid>().ok())
            else {
                continue;
            };
            if running.contains(&uuid) {
                continue;
            }
            let text = std::fs::read(entry.path()).map_err(|source| DurableError::Io {
                path: entry.path(),
                source,
            })?;
            match serde_json::from_slice(&text)
                .map_err(|e| e.to_string())
                .and_then(|c| self.ts.create(&c).map_err(|e| e.to_string()))
                .and_then(|domid| self.ts.unpause(domid).map_err(|e| e.to_string()))
            {
                Ok(()) => log::warn!("run {id} never started; cold booted {uuid} from its config"),
                Err(e) => log::error!("run {id}: cannot cold boot {uuid}: {e}"),
            }
        }
        Ok(())
    }

    /// Guests restored at once, on the dom0 this runs on now: the reboot
    /// may have changed dom0's vCPUs since the plan.
    fn lanes(&self) -> usize {
        self.policy.concurrency.lanes(self.facts.dom0_cpus())
    }

    /// Brings back every guest that is not back; returns how many could not be.
    pub(super) fn bring_back_all(&self, run: &Run, state: &RunState) -> Result<usize> {
        let lanes = Lanes::new(self.lanes(), self.stop);
        let failed = self.each_guest(run, &state.plan.guests, true, &lanes, 0, |g| {
            let st = state
                .guests
                .get(&g.uuid)
                .cloned()
                .unwrap_or(GuestState::Pending);
            let image = state.images.get(&g.uuid).cloned();
            self.bring_back(run, g, &st, image, &state.plan.image_dir)
        })?;
        // Then the checks, all guests at once: a probe costs nothing, and a
        // guest still booting must not hold up another's restore. A check
        // the journal already holds (for the guest as it runs now) is not
        // repeated by a second resume. Each guest's entries are read as
        // journaled now, under the run's lock, not from a copy of the whole
        // state: only the worker on a guest journals about it.
        let checks = Lanes::new(VERIFY_LANES, self.stop);
        self.each_guest(run, &state.plan.guests, true, &checks, 0, |g| {
            let (back, checked, before, image) = run.read(|now| {
                (
                    matches!(now.guests.get(&g.uuid), Some(GuestState::Back { .. })),
                    now.verified.contains_key(&g.uuid),
                    now.observed.get(&g.uuid).cloned(),
                    now.images.get(&g.uuid).cloned(),
                )
            })?;
            if back && !checked {
                if let Some(d) = self.find(g.uuid)? {
                    // Nothing observed before its step: nothing to check.
                    if let Some(before) = &before {
                        self.verify(run, before, image.as_deref(), g, d.domid)?;
                    }
                }
            }
            Ok(true)
        })?;
        Ok(failed)
    }

    fn bring_back(
        &self,
        run: &Run,
        g: &PlannedGuest,
        st: &GuestState,
        image: Option<PathBuf>,
        image_dir: &Path,
    ) -> Result<bool> {
        // Skipped: left to the reboot. Dumped: it was not running.
        if matches!(g.action, Action::Skip | Action::Dump) {
            return Ok(true);
        }
        let found = self.find(g.uuid)?;
        let mut image = image;
        if let GuestState::Back { .. } = st {
            // Back once: it has run, and written to its disk, since its
            // image was taken, so that image must never be restored again.
            // Whoever has it now (paused, shut down, saved) keeps it; gone
            // (a power cut since, or stopped), it can only be cold booted.
            if found.is_some() {
                return Ok(true);
            }
            log::warn!(
                "{}: was back, and is gone: cold booting it (its image is older than its disk)",
                g.name
            );
            image = None;
        }
        if let GuestState::Gone { .. } = st {
            // It stopped on its own during the drain and stays as its owner
            // left it, unless someone has started it since.
            if let Some(d) =
                found.filter(|d| matches!(d.state, DomainState::Running | DomainState::Blocked))
            {
                self.record(run, back(g.uuid, Step::Outside, d.domid))?;
            }
            return Ok(true);
        }
        // What is really there decides, whatever the journal last said.
        match found {
            Some(d) if matches!(d.state, DomainState::Running | DomainState::Blocked) => {
                // Paused by hand when planned, and running because the run
                // unpaused it for its save (cut, or failed): paused again.
                if g.condition == Condition::Paused
                    && matches!(
                        st,
                        GuestState::InStep { step: Step::Save }
                            | GuestState::Failed {
                                step: Step::Save,
                                ..
                            }
                    )
                {
                    if let Err(e) = self.ts.pause(d.domid) {
                        log::warn!(
                            "{}: unpaused for its save, and not paused again: {e}",
                            g.name
                        );
                    }
                }
                let how = match st {
                    GuestState::Back { .. } => return Ok(true),
                    // Stopped by the run, then started by someone else
                    // (restored or created by hand): not restored again.
                    GuestState::Saved { .. } | GuestState::ShutDown => Step::Outside,
                    _ => Step::Kept,
                };
                self.record(run, back(g.uuid, how, d.domid))?;
                return Ok(true);
            }
            Some(d) if d.shutdown_reason == Some(ShutdownReason::Suspend) => {
                // The run died inside a save: the guest is suspended, not
                // destroyed. Resuming it continues it where it stopped (one
                // paused by hand when planned, paused again).
                if self.ts.resume(d.domid).is_ok() {
                    if g.condition == Condition::Paused {
                        if let Err(e) = self.ts.pause(d.domid) {
                            log::warn!("{}: resumed, but not paused again: {e}", g.name);
                        }
                    }
                    self.record(run, back(g.uuid, Step::Restore, d.domid))?;
                    return Ok(true);
                }
                self.ts.destroy(d.domid)?;
            }
            // Paused, and not built by a restore or cold boot of this run
            // (begun, or failed at its unpause): the guest itself, paused by someone (its save may have failed on
            // that), or one started paused by hand. It holds its memory
            // state: left as it is, never destroyed.
            Some(d)
                if d.state == DomainState::Paused
                    && !matches!(
                        st,
                        GuestState::InStep {
                            step: Step::Restore | Step::ColdBoot
                        } | GuestState::Failed {
                            step: Step::Restore | Step::ColdBoot,
                            ..
                        }
                    ) =>
            {
                let how = match st {
                    GuestState::Saved { .. } | GuestState::ShutDown => Step::Outside,
                    _ => Step::Kept,
                };
                log::warn!("{}: paused; left as it is", g.name);
                self.record(run, back(g.uuid, how, d.domid))?;
                return Ok(true);
            }
            // Half-built (paused after a restore the run did not finish) or
            // shut down: start again from the image or the config.
            Some(d) => self.ts.destroy(d.domid)?,
            None => {}
        }
        if image.is_none() && matches!(st, GuestState::InStep { step: Step::Save }) {
            image = self.finish_cut_save(run, g, image_dir)?;
        }
        // No separate verification first: the restore checks the image as it
        // streams it (structure, then checksum before the guest is unpaused),
        // and a second full read per guest after a cold boot is downtime.
        let image = image.filter(|p| p.is_file());
        // Someone has started a domain under its name (another UUID: the one
        // with its UUID was seen above): bringing it back would make two
        // domains of one guest, with its disks in both.
        if let Some(other) = self
            .ts
            .list_domains()?
            .into_iter()
            .find(|d| d.name == g.name && d.uuid != g.uuid)
        {
            let step = if image.is_some() {
                Step::Restore
            } else {
                Step::ColdBoot
            };
            return self.failed(
                run,
                g,
                step,
                format!(
                    "not brought back: domain {} ({}) already runs under its name; stop it, \
                     then `xenmaint resume`",
                    other.domid, other.uuid
                ),
            );
        }
        if let Some(image) = image {
            self.record(
                run,
                Record::Begin {
                    uuid: g.uuid,
                    step: Step::Restore,
                    observation: None,
                },
            )?;
            let opts = RestoreOptions {
                // Paused by hand when planned (`paused = "save"`): back as it was.
                paused: g.condition == Condition::Paused,
                allow_programs: self.policy.allow_image_programs,
            };
            let mut restored = guest::restore(self.ts, &image, &opts, &|_| {});
            // libxl failed and the image read back intact (the restore
            // checks that before blaming libxl): a cause outside the image,
            // often passing (a hotplug script killed after libxl's fixed
            // 40 s on a loaded dom0). Once more before a cold boot throws
            // the guest's memory away, if nothing of the first try is left.
            if let Err(e @ OpError::Toolstack(_)) = &restored {
                if self.leftover_gone(g.uuid) {
                    log::warn!(
                        "{}: restore failed ({e}); its image is intact: restoring once more",
                        g.name
                    );
                    restored = guest::restore(self.ts, &image, &opts, &|_| {});
                }
            }
            match restored {
                Ok(r) => {
                    self.record(run, back(g.uuid, Step::Restore, r.domid))?;
                    return Ok(true);
                }
                // A cold boot from the same configuration would run the same
                // program: the guest stays down, its image kept.
                Err(e @ OpError::UntrustedProgram { .. }) => {
                    return self.failed(run, g, Step::Restore, e.to_string());
                }
                Err(e) => {
                    log::error!(
                        "{}: restore failed ({e}); cold booting it from its config",
                        g.name
                    );
                    self.record(
                        run,
                        Record::Failed {
                            uuid: g.uuid,
                            step: Step::Restore,
                            error: e.to_string(),
                        },
                    )?;
                }
            }
        }
        self.record(
            run,
            Record::Begin {
                uuid: g.uuid,
                step: Step::ColdBoot,
                observation: None,
            },
        )?;
        match self.cold_boot(run, g) {
            Ok(domid) => {
                self.record(run, back(g.uuid, Step::ColdBoot, domid))?;
                Ok(true)
            }
            Err(e) => self.failed(
                run,
                g,
                Step::ColdBoot,
                format!("cannot be brought back: {e}"),
            ),
        }
    }

    /// A save the run was in when it was cut off, its guest gone: if the
    /// save got as far as its manifest (written after the image was synced
    /// and published, before the guest was destroyed), the image holds the
    /// guest, and its Done record is written now, so that the image counts
    /// as the run's (restored from again after another cut, deleted with
    /// the run's images). Without that manifest the save never finished.
    pub(super) fn finish_cut_save(
        &self,
        run: &Run,
        g: &PlannedGuest,
        image_dir: &Path,
    ) -> Result<Option<PathBuf>> {
        let path = image_dir.join(run_id(run)).join(format!("{}.xl", g.uuid));
        match Manifest::load_for(&path) {
            Ok(Some(m)) if m.uuid == g.uuid && path.is_file() => {}
            _ => return Ok(None),
        }
        log::warn!(
            "{}: the run was cut off after its save finished: restoring from {}",
            g.name,
            path.display()
        );
        self.record(
            run,
            Record::Done {
                uuid: g.uuid,
                step: Step::Save,
                image: Some(path.clone()),
                domid: None,
            },
        )?;
        Ok(Some(path))
    }

    /// Whether no domain with `uuid` is left (one libxl is still
    /// destroying is waited for a few seconds); false also when the domains
    /// cannot be listed: then no second try.
    fn leftover_gone(&self, uuid: Uuid) -> bool {
        self.list_after_dying(|d| d.uuid == uuid, Duration::from_secs(10))
            .is_ok_and(|domains| !domains.iter().any(|d| d.uuid == uuid))
    }

    /// Creates the guest from its saved config and starts it; one paused
    /// by hand when planned is left paused at its first instruction.
    fn cold_boot(&self, run: &Run, g: &PlannedGuest) -> std::result::Result<DomId, OpError> {
        let path = config_path(&run.dir, g.uuid);
        let text = std::fs::read(&path).map_err(|source| DurableError::Io {
            path: path.clone(),
            source,
        })?;
        let config: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
            OpError::Toolstack(ToolstackError::BadJson {
                call: "saved config",
                detail: e.to_string(),
            })
        })?;
        let domid = self.ts.create(&config)?;
        if g.condition != Condition::Paused {
            self.ts.unpause(domid)?;
        }
        Ok(domid)
    }

    /// Checks a guest that is back against what was observed before its
    /// step: its addresses answer (a cold booted guest gets `verify_s` to
    /// boot), its disks are the same. Records the result; with
    /// `keep_images` off, a guest that checks out loses its image.
    fn verify(
        &self,
        run: &Run,
        before: &Observation,
        image: Option<&Path>,
        g: &PlannedGuest,
        domid: DomId,
    ) -> Result<()> {
        let now = self
            .ts
            .domain_devices(domid)
            .map(|d| DiskIdentity::of_all(&d.disks))
            .unwrap_or_default();
        let disks_changed = before
            .disks
            .iter()
            .filter_map(|b| match now.iter().find(|n| n.vdev == b.vdev) {
                Some(n) => b.differs_from(n),
                None => Some(format!("{}: gone", b.vdev)),
            })
            .collect();
        // A guest brought back paused cannot answer.
        let probe = self.policy.probe_addresses && g.condition != Condition::Paused;
        let mut silent: Vec<IpAddr> = if probe {
            before.addresses.iter().map(|a| a.ip).collect()
        } else {
            Vec::new()
        };
        let mut answered = Vec::new();
        let deadline = Instant::now() + Duration::from_secs_f64(self.policy.verify_s);
        loop {
            silent.retain(|ip| {
                let ok = self.facts.probe(*ip, PROBE_TIMEOUT);
                if ok {
                    answered.push(*ip);
                }
                !ok
            });
            if silent.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(PROBE_TIMEOUT);
        }
        let verification = Verification {
            answered,
            silent,
            disks_changed,
        };
        if !verification.ok() {
            log::error!(
                "{}: back, but silent at {:?}, disks changed: {:?}",
                g.name,
                verification.silent,
                verification.disks_changed
            );
        }
        let ok = verification.ok();
        self.record(
            run,
            Record::Verified {
                uuid: g.uuid,
                verification,
            },
        )?;
        if ok && !self.policy.keep_images {
            if let Some(image) = image {
                guest::remove_image(image)?;
            }
        }
        Ok(())
    }
}

fn back(uuid: Uuid, step: Step, domid: DomId) -> Record {
    Record::Done {
        uuid,
        step,
        image: None,
        domid: Some(domid),
    }
}
