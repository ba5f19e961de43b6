//! Read-only inventory through libxl: every libxl struct is initialised,
//! copied out into Rust types and disposed before the call returns.

use std::ffi::{c_char, c_int};

use xenlight_sys as sys;

use super::lifecycle;
use super::{opt_string, Context};
use crate::domain::{
    Disk, DomId, DomainDetail, DomainInfo, DomainRef, DomainType, HypervisorVersion, Mac, Nic,
    PhysInfo, ShutdownReason, StateFlags, Uuid,
};
use crate::toolstack::{Request, Result, Toolstack, ToolstackError};

/// The real toolstack: libxl on this dom0.
///
/// Builds (restore, create) overlap as saves do: libxl's ctx is thread-safe.
/// The memory corruption once seen with overlapping builds on the nested
/// host was the emulated CPU's (XSAVE state under TCG; see
/// scripts/nested-xen/README.md), not libxl's.
pub struct Libxl {
    ctx: Context,
}

impl Libxl {
    pub fn new() -> Result<Libxl> {
        Ok(Libxl {
            ctx: Context::new()?,
        })
    }

    pub(super) fn ctx(&self) -> *mut sys::libxl_ctx {
        self.ctx.as_ptr()
    }

    fn name_of(&self, domid: DomId) -> String {
        // SAFETY: ctx is live; libxl_domid_to_name returns NULL or a malloc'd
        // string that we own.
        let p = unsafe { sys::libxl_domid_to_name(self.ctx(), domid) };
        // SAFETY: p is NULL or a NUL-terminated malloc'd string, freed once.
        unsafe { take_string(p) }.unwrap_or_default()
    }

    fn nics(&self, domid: DomId) -> Vec<Nic> {
        let mut n: c_int = 0;
        // SAFETY: ctx is live, n a valid out-pointer.
        let list = unsafe { sys::libxl_device_nic_list(self.ctx(), domid, &mut n) };
        if list.is_null() {
            return Vec::new();
        }
        // SAFETY: libxl returned an array of n initialised nics.
        let items = unsafe { std::slice::from_raw_parts(list, n.max(0) as usize) };
        let nics = items
            .iter()
            .map(|d| Nic {
                devid: d.devid,
                mac: Mac(d.mac),
                // SAFETY: string fields of an initialised nic are NULL or
                // NUL-terminated, valid until the list is freed below.
                bridge: unsafe { opt_string(d.bridge) },
                // SAFETY: as above.
                ip: unsafe { opt_string(d.ip) },
                // SAFETY: as above.
                script: unsafe { opt_string(d.script) },
                backend_domid: d.backend_domid,
            })
            .collect();
        // SAFETY: list and n are exactly what libxl_device_nic_list returned;
        // nothing borrows from it any more.
        unsafe { sys::libxl_device_nic_list_free(list, n) };
        nics
    }

    fn disks(&self, domid: DomId) -> Vec<Disk> {
        let mut n: c_int = 0;
        // SAFETY: ctx is live, n a valid out-pointer.
        let list = unsafe { sys::libxl_device_disk_list(self.ctx(), domid, &mut n) };
        if list.is_null() {
            return Vec::new();
        }
        // SAFETY: libxl returned an array of n initialised disks.
        let items = unsafe { std::slice::from_raw_parts(list, n.max(0) as usize) };
        let disks = items
            .iter()
            .map(|d| Disk {
                // SAFETY: string fields of an initialised disk are NULL or
                // NUL-terminated, valid until the list is freed below.
                path: unsafe { opt_string(d.pdev_path) },
                // SAFETY: as above.
                vdev: unsafe { opt_string(d.vdev) }.unwrap_or_default(),
                // SAFETY: *_to_string return static strings or NULL.
                format: unsafe { opt_string(sys::libxl_disk_format_to_string(d.format)) }
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                // SAFETY: as above.
                backend: unsafe { opt_string(sys::libxl_disk_backend_to_string(d.backend)) }
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                readwrite: d.readwrite != 0,
                cdrom: d.is_cdrom != 0,
                backend_domid: d.backend_domid,
            })
            .collect();
        // SAFETY: list and n are exactly what libxl_device_disk_list returned.
        unsafe { sys::libxl_device_disk_list_free(list, n) };
        disks
    }

