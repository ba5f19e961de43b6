//! What xenmaint knows about a host and its domains, as plain Rust data.
//!
//! Both toolstacks (libxl and the simulator) produce these types, the CLI
//! prints them and `--json` serialises them, so their serde form is the
//! stable machine interface: fields are only ever added.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Xen domain id. Dom0 is 0.
pub type DomId = u32;

/// How an administrator names a domain, as xl does: a number is a domain id,
/// anything else a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainRef {
    Id(DomId),
    Name(String),
}

impl FromStr for DomainRef {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // xl treats an all-digit argument as a domid (xl_utils.c find_domain).
        Ok(match s.parse::<DomId>() {
            Ok(id) if !s.starts_with('+') => DomainRef::Id(id),
            _ => DomainRef::Name(s.to_owned()),
        })
    }
}

impl fmt::Display for DomainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainRef::Id(id) => write!(f, "{id}"),
            DomainRef::Name(n) => write!(f, "{}", printable(n)),
        }
    }
}

/// A guest-chosen string made safe for one line of a terminal or log:
/// control characters are escaped, so a name cannot break a table or move the
/// cursor.
pub fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    } else {
        s.to_owned()
    }
}

/// A domain's state, collapsed from libxl's flags the way an administrator
/// reads xl's state column: the most significant flag wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running,
    Blocked,
    Paused,
    Shutdown,
    Crashed,
    Dying,
}

/// libxl's per-domain flags (xl's `r b p s c d` column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateFlags {
    pub running: bool,
    pub blocked: bool,
    pub paused: bool,
    pub shutdown: bool,
    /// Shut down with reason "crash".
    pub crashed: bool,
    pub dying: bool,
}

impl StateFlags {
    pub fn state(&self) -> DomainState {
        if self.dying {
            DomainState::Dying
        } else if self.crashed {
            DomainState::Crashed
        } else if self.shutdown {
            DomainState::Shutdown
        } else if self.paused {
            DomainState::Paused
        } else if self.running {
            DomainState::Running
        } else {
            // Neither running nor anything else: idle, waiting on an event.
            DomainState::Blocked
        }
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "shutdown",
            DomainState::Crashed => "crashed",
            DomainState::Dying => "dying",
        })
    }
}

/// Why a domain shut down (libxl_shutdown_reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    SoftReset,
    Unknown,
}

/// Guest virtualisation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Pv,
    Pvh,
    Hvm,
    Unknown,
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
            DomainType::Hvm => "hvm",
            DomainType::Unknown => "unknown",
        })
    }
}

/// A MAC address, written and parsed as `00:16:3e:xx:xx:xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// "aa:bb:cc:dd:ee:ff", in a buffer on the stack: plans, journals and
    /// status files hold a MAC per NIC of every guest.
    fn text(&self) -> [u8; 17] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            t[3 * i] = HEX[usize::from(b >> 4)];
            t[3 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        t
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.text();
        f.write_str(std::str::from_utf8(&t).expect("hex digits and colons"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex bytes separated by ':'")]
pub struct BadMac(String);

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.text();
        s.serialize_str(std::str::from_utf8(&t).expect("hex digits and colons"))
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Parsed(std::marker::PhantomData))
    }
}

/// Reads a value through its `FromStr` from the string serde holds, with
/// no `String` in between (MACs and UUIDs are read by the thousand).
struct Parsed<T>(std::marker::PhantomData<T>);

impl<T: FromStr> serde::de::Visitor<'_> for Parsed<T>
where
    T::Err: fmt::Display,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }
}

/// A domain UUID in its canonical text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = uuid::Uuid::encode_buffer();
        f.write_str(
            uuid::Uuid::from_bytes(self.0)
                .hyphenated()
                .encode_lower(&mut buf),
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid UUID {0:?}: expected 8-4-4-4-12 hex digits")]
pub struct BadUuid(String);

impl FromStr for Uuid {
    type Err = BadUuid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the hyphenated form xl prints: at 36 characters the uuid
        // crate takes nothing else (braced, URN and bare forms differ in length).
        match uuid::Uuid::try_parse(s) {
            Ok(u) if s.len() == 36 => Ok(Uuid(u.into_bytes())),
            _ => Err(BadUuid(s.to_owned())),
        }
    }
}

