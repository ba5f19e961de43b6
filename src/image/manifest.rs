//! `<image>.manifest.json`: what xenmaint knows about an image beyond xl's
//! format: its checksum, the guest and host it came from, and timings.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StreamSummary;
use crate::domain::{Disk, Nic, Uuid};

/// Bumped when a field changes meaning; readers refuse other formats.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub uuid: Uuid,
    pub name: String,
    /// The image's file name (the manifest sits beside it).
    pub image: String,
    pub size: u64,
    /// "<kind>:<hex>" of the whole image file (`Checksum`: xxh64, or
    /// xxh3-128 from xenmaint before 2026-11-24).
    pub checksum: String,
    /// The hypervisor the guest was saved on.
    pub saved_on: SavedOn,
    pub xenmaint: String,
    /// Seconds since the Unix epoch.
    pub saved_at: u64,
    pub live: bool,
    pub memory_kib: u64,
    pub nics: Vec<Nic>,
    pub disks: Vec<DiskIdentity>,
    pub stream: StreamSummary,
    pub timings: Timings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedOn {
    pub xen: String,
    pub build_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// From the suspend call to the last stream byte.
    pub save_ms: u64,
    /// fsync of image and directory.
    pub sync_ms: u64,
    /// Reading the image back from disk (0: not asked for, see `read_back`).
    pub verify_ms: u64,
    pub throughput_mib_s: f64,
}

/// What makes a disk the same disk after maintenance: its backing object,
/// not its content (the guest writes to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskIdentity {
    pub vdev: String,
    pub path: Option<String>,
    pub kind: DiskKind,
    pub size: Option<u64>,
    /// st_dev and st_ino of a file, st_rdev of a block device.
    pub dev: Option<u64>,
    pub ino: Option<u64>,
    /// A device-mapper block device's UUID (LVM: "LVM-" and the VG's and LV's
    /// UUIDs): what tells a logical volume from another made at the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_uuid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    File,
    Block,
    /// A target libxl resolves itself (iSCSI, rbd, ...), or none.
    Other,
    Missing,
}

impl DiskIdentity {
    pub fn of(disk: &Disk) -> DiskIdentity {
        let meta = disk
            .path
            .as_deref()
            .map(|p| std::fs::metadata(Path::new(p)));
        let (kind, size, dev, ino) = match meta {
            None => (DiskKind::Other, None, None, None),
            Some(Err(_)) => (DiskKind::Missing, None, None, None),
            Some(Ok(m)) if m.file_type().is_block_device() => {
                (DiskKind::Block, None, Some(m.rdev()), None)
            }
            Some(Ok(m)) if m.is_file() => {
                (DiskKind::File, Some(m.len()), Some(m.dev()), Some(m.ino()))
            }
            Some(Ok(_)) => (DiskKind::Other, None, None, None),
        };
        let dm_uuid = match (kind, dev) {
            (DiskKind::Block, Some(rdev)) => dm_uuid(Path::new("/sys/dev/block"), rdev),
            _ => None,
        };
        DiskIdentity {
            vdev: disk.vdev.clone(),
            path: disk.path.clone(),
            kind,
            size,
            dev,
            ino,
            dm_uuid,
        }
    }

    /// The identities of a domain's disks (CD-ROMs are media, not disks).
    pub fn of_all(disks: &[Disk]) -> Vec<DiskIdentity> {
        disks
            .iter()
            .filter(|d| !d.cdrom)
            .map(DiskIdentity::of)
            .collect()
    }

