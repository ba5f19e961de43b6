//! `Sim`: a simulated Xen host in process, for the sequencer's logic, fault
//! injection and scale tests. It is not Xen and never claims to be: every
//! CLI output made from it is marked simulated.
//!
//! A host is described in JSON (see examples/sim-host.json): the hypervisor,
//! physinfo, the domains with their devices and configs (the same shape
//! `xenmaint info --json` prints), and faults to inject.

mod boot;
mod store;

use std::collections::{HashMap, HashSet};

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use boot::SimBoot;
use store::Store;
pub use store::STATE_FILE;

use serde::{Deserialize, Serialize};

use crate::boot::{BootEntry, MemoryBootState};
use crate::domain::{
    Disk, DomId, DomainDetail, DomainInfo, DomainRef, DomainState, DomainType, HypervisorVersion,
    PhysInfo, ShutdownReason, Uuid,
};
use crate::image::{synth, StreamScanner};
use crate::toolstack::{Call, Request, RestoreSource, Result, SaveSink, Toolstack, ToolstackError};

/// A failure to inject: `call` fails with `message`, for every domain or only
/// for `domid`; every time, or only the next `times` times (a transient
/// fault, then the call works again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub call: Call,
    #[serde(default)]
    pub domid: Option<DomId>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

/// A simulated domain: what `info --json` shows, plus how its guest behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimDomain {
    #[serde(flatten)]
    pub detail: DomainDetail,
    /// The guest never acts on shutdown or reboot requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignores_shutdown: bool,
    /// Started by `xl create`, whose per-domain daemon reaps the domain when
    /// it shuts down and re-creates it when it reboots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub xl_daemon: bool,
    /// Addresses the guest publishes in xenstore (as a guest agent would).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<std::net::IpAddr>,
    /// The guest's PV drivers are not connected: a PV or PVH one never
    /// answers a suspend request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_suspend: bool,
    /// The maintenance notice in its xenstore area (gone with the domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

/// The JSON description of a simulated host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimHost {
    #[serde(default)]
    pub description: String,
    pub hypervisor: HypervisorVersion,
    pub physinfo: PhysInfo,
    /// In domid order. A deque: guests leave mostly from the front (a
    /// drain goes in plan order), which a Vec would shift every time.
    pub domains: std::collections::VecDeque<SimDomain>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// The simulated boot loader: its entries (the first is the default
    /// unless `saved_entry` says otherwise) and the build each boots.
    #[serde(default = "default_boot")]
    pub boot: MemoryBootState,
    /// The hypervisor builds the host can boot (by their build-id in
    /// `boot.build_ids`), beside the one running: a reboot into an entry
    /// runs its build; an entry whose build is not here boots the one that
    /// ran before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<HypervisorVersion>,
    /// Rebuilt by `Sim::new`, kept by every change `Sim` makes.
    #[serde(skip)]
    index: SimIndex,
    #[serde(skip)]
    saves: SaveLog,
    /// The last domid handed out: like Xen, the sim does not hand a domid
    /// out again soon after its domain went (a guest that reboots itself
    /// comes back under a new one). Kept in a persistent host's state.
    #[serde(default, skip_serializing_if = "is_zero")]
    last_domid: DomId,
}

/// Live saves begun, and each suspend by a save: the guest, and how many
/// live saves had begun by then.
#[derive(Debug, Clone, Default)]
struct SaveLog {
    live_begun: usize,
    suspends: Vec<(DomId, usize)>,
}

/// Lookups that stay cheap with thousands of simulated guests (a scan per
/// lookup made a 10,000-guest run quadratic): `domains` is kept in domid
/// order; these map UUIDs, names and addresses to domids.
#[derive(Debug, Clone, Default)]
struct SimIndex {
    by_uuid: HashMap<Uuid, DomId>,
    by_name: HashMap<String, DomId>,
    /// Configured and published addresses; a guest answers at them while it runs.
    by_ip: HashMap<std::net::IpAddr, Vec<DomId>>,
}

impl SimHost {
    fn position(&self, domid: DomId) -> Option<usize> {
        self.domains
            .binary_search_by_key(&domid, |d| d.detail.info.domid)
            .ok()
    }

    fn addresses(d: &SimDomain) -> Vec<std::net::IpAddr> {
        let mut ips: Vec<_> = crate::address::collect(&d.detail.nics, &[], &[])
            .into_iter()
            .map(|a| a.ip)
            .collect();
        ips.extend(&d.published);
        ips
    }

    fn index_domain(&mut self, at: usize) {
        let d = &self.domains[at];
        let (domid, ips) = (d.detail.info.domid, Self::addresses(d));
        self.index.by_uuid.insert(d.detail.info.uuid, domid);
        self.index.by_name.insert(d.detail.info.name.clone(), domid);
        for ip in ips {
            self.index.by_ip.entry(ip).or_default().push(domid);
        }
    }

