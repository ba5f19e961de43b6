//! Patch and reboot: keep the running hypervisor bootable, run the patch
//! command, reboot. Its own file as the phases that run the administrator's commands.

use super::{Phase, Record, Result, Run, RunState, SeqError, Sequencer};

/// Boot entries xenmaint adds to keep a hypervisor bootable.
const FALLBACK_PREFIX: &str = "xenmaint-fallback-";

impl Sequencer<'_> {
    /// Keeps the running hypervisor bootable, runs the patch command, and
    /// sets `entry` to boot once; the default stays the kept hypervisor, so
    /// a patched one that does not boot falls back to it.
    pub fn patch(&self, command: &str, entry: &str) -> Result<()> {
        let _lock = self.lock("patch")?;
        let (run, state) = self.drained_run("patch", "drained")?;
        // Before the boot entries change: refused here, nothing has.
        crate::trust::check_command("patch command", command)?;
        let release = state.hypervisor_before.release;
        let default = self.boot.default_entry()?;
        let current = match &default {
            Some(d) => self.boot.find(d)?,
            None => return Err(SeqError::NoFallback("no saved_entry".into())),
        };
        let hv_file = current
            .hypervisor
            .clone()
            .ok_or_else(|| SeqError::NoFallback(current.id.clone()))?;
        // The default may already be a copy kept by an earlier run (whose
        // patch did not take): it is the fallback as it is.
        let kept = current.id.starts_with(FALLBACK_PREFIX);
        let fallback = if kept {
            current.id.clone()
        } else {
            format!("{FALLBACK_PREFIX}xen-{release}")
        };
        let copy = format!("/boot/xen-{release}-xenmaint-fallback.gz");
        if !kept {
            self.boot.keep_entry(
                &hv_file,
                &copy,
                &fallback,
                &format!("Xen {release} (kept by xenmaint as a fallback)"),
            )?;
            self.boot.commit(&fallback)?;
        }
        run_command("patch command", command)?;
        self.boot.find(entry)?;
        self.boot.boot_once(entry)?;
        self.record(
            &run,
            Record::Patched {
                entry: entry.to_owned(),
                fallback: Some(fallback),
            },
        )
    }

    /// Records what should boot, then reboots the host with `command`.
    pub fn reboot(&self, command: &str, expect_release: Option<&str>) -> Result<()> {
        self.reboot_with(expect_release, || run_command("reboot command", command))
    }

    /// `reboot`, the host restarted by `restart` (a simulated host's own).
    pub fn reboot_with(
        &self,
        expect_release: Option<&str>,
        restart: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let lock = self.lock("reboot")?;
        // Under the lock, right before the reboot's record: the last look.
        let (run, state) = self.drained_run("reboot", "drained (and patched)")?;
        let (patched_entry, build_id_before) =
            (state.patched_entry, state.hypervisor_before.build_id);
        let patched = state.phase == Phase::Patched;
        let expect_build_id = match (&patched_entry, patched) {
            (Some(entry), true) => self.boot.build_id_of(entry)?,
            _ => None,
        };
        self.record(
            &run,
            Record::Rebooting {
                expect_not_build_id: if patched { build_id_before } else { None },
                expect_release: expect_release.map(str::to_owned),
                expect_build_id,
            },
        )?;
        drop(lock);
        nix::unistd::sync();
        restart()
    }

    /// The current run, for a step that needs it drained (or patched) and
    /// the host holding nothing it has not accounted for.
    fn drained_run(&self, verb: &'static str, want: &'static str) -> Result<(Run, RunState)> {
        let (id, run) = self.open_current()?.ok_or(SeqError::NoRun(verb))?;
        let state = run.state()?;
        if state.phase != Phase::Drained && state.phase != Phase::Patched {
            return Err(SeqError::WrongPhase {
                run: id,
                phase: state.phase,
                verb,
                want,
            });
        }
        self.refuse_strays(&state, verb)?;
        Ok((run, state))
    }
}

fn run_command(what: &'static str, command: &str) -> Result<()> {
    crate::trust::check_command(what, command)?;
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .status()
        .map_err(|e| SeqError::Command {
            what,
            command: command.to_owned(),
            detail: e.to_string(),
        })?;
    if !status.success() {
        return Err(SeqError::Command {
            what,
            command: command.to_owned(),
            detail: status.to_string(),
        });
    }
    Ok(())
}
