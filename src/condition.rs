//! What a domain is now, as far as a maintenance run goes: the plan's
//! classification of every guest, and what each condition lets a run do.
//!
//! Only a running (or blocked) guest that can answer a suspend request is
//! plainly saveable. Everything else is a blocker by default that names the
//! guest and the ways out, before anything is touched: a run that reached
//! such a guest would fail late (a paused PV guest cannot answer the
//! suspend handshake: libxl waits a minute), or its reboot would discard what
//! an administrator kept on purpose (a crashed guest kept for its core).

use serde::{Deserialize, Serialize};

use crate::domain::{DomainInfo, DomainState, DomainType, ShutdownReason};

/// The suffixes xl gives a domain's name while it is migrated
/// (`xl migrate`: the sender is renamed NAME--migratory, the receiver is
/// built as NAME--incoming until the stream is in).
pub const MIGRATION_SUFFIXES: [&str; 2] = ["--incoming", "--migratory"];

/// A domain's condition when it is planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Running or blocked, and (PV/PVH) advertising suspend support.
    #[default]
    Saveable,
    /// Paused by hand (`xl pause`): it can answer neither a suspend nor a
    /// shutdown request.
    Paused,
    /// Shut down and kept (`on_poweroff`/`on_reboot = "preserve"`, or no
    /// toolstack daemon reaped it): xl's `s`.
    Preserved,
    /// Crashed and kept (`on_crash = "preserve"`): xl's `c`, its memory
    /// there for a core dump.
    Crashed,
    /// Shut down for a save: another tool (`xl save`, a migration) has it.
    Suspended,
    /// Being destroyed; one stuck dying holds memory Xen has not freed.
    Dying,
    /// Being migrated in or out (its name ends in `--incoming` or
    /// `--migratory`).
    Migrating,
    /// A PV or PVH guest whose PV drivers are not connected (no
    /// `control/feature-suspend`, none of its devices connected: still
    /// booting, or a kernel without them): it would not answer a save.
    NoSuspend,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Condition::Saveable => "saveable",
            Condition::Paused => "paused",
            Condition::Preserved => "preserved",
            Condition::Crashed => "crashed",
            Condition::Suspended => "suspended",
            Condition::Dying => "dying",
            Condition::Migrating => "migrating",
            Condition::NoSuspend => "no-suspend",
        })
    }
}

impl Condition {
    /// Classifies `info`; `pv_connected`: whether its PV drivers are
    /// connected (None: not known, taken as connected).
    pub fn of(info: &DomainInfo, pv_connected: Option<bool>) -> Condition {
        let migrating = MIGRATION_SUFFIXES.iter().any(|s| info.name.ends_with(s));
        let needs_guest = matches!(info.dtype, DomainType::Pv | DomainType::Pvh);
        match info.state {
            DomainState::Dying => Condition::Dying,
            _ if migrating => Condition::Migrating,
            DomainState::Crashed => Condition::Crashed,
            DomainState::Shutdown if info.shutdown_reason == Some(ShutdownReason::Suspend) => {
                Condition::Suspended
            }
            DomainState::Shutdown if info.shutdown_reason == Some(ShutdownReason::Crash) => {
                Condition::Crashed
            }
            DomainState::Shutdown => Condition::Preserved,
            DomainState::Paused => Condition::Paused,
            DomainState::Running | DomainState::Blocked
                if needs_guest && pv_connected == Some(false) =>
            {
                Condition::NoSuspend
            }
            DomainState::Running | DomainState::Blocked => Condition::Saveable,
        }
    }

    /// Whether a clean shutdown can take this guest down (one without PV
    /// drivers for a suspend may still power off, or be forced off).
    pub fn can_shut_down(self) -> bool {
        matches!(self, Condition::Saveable | Condition::NoSuspend)
    }