    fn reindex(&mut self) {
        self.index = SimIndex::default();
        for at in 0..self.domains.len() {
            self.index_domain(at);
        }
    }

    /// Adds a domain whose domid is above every other's.
    fn push(&mut self, d: SimDomain) {
        self.domains.push_back(d);
        self.index_domain(self.domains.len() - 1);
    }

    /// Takes a domain off the host, and gives it back.
    fn remove(&mut self, domid: DomId) -> Option<SimDomain> {
        let d = self.domains.remove(self.position(domid)?)?;
        self.index.by_uuid.remove(&d.detail.info.uuid);
        self.index.by_name.remove(&d.detail.info.name);
        for ip in Self::addresses(&d) {
            if let Some(ids) = self.index.by_ip.get_mut(&ip) {
                ids.retain(|&i| i != domid);
            }
        }
        Some(d)
    }

    fn info_of(&self, domid: Option<&DomId>) -> Option<DomainInfo> {
        let at = self.position(*domid?)?;
        Some(self.domains[at].detail.info.clone())
    }
}

fn is_zero(n: &DomId) -> bool {
    *n == 0
}

/// A Debian Xen host's entries: the package's hypervisor, and the patched
/// one a run boots once.
fn default_boot() -> MemoryBootState {
    let entries = vec![
        BootEntry {
            id: "xen".into(),
            title: "Debian GNU/Linux, with Xen hypervisor".into(),
            hypervisor: Some("/boot/xen-4.17-amd64.gz".into()),
        },
        BootEntry {
            id: "xen-4.17.7".into(),
            title: "Debian GNU/Linux, with Xen 4.17.7".into(),
            hypervisor: Some("/boot/xen-4.17.7-amd64.gz".into()),
        },
    ];
    MemoryBootState {
        entries,
        ..MemoryBootState::default()
    }
}

/// Why a simulated host could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read simulated host {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("simulated host {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("simulated host {path} is inconsistent: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Pages in a simulated save stream: enough to exercise the image code, not
/// a guest's real size (thousands of simulated guests must stay cheap).
const SIM_PAGES: usize = 2;

/// A simulated host. Deterministic: the same description and the same calls
/// give the same answers, in domid order.
#[derive(Debug)]
pub struct Sim {
    /// Read-write: the calls that only look (most of them) do not wait for
    /// each other, as a drain's lanes look up their guests at once.
    host: RwLock<SimHost>,
    /// Where the host lives between commands, if it outlives this one.
    store: Option<Store>,
}

/// The host for one change: on a persistent host, under its lock, read
/// fresh before and written after (when changed).
struct HostGuard<'a> {
    host: RwLockWriteGuard<'a, SimHost>,
    store: Option<&'a Store>,
    dirty: bool,
    // Dropped last: the lock outlives the write.
    _held: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl std::ops::Deref for HostGuard<'_> {
    type Target = SimHost;
    fn deref(&self) -> &SimHost {
        &self.host
    }
}

impl std::ops::DerefMut for HostGuard<'_> {
    fn deref_mut(&mut self) -> &mut SimHost {
        self.dirty = true;
        &mut self.host
    }
}

impl Drop for HostGuard<'_> {
    fn drop(&mut self) {
        if let (true, Some(store)) = (self.dirty, self.store) {
            store.write(&self.host);
        }
    }
}

fn read_description(path: &Path) -> std::result::Result<SimHost, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| SimError::Parse {
        path: path.to_owned(),
        source,
    })
}