// Journals, manifests and status files hold thousands of UUIDs: each is
// written from a buffer on the stack, and read without an allocation.
impl Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = uuid::Uuid::encode_buffer();
        s.serialize_str(
            uuid::Uuid::from_bytes(self.0)
                .hyphenated()
                .encode_lower(&mut buf),
        )
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Parsed(std::marker::PhantomData))
    }
}

/// One line of the domain list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub domid: DomId,
    pub name: String,
    pub uuid: Uuid,
    pub state: DomainState,
    #[serde(rename = "type")]
    pub dtype: DomainType,
    /// Current memory in KiB.
    pub memory_kib: u64,
    /// Maximum memory in KiB.
    pub max_memory_kib: u64,
    /// Online vCPUs.
    pub vcpus: u32,
    /// Set while the domain is shut down (and not yet destroyed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_reason: Option<ShutdownReason>,
}

/// A virtual network interface, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub devid: i32,
    pub mac: Mac,
    pub bridge: Option<String>,
    /// The configured `ip=` (space-separated addresses, as libxl keeps it).
    pub ip: Option<String>,
    pub script: Option<String>,
    pub backend_domid: DomId,
}

/// A virtual disk, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Backing path in dom0 (file, block device, or target string).
    pub path: Option<String>,
    pub vdev: String,
    /// raw, qcow2, ... as libxl names them.
    pub format: String,
    /// phy, tap, qdisk, ... as libxl names them.
    pub backend: String,
    pub readwrite: bool,
    pub cdrom: bool,
    pub backend_domid: DomId,
}

