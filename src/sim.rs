//! `Sim`: a simulated Xen host in process, for the sequencer's logic, fault
//! injection and scale tests. It is not Xen and never claims to be: every
//! CLI output made from it is marked simulated.
//!
//! A host is described in JSON (see examples/sim-host.json): the hypervisor,
//! physinfo, the domains with their devices and configs (the same shape
//! `xenmaint info --json` prints), and faults to inject.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::{DomId, DomainDetail, DomainInfo, DomainRef, HypervisorVersion, PhysInfo};
use crate::toolstack::{Call, Result, Toolstack, ToolstackError};

/// A failure to inject: `call` fails with `message`, for every domain or only
/// for `domid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub call: Call,
    #[serde(default)]
    pub domid: Option<DomId>,
    pub message: String,
}

/// The JSON description of a simulated host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimHost {
    #[serde(default)]
    pub description: String,
    pub hypervisor: HypervisorVersion,
    pub physinfo: PhysInfo,
    pub domains: Vec<DomainDetail>,
    #[serde(default)]
    pub faults: Vec<Fault>,
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

/// A simulated host. Deterministic: the same description gives the same
/// answers, in domid order.
#[derive(Debug, Clone)]
pub struct Sim {
    host: SimHost,
}

impl Sim {
    pub fn load(path: &Path) -> std::result::Result<Sim, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
            path: path.to_owned(),
            source,
        })?;
        let host: SimHost = serde_json::from_str(&text).map_err(|source| SimError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Sim::new(host).map_err(|reason| SimError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Checks the description as a real host would be: one dom0, unique
    /// domids, names and UUIDs.
    pub fn new(mut host: SimHost) -> std::result::Result<Sim, String> {
        host.domains.sort_by_key(|d| d.info.domid);
        if host.domains.first().map(|d| d.info.domid) != Some(0) {
            return Err("no domain 0 (every Xen host has dom0)".into());
        }
        let (mut ids, mut names, mut uuids) = (HashSet::new(), HashSet::new(), HashSet::new());
        for d in &host.domains {
            let i = &d.info;
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
        Ok(Sim { host })
    }

    /// Makes `call` fail from now on (for `domid` only, if given).
    pub fn inject(&mut self, fault: Fault) {
        self.host.faults.push(fault);
    }

    fn check(&self, call: Call, domid: Option<DomId>) -> Result<()> {
        match self
            .host
            .faults
            .iter()
            .find(|f| f.call == call && (f.domid.is_none() || f.domid == domid))
        {
            Some(f) => Err(ToolstackError::Injected {
                call,
                message: f.message.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Toolstack for Sim {
    fn simulated(&self) -> bool {
        true
    }

    fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        self.check(Call::ListDomains, None)?;
        Ok(self.host.domains.iter().map(|d| d.info.clone()).collect())
    }

    fn domain_detail(&self, domid: DomId) -> Result<DomainDetail> {
        self.check(Call::DomainDetail, Some(domid))?;
        self.host
            .domains
            .iter()
            .find(|d| d.info.domid == domid)
            .cloned()
            .ok_or(ToolstackError::NoSuchDomain(DomainRef::Id(domid)))
    }

    fn version(&self) -> Result<HypervisorVersion> {
        self.check(Call::Version, None)?;
        Ok(self.host.hypervisor.clone())
    }

    fn physinfo(&self) -> Result<PhysInfo> {
        self.check(Call::Physinfo, None)?;
        Ok(self.host.physinfo)
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
            },
            nics: vec![],
            disks: vec![],
            config: None,
        }
    }

    fn host(domains: Vec<DomainDetail>) -> SimHost {
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
            },
            domains,
            faults: vec![],
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
        let mut sim = Sim::new(host(vec![dom(0, "Domain-0"), dom(1, "a"), dom(2, "b")])).unwrap();
        sim.inject(Fault {
            call: Call::DomainDetail,
            domid: Some(2),
            message: "xenstore timeout".into(),
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

    #[test]
    fn the_bundled_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json");
        let sim = Sim::load(&path).unwrap();
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
}