impl Sim {
    /// A host that lives for this process only, as `path` describes it.
    pub fn load(path: &Path) -> std::result::Result<Sim, SimError> {
        Sim::new(read_description(path)?).map_err(|reason| SimError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// The host `description` describes, as the commands before this one
    /// left it in `state_dir` (see `store`); every change this process makes
    /// is written there.
    pub fn open(description: &Path, state_dir: &Path) -> std::result::Result<Sim, SimError> {
        let store = Store::new(state_dir);
        let (host, path) = match store.load()? {
            Some(host) => (host, state_dir.join(STATE_FILE)),
            None => (read_description(description)?, description.to_owned()),
        };
        let mut sim = Sim::new(host).map_err(|reason| SimError::Invalid { path, reason })?;
        sim.store = Some(store);
        Ok(sim)
    }

    /// Why the persistent host's state could not be read or written, if it
    /// could not: the command that changed it must not end as if it worked.
    pub fn broken(&self) -> Option<String> {
        self.store.as_ref().and_then(Store::broken)
    }

    /// Checks the description as a real host would be: one dom0, unique
    /// domids, names and UUIDs.
    pub fn new(host: SimHost) -> std::result::Result<Sim, String> {
        Ok(Sim {
            host: RwLock::new(Sim::checked(host)?),
            store: None,
        })
    }

    fn checked(mut host: SimHost) -> std::result::Result<SimHost, String> {
        host.domains
            .make_contiguous()
            .sort_by_key(|d| d.detail.info.domid);
        if host.domains.front().map(|d| d.detail.info.domid) != Some(0) {
            return Err("no domain 0 (every Xen host has dom0)".into());
        }
        let (mut ids, mut names, mut uuids) = (HashSet::new(), HashSet::new(), HashSet::new());
        for d in &host.domains {
            let i = &d.detail.info;
            if i.name.is_empty() {
                return Err(format!("domain {} has an empty name", i.domid));
            }
            if !ids.insert(i.domid) {
                return Err(format!("domid {} appears twice", i.domid));
            }
            if !names.insert(i.name.clone()) {
                return Err(format!("name {:?} appears twice", i.name));
            }
            if !uuids.insert(i.uuid) {
                return Err(format!("uuid {} appears twice", i.uuid));
            }
        }
        host.reindex();
        let last = host.domains.back().map_or(0, |d| d.detail.info.domid);
        host.last_domid = host.last_domid.max(last);
        host.settle_boot();
        Ok(host)
    }

    /// Each guest suspended by a save, in order, with how many live saves
    /// had begun by then.
    pub fn suspends(&self) -> Vec<(DomId, usize)> {
        self.read().saves.suspends.clone()
    }

    /// Makes `call` fail from now on (for `domid` only, if given).
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The simulated host's facts: its guests answer probes at their
    /// configured and published addresses while they run; nothing of this
    /// machine's network is looked at or probed. Image space is this
    /// machine's, where the simulated images are really written.
    pub fn host_facts(&self) -> SimFacts<'_> {
        SimFacts { sim: self }
    }

    /// The host as it is now, in its JSON shape.
    pub fn snapshot(&self) -> SimHost {
        self.read().clone()
    }

    // A panic elsewhere cannot leave SimHost half-updated in a way that
    // matters to a simulation; keep going.
    fn write_guard(&self) -> RwLockWriteGuard<'_, SimHost> {
        self.host.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> HostGuard<'_> {
        let held = self.store.as_ref().and_then(Store::hold);
        let mut host = self.write_guard();
        if let Some(store) = self.store.as_ref().filter(|s| s.changed()) {
            Sim::refresh(store, &mut host);
        }
        HostGuard {
            host,
            store: self.store.as_ref(),
            dirty: false,
            _held: held,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, SimHost> {
        if let Some(store) = self.store.as_ref().filter(|s| s.changed()) {
            Sim::refresh(store, &mut self.write_guard());
        }
        self.host.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the host as another command left it; this process's own save
    /// log stays.
    fn refresh(store: &Store, host: &mut SimHost) {
        let fresh = store
            .load()
            .map_err(|e| e.to_string())
            .and_then(|h| h.map(Sim::checked).transpose());
        match fresh {
            Ok(Some(mut fresh)) => {
                fresh.saves = std::mem::take(&mut host.saves);
                *host = fresh;
            }
            Ok(None) => {}
            Err(e) => store.fail(e),
        }
    }

    /// Fails if a fault is injected for this call, then runs `f` on the host.
    fn with<T>(
        &self,
        call: Call,
        domid: Option<DomId>,
        f: impl FnOnce(&mut SimHost) -> Result<T>,
    ) -> Result<T> {
        self.injected(call, domid)?;
        f(&mut self.lock())
    }

    /// `with` for a call that only looks at the host.
    fn looking<T>(
        &self,
        call: Call,
        domid: Option<DomId>,
        f: impl FnOnce(&SimHost) -> Result<T>,
    ) -> Result<T> {
        self.injected(call, domid)?;
        f(&self.read())
    }

    /// The fault injected for this call, if any; a counted one is used up.
    /// Every call comes here first: a host whose state is lost fails it.
    fn injected(&self, call: Call, domid: Option<DomId>) -> Result<()> {
        if let Some(why) = self.broken() {
            return Err(ToolstackError::SimState(why));
        }
        if self.read().faults.is_empty() {
            return Ok(());
        }
        let mut host = self.lock();
        let Some(i) = host
            .faults
            .iter()
            .position(|f| f.call == call && (f.domid.is_none() || f.domid == domid))
        else {
            return Ok(());
        };
        let message = host.faults[i].message.clone();
        match &mut host.faults[i].times {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                host.faults.remove(i);
            }
            None => {}
        }
        Err(ToolstackError::Injected { call, message })
    }

    /// Builds a domain from a libxl config, as libxl_domain_create_* would,
    /// left paused. Keeps the config (no copy of it).
    fn add_from_config(host: &mut SimHost, config: serde_json::Value) -> Result<DomId> {
        Sim::add(host, Sim::domain_from_config(config)?)
    }

    /// Adds a domain (its domid the next after the last one handed out);
    /// refused, as libxl does, when its name or UUID is taken.
    fn add(host: &mut SimHost, mut d: SimDomain) -> Result<DomId> {
        let info = &mut d.detail.info;
        if host.index.by_name.contains_key(&info.name)
            || host.index.by_uuid.contains_key(&info.uuid)
        {
            return Err(ToolstackError::Libxl {
                call: "libxl_domain_create",
                code: xenlight_sys::ERROR_INVAL,
            });
        }
        let last = host.domains.back().map_or(0, |d| d.detail.info.domid);
        info.domid = last.max(host.last_domid) + 1;
        host.last_domid = info.domid;
        let domid = info.domid;
        host.push(d);
        Ok(domid)
    }

    /// A paused domain as libxl would build it from this config, not yet
    /// on the host (no domid): built without the host's lock.
    fn domain_from_config(config: serde_json::Value) -> Result<SimDomain> {
        let bad = |detail: &str| ToolstackError::BadJson {
            call: "libxl_domain_config_from_json",
            detail: detail.to_owned(),
        };
        let c_info = &config["c_info"];
        let name = c_info["name"]
            .as_str()
            .ok_or_else(|| bad("no c_info.name"))?;
        let uuid: Uuid = c_info["uuid"]
            .as_str()
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| bad("no valid c_info.uuid"))?;
        let b_info = &config["b_info"];
        let memory_kib = b_info["target_memkb"].as_u64().unwrap_or(0);
        let nics = crate::domain::nics_from_config(&config)
            .ok_or_else(|| bad("nic without a valid mac"))?;
        let disks = config["disks"]
            .as_array()
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|d| Disk {
                path: d["pdev_path"].as_str().map(str::to_owned),
                vdev: d["vdev"].as_str().unwrap_or_default().to_owned(),
                format: d["format"].as_str().unwrap_or("raw").to_owned(),
                backend: d["backend"].as_str().unwrap_or("phy").to_owned(),
                readwrite: d["readwrite"].as_i64().unwrap_or(1) != 0,
                cdrom: d["is_cdrom"].as_i64().unwrap_or(0) != 0,
                backend_domid: 0,
            })
            .collect();
        let dtype = match c_info["type"].as_str() {
            Some("pv") => DomainType::Pv,
            Some("pvh") => DomainType::Pvh,
            Some("hvm") => DomainType::Hvm,
            _ => DomainType::Unknown,
        };
        let info = DomainInfo {
            domid: 0,
            name: name.to_owned(),
            uuid,
            state: DomainState::Paused,
            dtype,
            memory_kib,
            max_memory_kib: b_info["max_memkb"].as_u64().unwrap_or(memory_kib),
            vcpus: b_info["max_vcpus"].as_u64().unwrap_or(1) as u32,
            shutdown_reason: None,
        };
        Ok(SimDomain {
            detail: DomainDetail {
                info,
                nics,
                disks,
                config: Some(config),
            },
            ignores_shutdown: false,
            xl_daemon: false,
            published: Vec::new(),
            no_suspend: false,
            notice: None,
        })
    }
}

