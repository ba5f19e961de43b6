//! What of a guest's configuration does not survive a save, read from the
//! config libxl keeps for it (the `config` of `xl list -l`) before anything
//! is touched. From libxl's save path, the same in Xen 4.17 and 4.20: it
//! refuses one thing (vNUMA); everything else is re-created from the config
//! at restore, but what lives outside the guest's memory and QEMU's saved
//! state is not in the image. An error blocks the plan (give the guest action
//! "shutdown"); a warning says what the guest may find changed.

use serde_json::Value;

use crate::plan::Severity;

/// One setting: where libxl keeps it in the config (JSON pointers, each with
/// when it counts as set there; libxl leaves unset ones out, and keeps some
/// in two places), and what a save does to it.
struct Setting {
    at: &'static [(&'static str, Set)],
    severity: Severity,
    what: &'static str,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Set {
    /// A list of devices with one at least.
    NonEmpty,
    /// A defbool, which libxl prints as "True" or "False".
    True,
    /// An enum whose off value is "disabled".
    NotDisabled,
}

impl Set {
    fn holds(self, v: &Value) -> bool {
        match self {
            Set::NonEmpty => v.as_array().is_some_and(|a| !a.is_empty()),
            Set::True => v.as_str() == Some("True") || v.as_bool() == Some(true),
            Set::NotDisabled => !matches!(v.as_str(), None | Some("disabled")),
        }
    }
}

const SETTINGS: &[Setting] = &[
    Setting {
        at: &[("/pcidevs", Set::NonEmpty)],
        severity: Severity::Error,
        what: "has PCI passthrough, which cannot be saved: give it action \"shutdown\"",
    },
    Setting {
        at: &[("/b_info/vnuma_nodes", Set::NonEmpty)],
        severity: Severity::Error,
        what: "has virtual NUMA nodes, which libxl refuses to save (\"Cannot save a guest \
               with vNUMA configured\"): give it action \"shutdown\"",
    },
    Setting {
        at: &[("/usbdevs", Set::NonEmpty)],
        severity: Severity::Warning,
        what: "has host USB devices passed through: their own state is not in the image, \
               and its drivers find them reset after the restore (action \"shutdown\" if \
               they cannot take that)",
    },
    Setting {
        at: &[
            ("/b_info/iomem", Set::NonEmpty),
            ("/b_info/ioports", Set::NonEmpty),
            ("/b_info/irqs", Set::NonEmpty),
        ],
        severity: Severity::Warning,
        what: "has host I/O memory, I/O ports or IRQs passed through: the device's state \
               is not in the image, and its driver finds it as the reboot left it (action \
               \"shutdown\" if it cannot take that)",
    },
    Setting {
        at: &[("/p9s", Set::NonEmpty)],
        severity: Severity::Warning,
        what: "shares dom0 folders over 9pfs, whose Linux frontend does not support \
               suspend and resume: its 9p mounts may fail after the restore (action \
               \"shutdown\" brings it back with them)",
    },
    Setting {
        at: &[("/vtpms", Set::NonEmpty)],
        severity: Severity::Warning,
        what: "has a vTPM, whose state lives in the vTPM's own domain, not in this image: \
               that domain must be back first (give it a higher priority)",
    },
    Setting {
        at: &[
            ("/b_info/nested_hvm", Set::True),
            ("/b_info/type.hvm/nested_hvm", Set::True),
        ],
        severity: Severity::Warning,
        what: "runs nested HVM, whose state is not in the image: guests it runs itself \
               would not survive the restore",
    },
    Setting {
        at: &[
            ("/b_info/altp2m", Set::NotDisabled),
            ("/b_info/type.hvm/altp2m", Set::True),
        ],
        severity: Severity::Warning,
        what: "uses alternate p2m views (altp2m), which are not in the image: the views \
               its tools made are gone after the restore",
    },
    Setting {
        at: &[("/b_info/disable_migrate", Set::True)],
        severity: Severity::Warning,
        what: "is marked nomigrate in its config: libxl saves it anyway, and so does \
               xenmaint (action \"shutdown\" to honour it)",
    },
];

/// What a save would do to this config's devices and settings, one message
/// per setting.
pub fn unsaveable(config: &Value) -> Vec<(Severity, &'static str)> {
    SETTINGS
        .iter()
        .filter(|s| {
            s.at.iter()
                .any(|(at, set)| config.pointer(at).is_some_and(|v| set.holds(v)))
        })
        .map(|s| (s.severity, s.what))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn found(config: Value) -> Vec<(Severity, &'static str)> {
        unsaveable(&config)
    }

    #[test]
    fn a_plain_guest_has_nothing() {
        let plain = json!({
            "c_info": {"type": "pv", "name": "g1"},
            "b_info": {"max_memkb": 131072, "altp2m": "disabled", "disable_migrate": "False",
                       "type.pv": {"kernel": "/boot/vmlinuz"}},
            "disks": [{"pdev_path": "/var/lib/xen-guests/g1.img"}],
            "nics": [{"mac": "00:16:3e:58:4d:21"}],
            "pcidevs": [],
        });
        assert_eq!(found(plain), []);
    }

    #[test]
    fn each_setting_is_found_at_each_place_libxl_keeps_it() {
        for s in SETTINGS {
            for (at, set) in s.at {
                let parts: Vec<&str> = at.split('/').skip(1).collect();
                let mut config = json!({});
                let mut here = &mut config;
                for p in &parts {
                    here = &mut here[*p];
                }
                *here = match set {
                    Set::NonEmpty => json!([{"x": 1}]),
                    Set::NotDisabled => json!("mixed"),
                    Set::True => json!("True"),
                };
                assert_eq!(found(config), [(s.severity, s.what)], "{at}");
            }
        }
    }

    #[test]
    fn unset_values_are_not_found() {
        let off = json!({
            "pcidevs": [], "vtpms": [], "p9s": [],
            "b_info": {"vnuma_nodes": [], "nested_hvm": "False", "altp2m": "disabled",
                       "disable_migrate": "False", "type.hvm": {"nested_hvm": "False", "altp2m": "False"}},
        });
        assert_eq!(found(off), []);
    }

    #[test]
    fn both_places_of_a_setting_give_one_message() {
        let both = json!({"b_info": {"nested_hvm": "True", "type.hvm": {"nested_hvm": "True"}}});
        assert_eq!(found(both).len(), 1);
    }

    #[test]
    fn errors_are_what_cannot_be_saved_at_all() {
        let config = json!({"pcidevs": [{"bus": 3}], "b_info": {"vnuma_nodes": [{"memkb": 1}]}, "p9s": [{"tag": "share"}]});
        let f = found(config);
        assert_eq!(f.iter().filter(|(s, _)| *s == Severity::Error).count(), 2);
        assert!(f
            .iter()
            .any(|(s, w)| *s == Severity::Warning && w.contains("9pfs")));
    }
}
