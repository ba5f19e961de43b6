//! `plan`: what a maintenance run would do on this host, with no side
//! effects: per guest its action and order, the image space and time
//! needed, and what blocks the run (as errors) or deserves a look (warnings).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::domain::{
    DomId, DomainDetail, DomainState, DomainType, HypervisorVersion, Nic, PhysInfo, Uuid,
};
use crate::toolstack::{Result, Toolstack};

/// What happens to a guest during maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Saved to an image before the reboot, restored after: memory state kept.
    Save,
    /// Shut down cleanly, cold booted from its config after the reboot.
    Shutdown,
    /// Left alone (and lost by the reboot if it runs): only by explicit policy.
    Skip,
    /// For a domain kept after a shutdown or a crash: its memory written to
    /// a core file in the run's image directory (`xl dump-core`), then the
    /// domain destroyed; not brought back (it was not running).
    Dump,
}

/// What a run does with a guest paused by hand (policy key `paused`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PausedChoice {
    /// The plan refuses it: unpause it, or skip it.
    #[default]
    Refuse,
    /// Unpaused only for the suspend handshake, saved, and brought back
    /// paused (restored paused; a cold boot is left paused too).
    Save,
}

/// What a run does with a domain kept after a shutdown or a crash (xl's
/// `s` and `c`; policy key `kept`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptChoice {
    /// The plan refuses it: take what it was kept for and destroy it, or
    /// skip it (the reboot discards it).
    #[default]
    Refuse,
    /// Action "dump": its core written to the run's image directory, then
    /// destroyed.
    Dump,
}

/// The administrator's choices for one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestPolicy {
    #[serde(default)]
    pub action: Option<Action>,
    /// Higher comes back first after the reboot (and is saved last).
    #[serde(default)]
    pub priority: i32,
}

/// How many guests are saved or restored at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// One lane per CPU dom0 runs on, at most [`AUTO_MAX_LANES`].
    Auto,
    Lanes(usize),
}

/// Where `auto` stops. Measured on the nested host, where a save or restore
/// is bound by dom0's CPU: with one vCPU two restores at once took as long
/// as two in turn, and one lane kept guests down less; with two vCPUs two at
/// once took 11 to 14 s against 8 s for one. Beyond two nothing was
/// measured, and more streams than the image disk serves gain nothing: a
/// larger dom0 sets a number.
pub const AUTO_MAX_LANES: usize = 2;

impl Concurrency {
    /// The lanes on a dom0 with `cpus` CPUs.
    pub fn lanes(self, cpus: usize) -> usize {
        match self {
            Concurrency::Auto => cpus.clamp(1, AUTO_MAX_LANES),
            Concurrency::Lanes(n) => n.max(1),
        }
    }
}

/// In the policy file: a number, or "auto".
impl Serialize for Concurrency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Concurrency::Auto => s.serialize_str("auto"),
            Concurrency::Lanes(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Given;
        impl serde::de::Visitor<'_> for Given {
            type Value = Concurrency;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("concurrency as a number of guests at once, or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Concurrency, E> {
                usize::try_from(n)
                    .map(Concurrency::Lanes)
                    .map_err(|_| E::custom("concurrency too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Concurrency, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom("concurrency must be at least 1"))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(
                self,
                w: &str,
            ) -> std::result::Result<Concurrency, E> {
                match w {
                    "auto" => Ok(Concurrency::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(w), &self)),
                }
            }
        }
        d.deserialize_any(Given)
    }
}

/// What a run does when a guest cannot be drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Bring every saved guest back at once; no reboot.
    Rollback,
    /// Stop where it is; no reboot; the administrator decides.
    Halt,
}