fn find(host: &mut SimHost, domid: DomId) -> Result<&mut SimDomain> {
    let at = host.position(domid).ok_or_else(|| no_such(domid))?;
    Ok(&mut host.domains[at])
}

/// `find` for a call that only looks.
fn get(host: &SimHost, domid: DomId) -> Result<&SimDomain> {
    let at = host.position(domid).ok_or_else(|| no_such(domid))?;
    Ok(&host.domains[at])
}

fn no_such(domid: DomId) -> ToolstackError {
    ToolstackError::NoSuchDomain(DomainRef::Id(domid))
}

/// Bytes a simulated stream's first read asks for: more than a stream of
/// SIM_PAGES, so that it comes in one read, and the end in a second.
const SIM_READ: usize = 16 << 10;

/// A domain's detail without its config.
fn devices(d: &DomainDetail) -> DomainDetail {
    DomainDetail {
        info: d.info.clone(),
        nics: d.nics.clone(),
        disks: d.disks.clone(),
        config: None,
    }
}

/// The first page of a simulated save names the guest it came from.
fn sim_tag(uuid: Uuid) -> Vec<u8> {
    format!("xenmaint-sim:{uuid}").into_bytes()
}

/// Where `stream_with` puts the tag: after the headers and the first
/// PAGE_DATA record's count and pfn.
const TAG_OFFSET: usize = 80 + 8 + 16;