    /// Why a run cannot save this guest, with the ways out (the plan's
    /// error for it); None when it is saveable.
    pub fn why_not(self) -> Option<&'static str> {
        Some(match self {
            Condition::Saveable => return None,
            Condition::Paused => {
                "is paused: a paused guest cannot answer a suspend or shutdown request, so it \
                 can be neither saved nor shut down as it is: unpause it (`xl unpause`), or give \
                 it action \"skip\" (the reboot then stops it)"
            }
            Condition::Preserved => {
                "is shut down and kept (on_poweroff/on_reboot = \"preserve\"): the reboot would \
                 discard it: destroy it (`xl destroy`) once you have what it was kept for, or \
                 give it action \"skip\" (the reboot then discards it)"
            }
            Condition::Crashed => {
                "crashed and is kept (on_crash = \"preserve\"): the reboot would discard its \
                 memory: take its core (`xl dump-core NAME FILE`) and destroy it (`xl destroy`), \
                 or give it action \"skip\" (the reboot then discards it)"
            }
            Condition::Suspended => {
                "is suspended: another tool is saving or migrating it (`xl save`, `xl \
                 migrate`): let it finish, then plan again"
            }
            Condition::Dying => {
                "is dying (being destroyed): wait for it to go (`xl list`), then plan again; one \
                 that stays dying holds memory Xen has not freed, a matter for Xen's logs \
                 (`xl dmesg`)"
            }
            Condition::Migrating => {
                "is being migrated (its name ends in --incoming or --migratory): let the \
                 migration end, then plan again"
            }
            Condition::NoSuspend => {
                "has no PV drivers connected (no control/feature-suspend, none of its devices \
                 connected: still booting, or a kernel without them), so it would not answer a \
                 save: let it finish booting, or give it action \"shutdown\" or \"skip\""
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Uuid;

    fn info(name: &str, state: DomainState, reason: Option<ShutdownReason>) -> DomainInfo {
        DomainInfo {
            domid: 5,
            name: name.into(),
            uuid: Uuid([5; 16]),
            state,
            dtype: DomainType::Pv,
            memory_kib: 1024,
            max_memory_kib: 1024,
            vcpus: 1,
            shutdown_reason: reason,
        }
    }

    #[test]
    fn each_state_has_its_condition() {
        use DomainState as S;
        let cases = [
            (info("g", S::Running, None), Some(true), Condition::Saveable),
            (info("g", S::Blocked, None), None, Condition::Saveable),
            (info("g", S::Paused, None), Some(true), Condition::Paused),
            (
                info("g", S::Shutdown, Some(ShutdownReason::Poweroff)),
                None,
                Condition::Preserved,
            ),
            (
                info("g", S::Shutdown, Some(ShutdownReason::Suspend)),
                None,
                Condition::Suspended,
            ),
            (
                info("g", S::Crashed, Some(ShutdownReason::Crash)),
                None,
                Condition::Crashed,
            ),
            (info("g", S::Dying, None), None, Condition::Dying),
            (
                info("g--incoming", S::Paused, None),
                None,
                Condition::Migrating,
            ),
            (
                info("g--migratory", S::Running, None),
                None,
                Condition::Migrating,
            ),
            (
                info("g", S::Running, None),
                Some(false),
                Condition::NoSuspend,
            ),
        ];
        for (i, advertised, want) in cases {
            assert_eq!(Condition::of(&i, advertised), want, "{i:?}");
        }
    }

    /// An HVM guest is suspended by Xen itself when it has no PV drivers:
    /// no advertised support is needed.
    #[test]
    fn an_hvm_guest_needs_no_suspend_support() {
        let mut i = info("h", DomainState::Running, None);
        i.dtype = DomainType::Hvm;
        assert_eq!(Condition::of(&i, Some(false)), Condition::Saveable);
    }

    #[test]
    fn only_a_saveable_guest_is_saved_and_one_without_drivers_may_be_shut_down() {
        use Condition as C;
        for c in [
            C::Paused,
            C::Preserved,
            C::Crashed,
            C::Suspended,
            C::Dying,
            C::Migrating,
            C::NoSuspend,
        ] {
            assert!(c.why_not().is_some(), "{c:?}");
            assert_eq!(c.can_shut_down(), c == C::NoSuspend, "{c:?}");
        }
        assert_eq!(C::Saveable.why_not(), None);
        assert!(C::Saveable.can_shut_down());
    }
}
