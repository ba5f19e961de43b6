//! The host's boot loader, as the maintenance run needs it: which entries
//! exist, which is the default, boot one entry once (GRUB's `next_entry`,
//! which GRUB clears before booting it), commit a default (`saved_entry`),
//! and keep the running hypervisor bootable under an entry of its own before
//! a package upgrade overwrites its file.
//!
//! `Grub` drives a real GRUB through its files and `grub-editenv`; tests and
//! the simulator use `MemoryBoot`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("grub-editenv {args} failed: {detail}")]
    Editenv { args: String, detail: String },
    #[error("no boot entry {0:?} (see `grub.cfg`; entries are named by id or title)")]
    NoEntry(String),
    #[error("no boot entry loads {0}: cannot make a fallback entry for it")]
    NoEntryFor(String),
}

pub type Result<T> = std::result::Result<T, BootError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEntry {
    /// What grubenv names it by: the `--id`, or the title when it has none;
    /// entries in submenus are `submenu>entry`.
    pub id: String,
    pub title: String,
    /// The multiboot2 image (the hypervisor), if it boots one.
    pub hypervisor: Option<String>,
}

pub trait BootLoader: Sync {
    fn entries(&self) -> Result<Vec<BootEntry>>;
    /// The default entry (`saved_entry`).
    fn default_entry(&self) -> Result<Option<String>>;
    /// The one-shot entry for the next boot, if still set.
    fn next_entry(&self) -> Result<Option<String>>;
    /// Boots `id` once at the next boot; the default stays as it is, so a
    /// hypervisor that fails to boot falls back to it.
    fn boot_once(&self, id: &str) -> Result<()>;
    /// Makes `id` the default.
    fn commit(&self, id: &str) -> Result<()>;
    /// Copies `hypervisor` to `copy` and adds an entry `id` that boots the
    /// copy with everything else as the entry that boots `hypervisor`.
    fn keep_entry(&self, hypervisor: &str, copy: &str, id: &str, title: &str) -> Result<()>;

    /// The build-id of the hypervisor entry `id` boots, read from its image
    /// (None when it cannot be known).
    fn build_id_of(&self, id: &str) -> Result<Option<String>>;

    /// The entry named `name`, by id or title.
    fn find(&self, name: &str) -> Result<BootEntry> {
        self.entries()?
            .into_iter()
            .find(|e| e.id == name || e.title == name)
            .ok_or_else(|| BootError::NoEntry(name.to_owned()))
    }
}

/// A real GRUB: `<dir>/grub.cfg` (and `custom.cfg`) for entries,
/// `<dir>/grubenv` through `grub-editenv` for the environment.
pub struct Grub {
    pub dir: PathBuf,
    /// The root of the filesystem the entries' paths are relative to ("/").
    pub root: PathBuf,
    pub editenv: PathBuf,
}

impl Default for Grub {
    fn default() -> Grub {
        Grub {
            dir: PathBuf::from("/boot/grub"),
            root: PathBuf::from("/"),
            editenv: PathBuf::from("grub-editenv"),
        }
    }
}

impl Grub {
    fn env_file(&self) -> PathBuf {
        self.dir.join("grubenv")
    }

