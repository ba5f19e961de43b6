//! The seam between xenmaint's logic and a host: the sequencer and the CLI
//! speak only this trait. `Libxl` drives a real dom0; `Sim` is an in-process
//! simulated host for logic, fault injection and scale tests (never Xen).

use std::io::{Read, Write};

use crate::domain::{
    DomId, DomainDetail, DomainInfo, DomainRef, HypervisorVersion, PhysInfo, Uuid,
};
use crate::image::AlignedBuf;

/// Why a toolstack call failed. One message each; the CLI maps them to exit
/// codes.
#[derive(Debug, thiserror::Error)]
pub enum ToolstackError {
    /// This machine cannot drive Xen at all.
    #[error("not a Xen dom0: {0}")]
    NotDom0(String),
    /// Xen is there but we may not use it.
    #[error("permission denied on {path}: xenmaint must run as root in dom0")]
    PermissionDenied { path: String },
    #[error("no such domain: {0}")]
    NoSuchDomain(DomainRef),
    /// A libxl call returned an error code.
    #[error("libxl {call} failed: {}", crate::libxl::error_name(*.code))]
    Libxl { call: &'static str, code: i32 },
    /// libxl produced JSON we could not read.
    #[error("libxl {call} returned unreadable JSON: {detail}")]
    BadJson { call: &'static str, detail: String },
    /// Writing the save stream out (or reading it in) failed on our side.
    #[error("{0}")]
    Stream(String),
    /// A failure the simulator was told to inject.
    #[error("simulated failure of {call}: {message}")]
    Injected { call: Call, message: String },
    /// A persistent simulated host's state file could not be read or written.
    #[error("simulated host state lost: {0}")]
    SimState(String),
}

/// Every call of the trait by name, so the simulator can fail any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    ListDomains,
    DomainDetail,
    Version,
    Physinfo,
    PublishedAddresses,
    PvConnected,
    Save,
    Resume,
    Destroy,
    Restore,
    Create,
    Pause,
    Unpause,
    Shutdown,
    Reboot,
    CoreDump,
    Notice,
}

/// What a guest is asked to do by `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Shutdown,
    Reboot,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

pub type Result<T> = std::result::Result<T, ToolstackError>;

/// Where a save stream goes. A toolstack with the bytes in hand writes
/// them; one that gets them from a reader (libxl's pipe) hands the reader
/// over, so that a sink with a buffer of its own reads straight into it
/// instead of taking a copy.
pub trait SaveSink: Write + Send {
    /// Takes everything `from` yields until EOF; returns how many bytes.
    fn read_all(&mut self, from: &mut dyn Read) -> std::io::Result<u64> {
        std::io::copy(from, self)
    }
}

impl SaveSink for std::io::Sink {}
impl SaveSink for Vec<u8> {}

/// Where a restore stream comes from. A toolstack that wants the bytes
/// reads them; one that hands them on (libxl's pipe) asks for whole blocks,
/// which a source on a disk file reads with O_DIRECT straight into the block.
pub trait RestoreSource: Read + Send {
    /// Fills `buf` from the stream (less only at its end); returns where in
    /// `buf` the stream's bytes are.
    fn read_block(&mut self, buf: &mut AlignedBuf) -> std::io::Result<std::ops::Range<usize>> {
        let buf = buf.as_mut_slice();
        let mut got = 0;
        while got < buf.len() {
            match self.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(0..got)
    }
}

impl<T: AsRef<[u8]> + Send> RestoreSource for std::io::Cursor<T> {}

/// A Xen host as the rest of xenmaint sees it. Read-only for now; save,
/// restore and lifecycle calls join it with the domain-operations work.
pub trait Toolstack: Sync {
    /// Whether this is the simulator; output says so visibly.
    fn simulated(&self) -> bool;

    /// Every domain, dom0 included, ordered by domid.
    fn list_domains(&self) -> Result<Vec<DomainInfo>>;

    /// One domain's devices and configuration.
    fn domain_detail(&self, domid: DomId) -> Result<DomainDetail>;

    /// `domain_detail` without the configuration (`config` is None), for
    /// callers that look only at the devices: a toolstack holding the
    /// config in hand (the simulator) need not copy it for them.
    fn domain_devices(&self, domid: DomId) -> Result<DomainDetail> {
        let mut detail = self.domain_detail(domid)?;
        detail.config = None;
        Ok(detail)
    }

