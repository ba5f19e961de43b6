//! The read-only verbs: list, info, version.

use serde::Serialize;

use super::output::Output;
use super::CliError;
use crate::domain::{DomainDetail, DomainRef, HypervisorVersion, PhysInfo};
use crate::toolstack::{Toolstack, ToolstackError};

const MIB: u64 = 1024;

pub fn list(ts: &dyn Toolstack, out: &Output) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for d in ts.list_domains()? {
        let mut detail = match ts.domain_detail(d.domid) {
            Ok(detail) => detail,
            // Gone between the list and now: a list is a snapshot anyway.
            Err(ToolstackError::NoSuchDomain(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        // The full config is `info`'s business; keep list lines short.
        detail.config = None;
        if out.json {
            out.record(&ListRecord(&detail))?;
        } else {
            let i = &detail.info;
            rows.push(vec![
                i.name.clone(),
                i.domid.to_string(),
                (i.memory_kib / MIB).to_string(),
                i.vcpus.to_string(),
                i.state.to_string(),
                i.dtype.to_string(),
                i.uuid.to_string(),
                join(detail.nics.iter().filter_map(|n| n.ip.clone())),
            ]);
        }
    }
    if !out.json {
        out.table(
            &[
                "NAME", "ID", "MEM(MiB)", "VCPUS", "STATE", "TYPE", "UUID", "IP",
            ],
            &rows,
        )?;
    }
    Ok(())
}

/// A list line: the detail without its config.
#[derive(Serialize)]
struct ListRecord<'a>(#[serde(serialize_with = "without_config")] &'a DomainDetail);

fn without_config<S: serde::Serializer>(d: &&DomainDetail, s: S) -> Result<S::Ok, S::Error> {
    let mut v = serde_json::to_value(d).map_err(serde::ser::Error::custom)?;
    if let Some(map) = v.as_object_mut() {
        map.remove("config");
    }
    v.serialize(s)
}

pub fn info(ts: &dyn Toolstack, domain: &DomainRef, out: &Output) -> Result<(), CliError> {
    let d = ts.domain_detail(ts.resolve(domain)?.domid)?;
    if out.json {
        return Ok(out.record(&d)?);
    }
    let i = &d.info;
    out.table(
        &["FIELD", "VALUE"],
        &[
            vec!["name".into(), i.name.clone()],
            vec!["domid".into(), i.domid.to_string()],
            vec!["uuid".into(), i.uuid.to_string()],
            vec!["type".into(), i.dtype.to_string()],
            vec!["state".into(), i.state.to_string()],
            vec![
                "memory".into(),
                format!(
                    "{} MiB (max {} MiB)",
                    i.memory_kib / MIB,
                    i.max_memory_kib / MIB
                ),
            ],
            vec!["vcpus".into(), i.vcpus.to_string()],
        ],
    )?;
    out.line("")?;
    let nics: Vec<Vec<String>> = d
        .nics
        .iter()
        .map(|n| {
            vec![
                n.devid.to_string(),
                n.mac.to_string(),
                n.bridge.clone().unwrap_or_default(),
                n.ip.clone().unwrap_or_default(),
                n.script.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.table(&["NIC", "MAC", "BRIDGE", "IP", "SCRIPT"], &nics)?;
    out.line("")?;
    let disks: Vec<Vec<String>> = d
        .disks
        .iter()
        .map(|k| {
            vec![
                k.vdev.clone(),
                k.path.clone().unwrap_or_default(),
                k.format.clone(),
                k.backend.clone(),
                if k.readwrite { "rw" } else { "ro" }.into(),
            ]
        })
        .collect();
    out.table(&["DISK", "PATH", "FORMAT", "BACKEND", "MODE"], &disks)?;
    out.line("")?;
    out.line(match &d.config {
        Some(_) => "config: libxl JSON available (--json shows it)",
        None => "config: none (libxl did not create this domain)",
    })?;
    Ok(())
}

#[derive(Serialize)]
struct VersionRecord {
    xenmaint: &'static str,
    hypervisor: HypervisorRecord,
    host: PhysInfo,
}

#[derive(Serialize)]
struct HypervisorRecord {
    release: String,
    #[serde(flatten)]
    version: HypervisorVersion,
}

pub fn version(ts: &dyn Toolstack, out: &Output) -> Result<(), CliError> {
    let v = ts.version()?;
    let host = ts.physinfo()?;
    if out.json {
        return Ok(out.record(&VersionRecord {
            xenmaint: env!("CARGO_PKG_VERSION"),
            hypervisor: HypervisorRecord {
                release: v.release(),
                version: v,
            },
            host,
        })?);
    }
    out.table(
        &["WHAT", "VERSION"],
        &[
            vec!["xenmaint".into(), env!("CARGO_PKG_VERSION").into()],
            vec!["xen".into(), v.release()],
            vec![
                "build-id".into(),
                v.build_id.clone().unwrap_or_else(|| "-".into()),
            ],
            vec!["xen command line".into(), v.commandline.clone()],
            vec![
                "host memory".into(),
                format!(
                    "{} MiB total, {} MiB free",
                    host.total_memory_kib / MIB,
                    host.free_memory_kib / MIB
                ),
            ],
            vec!["host cpus".into(), host.nr_cpus.to_string()],
        ],
    )?;
    Ok(())
}

fn join(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}