    fn editenv(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.editenv)
            .arg(self.env_file())
            .args(args)
            .output()
            .map_err(|e| BootError::Editenv {
                args: args.join(" "),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(BootError::Editenv {
                args: args.join(" "),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn env(&self, key: &str) -> Result<Option<String>> {
        let list = self.editenv(&["list"])?;
        Ok(list
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .next_back()
            .filter(|v| !v.is_empty()))
    }

    fn configs(&self) -> Result<Vec<String>> {
        let mut texts = Vec::new();
        for name in ["grub.cfg", "custom.cfg"] {
            let path = self.dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(t) => texts.push(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "custom.cfg" => {}
                Err(source) => return Err(BootError::Io { path, source }),
            }
        }
        Ok(texts)
    }

    fn host_path(&self, grub_path: &str) -> PathBuf {
        self.root.join(grub_path.trim_start_matches('/'))
    }
}

impl BootLoader for Grub {
    fn build_id_of(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .find(id)?
            .hypervisor
            .and_then(|h| crate::buildid::of_file(&self.host_path(&h))))
    }

    fn entries(&self) -> Result<Vec<BootEntry>> {
        Ok(self
            .configs()?
            .iter()
            .flat_map(|t| parse_entries(t))
            .map(|(e, _)| e)
            .collect())
    }

    fn default_entry(&self) -> Result<Option<String>> {
        self.env("saved_entry")
    }

    fn next_entry(&self) -> Result<Option<String>> {
        self.env("next_entry")
    }

    fn boot_once(&self, id: &str) -> Result<()> {
        self.find(id)?;
        self.editenv(&["set", &format!("next_entry={id}")])
            .map(drop)
    }

    fn commit(&self, id: &str) -> Result<()> {
        self.find(id)?;
        self.editenv(&["set", &format!("saved_entry={id}")])?;
        self.editenv(&["unset", "next_entry"]).map(drop)
    }

    fn keep_entry(&self, hypervisor: &str, copy: &str, id: &str, title: &str) -> Result<()> {
        let body = self
            .configs()?
            .iter()
            .flat_map(|t| parse_entries(t))
            .find(|(e, _)| e.hypervisor.as_deref() == Some(hypervisor))
            .map(|(_, body)| body)
            .ok_or_else(|| BootError::NoEntryFor(hypervisor.to_owned()))?;
        let (src, dst) = (self.host_path(hypervisor), self.host_path(copy));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BootError::Io { path, source }
        };
        std::fs::copy(&src, &dst).map_err(io(&dst))?;
        crate::durable::sync(&std::fs::File::open(&dst).map_err(io(&dst))?, &dst).map_err(|e| {
            BootError::Io {
                path: dst.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let body = body.replace(hypervisor, copy);
        let entry = format!(
            "menuentry '{}' --id {id} {{\n{body}\n}}\n",
            title.replace('\'', "")
        );
        let custom = self.dir.join("custom.cfg");
        let mut text = std::fs::read_to_string(&custom).unwrap_or_default();
        // Replace an entry with the same id from an earlier run.
        if let Some(start) = text.find(&format!("--id {id} {{")) {
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            if let Some(end) = text[start..].find("\n}\n") {
                text.replace_range(line_start..start + end + 3, "");
            }
        }
        text.push_str(&entry);
        crate::durable::replace(&custom, text.as_bytes()).map_err(|e| BootError::Io {
            path: custom.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// The menu entries of a grub.cfg with their bodies, submenus flattened to
/// `submenu>entry` ids as GRUB's saved_entry names them.
pub fn parse_entries(cfg: &str) -> Vec<(BootEntry, String)> {
    let mut out = Vec::new();
    let mut submenus: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<(BootEntry, Vec<String>, usize)> = None;
    for line in cfg.lines() {
        let trimmed = line.trim();
        let opens = trimmed.ends_with('{');
        let closes = trimmed == "}";
        if let Some((entry, body, at)) = current.as_mut() {
            if closes && depth == *at + 1 {
                let (entry, body, _) = current.take().expect("some");
                out.push((entry, body.join("\n")));
                depth -= 1;
                continue;
            }
            let mut words = trimmed.split_whitespace();
            if matches!(words.next(), Some("multiboot2" | "multiboot")) {
                entry.hypervisor = words.next().map(str::to_owned);
            }
            body.push(line.to_owned());
            depth += usize::from(opens);
            depth -= usize::from(closes);
            continue;
        }
        let keyword = trimmed.split_whitespace().next().unwrap_or("");
        if (keyword == "menuentry" || keyword == "submenu") && opens {
            let title = quoted(trimmed).unwrap_or_default();
            let id = id_of(trimmed).unwrap_or_else(|| title.clone());
            let path: Vec<&str> = submenus.iter().map(|(s, _)| s.as_str()).collect();
            let full = if path.is_empty() {
                id
            } else {
                format!("{}>{id}", path.join(">"))
            };
            if keyword == "submenu" {
                submenus.push((full, depth));
            } else {
                current = Some((
                    BootEntry {
                        id: full,
                        title,
                        hypervisor: None,
                    },
                    Vec::new(),
                    depth,
                ));
            }
            depth += 1;
        } else if closes {
            depth = depth.saturating_sub(1);
            if submenus.last().is_some_and(|(_, d)| *d == depth) {
                submenus.pop();
            }
        } else if opens {
            depth += 1;
        }
    }
    out
}

/// The first quoted string of a menuentry line.
fn quoted(line: &str) -> Option<String> {
    let start = line.find(['\'', '"'])?;
    let q = line[start..].chars().next()?;
    let rest = &line[start + 1..];
    rest.find(q).map(|end| rest[..end].to_owned())
}

/// `--id X` or Debian's `$menuentry_id_option 'X'`.
fn id_of(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "--id" || w[0] == "$menuentry_id_option")
        .map(|w| w[1].trim_matches(|c| c == '\'' || c == '"').to_owned())
}

/// A boot loader in memory: for the sequencer's tests.
#[derive(Debug, Default)]
pub struct MemoryBoot {
    pub state: Mutex<MemoryBootState>,
}

/// What a boot loader holds: its entries and its environment. The logic of
/// every in-memory boot loader (`MemoryBoot`, the simulator's) is here once.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryBootState {
    pub entries: Vec<BootEntry>,
    pub saved_entry: Option<String>,
    pub next_entry: Option<String>,
    /// Entries added by keep_entry, as (id, copy of).
    pub kept: Vec<(String, String)>,
    /// The build-id of the hypervisor each entry boots, where known.
    pub build_ids: std::collections::BTreeMap<String, String>,
}

impl MemoryBootState {
    pub fn find(&self, name: &str) -> Result<BootEntry> {
        self.entries
            .iter()
            .find(|e| e.id == name || e.title == name)
            .cloned()
            .ok_or_else(|| BootError::NoEntry(name.to_owned()))
    }

    pub fn build_id_of(&self, id: &str) -> Result<Option<String>> {
        self.find(id)?;
        Ok(self.build_ids.get(id).cloned())
    }

    pub fn boot_once(&mut self, id: &str) -> Result<()> {
        self.find(id)?;
        self.next_entry = Some(id.to_owned());
        Ok(())
    }

    pub fn commit(&mut self, id: &str) -> Result<()> {
        self.find(id)?;
        self.saved_entry = Some(id.to_owned());
        self.next_entry = None;
        Ok(())
    }

    /// The copy boots the same build as the hypervisor it copies.
    pub fn keep_entry(
        &mut self,
        hypervisor: &str,
        copy: &str,
        id: &str,
        title: &str,
    ) -> Result<()> {
        let Some(of) = self
            .entries
            .iter()
            .find(|e| e.hypervisor.as_deref() == Some(hypervisor))
            .map(|e| e.id.clone())
        else {
            return Err(BootError::NoEntryFor(hypervisor.to_owned()));
        };
        if let Some(build) = self.build_ids.get(&of).cloned() {
            self.build_ids.insert(id.to_owned(), build);
        }
        self.entries.retain(|e| e.id != id);
        self.entries.push(BootEntry {
            id: id.to_owned(),
            title: title.to_owned(),
            hypervisor: Some(copy.to_owned()),
        });
        self.kept.push((id.to_owned(), hypervisor.to_owned()));
        Ok(())
    }

    /// What GRUB does at boot: take next_entry once if set, else saved_entry.
    pub fn boot(&mut self) -> Option<String> {
        self.next_entry.take().or_else(|| self.saved_entry.clone())
    }
}

impl MemoryBoot {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryBootState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What GRUB does at boot: take next_entry once if set, else saved_entry.
    pub fn boot(&self) -> Option<String> {
        self.lock().boot()
    }
}

impl BootLoader for MemoryBoot {
    fn entries(&self) -> Result<Vec<BootEntry>> {
        Ok(self.lock().entries.clone())
    }

    fn build_id_of(&self, id: &str) -> Result<Option<String>> {
        self.lock().build_id_of(id)
    }

    fn default_entry(&self) -> Result<Option<String>> {
        Ok(self.lock().saved_entry.clone())
    }

    fn next_entry(&self) -> Result<Option<String>> {
        Ok(self.lock().next_entry.clone())
    }

    fn boot_once(&self, id: &str) -> Result<()> {
        self.lock().boot_once(id)
    }

    fn commit(&self, id: &str) -> Result<()> {
        self.lock().commit(id)
    }

    fn keep_entry(&self, hypervisor: &str, copy: &str, id: &str, title: &str) -> Result<()> {
        self.lock().keep_entry(hypervisor, copy, id, title)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"
set default="${saved_entry}"
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-abc' {
	linux /boot/vmlinuz root=/dev/sda1
}
submenu 'Debian GNU/Linux (with Xen hypervisor)' $menuentry_id_option 'gnulinux-xen-abc' {
	menuentry 'Debian GNU/Linux, with Xen 4.17-amd64 and Linux 6.1' $menuentry_id_option 'xen-gnulinux-4.17-abc' {
		if [ "x$grub_platform" = xpc ]; then
			set gfxpayload=keep
		fi
		multiboot2	/boot/xen-4.17-amd64.gz placeholder dom0_mem=1024M
		module2	/boot/vmlinuz-6.1.0-28-amd64 placeholder root=/dev/sda1 ro
		module2	--nounzip /boot/initrd.img-6.1.0-28-amd64
	}
}
menuentry "Plain" {
	linux /boot/vmlinuz
}
"#;

    #[test]
    fn parses_debian_menus_with_submenus_and_ids() {
        let e: Vec<BootEntry> = parse_entries(DEBIAN).into_iter().map(|(e, _)| e).collect();
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0].id, "gnulinux-simple-abc");
        assert_eq!(e[0].hypervisor, None);
        assert_eq!(e[1].id, "gnulinux-xen-abc>xen-gnulinux-4.17-abc");
        assert_eq!(e[1].hypervisor.as_deref(), Some("/boot/xen-4.17-amd64.gz"));
        assert_eq!(e[2].id, "Plain", "no id: named by title");
    }

    fn grub_at(dir: &Path) -> Option<Grub> {
        let editenv = which("grub-editenv")?;
        let grub = Grub {
            dir: dir.join("boot/grub"),
            root: dir.to_owned(),
            editenv,
        };
        std::fs::create_dir_all(&grub.dir).unwrap();
        std::fs::write(grub.dir.join("grub.cfg"), DEBIAN).unwrap();
        std::fs::write(dir.join("boot/xen-4.17-amd64.gz"), b"xen 4.17.5").unwrap();
        let ok = Command::new(&grub.editenv)
            .arg(grub.env_file())
            .arg("create")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        Some(grub)
    }

    fn which(tool: &str) -> Option<PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
    }

    #[test]
    fn grub_boot_once_commit_and_kept_entries_through_real_grub_editenv() {
        let t = tempfile::tempdir().unwrap();
        let Some(grub) = grub_at(t.path()) else {
            panic!("grub-editenv missing: install grub-common (scripts/nested-xen/deps does)");
        };
        let xen = "gnulinux-xen-abc>xen-gnulinux-4.17-abc";
        grub.commit(xen).unwrap();
        assert_eq!(grub.default_entry().unwrap().as_deref(), Some(xen));
        assert!(matches!(grub.boot_once("nope"), Err(BootError::NoEntry(_))));

        grub.keep_entry(
            "/boot/xen-4.17-amd64.gz",
            "/boot/xen-4.17.5-xenmaint.gz",
            "xenmaint-xen-4.17.5",
            "Xen 4.17.5 (kept by xenmaint)",
        )
        .unwrap();
        assert_eq!(
            std::fs::read(t.path().join("boot/xen-4.17.5-xenmaint.gz")).unwrap(),
            b"xen 4.17.5"
        );
        let kept = grub.find("xenmaint-xen-4.17.5").unwrap();
        assert_eq!(
            kept.hypervisor.as_deref(),
            Some("/boot/xen-4.17.5-xenmaint.gz")
        );
        let custom = std::fs::read_to_string(grub.dir.join("custom.cfg")).unwrap();
        assert!(
            custom.contains("module2\t/boot/vmlinuz-6.1.0-28-amd64"),
            "{custom}"
        );
        // Again (a second run): replaced, not duplicated.
        grub.keep_entry(
            "/boot/xen-4.17-amd64.gz",
            "/boot/xen-4.17.5-xenmaint.gz",
            "xenmaint-xen-4.17.5",
            "Xen 4.17.5 (kept by xenmaint)",
        )
        .unwrap();
        let custom = std::fs::read_to_string(grub.dir.join("custom.cfg")).unwrap();
        assert_eq!(
            custom.matches("--id xenmaint-xen-4.17.5 {").count(),
            1,
            "{custom}"
        );

        grub.commit("xenmaint-xen-4.17.5").unwrap();
        grub.boot_once(xen).unwrap();
        assert_eq!(grub.next_entry().unwrap().as_deref(), Some(xen));
        assert_eq!(
            grub.default_entry().unwrap().as_deref(),
            Some("xenmaint-xen-4.17.5")
        );
        grub.commit(xen).unwrap();
        assert_eq!(
            grub.next_entry().unwrap(),
            None,
            "commit clears a pending boot-once"
        );
    }

    #[test]
    fn memory_boot_behaves_like_grub_at_boot() {
        let b = MemoryBoot::default();
        b.lock().entries = vec![
            BootEntry {
                id: "old".into(),
                title: "Xen 4.17.5".into(),
                hypervisor: Some("/boot/xen.gz".into()),
            },
            BootEntry {
                id: "new".into(),
                title: "Xen 4.17.7".into(),
                hypervisor: Some("/boot/xen-new.gz".into()),
            },
        ];
        b.commit("old").unwrap();
        b.boot_once("new").unwrap();
        assert_eq!(b.boot().as_deref(), Some("new"));
        assert_eq!(b.boot().as_deref(), Some("old"), "once only");
    }
}