/// How a run is planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub default_action: Action,
    /// By guest name or UUID.
    pub guests: BTreeMap<String, GuestPolicy>,
    pub concurrency: Concurrency,
    pub image_dir: PathBuf,
    pub live: bool,
    /// Live saves pause together at the end of the drain (the pause gate).
    /// Off by default: on the nested host it lengthened the drain, and with
    /// one dom0 vCPU the saves' final passes and teardowns, all at once,
    /// kept each guest down longer (docs/performance.md).
    pub pause_together: bool,
    /// Read every image back from the device before its guest is destroyed
    /// (off: the stream is checked as written, then fsync'd).
    pub read_back: bool,
    /// Leave each saved guest suspended instead of destroying it: the
    /// reboot ends it, a rollback resumes it where it stopped. Saves the
    /// devices' teardown (hotplug scripts) before the reboot; off by default
    /// because dom0 then shuts down with the guests' backends attached
    /// (docs/performance.md).
    pub leave_suspended: bool,
    /// For time estimates until measured figures exist.
    pub save_mib_s: f64,
    pub restore_mib_s: f64,
    /// Seconds a clean guest shutdown or boot is expected to take.
    pub shutdown_s: f64,
    pub on_failure: OnFailure,
    /// Seconds `resume` waits at boot for what the guests plug into to
    /// appear: their bridges, and the disks (files, block devices such as
    /// logical volumes) that were there when they were drained.
    #[serde(alias = "bridge_wait_s")]
    pub device_wait_s: f64,
    /// Probe a guest's recorded addresses once it is back (ICMP echo). Off
    /// for hosts whose guests drop ICMP.
    pub probe_addresses: bool,
    /// Seconds a guest that is back has to answer at its addresses (a cold
    /// booted one must boot first).
    pub verify_s: f64,
    /// Keep each image after its guest is back and verified (the default);
    /// `false` deletes it then, never before.
    pub keep_images: bool,
    /// Commands run (by /bin/sh) at each phase boundary, with XENMAINT_RUN,
    /// XENMAINT_PHASE and XENMAINT_STATUS (a JSON status file) set.
    pub hooks: Vec<String>,
    /// Seconds a hook may run before it is killed.
    pub hook_s: f64,
    /// Restore guests whose configuration names programs for dom0 outside
    /// Xen's own folders (see `image::programs`); off: such a guest blocks
    /// the plan, and its restore is refused.
    pub allow_image_programs: bool,
    /// Guests paused by hand: refused (the default) or saved and brought
    /// back paused.
    pub paused: PausedChoice,
    /// Domains kept after a shutdown or crash: refused (the default) or
    /// core-dumped and destroyed.
    pub kept: KeptChoice,
    /// Seconds a drain waits for dying domains to go before it plans; 0
    /// (the default): a dying domain blocks the plan.
    pub dying_wait_s: f64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            default_action: Action::Save,
            guests: BTreeMap::new(),
            concurrency: Concurrency::Auto,
            image_dir: PathBuf::from(crate::guest::DEFAULT_IMAGE_DIR),
            live: false,
            pause_together: false,
            read_back: false,
            leave_suspended: false,
            save_mib_s: 100.0,
            restore_mib_s: 100.0,
            shutdown_s: 30.0,
            on_failure: OnFailure::Rollback,
            device_wait_s: 60.0,
            probe_addresses: true,
            verify_s: 120.0,
            keep_images: true,
            hooks: Vec::new(),
            hook_s: 60.0,
            allow_image_programs: false,
            paused: PausedChoice::Refuse,
            kept: KeptChoice::Refuse,
            dying_wait_s: 0.0,
        }
    }
}

/// What the plan needs from the host besides the toolstack (a seam, so the
/// plan is tested without a real filesystem or /etc).
pub trait HostFacts: Sync {
    /// Bytes free for images under `dir` (or its nearest existing parent).
    fn free_bytes(&self, dir: &Path) -> std::io::Result<u64>;
    /// Why xendomains would act on the same guests at shutdown, if it would;
    /// `guests_left`: the drain leaves them suspended for the reboot.
    fn xendomains_conflict(&self, guests_left: bool) -> Option<String>;
    /// Whether the network bridge `name` exists (at boot, resume waits for
    /// the bridges its guests use). A host without bridges to check says yes.
    fn bridge_present(&self, _name: &str) -> bool {
        true
    }
    /// Whether a guest's disk `path` (a file or a block device) exists (at
    /// boot, resume waits for the ones its guests had: a volume group may
    /// be activated after xenmaint starts). A host without paths to check
    /// says yes.
    fn disk_present(&self, _path: &Path) -> bool {
        true
    }
    /// dom0's neighbour table (complete entries).
    fn neighbours(&self) -> Vec<crate::address::Neighbour>;
    /// Whether `ip` answers a probe within `timeout`.
    fn probe(&self, ip: std::net::IpAddr, timeout: std::time::Duration) -> bool;
    /// The CPUs this process may run on: in dom0, its vCPUs.
    fn dom0_cpus(&self) -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// The real host: statvfs and Debian's /etc/default/xendomains.
pub struct RealHost;

impl HostFacts for RealHost {
    fn free_bytes(&self, dir: &Path) -> std::io::Result<u64> {
        let mut probe = dir;
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        let s = nix::sys::statvfs::statvfs(probe).map_err(std::io::Error::from)?;
        Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
    }

    fn xendomains_conflict(&self, guests_left: bool) -> Option<String> {
        xendomains_conflict_in(
            &std::fs::read_to_string("/etc/default/xendomains").unwrap_or_default(),
            xendomains_enabled(Path::new("/")) || xendomains_active(),
            guests_left,
        )
    }

    fn neighbours(&self) -> Vec<crate::address::Neighbour> {
        crate::address::parse_arp(&std::fs::read_to_string("/proc/net/arp").unwrap_or_default())
    }

    fn probe(&self, ip: std::net::IpAddr, timeout: std::time::Duration) -> bool {
        crate::address::ping(ip, timeout)
    }

    fn bridge_present(&self, name: &str) -> bool {
        // A name from a guest's config is one path component, or it is not a bridge.
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        plain
            && Path::new("/sys/class/net")
                .join(name)
                .join("bridge")
                .is_dir()
    }