    /// `domain_detail` with the configuration as JSON text (what a save
    /// image's header holds) beside it, `config` None in the detail: a
    /// toolstack holding the config parsed (the simulator) writes the text
    /// without copying the config first.
    fn domain_detail_text(&self, domid: DomId) -> Result<(DomainDetail, Option<String>)> {
        let mut detail = self.domain_detail(domid)?;
        let text = detail.config.take().map(|c| c.to_string());
        Ok((detail, text))
    }

    /// The running hypervisor.
    fn version(&self) -> Result<HypervisorVersion>;

    /// Host memory and CPUs.
    fn physinfo(&self) -> Result<PhysInfo>;

    /// The IP addresses the guest publishes about itself in xenstore (guest
    /// agents do); empty when it publishes none. The guest chooses these.
    fn published_addresses(&self, domid: DomId) -> Result<Vec<std::net::IpAddr>>;

    /// Whether the guest's PV drivers are connected, so that it can answer
    /// a suspend request: it advertises `control/feature-suspend`, or one of
    /// its devices is connected (a Linux guest writes the feature nodes at
    /// boot only: after a restore libxl has made them again, empty, and the
    /// guest answers all the same). None when it cannot be told here.
    fn pv_connected(&self, domid: DomId) -> Result<Option<bool>>;

    /// Writes `text` as the guest's maintenance notice, in its own xenstore
    /// area (`notice::GUEST_KEY`): the guest may read it, not write it.
    fn set_notice(&self, domid: DomId, text: &str) -> Result<()>;

    /// The guest's maintenance notice, if one was written.
    fn notice(&self, domid: DomId) -> Result<Option<String>>;

    /// Suspends the domain and writes its libxl stream into `out` (the xl
    /// header is the caller's). On success the domain is left suspended, not
    /// destroyed: the caller destroys it once the image is safe, or resumes
    /// it. `live` copies memory while the guest runs, pausing it only for the
    /// last round.
    fn save(&self, domid: DomId, live: bool, out: &mut dyn SaveSink) -> Result<()>;

    /// Cancels a suspend: the guest runs on where it stopped (what xl does
    /// after a failed save, and for `xl save -c`).
    fn resume(&self, domid: DomId) -> Result<()>;

    /// Destroys the domain at once.
    fn destroy(&self, domid: DomId) -> Result<()>;

    /// Creates a domain from `config` (libxl JSON) and the libxl stream read
    /// from `input`. The new domain is left paused.
    /// Takes the config: a toolstack that keeps it (the simulator) then
    /// needs no copy.
    fn restore(&self, config: serde_json::Value, input: &mut dyn RestoreSource) -> Result<DomId>;

    /// Boots a new domain from `config` (libxl JSON), left paused.
    fn create(&self, config: &serde_json::Value) -> Result<DomId>;

    fn pause(&self, domid: DomId) -> Result<()>;

    /// Writes the domain's memory to `path` as an ELF core (`xl
    /// dump-core`): a crashed guest kept for its post-mortem.
    fn core_dump(&self, domid: DomId, path: &std::path::Path) -> Result<()>;

    fn unpause(&self, domid: DomId) -> Result<()>;

    /// Asks the guest to shut down or reboot; returns once asked, not once
    /// done (callers wait on the domain list).
    fn request(&self, domid: DomId, what: Request) -> Result<()>;

    /// Resolves a name or id the way xl does, against the live list (which is
    /// also how libxl_name_to_domid works).
    /// The domain with this UUID, if one exists. libxl has no lookup by
    /// UUID: list and search, as xl does.
    fn find_uuid(&self, uuid: Uuid) -> Result<Option<DomainInfo>> {
        Ok(self.list_domains()?.into_iter().find(|d| d.uuid == uuid))
    }

    fn resolve(&self, r: &DomainRef) -> Result<DomainInfo> {
        let found = self.list_domains()?.into_iter().find(|d| match r {
            DomainRef::Id(id) => d.domid == *id,
            DomainRef::Name(n) => d.name == *n,
        });
        found.ok_or_else(|| ToolstackError::NoSuchDomain(r.clone()))
    }
}