    /// libxl's JSON of the domain's configuration, as `xl save` embeds it.
    fn config(&self, domid: DomId) -> Result<Option<serde_json::Value>> {
        let mut cfg = sys::libxl_domain_config::default();
        // SAFETY: cfg is a valid struct to initialise.
        unsafe { sys::libxl_domain_config_init(&mut cfg) };
        // SAFETY: ctx is live, cfg initialised; NULL ao_how = synchronous.
        let rc = unsafe {
            sys::libxl_retrieve_domain_configuration(self.ctx(), domid, &mut cfg, std::ptr::null())
        };
        let json = if rc == 0 {
            // SAFETY: cfg was filled by libxl; the result is malloc'd or NULL.
            let p = unsafe { sys::libxl_domain_config_to_json(self.ctx(), &mut cfg) };
            // SAFETY: p is NULL or a NUL-terminated malloc'd string, freed once.
            unsafe { take_string(p) }
        } else {
            // dom0 and domains libxl did not create have no stored config.
            log::debug!(
                "no libxl configuration for domain {domid}: {}",
                super::error_name(rc)
            );
            None
        };
        // SAFETY: cfg was initialised above and is disposed exactly once.
        unsafe { sys::libxl_domain_config_dispose(&mut cfg) };
        json.map(|text| {
            serde_json::from_str(&text).map_err(|e| ToolstackError::BadJson {
                call: "libxl_domain_config_to_json",
                detail: e.to_string(),
            })
        })
        .transpose()
    }
}

/// libxl's domain info knows only Xen's two containers, PV and HVM, so a PVH
/// guest reads as HVM (where xl uses it, the two are alike); the type it was created
/// with is in libxl's own xenstore area, `/libxl/<domid>/type`, where libxl
/// itself looks it up (`read`: a xenstore read).
fn created_type(info: &mut DomainInfo, read: impl Fn(&str) -> Option<String>) {
    if info.dtype == DomainType::Hvm
        && read(&format!("/libxl/{}/type", info.domid)).is_some_and(|t| t.trim() == "pvh")
    {
        info.dtype = DomainType::Pvh;
    }
}

fn info_from(d: &sys::libxl_dominfo, name: String) -> DomainInfo {
    let flags = StateFlags {
        running: d.running,
        blocked: d.blocked,
        paused: d.paused,
        shutdown: d.shutdown,
        crashed: d.shutdown && d.shutdown_reason == sys::LIBXL_SHUTDOWN_REASON_CRASH,
        dying: d.dying,
    };
    DomainInfo {
        domid: d.domid,
        name,
        uuid: Uuid(d.uuid.uuid),
        state: flags.state(),
        dtype: match d.domain_type {
            sys::LIBXL_DOMAIN_TYPE_PV => DomainType::Pv,
            sys::LIBXL_DOMAIN_TYPE_PVH => DomainType::Pvh,
            sys::LIBXL_DOMAIN_TYPE_HVM => DomainType::Hvm,
            _ => DomainType::Unknown,
        },
        memory_kib: d.current_memkb,
        max_memory_kib: d.max_memkb,
        vcpus: d.vcpu_online,
        shutdown_reason: d.shutdown.then_some(match d.shutdown_reason {
            sys::LIBXL_SHUTDOWN_REASON_POWEROFF => ShutdownReason::Poweroff,
            sys::LIBXL_SHUTDOWN_REASON_REBOOT => ShutdownReason::Reboot,
            sys::LIBXL_SHUTDOWN_REASON_SUSPEND => ShutdownReason::Suspend,
            sys::LIBXL_SHUTDOWN_REASON_CRASH => ShutdownReason::Crash,
            sys::LIBXL_SHUTDOWN_REASON_WATCHDOG => ShutdownReason::Watchdog,
            sys::LIBXL_SHUTDOWN_REASON_SOFT_RESET => ShutdownReason::SoftReset,
            _ => ShutdownReason::Unknown,
        }),
    }
}

impl Toolstack for Libxl {
    fn simulated(&self) -> bool {
        false
    }

    fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        let mut n: c_int = 0;
        // SAFETY: ctx is live, n a valid out-pointer.
        let list = unsafe { sys::libxl_list_domain(self.ctx(), &mut n) };
        if list.is_null() {
            return Err(ToolstackError::Libxl {
                call: "libxl_list_domain",
                code: sys::ERROR_FAIL,
            });
        }
        // SAFETY: libxl returned an array of n initialised dominfos.
        let items = unsafe { std::slice::from_raw_parts(list, n.max(0) as usize) };
        let xs = super::Xenstore::open();
        let mut out: Vec<DomainInfo> = items
            .iter()
            .map(|d| {
                let mut info = info_from(d, self.name_of(d.domid));
                created_type(&mut info, |p| xs.as_ref()?.read(p));
                info
            })
            .collect();
        // SAFETY: list and n are exactly what libxl_list_domain returned.
        unsafe { sys::libxl_dominfo_list_free(list, n) };
        out.sort_by_key(|d| d.domid);
        Ok(out)
    }

    fn published_addresses(&self, domid: DomId) -> Result<Vec<std::net::IpAddr>> {
        // No xenstored to read is no published address, not an error: the
        // other sources still count.
        let Some(xs) = super::Xenstore::open() else {
            return Ok(Vec::new());
        };
        let attrs = xs.tree(&format!("/local/domain/{domid}/attr"), 4);
        Ok(crate::address::published(&attrs))
    }

    fn set_notice(&self, domid: DomId, text: &str) -> Result<()> {
        let failed = |detail: String| ToolstackError::Stream(format!("xenstore: {detail}"));
        let xs = super::Xenstore::open_writable()
            .ok_or_else(|| failed("cannot connect to xenstored".into()))?;
        let path = format!("/local/domain/{domid}/{}", crate::notice::GUEST_KEY);
        xs.write(&path, text)
            .map_err(|e| failed(format!("writing {path}: {e}")))
    }

    fn notice(&self, domid: DomId) -> Result<Option<String>> {
        let Some(xs) = super::Xenstore::open() else {
            return Ok(None);
        };
        Ok(xs.read(&format!(
            "/local/domain/{domid}/{}",
            crate::notice::GUEST_KEY
        )))
    }

    fn pv_connected(&self, domid: DomId) -> Result<Option<bool>> {
        let Some(xs) = super::Xenstore::open() else {
            return Ok(None);
        };
        let home = format!("/local/domain/{domid}");
        if xs
            .read(&format!("{home}/control/feature-suspend"))
            .as_deref()
            == Some("1")
        {
            return Ok(Some(true));
        }
        // Each frontend's state (xenbus: 4 is Connected).
        let mut states = Vec::new();
        for kind in xs.directory(&format!("{home}/device")) {
            for dev in xs.directory(&format!("{home}/device/{kind}")) {
                states.extend(xs.read(&format!("{home}/device/{kind}/{dev}/state")));
            }
        }
        Ok((!states.is_empty()).then(|| states.iter().any(|s| s.trim() == "4")))
    }

    fn domain_detail(&self, domid: DomId) -> Result<DomainDetail> {
        let mut d = sys::libxl_dominfo::default();
        // SAFETY: d is a valid struct to initialise.
        unsafe { sys::libxl_dominfo_init(&mut d) };
        // SAFETY: ctx is live and d initialised.
        let rc = unsafe { sys::libxl_domain_info(self.ctx(), &mut d, domid) };
        let info = (rc == 0).then(|| info_from(&d, self.name_of(domid)));
        // SAFETY: d was initialised above and is disposed exactly once.
        unsafe { sys::libxl_dominfo_dispose(&mut d) };
        let mut info = match rc {
            0 => info.expect("set when rc == 0"),
            sys::ERROR_DOMAIN_NOTFOUND => {
                return Err(ToolstackError::NoSuchDomain(DomainRef::Id(domid)))
            }
            code => {
                return Err(ToolstackError::Libxl {
                    call: "libxl_domain_info",
                    code,
                })
            }
        };
        let xs = super::Xenstore::open();
        created_type(&mut info, |p| xs.as_ref()?.read(p));
        let config = self.config(domid)?;
        let mut disks = self.disks(domid);
        if let Some(config) = &config {
            crate::domain::formats_from_config(&mut disks, config);
        }
        // The retrieved config holds the nics as libxl merged them in from
        // xenstore; listing them again took 0.1 s a domain on the nested
        // host (the disk list, 0.02 s, stays: it has the live backend).
        let nics = config
            .as_ref()
            .and_then(crate::domain::nics_from_config)
            .unwrap_or_else(|| self.nics(domid));
        Ok(DomainDetail {
            info,
            nics,
            disks,
            config,
        })
    }

    fn version(&self) -> Result<HypervisorVersion> {
        // SAFETY: ctx is live; the result is owned by the ctx (or NULL).
        let v = unsafe { sys::libxl_get_version_info(self.ctx()) };
        // SAFETY: non-NULL results stay valid while the ctx lives (&self).
        let Some(v) = (unsafe { v.as_ref() }) else {
            return Err(ToolstackError::Libxl {
                call: "libxl_get_version_info",
                code: sys::ERROR_FAIL,
            });
        };
        // SAFETY: the version strings are NULL or NUL-terminated, owned by ctx.
        let s = |p: *mut c_char| unsafe { opt_string(p) }.unwrap_or_default();
        Ok(HypervisorVersion {
            major: v.xen_version_major as u32,
            minor: v.xen_version_minor as u32,
            extra: s(v.xen_version_extra),
            build_id: Some(s(v.build_id)).filter(|b| !b.is_empty()),
            commandline: s(v.commandline),
            capabilities: s(v.capabilities),
            changeset: s(v.changeset),
        })
    }

    fn physinfo(&self) -> Result<PhysInfo> {
        let mut p = sys::libxl_physinfo::default();
        // SAFETY: p is a valid struct to initialise.
        unsafe { sys::libxl_physinfo_init(&mut p) };
        // SAFETY: ctx is live and p initialised.
        let rc = unsafe { sys::libxl_get_physinfo(self.ctx(), &mut p) };
        let info = PhysInfo {
            total_memory_kib: p.total_pages * PAGE_KIB,
            free_memory_kib: p.free_pages * PAGE_KIB,
            outstanding_memory_kib: p.outstanding_pages * PAGE_KIB,
            nr_cpus: p.nr_cpus,
            shadow_paging: p.cap_shadow,
        };
        // SAFETY: p was initialised above and is disposed exactly once.
        unsafe { sys::libxl_physinfo_dispose(&mut p) };
        if rc != 0 {
            return Err(ToolstackError::Libxl {
                call: "libxl_get_physinfo",
                code: rc,
            });
        }
        Ok(info)
    }

    fn save(
        &self,
        domid: DomId,
        live: bool,
        out: &mut dyn crate::toolstack::SaveSink,
    ) -> Result<()> {
        lifecycle::save(self, domid, live, out)
    }

    fn resume(&self, domid: DomId) -> Result<()> {
        lifecycle::resume(self, domid)
    }

    fn destroy(&self, domid: DomId) -> Result<()> {
        lifecycle::destroy(self, domid)
    }

    fn restore(
        &self,
        config: serde_json::Value,
        input: &mut dyn crate::toolstack::RestoreSource,
    ) -> Result<DomId> {
        lifecycle::restore(self, &config, input)
    }

    fn create(&self, config: &serde_json::Value) -> Result<DomId> {
        lifecycle::create(self, config)
    }

    fn pause(&self, domid: DomId) -> Result<()> {
        lifecycle::pause(self, domid)
    }

    fn unpause(&self, domid: DomId) -> Result<()> {
        lifecycle::unpause(self, domid)
    }

    fn core_dump(&self, domid: DomId, path: &std::path::Path) -> Result<()> {
        lifecycle::core_dump(self, domid, path)
    }

    fn request(&self, domid: DomId, what: Request) -> Result<()> {
        lifecycle::request(self, domid, what)
    }
}