impl Toolstack for Sim {
    fn simulated(&self) -> bool {
        true
    }

    fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        self.looking(Call::ListDomains, None, |h| {
            Ok(h.domains.iter().map(|d| d.detail.info.clone()).collect())
        })
    }

    fn find_uuid(&self, uuid: Uuid) -> Result<Option<DomainInfo>> {
        self.looking(Call::ListDomains, None, |h| {
            Ok(h.info_of(h.index.by_uuid.get(&uuid)))
        })
    }

    fn resolve(&self, r: &DomainRef) -> Result<DomainInfo> {
        self.looking(Call::ListDomains, None, |h| {
            let found = match r {
                DomainRef::Id(id) => h.info_of(Some(id)),
                DomainRef::Name(n) => h.info_of(h.index.by_name.get(n)),
            };
            found.ok_or_else(|| ToolstackError::NoSuchDomain(r.clone()))
        })
    }

    fn domain_detail(&self, domid: DomId) -> Result<DomainDetail> {
        self.looking(Call::DomainDetail, Some(domid), |h| {
            Ok(get(h, domid)?.detail.clone())
        })
    }

    /// The same call as `domain_detail` (its faults too), without copying
    /// the config: thousands of simulated guests are observed and checked.
    fn domain_devices(&self, domid: DomId) -> Result<DomainDetail> {
        self.looking(Call::DomainDetail, Some(domid), |h| {
            Ok(devices(&get(h, domid)?.detail))
        })
    }

    /// The same call again, the config written out as text from where it is.
    fn domain_detail_text(&self, domid: DomId) -> Result<(DomainDetail, Option<String>)> {
        self.looking(Call::DomainDetail, Some(domid), |h| {
            let d = &get(h, domid)?.detail;
            Ok((devices(d), d.config.as_ref().map(|c| c.to_string())))
        })
    }

    fn version(&self) -> Result<HypervisorVersion> {
        self.looking(Call::Version, None, |h| Ok(h.hypervisor.clone()))
    }

    fn physinfo(&self) -> Result<PhysInfo> {
        self.looking(Call::Physinfo, None, |h| Ok(h.physinfo))
    }

    fn published_addresses(&self, domid: DomId) -> Result<Vec<std::net::IpAddr>> {
        self.looking(Call::PublishedAddresses, Some(domid), |h| {
            Ok(get(h, domid)?.published.clone())
        })
    }

    fn pv_connected(&self, domid: DomId) -> Result<Option<bool>> {
        self.looking(Call::PvConnected, Some(domid), |h| {
            Ok(Some(!get(h, domid)?.no_suspend))
        })
    }

    fn set_notice(&self, domid: DomId, text: &str) -> Result<()> {
        self.with(Call::Notice, Some(domid), |h| {
            find(h, domid)?.notice = Some(text.to_owned());
            Ok(())
        })
    }

    fn notice(&self, domid: DomId) -> Result<Option<String>> {
        self.looking(Call::Notice, Some(domid), |h| {
            Ok(get(h, domid)?.notice.clone())
        })
    }

    /// A live save sends its first passes with the host unlocked and the
    /// guest running (the caller may look at the host meanwhile, as the
    /// drain's pause gate does), then suspends the guest and sends the rest.
    fn save(&self, domid: DomId, live: bool, out: &mut dyn SaveSink) -> Result<()> {
        let uuid = self.with(Call::Save, Some(domid), |h| {
            let d = find(h, domid)?;
            if d.detail.info.state == DomainState::Shutdown {
                return Err(ToolstackError::Libxl {
                    call: "libxl_domain_suspend",
                    code: xenlight_sys::ERROR_FAIL,
                });
            }
            // A paused PV guest cannot answer the suspend request, nor can
            // one without PV drivers: libxl waits for it, then gives up (as
            // on the nested Xen host).
            let pv = matches!(d.detail.info.dtype, DomainType::Pv | DomainType::Pvh);
            if pv && (d.detail.info.state == DomainState::Paused || d.no_suspend) {
                return Err(ToolstackError::Libxl {
                    call: "libxl_domain_suspend",
                    code: xenlight_sys::ERROR_GUEST_TIMEDOUT,
                });
            }
            Ok(d.detail.info.uuid)
        })?;
        // Built and sent without the host's lock, as libxl streams one
        // guest while others are worked on.
        let tag = sim_tag(uuid);
        let (stream, paused_at) = if live {
            synth::live_stream_with(SIM_PAGES, &tag)
        } else {
            (synth::stream_with(SIM_PAGES, &tag), 0)
        };
        let send = |out: &mut dyn SaveSink, bytes: &[u8]| {
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .map_err(|e| ToolstackError::Stream(format!("writing the save stream failed: {e}")))
        };
        if live {
            self.lock().saves.live_begun += 1;
        }
        send(out, &stream[..paused_at])?;
        {
            let mut h = self.lock();
            let d = find(&mut h, domid)?;
            d.detail.info.state = DomainState::Shutdown;
            d.detail.info.shutdown_reason = Some(ShutdownReason::Suspend);
            let begun = h.saves.live_begun;
            h.saves.suspends.push((domid, begun));
        }
        send(out, &stream[paused_at..])
    }

    fn resume(&self, domid: DomId) -> Result<()> {
        self.with(Call::Resume, Some(domid), |h| {
            let d = find(h, domid)?;
            // libxl resumes a suspended guest only: one merely paused, or
            // running because its save failed before the suspend, it refuses.
            let suspended = d.detail.info.state == DomainState::Shutdown
                && d.detail.info.shutdown_reason == Some(ShutdownReason::Suspend);
            if !suspended {
                return Err(ToolstackError::Libxl {
                    call: "libxl_domain_resume",
                    code: xenlight_sys::ERROR_FAIL,
                });
            }
            d.detail.info.state = DomainState::Running;
            d.detail.info.shutdown_reason = None;
            Ok(())
        })
    }

    fn destroy(&self, domid: DomId) -> Result<()> {
        let gone = self.with(Call::Destroy, Some(domid), |h| {
            find(h, domid)?;
            Ok(h.remove(domid))
        })?;
        // Its config is freed without the host's lock.
        drop(gone);
        Ok(())
    }

    fn restore(&self, config: serde_json::Value, input: &mut dyn RestoreSource) -> Result<DomId> {
        // An injected fault fails the call before the stream is read; the
        // stream is read without the host's lock, as libxl reads one image
        // while other guests are worked on.
        self.injected(Call::Restore, None)?;
        let stream = crate::image::read_whole(input, SIM_READ)
            .map_err(|e| ToolstackError::Stream(format!("reading the image failed: {e}")))?;
        let mut scanner = StreamScanner::new();
        scanner
            .feed(&stream)
            .and_then(|()| scanner.finish().map(|_| ()))
            .map_err(|e| ToolstackError::Stream(e.to_string()))?;
        let d = Sim::domain_from_config(config)?;
        let tag = sim_tag(d.detail.info.uuid);
        if stream.get(TAG_OFFSET..TAG_OFFSET + tag.len()) != Some(&tag[..]) {
            return Err(ToolstackError::Stream(
                "simulated stream belongs to another guest".into(),
            ));
        }
        // The fault was looked at above: one per call, as everywhere.
        Sim::add(&mut self.lock(), d)
    }

    fn create(&self, config: &serde_json::Value) -> Result<DomId> {
        self.with(Call::Create, None, |h| {
            Sim::add_from_config(h, config.clone())
        })
    }

    fn pause(&self, domid: DomId) -> Result<()> {
        self.with(Call::Pause, Some(domid), |h| {
            find(h, domid)?.detail.info.state = DomainState::Paused;
            Ok(())
        })
    }

    /// Not an ELF core: a line naming the domain, so that tests see the
    /// file where libxl would write it.
    fn core_dump(&self, domid: DomId, path: &std::path::Path) -> Result<()> {
        self.looking(Call::CoreDump, Some(domid), |h| {
            let d = get(h, domid)?;
            let text = format!(
                "xenmaint simulator: core of {} ({}), {} KiB\n",
                d.detail.info.name, d.detail.info.uuid, d.detail.info.memory_kib
            );
            std::fs::write(path, text)
                .map_err(|e| ToolstackError::Stream(format!("{}: {e}", path.display())))
        })
    }

    fn unpause(&self, domid: DomId) -> Result<()> {
        self.with(Call::Unpause, Some(domid), |h| {
            find(h, domid)?.detail.info.state = DomainState::Running;
            Ok(())
        })
    }

    fn request(&self, domid: DomId, what: Request) -> Result<()> {
        let call = match what {
            Request::Shutdown => Call::Shutdown,
            Request::Reboot => Call::Reboot,
        };
        self.with(call, Some(domid), |h| {
            let d = find(h, domid)?;
            if d.xl_daemon && !d.ignores_shutdown {
                let config = d.detail.config.clone();
                h.remove(domid);
                if let (Request::Reboot, Some(config)) = (what, config) {
                    let new = Sim::add_from_config(h, config)?;
                    let d = find(h, new)?;
                    d.detail.info.state = DomainState::Running;
                    d.xl_daemon = true;
                }
                return Ok(());
            }
            if !d.ignores_shutdown {
                // The guest acts at once; like a real one, it stays a
                // shut-down domain until the toolstack destroys it.
                d.detail.info.state = DomainState::Shutdown;
                d.detail.info.shutdown_reason = Some(match what {
                    Request::Shutdown => ShutdownReason::Poweroff,
                    Request::Reboot => ShutdownReason::Reboot,
                });
            }
            Ok(())
        })
    }
}