/// The nics a domain's configuration (as libxl keeps and retrieves it, with
/// the devices merged in from xenstore) describes; None when one has no
/// valid MAC, for the caller to ask the device list instead.
pub fn nics_from_config(config: &serde_json::Value) -> Option<Vec<Nic>> {
    let configured = config["nics"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    configured
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let text = |key: &str| n[key].as_str().map(str::to_owned);
            Some(Nic {
                // No devid: its place in the list, as libxl numbers them.
                devid: i32::try_from(n["devid"].as_i64().unwrap_or(i as i64)).ok()?,
                mac: n["mac"].as_str()?.parse().ok()?,
                bridge: text("bridge"),
                ip: text("ip"),
                script: text("script"),
                backend_domid: n["backend_domid"]
                    .as_u64()
                    .and_then(|d| DomId::try_from(d).ok())
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// libxl's device list reads a disk's backend, which does not record its
/// format ("unknown"); the domain's stored config does. Fills it in by vdev.
pub fn formats_from_config(disks: &mut [Disk], config: &serde_json::Value) {
    let configured = config["disks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for disk in disks
        .iter_mut()
        .filter(|d| d.format.is_empty() || d.format == "unknown")
    {
        if let Some(format) = configured
            .iter()
            .find(|c| c["vdev"].as_str() == Some(disk.vdev.as_str()))
            .and_then(|c| c["format"].as_str())
        {
            disk.format = format.to_ascii_lowercase();
        }
    }
}

/// Everything `info` shows about one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainDetail {
    #[serde(flatten)]
    pub info: DomainInfo,
    pub nics: Vec<Nic>,
    pub disks: Vec<Disk>,
    /// libxl's JSON of the domain configuration; `None` for domains libxl did
    /// not create (dom0) or while one is being created.
    pub config: Option<serde_json::Value>,
}

/// The running hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorVersion {
    pub major: u32,
    pub minor: u32,
    /// Xen's "extra" string, e.g. ".5" or ".7-pre".
    pub extra: String,
    /// The hypervisor's build-id (hex); what tells two builds of one version apart.
    pub build_id: Option<String>,
    pub commandline: String,
    pub capabilities: String,
    pub changeset: String,
}

impl HypervisorVersion {
    /// "4.17.5" style, as `xl info` shows xen_major.xen_minor + xen_extra.
    pub fn release(&self) -> String {
        format!("{}.{}{}", self.major, self.minor, self.extra)
    }
}

/// Host memory and what the hypervisor can do, from physinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysInfo {
    pub total_memory_kib: u64,
    pub free_memory_kib: u64,
    /// Memory promised to domains being built but not yet handed out.
    pub outstanding_memory_kib: u64,
    pub nr_cpus: u32,
    /// Xen was built with shadow paging (`xl info`'s virt_caps "shadow"). A
    /// live save of a PV guest needs it to track the pages the guest
    /// dirties; Debian 13's Xen is built without it. (Absent from records
    /// written before it was read: those hosts were Debian 12's, which has it.)
    #[serde(default = "yes")]
    pub shadow_paging: bool,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics_come_from_the_retrieved_config() {
        // As `xl list -l` printed g1's on the nested host (libxl's retrieved config).
        let config: serde_json::Value = serde_json::from_str(
            r#"{"nics": [{"devid": 0, "mac": "00:16:3e:58:4d:21", "ip": "10.0.2.21",
                "bridge": "xenbr0", "nictype": "vif"},
               {"mac": "00:16:3e:00:00:02", "script": "vif-custom", "backend_domid": 3}]}"#,
        )
        .unwrap();
        let nics = nics_from_config(&config).unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].devid, 0);
        assert_eq!(nics[0].mac.to_string(), "00:16:3e:58:4d:21");
        assert_eq!(nics[0].ip.as_deref(), Some("10.0.2.21"));
        assert_eq!(nics[0].bridge.as_deref(), Some("xenbr0"));
        assert_eq!(
            (nics[0].script.as_deref(), nics[0].backend_domid),
            (None, 0)
        );
        // No devid: its place in the list, as libxl numbers them.
        assert_eq!(nics[1].devid, 1);
        assert_eq!(nics[1].script.as_deref(), Some("vif-custom"));
        assert_eq!(nics[1].backend_domid, 3);
        // No nics at all: none, not a reason to ask again.
        assert_eq!(nics_from_config(&serde_json::json!({})), Some(Vec::new()));
        // A nic without a usable MAC: the caller lists the devices instead.
        for nic in [
            serde_json::json!({"devid": 0}),
            serde_json::json!({"mac": "zz"}),
        ] {
            assert_eq!(nics_from_config(&serde_json::json!({"nics": [nic]})), None);
        }
    }

    #[test]
    fn an_unknown_disk_format_comes_from_the_stored_config() {
        let disk = |vdev: &str, format: &str| Disk {
            path: Some(format!("/img/{vdev}")),
            vdev: vdev.into(),
            format: format.into(),
            backend: "phy".into(),
            readwrite: true,
            cdrom: false,
            backend_domid: 0,
        };
        let mut disks = vec![
            disk("xvda", "unknown"),
            disk("xvdb", "qcow2"),
            disk("xvdc", "unknown"),
        ];
        let config = serde_json::json!({"disks": [
            {"vdev": "xvda", "format": "raw"},
            {"vdev": "xvdb", "format": "raw"},
        ]});
        formats_from_config(&mut disks, &config);
        let got: Vec<&str> = disks.iter().map(|d| d.format.as_str()).collect();
        assert_eq!(got, ["raw", "qcow2", "unknown"]);
    }

    #[test]
    fn domain_ref_numbers_are_ids_and_the_rest_names() {
        assert_eq!("0".parse::<DomainRef>().unwrap(), DomainRef::Id(0));
        assert_eq!("17".parse::<DomainRef>().unwrap(), DomainRef::Id(17));
        assert_eq!(
            "web-1".parse::<DomainRef>().unwrap(),
            DomainRef::Name("web-1".into())
        );
        // "+3" parses as a u32 in Rust but is not a domid to xl.
        assert_eq!(
            "+3".parse::<DomainRef>().unwrap(),
            DomainRef::Name("+3".into())
        );
        assert_eq!(
            "99999999999".parse::<DomainRef>().unwrap(),
            DomainRef::Name("99999999999".into())
        );
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("web-1 ü"), "web-1 ü");
        assert_eq!(printable("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(DomainRef::Name("x\ty".into()).to_string(), "x\\ty");
    }

    #[test]
    fn state_takes_the_most_significant_flag() {
        let f = |running, paused, shutdown, crashed, dying| StateFlags {
            running,
            blocked: false,
            paused,
            shutdown,
            crashed,
            dying,
        };
        assert_eq!(
            f(true, false, false, false, false).state(),
            DomainState::Running
        );
        assert_eq!(
            f(false, false, false, false, false).state(),
            DomainState::Blocked
        );
        assert_eq!(
            f(true, true, false, false, false).state(),
            DomainState::Paused
        );
        assert_eq!(
            f(false, true, true, false, false).state(),
            DomainState::Shutdown
        );
        assert_eq!(
            f(false, false, true, true, false).state(),
            DomainState::Crashed
        );
        assert_eq!(
            f(false, false, true, true, true).state(),
            DomainState::Dying
        );
    }

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: Mac = "00:16:3e:0a:Bc:ff".parse().unwrap();
        assert_eq!(m.0, [0x00, 0x16, 0x3e, 0x0a, 0xbc, 0xff]);
        assert_eq!(m.to_string(), "00:16:3e:0a:bc:ff");
        for bad in [
            "",
            "00:16:3e:0a:bc",
            "00:16:3e:0a:bc:ff:00",
            "0:16:3e:0a:bc:ff",
            "zz:16:3e:0a:bc:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"00:16:3e:0a:bc:ff\"");
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), m);
        assert!(serde_json::from_str::<Mac>("\"nope\"").is_err());
    }

    #[test]
    fn uuid_round_trips_and_rejects_garbage() {
        let text = "6b1c7c2e-0f4a-4c59-9a51-7d0e2f4c1a00";
        let u: Uuid = text.parse().unwrap();
        assert_eq!(u.0[0], 0x6b);
        assert_eq!(u.0[15], 0x00);
        assert_eq!(u.to_string(), text);
        assert_eq!(
            serde_json::from_str::<Uuid>(&serde_json::to_string(&u).unwrap()).unwrap(),
            u
        );
        for bad in [
            "",
            "6b1c7c2e0f4a4c599a517d0e2f4c1a00",
            "6b1c7c2e-0f4a-4c59-9a51-7d0e2f4c1a0g",
            "6b1c7c2e-0f4a-4c59-9a51-7d0e2f4c1a0",
            "{6b1c7c2e-0f4a-4c59-9a51-7d0e2f4c1a00}",
            "urn:uuid:6b1c7c2e-0f4a-4c59-9a51-7d0e2f4c1a00",
            "+b1c7c2e-0f4a-4c59-9a51-7d0e2f4c1a00",
            "6b1c7c2e0-f4a-4c59-9a51-7d0e2f4c1a00",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn domain_detail_json_is_flat_and_round_trips() {
        let d = DomainDetail {
            info: DomainInfo {
                domid: 3,
                name: "g1".into(),
                uuid: "00000000-0000-0000-0000-000000000003".parse().unwrap(),
                state: DomainState::Blocked,
                dtype: DomainType::Pv,
                memory_kib: 131072,
                max_memory_kib: 131072,
                vcpus: 1,
                shutdown_reason: None,
            },
            nics: vec![Nic {
                devid: 0,
                mac: "00:16:3e:00:00:01".parse().unwrap(),
                bridge: Some("xenbr0".into()),
                ip: Some("10.0.2.21".into()),
                script: None,
                backend_domid: 0,
            }],
            disks: vec![],
            config: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["domid"], 3);
        assert_eq!(v["type"], "pv");
        assert_eq!(v["state"], "blocked");
        assert_eq!(v["nics"][0]["mac"], "00:16:3e:00:00:01");
        let back: DomainDetail = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn release_joins_major_minor_extra() {
        let v = HypervisorVersion {
            major: 4,
            minor: 17,
            extra: ".5".into(),
            build_id: None,
            commandline: String::new(),
            capabilities: String::new(),
            changeset: String::new(),
        };
        assert_eq!(v.release(), "4.17.5");
    }
}