/// Xen's page size on x86, in KiB (physinfo counts pages).
const PAGE_KIB: u64 = 4;

/// Copies and frees a malloc'd C string.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string from malloc that nothing else frees.
unsafe fn take_string(p: *mut c_char) -> Option<String> {
    // SAFETY: the caller's contract covers opt_string's.
    let s = unsafe { opt_string(p) };
    // SAFETY: p came from malloc (or is NULL) and is freed only here.
    unsafe { libc::free(p.cast()) };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainState;

    fn info(dtype: DomainType) -> DomainInfo {
        DomainInfo {
            domid: 7,
            name: "g".into(),
            uuid: "00000000-0000-0000-0000-000000000007".parse().unwrap(),
            state: DomainState::Blocked,
            dtype,
            memory_kib: 131072,
            max_memory_kib: 131072,
            vcpus: 1,
            shutdown_reason: None,
        }
    }

    #[test]
    fn an_hvm_container_created_as_pvh_is_pvh() {
        let typed = |dtype, stored: Option<&str>| {
            let mut i = info(dtype);
            let asked = std::cell::Cell::new(false);
            created_type(&mut i, |path| {
                assert_eq!(path, "/libxl/7/type");
                asked.set(true);
                stored.map(String::from)
            });
            (i.dtype, asked.get())
        };
        assert_eq!(typed(DomainType::Hvm, Some("pvh")), (DomainType::Pvh, true));
        assert_eq!(typed(DomainType::Hvm, Some("hvm")), (DomainType::Hvm, true));
        assert_eq!(typed(DomainType::Hvm, None), (DomainType::Hvm, true));
        // A PV guest is what libxl says; xenstore is not asked.
        assert_eq!(typed(DomainType::Pv, Some("pvh")), (DomainType::Pv, false));
    }
}
