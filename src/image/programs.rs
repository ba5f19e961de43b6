//! The programs a guest's libxl configuration makes dom0 run as root when
//! the guest is created or restored: each vif's and disk's hotplug script,
//! the bootloader, an overriding device model, a stub domain's kernel and
//! ramdisk. An image carries that configuration, so an image from elsewhere
//! can name any program; a restore runs only those that are the system's
//! own: under Xen's script and library folders, and root's alone (`trust`).

use std::path::{Component, Path, PathBuf};

/// Where libxl finds a hotplug script named without a folder.
pub const SCRIPT_DIR: &str = "/etc/xen/scripts";
/// Where libxl finds a bootloader named without a folder: its private bin
/// folder, /usr/lib/xen-<series>/bin on Debian (the installed one's).
fn bin_dir() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.to_string_lossy().starts_with("/usr/lib/xen-") && p.is_dir())
        .max()
        .unwrap_or_else(|| PathBuf::from("/usr/lib/xen/bin"))
}

/// Folders whose programs a restore may run: Xen's scripts and what Xen's
/// packages install (Debian: /usr/lib/xen-4.17/bin, /usr/libexec/xen...).
fn system_folder(path: &Path) -> bool {
    let s = path.to_string_lossy();
    path.starts_with(SCRIPT_DIR)
        || s.starts_with("/usr/lib/xen")
        || s.starts_with("/usr/libexec/xen")
        || s.starts_with("/usr/lib64/xen")
}

/// One program the configuration names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Program {
    /// What runs it, e.g. "vif 0 hotplug script".
    pub role: String,
    /// The file dom0 would run, resolved as libxl resolves it.
    pub path: PathBuf,
    /// Why a restore would refuse it; None if it is the system's own.
    pub refused: Option<String>,
}

/// Every program `config` (libxl's domain configuration, as JSON) names,
/// each judged.
pub fn programs(config: &serde_json::Value) -> Vec<Program> {
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    for (kind, key) in [("vif", "nics"), ("disk", "disks")] {
        for (i, dev) in config[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if let Some(script) = dev["script"].as_str().filter(|s| !s.is_empty()) {
                let id = dev["devid"].as_u64().map_or(i as u64, |d| d);
                let label = match kind {
                    "disk" => dev["vdev"].as_str().map_or(i.to_string(), str::to_owned),
                    _ => id.to_string(),
                };
                named.push((
                    format!("{kind} {label} hotplug script"),
                    resolve(script, SCRIPT_DIR),
                ));
            }
        }
    }
    let b = &config["b_info"];
    for (key, role) in [
        ("bootloader", "bootloader"),
        ("device_model", "device model"),
        ("stubdomain_kernel", "stub domain kernel"),
        ("stubdomain_ramdisk", "stub domain ramdisk"),
    ] {
        if let Some(p) = b[key].as_str().filter(|s| !s.is_empty()) {
            named.push((role.to_owned(), resolve(p, bin_dir())));
        }
    }
    named
        .into_iter()
        .map(|(role, path)| {
            let refused = judge(&path);
            Program {
                role,
                path,
                refused,
            }
        })
        .collect()
}

/// libxl's rule: a name without a folder is taken from `dir`.
fn resolve(name: &str, dir: impl AsRef<Path>) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        dir.as_ref().join(name)
    }
}

fn judge(path: &Path) -> Option<String> {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || !system_folder(path) {
        return Some(format!(
            "not under {SCRIPT_DIR} or Xen's own library folders"
        ));
    }
    // A program that is not there runs nothing; its folder must still be
    // root's, or someone could put it there.
    let existing = path.ancestors().find(|p| p.exists())?;
    match crate::trust::check("the program", existing) {
        Ok(()) => None,
        Err(crate::trust::TrustError::Untrusted {
            culprit,
            problem,
            owner,
            mode,
            ..
        }) => Some(format!(
            "{} is {problem} (owner {owner}, mode {mode:04o})",
            if existing == path && culprit == "it" {
                "it".to_owned()
            } else if culprit == "it" {
                format!("the folder {}", existing.display())
            } else {
                culprit
            }
        )),
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_program_a_configuration_names_is_found_and_resolved_as_libxl_does() {
        let config = json!({
            "nics": [{"devid": 0, "script": "vif-bridge"}, {"devid": 1}],
            "disks": [{"vdev": "xvda", "script": "/tmp/evil/block-x"}],
            "b_info": {"bootloader": "pygrub", "device_model": "/opt/qemu/bin/qemu"}
        });
        let found = programs(&config);
        let paths: Vec<_> = found
            .iter()
            .map(|p| (p.role.as_str(), p.path.clone()))
            .collect();
        assert_eq!(
            paths,
            [
                (
                    "vif 0 hotplug script",
                    PathBuf::from("/etc/xen/scripts/vif-bridge")
                ),
                (
                    "disk xvda hotplug script",
                    PathBuf::from("/tmp/evil/block-x")
                ),
                ("bootloader", bin_dir().join("pygrub")),
                ("device model", PathBuf::from("/opt/qemu/bin/qemu")),
            ]
        );
        // Outside the system's folders: refused whatever the file is.
        assert!(found[1]
            .refused
            .as_deref()
            .unwrap()
            .contains("not under /etc/xen/scripts"));
        assert!(found[3].refused.is_some());
    }

    #[test]
    fn a_path_that_climbs_out_of_the_scripts_folder_is_refused() {
        let config = json!({"nics": [{"devid": 0, "script": "/etc/xen/scripts/../../../tmp/x"}]});
        assert!(programs(&config)[0].refused.is_some());
    }

    #[test]
    fn a_configuration_without_programs_names_none() {
        assert!(programs(&json!({"nics": [{"devid": 0}], "b_info": {}})).is_empty());
    }
}