    fn disk_present(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Whether xendomains starts at boot under `root`: a native unit wanted by a
/// target, or (Debian 12 ships only the init script, and `systemctl enable`
/// turns its K links into S links) a start link in a multi-user runlevel.
pub fn xendomains_enabled(root: &Path) -> bool {
    let wanted = ["multi-user", "graphical"].iter().any(|t| {
        root.join(format!(
            "etc/systemd/system/{t}.target.wants/xendomains.service"
        ))
        .exists()
    });
    let linked = (2..=5).any(|level| {
        std::fs::read_dir(root.join(format!("etc/rc{level}.d")))
            .map(|dir| {
                dir.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with('S') && name.ends_with("xendomains")
                })
            })
            .unwrap_or(false)
    });
    wanted || linked
}

/// Whether systemd has xendomains started now: it then saves every guest
/// when the host shuts down, enabled or not.
fn xendomains_active() -> bool {
    std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "xendomains.service"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// xendomains saves every running guest at host shutdown when enabled and
/// XENDOMAINS_SAVE is non-empty (Debian's default is /var/lib/xen/save).
pub fn xendomains_conflict_in(defaults: &str, enabled: bool, guests_left: bool) -> Option<String> {
    if !enabled {
        return None;
    }
    if guests_left {
        // Its stop shuts down (or saves) every domain it finds, and waits for
        // each: suspended ones never answer.
        return Some(
            "xendomains is enabled, and leave_suspended leaves the saved guests suspended              until the reboot: its stop at shutdown would wait on them (disable              xendomains.service, or set leave_suspended = false)"
                .into(),
        );
    }
    let save = defaults
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("XENDOMAINS_SAVE="))
        .next_back()
        .map(|v| v.trim_matches(|c| c == '"' || c == '\''))
        .unwrap_or("/var/lib/xen/save");
    (!save.is_empty()).then(|| {
        format!(
            "xendomains is enabled and saves guests to {save} at shutdown: it would race \
             xenmaint over the same guests (set XENDOMAINS_SAVE= in /etc/default/xendomains, \
             or disable xendomains.service)"
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub guest: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedGuest {
    pub name: String,
    pub uuid: Uuid,
    pub domid: DomId,
    pub action: Action,
    /// What it is now (anything but saveable blocks the plan unless its
    /// action is skip; a guest without suspend support may be shut down).
    /// Journals written before it was recorded read as saveable.
    #[serde(default)]
    pub condition: Condition,
    pub priority: i32,
    /// Position in the drain (1 = first); restores go the other way.
    pub order: usize,
    pub memory_kib: u64,
    /// Bytes its image will take (0 unless saved).
    pub image_bytes: u64,
    pub est_drain_s: f64,
    pub est_resume_s: f64,
    pub nics: Vec<Nic>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub hypervisor: String,
    pub image_dir: PathBuf,
    pub space_needed: u64,
    pub space_free: u64,
    pub host_memory: PhysInfo,
    pub concurrency: usize,
    pub est_drain_s: f64,
    pub est_resume_s: f64,
    pub guests: Vec<PlannedGuest>,
    pub findings: Vec<Finding>,
}

impl Plan {
    /// A run may start only when nothing is an error.
    pub fn blocked(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Room made for a config's text at first: most fit.
const CONFIG_TEXT: usize = 4 << 10;

/// Bytes an image of a guest with this much memory takes: its pages plus
/// per-page stream overhead (PAGE_DATA headers, ~0.5%) and the config.
fn image_bytes(memory_kib: u64) -> u64 {
    let pages = memory_kib / 4;
    pages * 4096 + pages * 16 + (1 << 20)
}

pub fn plan(ts: &dyn Toolstack, policy: &Policy, host: &dyn HostFacts) -> Result<Plan> {
    survey(ts, policy, host, false).map(|(plan, _)| plan)
}

/// The plan, and each planned guest's libxl config as the plan read it, as
/// pretty JSON text (`configs[i]` is `plan.guests[i]`'s; None for a guest
/// that is skipped or has no config): a drain writes those, rather than
/// asking libxl for each config again (0.2 s a guest on the nested host).
/// Text, not parsed: a parsed config is many small allocations, and a
/// drain of thousands of guests holds them all at once.
pub fn plan_with_configs(
    ts: &dyn Toolstack,
    policy: &Policy,
    host: &dyn HostFacts,
) -> Result<(Plan, Vec<Option<Vec<u8>>>)> {
    survey(ts, policy, host, true)
}

fn survey(
    ts: &dyn Toolstack,
    policy: &Policy,
    host: &dyn HostFacts,
    keep_configs: bool,
) -> Result<(Plan, Vec<Option<Vec<u8>>>)> {
    let hv: HypervisorVersion = ts.version()?;
    let phys = ts.physinfo()?;
    let mut findings = Vec::new();
    let domains = ts.list_domains()?;
    let mut guests = Vec::with_capacity(domains.len());
    for info in domains.into_iter().filter(|d| d.domid != 0) {
        let detail: DomainDetail = ts.domain_detail(info.domid)?;
        let chosen = policy
            .guests
            .get(&info.name)
            .or_else(|| policy.guests.get(&info.uuid.to_string()));
        let advertised = match info.state {
            DomainState::Running | DomainState::Blocked => ts.pv_connected(info.domid)?,
            _ => None,
        };
        let condition = Condition::of(&info, advertised);
        let kept = matches!(condition, Condition::Preserved | Condition::Crashed);
        let action = match chosen.and_then(|g| g.action) {
            Some(action) => action,
            None if kept && policy.kept == KeptChoice::Dump => Action::Dump,
            None => policy.default_action,
        };
        let priority = chosen.map_or(0, |g| g.priority);
        let finding = |severity, message: String| Finding {
            severity,
            guest: Some(info.name.clone()),
            message,
        };
        // Skip is the administrator's explicit choice: the reboot stops or
        // discards it, and a warning below says so.
        let refused = match action {
            Action::Skip => None,
            Action::Shutdown if condition.can_shut_down() => None,
            Action::Save
                if condition == Condition::Paused && policy.paused == PausedChoice::Save =>
            {
                findings.push(finding(
                    Severity::Warning,
                    "is paused: unpaused only for the suspend handshake, saved, and brought \
                     back paused (policy paused = \"save\")"
                        .into(),
                ));
                None
            }
            Action::Dump if kept => None,
            Action::Dump => Some(
                "has action \"dump\", which is for a domain kept after a shutdown or crash \
                 (xl's s or c): give it \"save\", \"shutdown\" or \"skip\"",
            ),
            _ if condition == Condition::Dying && policy.dying_wait_s > 0.0 => {
                findings.push(finding(
                    Severity::Warning,
                    format!(
                        "is dying: a drain waits up to {} s for it to go, and refuses to \
                         start if it stays (dying_wait_s)",
                        policy.dying_wait_s
                    ),
                ));
                None
            }
            _ => condition.why_not(),
        };
        if let Some(why) = refused {
            findings.push(finding(Severity::Error, why.into()));
        }
        // (A paused guest is saved without --live: see the drain.)
        if policy.live
            && action == Action::Save
            && info.dtype == DomainType::Pv
            && condition != Condition::Paused
            && !phys.shadow_paging
        {
            findings.push(finding(
                Severity::Error,
                "is a PV guest, and this Xen is built without shadow paging, which a live save \
                 of a PV guest needs (live = true in the policy): set live = false, and it \
                 pauses for its whole save"
                    .into(),
            ));
        }
        if action == Action::Dump && refused.is_none() {
            findings.push(finding(
                Severity::Warning,
                format!(
                    "is {condition} and kept: its core goes to the run's image directory, then \
                     it is destroyed and not brought back"
                ),
            ));
        }
        let config = detail.config.as_ref();
        if matches!(action, Action::Save | Action::Shutdown) && config.is_none() {
            findings.push(finding(
                Severity::Error,
                "was not created by libxl (no stored config): xenmaint cannot bring it back \
                 after the reboot"
                    .into(),
            ));
        }
        if let (Some(config), false, Action::Save) = (config, policy.allow_image_programs, action) {
            for p in crate::image::programs(config) {
                if let Some(why) = p.refused {
                    findings.push(finding(
                        Severity::Error,
                        format!(
                            "names {} as its {}, {why}: its restore would be refused \
                             (allow_image_programs = true in the policy file if you trust it)",
                            p.path.display(),
                            p.role
                        ),
                    ));
                }
            }
        }
        if let (Some(config), Action::Save) = (config, action) {
            for (severity, what) in crate::devices::unsaveable(config) {
                findings.push(finding(severity, what.into()));
            }
        }
        if action == Action::Skip {
            findings.push(finding(
                Severity::Warning,
                if condition == Condition::Saveable {
                    "is skipped by policy: the host reboot will stop it"
                } else {
                    "is skipped by policy: the host reboot will stop or discard it"
                }
                .into(),
            ));
        }
        let image = match action {
            Action::Save => image_bytes(info.memory_kib),
            // An ELF core holds the guest's memory and little else.
            Action::Dump => info.memory_kib * 1024,
            Action::Shutdown | Action::Skip => 0,
        };
        let mib = image as f64 / f64::from(1 << 20);
        let (est_drain_s, est_resume_s) = match action {
            Action::Save => (mib / policy.save_mib_s, mib / policy.restore_mib_s),
            Action::Shutdown => (policy.shutdown_s, policy.shutdown_s),
            Action::Dump => (mib / policy.save_mib_s, 0.0),
            Action::Skip => (0.0, 0.0),
        };
        let guest = PlannedGuest {
            name: info.name,
            uuid: info.uuid,
            domid: info.domid,
            action,
            condition,
            priority,
            order: 0,
            memory_kib: info.memory_kib,
            image_bytes: image,
            est_drain_s,
            est_resume_s,
            nics: detail.nics,
        };
        let text = config
            .filter(|_| keep_configs && matches!(action, Action::Save | Action::Shutdown))
            .map(|c| {
                let mut text = Vec::with_capacity(CONFIG_TEXT);
                serde_json::to_writer_pretty(&mut text, c).expect("JSON serialises");
                text
            });
        guests.push((guest, text));
    }
    // Drain the least important first, so the most important run longest
    // and, restored in reverse order, come back first.
    guests.sort_by(|(a, _), (b, _)| {
        a.priority
            .cmp(&b.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let (mut guests, configs): (Vec<PlannedGuest>, Vec<_>) = guests.into_iter().unzip();
    for (i, g) in guests.iter_mut().enumerate() {
        g.order = i + 1;
    }

    let space_needed: u64 = guests.iter().map(|g| g.image_bytes).sum();
    let space_free = match host.free_bytes(&policy.image_dir) {
        Ok(b) => b,
        Err(e) => {
            findings.push(Finding {
                severity: Severity::Error,
                guest: None,
                message: format!(
                    "cannot measure free space under {}: {e}",
                    policy.image_dir.display()
                ),
            });
            0
        }
    };
    if space_needed > space_free {
        findings.push(Finding {
            severity: Severity::Error,
            guest: None,
            message: format!(
                "images need {} MiB but {} has {} MiB free",
                space_needed >> 20,
                policy.image_dir.display(),
                space_free >> 20
            ),
        });
    }
    if let Some(why) = host.xendomains_conflict(policy.leave_suspended) {
        findings.push(Finding {
            severity: Severity::Error,
            guest: None,
            message: why,
        });
    }
    let concurrency = policy.concurrency.lanes(host.dom0_cpus());
    let lanes = concurrency as f64;
    let est_drain_s = guests.iter().map(|g| g.est_drain_s).sum::<f64>() / lanes;
    let est_resume_s = guests.iter().map(|g| g.est_resume_s).sum::<f64>() / lanes;
    let plan = Plan {
        hypervisor: hv.release(),
        image_dir: policy.image_dir.clone(),
        space_needed,
        space_free,
        host_memory: phys,
        concurrency,
        est_drain_s,
        est_resume_s,
        guests,
        findings,
    };
    Ok((plan, configs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Sim;

    struct Facts {
        free: u64,
        xendomains: Option<String>,
        cpus: usize,
    }

    impl HostFacts for Facts {
        fn free_bytes(&self, _: &Path) -> std::io::Result<u64> {
            Ok(self.free)
        }
        fn xendomains_conflict(&self, _: bool) -> Option<String> {
            self.xendomains.clone()
        }
        fn neighbours(&self) -> Vec<crate::address::Neighbour> {
            Vec::new()
        }
        fn probe(&self, _: std::net::IpAddr, _: std::time::Duration) -> bool {
            unreachable!("planning probes nothing")
        }
        fn dom0_cpus(&self) -> usize {
            self.cpus
        }
    }

    fn example() -> Sim {
        Sim::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json")).unwrap()
    }

    fn roomy() -> Facts {
        Facts {
            free: 100 << 30,
            xendomains: None,
            cpus: 2,
        }
    }

    #[test]
    fn every_guest_is_planned_in_priority_order_with_space_and_time() {
        let mut policy = Policy::default();
        policy.guests.insert(
            "db-1".into(),
            GuestPolicy {
                action: None,
                priority: 10,
            },
        );
        policy.guests.insert(
            "6f1c0003-5b2e-4d7a-9c3e-0a1b2c3d4e03".into(),
            GuestPolicy {
                action: Some(Action::Shutdown),
                priority: 0,
            },
        );
        let p = plan(&example(), &policy, &roomy()).unwrap();
        let names: Vec<_> = p
            .guests
            .iter()
            .map(|g| (g.name.as_str(), g.action))
            .collect();
        assert_eq!(
            names,
            [
                ("cache-1", Action::Shutdown),
                ("web-1", Action::Save),
                ("db-1", Action::Save)
            ],
            "dom0 never planned; db-1 (priority 10) drained last"
        );
        assert_eq!(p.guests[2].order, 3);
        assert_eq!(p.guests[0].image_bytes, 0);
        assert!(p.space_needed > (256 + 512) << 20);
        assert!(p.est_drain_s > 0.0 && p.est_resume_s > 0.0);
        assert!(!p.blocked(), "{:?}", p.findings);
    }

    /// A paused guest can answer neither a suspend nor a shutdown request:
    /// the plan blocks on it, naming it and the way out, unless the policy
    /// skips it.
    #[test]
    fn a_paused_guest_blocks_the_plan_unless_skipped() {
        let ts = example();
        let web = ts.resolve(&"web-1".parse().unwrap()).unwrap().domid;
        ts.pause(web).unwrap();
        let p = plan(&ts, &Policy::default(), &roomy()).unwrap();
        assert!(p.blocked());
        let f = p
            .findings
            .iter()
            .find(|f| f.severity == Severity::Error)
            .unwrap();
        assert_eq!(f.guest.as_deref(), Some("web-1"));
        assert!(
            f.message.contains("is paused") && f.message.contains("xl unpause"),
            "{}",
            f.message
        );
        let mut policy = Policy::default();
        policy.guests.insert(
            "web-1".into(),
            GuestPolicy {
                action: Some(Action::Skip),
                priority: 0,
            },
        );
        assert!(!plan(&ts, &policy, &roomy()).unwrap().blocked());
    }

    /// Debian 13's Xen has no shadow paging: a live save of a PV guest
    /// cannot track its dirty pages there. With live = true the plan blocks
    /// on each PV guest it would save, naming it; without, or with shadow
    /// paging, nothing is said.
    #[test]
    fn live_saves_of_pv_guests_need_shadow_paging() {
        let mut host = example().snapshot();
        host.physinfo.shadow_paging = false;
        let no_shadow = Sim::new(host).unwrap();
        let mut live = Policy {
            live: true,
            ..Policy::default()
        };
        live.guests.insert(
            "cache-1".into(),
            GuestPolicy {
                action: Some(Action::Shutdown),
                priority: 0,
            },
        );
        let shadow_findings = |p: &Plan| -> Vec<String> {
            p.findings
                .iter()
                .filter(|f| f.message.contains("shadow paging"))
                .map(|f| format!("{:?} {}", f.severity, f.guest.as_deref().unwrap_or("")))
                .collect()
        };
        let p = plan(&no_shadow, &live, &roomy()).unwrap();
        assert!(p.blocked());
        assert_eq!(
            shadow_findings(&p),
            ["Error web-1", "Error db-1"],
            "the two PV guests saved; cache-1 is shut down"
        );
        let p = plan(&no_shadow, &Policy::default(), &roomy()).unwrap();
        assert!(
            shadow_findings(&p).is_empty() && !p.blocked(),
            "{:?}",
            p.findings
        );
        let p = plan(&example(), &live, &roomy()).unwrap();
        assert!(
            shadow_findings(&p).is_empty() && !p.blocked(),
            "{:?}",
            p.findings
        );
        // A paused guest saved by policy is saved without --live.
        let web = no_shadow.resolve(&"web-1".parse().unwrap()).unwrap().domid;
        no_shadow.pause(web).unwrap();
        live.paused = PausedChoice::Save;
        let p = plan(&no_shadow, &live, &roomy()).unwrap();
        assert_eq!(shadow_findings(&p), ["Error db-1"]);
    }

    /// The example host with web-1 changed by `f`.
    fn with_web(f: impl Fn(&mut crate::sim::SimDomain)) -> Sim {
        let mut host = example().snapshot();
        let web = host
            .domains
            .iter_mut()
            .find(|d| d.detail.info.name == "web-1")
            .unwrap();
        f(web);
        Sim::new(host).unwrap()
    }

    /// Every condition but saveable blocks the plan by default, naming the
    /// guest, what it is and a way out, and is recorded in the plan; an
    /// explicit skip lets the plan through with a warning that the reboot
    /// stops or discards it; a guest without suspend support may be shut
    /// down instead.
    #[test]
    fn each_condition_blocks_the_plan_until_the_policy_chooses() {
        use crate::condition::Condition as C;
        use crate::domain::ShutdownReason as R;
        let set = |state, reason| {
            move |d: &mut crate::sim::SimDomain| {
                d.detail.info.state = state;
                d.detail.info.shutdown_reason = reason;
            }
        };
        let cases: Vec<(C, Sim, &str)> = vec![
            (
                C::Paused,
                with_web(set(DomainState::Paused, None)),
                "xl unpause",
            ),
            (
                C::Preserved,
                with_web(set(DomainState::Shutdown, Some(R::Poweroff))),
                "xl destroy",
            ),
            (
                C::Crashed,
                with_web(set(DomainState::Crashed, Some(R::Crash))),
                "xl dump-core",
            ),
            (
                C::Suspended,
                with_web(set(DomainState::Shutdown, Some(R::Suspend))),
                "plan again",
            ),
            (
                C::Dying,
                with_web(set(DomainState::Dying, None)),
                "plan again",
            ),
            (
                C::Migrating,
                with_web(|d| d.detail.info.name = "web-1--incoming".into()),
                "migration",
            ),
            (
                C::NoSuspend,
                with_web(|d| d.no_suspend = true),
                "\"shutdown\"",
            ),
        ];
        for (want, ts, way_out) in cases {
            let p = plan(&ts, &Policy::default(), &roomy()).unwrap();
            let g = p
                .guests
                .iter()
                .find(|g| g.name.starts_with("web-1"))
                .unwrap();
            assert_eq!(g.condition, want);
            assert!(p.blocked(), "{want:?}");
            let errors: Vec<_> = p
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .collect();
            assert_eq!(errors.len(), 1, "{want:?}: {errors:?}");
            assert_eq!(errors[0].guest.as_deref(), Some(g.name.as_str()));
            assert!(
                errors[0].message.contains(way_out),
                "{want:?}: {}",
                errors[0].message
            );
            let others = p.guests.iter().filter(|o| o.name != g.name);
            assert!(others.clone().all(|o| o.condition == C::Saveable));

            let mut policy = Policy::default();
            let skip = |action| GuestPolicy {
                action: Some(action),
                priority: 0,
            };
            policy.guests.insert(g.name.clone(), skip(Action::Skip));
            let p = plan(&ts, &policy, &roomy()).unwrap();
            assert!(!p.blocked(), "{want:?} skipped: {:?}", p.findings);
            assert!(p.findings.iter().any(|f| f.severity == Severity::Warning
                && f.guest.as_deref() == Some(g.name.as_str())
                && f.message.contains("reboot will stop or discard")));
            policy.guests.insert(g.name.clone(), skip(Action::Shutdown));
            let shut = plan(&ts, &policy, &roomy()).unwrap();
            assert_eq!(shut.blocked(), want != C::NoSuspend, "{want:?} shut down");

            // The policy's own choices: each lets exactly its state through,
            // with a warning naming the guest.
            let chosen = Policy {
                paused: PausedChoice::Save,
                kept: KeptChoice::Dump,
                dying_wait_s: 10.0,
                ..Policy::default()
            };
            let p = plan(&ts, &chosen, &roomy()).unwrap();
            let through = matches!(want, C::Paused | C::Preserved | C::Crashed | C::Dying);
            assert_eq!(
                p.blocked(),
                !through,
                "{want:?} by policy: {:?}",
                p.findings
            );
            let g = p.guests.iter().find(|o| o.name == g.name).unwrap();
            let dumped = matches!(want, C::Preserved | C::Crashed);
            assert_eq!(g.action == Action::Dump, dumped, "{want:?}");
            if through {
                assert!(p.findings.iter().any(|f| f.severity == Severity::Warning
                    && f.guest.as_deref() == Some(g.name.as_str())));
            }
        }
    }

    /// A run's journal written before the plan recorded conditions still
    /// reads (a host upgraded mid-run resumes it): its guests were saveable.
    #[test]
    fn a_planned_guest_without_a_condition_reads_as_saveable() {
        let p = plan(&example(), &Policy::default(), &roomy()).unwrap();
        let mut v = serde_json::to_value(&p.guests[0]).unwrap();
        assert_eq!(v["condition"], "saveable");
        v.as_object_mut().unwrap().remove("condition");
        let g: PlannedGuest = serde_json::from_value(v).unwrap();
        assert_eq!(g, p.guests[0]);
    }

    /// The drain writes the configs the plan read: each beside its own
    /// guest after the plan's sort, none for a skipped guest, the plan
    /// itself the same as without them.
    #[test]
    fn each_planned_guest_has_its_own_config_beside_it() {
        let mut policy = Policy::default();
        for (name, action, priority) in [("db-1", None, 10), ("cache-1", Some(Action::Skip), 0)] {
            policy
                .guests
                .insert(name.into(), GuestPolicy { action, priority });
        }
        let ts = example();
        let (p, configs) = plan_with_configs(&ts, &policy, &roomy()).unwrap();
        let order: Vec<_> = p.guests.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(order, ["cache-1", "web-1", "db-1"], "not the domid order");
        assert_eq!(configs.len(), p.guests.len());
        for (g, text) in p.guests.iter().zip(&configs) {
            if g.action == Action::Skip {
                assert!(text.is_none(), "{}", g.name);
                continue;
            }
            let read: serde_json::Value = serde_json::from_slice(text.as_ref().unwrap()).unwrap();
            let want = ts.domain_detail(g.domid).unwrap().config.unwrap();
            assert_eq!(read, want, "{}", g.name);
        }
        assert_eq!(plan(&ts, &policy, &roomy()).unwrap(), p);
    }

    #[test]
    fn xendomains_is_enabled_by_a_unit_or_by_debian_start_links() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert!(!xendomains_enabled(root));
        // Debian's package installs only K links: disabled.
        for level in 0..=6 {
            let d = root.join(format!("etc/rc{level}.d"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("K01xendomains"), "").unwrap();
        }
        assert!(!xendomains_enabled(root));
        // `systemctl enable xendomains` on Debian 12 (update-rc.d): S links.
        std::fs::write(root.join("etc/rc3.d/S03xendomains"), "").unwrap();
        assert!(xendomains_enabled(root));
        std::fs::remove_file(root.join("etc/rc3.d/S03xendomains")).unwrap();
        let wants = root.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::fs::write(wants.join("xendomains.service"), "").unwrap();
        assert!(xendomains_enabled(root));
    }

    /// By default one lane per dom0 vCPU, at most two; a number in the
    /// policy is taken as it is, whatever dom0 has. The estimates divide
    /// by the lanes the plan settled on.
    #[test]
    fn lanes_follow_dom0s_vcpus_unless_the_policy_names_a_number() {
        let ts = example();
        let planned = |concurrency, cpus| {
            let policy = Policy {
                concurrency,
                ..Policy::default()
            };
            let p = plan(&ts, &policy, &Facts { cpus, ..roomy() }).unwrap();
            (p.concurrency, p.est_drain_s)
        };
        assert_eq!(Policy::default().concurrency, Concurrency::Auto);
        let (one, one_s) = planned(Concurrency::Auto, 1);
        let (two, two_s) = planned(Concurrency::Auto, 2);
        assert_eq!((one, two), (1, 2));
        assert!((one_s - 2.0 * two_s).abs() < 1e-9, "{one_s} {two_s}");
        assert_eq!(planned(Concurrency::Auto, 64).0, AUTO_MAX_LANES);
        assert_eq!(planned(Concurrency::Auto, 0).0, 1);
        assert_eq!(planned(Concurrency::Lanes(4), 1).0, 4);
        assert_eq!(planned(Concurrency::Lanes(1), 64).0, 1);
    }

    /// The policy file's forms, both ways: a number, or "auto".
    #[test]
    fn concurrency_reads_and_writes_a_number_or_auto() {
        let policy: Policy = toml::from_str("concurrency = \"auto\"\n").unwrap();
        assert_eq!(policy.concurrency, Concurrency::Auto);
        let policy: Policy = toml::from_str("concurrency = 3\n").unwrap();
        assert_eq!(policy.concurrency, Concurrency::Lanes(3));
        for c in [Concurrency::Auto, Concurrency::Lanes(3)] {
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(
                serde_json::from_str::<Concurrency>(&text).unwrap(),
                c,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::to_string(&Concurrency::Auto).unwrap(),
            "\"auto\""
        );
    }

    #[test]
    fn too_little_space_and_xendomains_block_the_run() {
        let facts = Facts {
            free: 10 << 20,
            xendomains: xendomains_conflict_in("XENDOMAINS_SAVE=/var/lib/xen/save\n", true, false),
            cpus: 1,
        };
        let p = plan(&example(), &Policy::default(), &facts).unwrap();
        assert!(p.blocked());
        let text: Vec<_> = p.findings.iter().map(|f| f.message.as_str()).collect();
        assert!(text.iter().any(|m| m.contains("MiB free")), "{text:?}");
        assert!(text.iter().any(|m| m.contains("xendomains")), "{text:?}");
    }

    #[test]
    fn xendomains_counts_only_when_enabled_and_saving() {
        assert!(xendomains_conflict_in("", false, false).is_none());
        assert!(
            xendomains_conflict_in("", true, false).is_some(),
            "Debian's default saves"
        );
        assert!(xendomains_conflict_in("XENDOMAINS_SAVE=\n", true, false).is_none());
        assert!(xendomains_conflict_in("XENDOMAINS_SAVE=\"\"\n", true, false).is_none());
        assert!(
            xendomains_conflict_in("#XENDOMAINS_SAVE=\nXENDOMAINS_SAVE=/srv\n", true, false)
                .unwrap()
                .contains("/srv")
        );
        // Guests left suspended: any enabled xendomains would wait on them.
        assert!(xendomains_conflict_in("XENDOMAINS_SAVE=\n", true, true)
            .unwrap()
            .contains("leave_suspended"));
        assert!(xendomains_conflict_in("XENDOMAINS_SAVE=\n", false, true).is_none());
    }

    #[test]
    fn pci_passthrough_and_foreign_domains_are_errors() {
        let mut host = example().snapshot();
        host.domains[1].detail.config.as_mut().unwrap()["pcidevs"] =
            serde_json::json!([{"func": 0, "dev": 2, "bus": 3}]);
        host.domains[2].detail.config = None;
        let p = plan(&Sim::new(host).unwrap(), &Policy::default(), &roomy()).unwrap();
        let errors: Vec<_> = p
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| (f.guest.clone().unwrap(), f.message.clone()))
            .collect();
        assert!(
            errors
                .iter()
                .any(|(g, m)| g == "web-1" && m.contains("PCI")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|(g, m)| g == "db-1" && m.contains("libxl")),
            "{errors:?}"
        );
    }

    #[test]
    fn settings_a_save_loses_are_found_per_guest_for_saved_guests_only() {
        let mut host = example().snapshot();
        host.domains[1].detail.config.as_mut().unwrap()["b_info"]["vnuma_nodes"] =
            serde_json::json!([{"memkb": 131072}]);
        host.domains[2].detail.config.as_mut().unwrap()["p9s"] =
            serde_json::json!([{"tag": "share", "path": "/srv"}]);
        let p = plan(
            &Sim::new(host.clone()).unwrap(),
            &Policy::default(),
            &roomy(),
        )
        .unwrap();
        let of = |p: &Plan, g: &str| -> Vec<(Severity, String)> {
            p.findings
                .iter()
                .filter(|f| f.guest.as_deref() == Some(g))
                .map(|f| (f.severity, f.message.clone()))
                .collect()
        };
        let web = of(&p, "web-1");
        assert!(
            web.iter()
                .any(|(s, m)| *s == Severity::Error && m.contains("vNUMA")),
            "{web:?}"
        );
        let db = of(&p, "db-1");
        assert!(
            db.iter()
                .any(|(s, m)| *s == Severity::Warning && m.contains("9pfs")),
            "{db:?}"
        );
        assert!(p.blocked());

        // Shut down rather than saved, the vNUMA guest blocks nothing.
        let mut policy = Policy::default();
        policy.guests.insert(
            "web-1".into(),
            GuestPolicy {
                action: Some(Action::Shutdown),
                priority: 0,
            },
        );
        let p = plan(&Sim::new(host).unwrap(), &policy, &roomy()).unwrap();
        assert_eq!(of(&p, "web-1"), []);
        assert!(!p.blocked(), "{:?}", p.findings);
    }

    #[test]
    fn a_failing_toolstack_fails_the_plan() {
        let sim = example();
        sim.inject(crate::sim::Fault {
            call: crate::toolstack::Call::ListDomains,
            domid: None,
            message: "xenstored down".into(),
            times: None,
        });
        assert!(plan(&sim, &Policy::default(), &roomy()).is_err());
    }
}
