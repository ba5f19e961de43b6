//! The administrator's policy file, `/etc/xenmaint/xenmaint.toml`. Every key
//! is optional; the defaults are shown:
//!
//! ```toml
//! default_action = "save"      # or "shutdown" (cold boot after the reboot)
//! concurrency = "auto"         # guests saved or restored at once: one per dom0 vCPU, at most 2; or a number
//! image_dir = "/var/lib/xenmaint/images"
//! live = false                 # live save: the guest pauses only for the last round
//! pause_together = false       # true: live saves wait near the end of their first pass, pause at the end
//! read_back = false            # true: read each image back from the device before its guest goes
//! leave_suspended = false      # true: saved guests stay suspended until the reboot ends them
//! on_failure = "rollback"      # or "halt": what a failed drain does (never a reboot)
//! keep_images = true           # false: delete an image once its guest is back and checked
//! probe_addresses = true       # ICMP-probe each guest's recorded IPs once it is back
//! verify_s = 120.0             # how long a guest that is back has to answer
//! device_wait_s = 60.0         # how long resume waits at boot for the guests' bridges and disks
//! hooks = []                   # commands run at each phase, e.g. ["/usr/local/sbin/notify-owners"]
//! hook_s = 60.0                # a hook running longer is killed (the run goes on)
//! allow_image_programs = false # true: restore guests whose config names programs for dom0
//!                              # (hotplug scripts, bootloader, device model) outside Xen's folders
//! paused = "refuse"            # or "save": a guest paused by hand is saved, brought back paused
//! kept = "refuse"              # or "dump": a domain kept after a shutdown or crash has its core
//!                              # written to the run's image folder, then is destroyed
//! dying_wait_s = 0.0           # seconds a drain waits for dying domains to go (0: they block it)
//! save_mib_s = 100.0           # for plan's estimates
//! restore_mib_s = 100.0
//! shutdown_s = 30.0
//! [guests.db-1]                # by name or UUID
//! priority = 10                # back first after the reboot (and saved last)
//! [guests.gpu-worker]
//! action = "shutdown"          # PCI passthrough cannot be saved
//! ```
//!
//! Hooks get XENMAINT_RUN (the run id), XENMAINT_PHASE (started, drained,
//! patched, rebooting, booted, halted, finished) and XENMAINT_STATUS (a JSON
//! file with the run's state, as `xenmaint status --json` prints it).
//! Command-line flags override the file.

use std::path::{Path, PathBuf};

use crate::plan::Policy;

pub const DEFAULT_CONFIG: &str = "/etc/xenmaint/xenmaint.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// The file, a folder above it or a hook it names is not root's alone.
    #[error(transparent)]
    Untrusted(#[from] crate::trust::TrustError),
}

/// Loads `path`, or the default file if it exists, or the defaults. The
/// file names commands run as root, so it is read only if it is root's alone
/// (see `trust`), and so must be every file its hooks name.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, ConfigError> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG), false),
    };
    let text = match crate::trust::read("the policy file", path) {
        Ok(t) => t,
        Err(crate::trust::TrustError::Unreadable { source, .. })
            if !required && source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(Policy::default())
        }
        Err(crate::trust::TrustError::Unreadable { source, .. }) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let policy: Policy = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        detail: e.message().to_owned(),
    })?;
    if policy.concurrency == crate::plan::Concurrency::Lanes(0) {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            detail: "concurrency must be at least 1".into(),
        });
    }
    for hook in &policy.hooks {
        crate::trust::check_command("the hook", hook)?;
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Action;

    #[test]
    fn a_policy_file_overrides_the_defaults() {
        let t = crate::trust::trusted_test_dir();
        let p = t.path().join("x.toml");
        std::fs::write(
            &p,
            "default_action = \"shutdown\"\nconcurrency = 4\nkeep_images = false\n\
             pause_together = true\nleave_suspended = true\n\
             hooks = [\"/usr/local/sbin/notify\"]\nverify_s = 30.0\n\
             paused = \"save\"\nkept = \"dump\"\ndying_wait_s = 20.0\n[guests.db-1]\npriority = 10\n\
             [guests.web-1]\naction = \"save\"\n[guests.old-1]\naction = \"dump\"\n",
        )
        .unwrap();
        let policy = load_policy(Some(&p)).unwrap();
        assert_eq!(policy.default_action, Action::Shutdown);
        assert_eq!(policy.concurrency, crate::plan::Concurrency::Lanes(4));
        assert_eq!(policy.guests["db-1"].priority, 10);
        assert_eq!(policy.guests["web-1"].action, Some(Action::Save));
        assert_eq!(policy.image_dir, Policy::default().image_dir);
        assert!(!policy.keep_images && Policy::default().keep_images);
        assert!(policy.pause_together && !Policy::default().pause_together);
        assert!(policy.leave_suspended && !Policy::default().leave_suspended);
        assert_eq!(policy.hooks, ["/usr/local/sbin/notify"]);
        assert_eq!(policy.verify_s, 30.0);
        assert_eq!(policy.paused, crate::plan::PausedChoice::Save);
        assert_eq!(policy.kept, crate::plan::KeptChoice::Dump);
        assert_eq!(policy.dying_wait_s, 20.0);
        assert_eq!(policy.guests["old-1"].action, Some(Action::Dump));
        let d = Policy::default();
        assert_eq!(
            (d.paused, d.kept, d.dying_wait_s),
            (
                crate::plan::PausedChoice::Refuse,
                crate::plan::KeptChoice::Refuse,
                0.0
            )
        );
    }

    #[test]
    fn the_wait_for_devices_keeps_its_old_name_bridge_wait_s() {
        let t = crate::trust::trusted_test_dir();
        let p = t.path().join("x.toml");
        for (text, want) in [
            ("device_wait_s = 90.0\n", 90.0),
            ("bridge_wait_s = 5.0\n", 5.0),
        ] {
            std::fs::write(&p, text).unwrap();
            assert_eq!(load_policy(Some(&p)).unwrap().device_wait_s, want, "{text}");
        }
        assert_eq!(Policy::default().device_wait_s, 60.0);
    }

    #[test]
    fn bad_files_name_themselves_and_the_problem() {
        let t = crate::trust::trusted_test_dir();
        let p = t.path().join("x.toml");
        for (text, want) in [
            ("concurency = 2\n", "unknown field"),
            ("default_action = \"migrate\"\n", "unknown variant"),
            ("concurrency = 0\n", "at least 1"),
            ("concurrency = -2\n", "at least 1"),
            ("concurrency = \"fast\"\n", "or \"auto\""),
            ("kept = \"delete\"\n", "unknown variant"),
            ("[guests\n", ""),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = load_policy(Some(&p)).unwrap_err().to_string();
            assert!(e.contains("x.toml") && e.contains(want), "{text:?}: {e}");
        }
        let e = load_policy(Some(&t.path().join("missing.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