/// `HostFacts` of a simulated host (see `Sim::host_facts`).
pub struct SimFacts<'a> {
    sim: &'a Sim,
}

impl crate::plan::HostFacts for SimFacts<'_> {
    fn free_bytes(&self, dir: &std::path::Path) -> std::io::Result<u64> {
        crate::plan::RealHost.free_bytes(dir)
    }

    fn xendomains_conflict(&self, _: bool) -> Option<String> {
        None
    }

    fn neighbours(&self) -> Vec<crate::address::Neighbour> {
        Vec::new()
    }

    /// The simulated dom0's vCPUs: a simulated host plans like the host it
    /// describes, not like the machine the simulator runs on.
    fn dom0_cpus(&self) -> usize {
        let dom0 = self.sim.read().info_of(Some(&0));
        dom0.map_or(1, |i| i.vcpus as usize)
    }

    fn probe(&self, ip: std::net::IpAddr, _timeout: std::time::Duration) -> bool {
        let host = self.sim.read();
        let ids = host.index.by_ip.get(&ip).map(Vec::as_slice);
        ids.unwrap_or_default().iter().any(|&domid| {
            host.info_of(Some(&domid))
                .is_some_and(|i| matches!(i.state, DomainState::Running | DomainState::Blocked))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DomainState, DomainType, Uuid};

    fn dom(domid: DomId, name: &str) -> DomainDetail {
        DomainDetail {
            info: DomainInfo {
                domid,
                name: name.into(),
                uuid: Uuid([domid as u8; 16]),
                state: DomainState::Running,
                dtype: DomainType::Pv,
                memory_kib: 1024,
                max_memory_kib: 1024,
                vcpus: 1,
                shutdown_reason: None,
            },
            nics: vec![],
            disks: vec![],
            config: None,
        }
    }

    fn host(domains: Vec<DomainDetail>) -> SimHost {
        let domains = domains
            .into_iter()
            .map(|detail| SimDomain {
                detail,
                ignores_shutdown: false,
                xl_daemon: false,
                published: Vec::new(),
                no_suspend: false,
                notice: None,
            })
            .collect();
        SimHost {
            description: String::new(),
            hypervisor: HypervisorVersion {
                major: 4,
                minor: 17,
                extra: ".5".into(),
                build_id: None,
                commandline: String::new(),
                capabilities: String::new(),
                changeset: String::new(),
            },
            physinfo: PhysInfo {
                total_memory_kib: 4096,
                free_memory_kib: 1024,
                outstanding_memory_kib: 0,
                nr_cpus: 2,
                shadow_paging: true,
            },
            domains,
            faults: vec![],
            boot: default_boot(),
            builds: vec![],
            index: SimIndex::default(),
            saves: SaveLog::default(),
            last_domid: 0,
        }
    }

    #[test]
    fn lists_in_domid_order_and_resolves_like_xl() {
        let sim = Sim::new(host(vec![dom(5, "b"), dom(0, "Domain-0"), dom(2, "a")])).unwrap();
        let ids: Vec<_> = sim
            .list_domains()
            .unwrap()
            .iter()
            .map(|d| d.domid)
            .collect();
        assert_eq!(ids, [0, 2, 5]);
        assert_eq!(sim.resolve(&"b".parse().unwrap()).unwrap().domid, 5);
        assert_eq!(sim.resolve(&"2".parse().unwrap()).unwrap().name, "a");
        let err = sim.resolve(&"nope".parse().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "no such domain: nope");
        assert!(matches!(
            sim.domain_detail(9),
            Err(ToolstackError::NoSuchDomain(DomainRef::Id(9)))
        ));
    }

    #[test]
    fn rejects_inconsistent_hosts() {
        assert!(Sim::new(host(vec![dom(1, "a")]))
            .unwrap_err()
            .contains("domain 0"));
        let e = Sim::new(host(vec![dom(0, "Domain-0"), dom(1, "a"), dom(2, "a")])).unwrap_err();
        assert!(e.contains("name \"a\" appears twice"), "{e}");
        let mut twin = dom(2, "b");
        twin.info.uuid = Uuid([1; 16]);
        let e = Sim::new(host(vec![dom(0, "Domain-0"), dom(1, "a"), twin])).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
        let e = Sim::new(host(vec![dom(0, "Domain-0"), dom(0, "x")])).unwrap_err();
        assert!(e.contains("domid 0 appears twice"), "{e}");
    }

    #[test]
    fn injected_faults_fail_exactly_their_call() {
        let sim = Sim::new(host(vec![dom(0, "Domain-0"), dom(1, "a"), dom(2, "b")])).unwrap();
        sim.inject(Fault {
            call: Call::DomainDetail,
            domid: Some(2),
            message: "xenstore timeout".into(),
            times: None,
        });
        assert!(sim.domain_detail(1).is_ok());
        let err = sim.domain_detail(2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "simulated failure of domain_detail: xenstore timeout"
        );
        assert!(sim.list_domains().is_ok());
        sim.inject(Fault {
            call: Call::ListDomains,
            domid: None,
            message: "down".into(),
            times: None,
        });
        assert!(sim.list_domains().is_err());
        assert!(sim.version().is_ok());
    }

    #[test]
    fn load_reports_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = Sim::load(&missing).unwrap_err();
        assert!(matches!(e, SimError::Read { .. }));
        assert!(e.to_string().contains("missing.json"), "{e}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"hypervisor\": 1}").unwrap();
        let e = Sim::load(&bad).unwrap_err();
        assert!(matches!(e, SimError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("bad.json"), "{e}");

        let no_dom0 = dir.path().join("nodom0.json");
        let mut h = host(vec![dom(3, "x")]);
        h.faults.clear();
        std::fs::write(&no_dom0, serde_json::to_string(&h).unwrap()).unwrap();
        assert!(matches!(
            Sim::load(&no_dom0).unwrap_err(),
            SimError::Invalid { .. }
        ));
    }

    /// The bundled example host.
    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json")
    }

    /// A stream handed to `restore` from memory.
    struct Bytes(std::io::Cursor<Vec<u8>>);

    impl std::io::Read for Bytes {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl RestoreSource for Bytes {}

    /// A restore adds the guest its stream came from, paused; refuses a
    /// name that is taken, as libxl does; refuses another guest's stream
    /// and adds nothing then.
    #[test]
    fn a_restore_takes_only_its_own_guests_stream() {
        let sim = Sim::load(&example()).unwrap();
        let find = |name: &str| sim.resolve(&name.parse().unwrap()).unwrap();
        let (web, db) = (find("web-1"), find("db-1"));
        let config = |domid| sim.domain_detail(domid).unwrap().config.unwrap();
        let (web_config, db_config) = (config(web.domid), config(db.domid));
        let mut stream = Vec::new();
        sim.save(web.domid, false, &mut stream).unwrap();
        let from = |s: &Vec<u8>| Bytes(std::io::Cursor::new(s.clone()));

        let e = sim
            .restore(web_config.clone(), &mut from(&stream))
            .unwrap_err();
        assert!(
            matches!(e, ToolstackError::Libxl { code, .. } if code == xenlight_sys::ERROR_INVAL),
            "{e}"
        );
        sim.destroy(web.domid).unwrap();
        sim.destroy(db.domid).unwrap();
        let before = sim.list_domains().unwrap();
        let e = sim.restore(db_config, &mut from(&stream)).unwrap_err();
        assert!(e.to_string().contains("another guest"), "{e}");
        assert_eq!(sim.list_domains().unwrap(), before);

        let domid = sim.restore(web_config, &mut from(&stream)).unwrap();
        let back = sim.resolve(&DomainRef::Id(domid)).unwrap();
        assert_eq!(
            (back.name.as_str(), back.uuid, back.state),
            ("web-1", web.uuid, DomainState::Paused)
        );
    }

    #[test]
    fn the_bundled_example_loads() {
        let sim = Sim::load(&example()).unwrap();
        let doms = sim.list_domains().unwrap();
        assert!(doms.len() >= 4, "dom0 and at least three guests");
        for d in &doms[1..] {
            let detail = sim.domain_detail(d.domid).unwrap();
            assert!(
                !detail.nics.is_empty() && !detail.disks.is_empty(),
                "{}",
                d.name
            );
            assert!(detail.config.is_some(), "{}", d.name);
        }
    }

    /// Default lanes on a simulated host follow its dom0's vCPUs.
    #[test]
    fn a_simulated_host_has_its_own_dom0s_vcpus() {
        use crate::plan::HostFacts;
        let mut h: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(example()).unwrap()).unwrap();
        for vcpus in [1, 3] {
            let dom0 = h["domains"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|d| d["domid"] == 0)
                .unwrap();
            dom0["vcpus"] = vcpus.into();
            let sim = Sim::new(serde_json::from_value(h.clone()).unwrap()).unwrap();
            assert_eq!(sim.host_facts().dom0_cpus(), vcpus as usize);
        }
    }
}