    /// What differs between this disk before maintenance and `now`, if
    /// anything. The device number is left out for files and block devices
    /// alike: a reboot may renumber devices (device-mapper does) while the
    /// file (same inode on its filesystem) or device path stays the same.
    pub fn differs_from(&self, now: &DiskIdentity) -> Option<String> {
        let what = if self.path != now.path {
            format!("path {:?} -> {:?}", self.path, now.path)
        } else if self.kind != now.kind {
            format!("{:?} -> {:?}", self.kind, now.kind).to_lowercase()
        } else if self.kind == DiskKind::File && (self.ino, self.size) != (now.ino, now.size) {
            format!(
                "inode {:?} size {:?} -> inode {:?} size {:?}",
                self.ino, self.size, now.ino, now.size
            )
        } else if self.dm_uuid.is_some() && self.dm_uuid != now.dm_uuid {
            format!("device-mapper UUID {:?} -> {:?}", self.dm_uuid, now.dm_uuid)
        } else {
            return None;
        };
        Some(format!("{}: {what}", self.vdev))
    }
}

/// The device-mapper UUID of block device `rdev` as the kernel shows it under
/// `sys_dev_block` (`/sys/dev/block/MAJOR:MINOR/dm/uuid`); None for a device
/// that is not device-mapper's or has no UUID.
fn dm_uuid(sys_dev_block: &Path, rdev: u64) -> Option<String> {
    let node = format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let text = std::fs::read_to_string(sys_dev_block.join(node).join("dm/uuid")).ok()?;
    let uuid = text.trim();
    (!uuid.is_empty()).then(|| uuid.to_string())
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("manifest {path} has format {found}; this xenmaint reads format {MANIFEST_FORMAT}")]
    Format { path: PathBuf, found: u64 },
}

/// `<dir>/<name>.manifest.json` for `<dir>/<name>.xl` (or `<name>`).
pub fn manifest_path(image: &Path) -> PathBuf {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".xl").unwrap_or(&name);
    image.with_file_name(format!("{stem}.manifest.json"))
}

