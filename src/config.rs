//! The administrator's policy file, `/etc/xenmaint/xenmaint.toml`, e.g.:
//!
//! ```toml
//! default_action = "save"      # or "shutdown"
//! concurrency = 2
//! image_dir = "/var/lib/xenmaint/images"
//! [guests.db-1]
//! priority = 10                # back first after the reboot
//! [guests.gpu-worker]
//! action = "shutdown"          # PCI passthrough cannot be saved
//! ```
//!
//! Command-line flags override it.

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
}

/// Loads `path`, or the default file if it exists, or the defaults.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, ConfigError> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Policy::default())
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let policy: Policy = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        detail: e.message().to_owned(),
    })?;
    if policy.concurrency == 0 {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            detail: "concurrency must be at least 1".into(),
        });
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Action;

    #[test]
    fn a_policy_file_overrides_the_defaults() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.toml");
        std::fs::write(
            &p,
            "default_action = \"shutdown\"\nconcurrency = 4\n[guests.db-1]\npriority = 10\n\
             [guests.web-1]\naction = \"save\"\n",
        )
        .unwrap();
        let policy = load_policy(Some(&p)).unwrap();
        assert_eq!(policy.default_action, Action::Shutdown);
        assert_eq!(policy.concurrency, 4);
        assert_eq!(policy.guests["db-1"].priority, 10);
        assert_eq!(policy.guests["web-1"].action, Some(Action::Save));
        assert_eq!(policy.image_dir, Policy::default().image_dir);
    }

    #[test]
    fn bad_files_name_themselves_and_the_problem() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.toml");
        for (text, want) in [
            ("concurency = 2\n", "unknown field"),
            ("default_action = \"migrate\"\n", "unknown variant"),
            ("concurrency = 0\n", "at least 1"),
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