/// A small file's text: what `std::fs::read_to_string` gives, without the
/// `statx` (and `lseek`) it asks for the size first: a manifest, a KiB or
/// two, is read for every restore.
fn read_small(path: &Path) -> std::io::Result<String> {
    let buf = super::read_whole(&mut std::fs::File::open(path)?, 4 << 10)?;
    String::from_utf8(buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

impl Manifest {
    /// Loads the manifest beside `image`; `Ok(None)` when there is none (an
    /// image from `xl save`).
    pub fn load_for(image: &Path) -> Result<Option<Manifest>, ManifestError> {
        let path = manifest_path(image);
        let text = match read_small(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        // One parse when the manifest is what this xenmaint writes (every
        // restore reads one). Its format still decides: a newer manifest
        // that parses by luck is refused for its format.
        let whole = match serde_json::from_str::<Manifest>(&text) {
            Ok(m) if m.format == MANIFEST_FORMAT => return Ok(Some(m)),
            other => other,
        };
        // The format decides before the fields do: a newer manifest says so
        // rather than failing on a field it added (or parsing by luck).
        #[derive(serde::Deserialize)]
        struct Format {
            format: Option<u64>,
        }
        let found = serde_json::from_str::<Format>(&text)
            .ok()
            .and_then(|f| f.format)
            .unwrap_or(0);
        if found != u64::from(MANIFEST_FORMAT) {
            // Not JSON at all is a parse error, not a format.
            if let Err(source) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                return Err(ManifestError::Parse { path, source });
            }
            return Err(ManifestError::Format { path, found });
        }
        whole
            .map(Some)
            .map_err(|source| ManifestError::Parse { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_sits_beside_its_image() {
        assert_eq!(
            manifest_path(Path::new("/var/lib/xenmaint/images/6f1c.xl")),
            Path::new("/var/lib/xenmaint/images/6f1c.manifest.json")
        );
        assert_eq!(
            manifest_path(Path::new("/tmp/web.save")),
            Path::new("/tmp/web.save.manifest.json")
        );
    }

    #[test]
    fn disk_identity_tells_files_from_missing() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("disk.img");
        std::fs::write(&f, vec![0u8; 4096]).unwrap();
        let disk = |p: Option<&Path>| Disk {
            path: p.map(|p| p.display().to_string()),
            vdev: "xvda".into(),
            format: "raw".into(),
            backend: "phy".into(),
            readwrite: true,
            cdrom: false,
            backend_domid: 0,
        };
        let id = DiskIdentity::of(&disk(Some(&f)));
        assert_eq!(id.kind, DiskKind::File);
        assert_eq!(id.size, Some(4096));
        assert!(id.ino.is_some());
        assert_eq!(
            DiskIdentity::of(&disk(Some(&t.path().join("gone")))).kind,
            DiskKind::Missing
        );
        assert_eq!(DiskIdentity::of(&disk(None)).kind, DiskKind::Other);
    }

    #[test]
    fn a_logical_volume_is_known_by_its_device_mapper_uuid() {
        let t = tempfile::tempdir().unwrap();
        let lv = "LVM-Vq2cXWm8sQ4dG1kRzL0b3nYtP7hA9eJf5uKc6oDi8rSw1xE2yB4gH3jN0lM7pZ";
        std::fs::create_dir_all(t.path().join("253:3/dm")).unwrap();
        std::fs::write(t.path().join("253:3/dm/uuid"), format!("{lv}\n")).unwrap();
        std::fs::create_dir_all(t.path().join("8:0")).unwrap();
        let rdev = |maj, min| nix::sys::stat::makedev(maj, min);
        assert_eq!(dm_uuid(t.path(), rdev(253, 3)).as_deref(), Some(lv));
        assert_eq!(
            dm_uuid(t.path(), rdev(8, 0)),
            None,
            "a disk, not device-mapper's"
        );
        assert_eq!(dm_uuid(t.path(), rdev(253, 9)), None, "no such device");

        let block = |dm: Option<&str>| DiskIdentity {
            vdev: "xvda".into(),
            path: Some("/dev/vg0/web".into()),
            kind: DiskKind::Block,
            size: None,
            dev: Some(rdev(253, 3)),
            ino: None,
            dm_uuid: dm.map(String::from),
        };
        let before = block(Some(lv));
        // A reboot may renumber device-mapper's devices: the same LV is the same disk.
        let renumbered = DiskIdentity {
            dev: Some(rdev(253, 0)),
            ..before.clone()
        };
        assert_eq!(before.differs_from(&renumbered), None);
        // Another LV made at the same path is not.
        let other = block(Some(
            "LVM-Vq2cXWm8sQ4dG1kRzL0b3nYtP7hA9eJfAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ));
        let why = before.differs_from(&other).unwrap();
        assert!(why.starts_with("xvda: device-mapper UUID"), "{why}");
        assert!(before.differs_from(&block(None)).is_some());
        // A manifest from before the field knew no UUID: nothing to compare.
        assert_eq!(block(None).differs_from(&before), None);
        let json = serde_json::to_string(&block(None)).unwrap();
        assert!(!json.contains("dm_uuid"), "{json}");
        let back: DiskIdentity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, block(None));
    }

    #[test]
    fn small_files_read_whole_at_any_size() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        for len in [0, 1, 4095, 4096, 4097, 20_000] {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            std::fs::write(&p, &text).unwrap();
            assert_eq!(read_small(&p).unwrap(), text, "{len} bytes");
        }
        std::fs::write(&p, b"ok \xff").unwrap();
        let e = read_small(&p).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(read_small(&t.path().join("gone")).is_err());
    }

    #[test]
    fn missing_manifest_is_none_and_bad_ones_name_the_file() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("a.xl");
        assert!(Manifest::load_for(&img).unwrap().is_none());
        std::fs::write(manifest_path(&img), "{").unwrap();
        let e = Manifest::load_for(&img).unwrap_err();
        assert!(e.to_string().contains("a.manifest.json"), "{e}");
        std::fs::write(manifest_path(&img), r#"{"format": 9}"#).unwrap();
        let e = Manifest::load_for(&img).unwrap_err();
        assert!(matches!(e, ManifestError::Format { found: 9, .. }), "{e}");
    }
}
