//! The simulated host's boot loader and its reboot: the boot loader's state
//! is part of the host (so a persistent host keeps it between commands), and
//! a reboot runs the build of the entry the boot loader picks.

use crate::boot::{BootEntry, BootLoader, Result};

use super::{Sim, SimHost};

/// The simulated host's boot loader (`Sim::boot_loader`).
pub struct SimBoot<'a> {
    sim: &'a Sim,
}

impl SimHost {
    /// Fills in what a description may leave out: the first entry is the
    /// default, and it boots the build that runs now.
    pub(super) fn settle_boot(&mut self) {
        if self.boot.saved_entry.is_none() {
            self.boot.saved_entry = self.boot.entries.first().map(|e| e.id.clone());
        }
        if let (Some(entry), Some(build)) = (&self.boot.saved_entry, &self.hypervisor.build_id) {
            if !self.boot.build_ids.contains_key(entry) {
                self.boot.build_ids.insert(entry.clone(), build.clone());
            }
        }
        if !self
            .builds
            .iter()
            .any(|b| b.build_id == self.hypervisor.build_id)
        {
            self.builds.push(self.hypervisor.clone());
        }
    }
}

impl Sim {
    pub fn boot_loader(&self) -> SimBoot<'_> {
        SimBoot { sim: self }
    }

    /// The host restarts: every guest is gone, and the hypervisor is the
    /// build of the entry the boot loader picks (the one-shot entry once,
    /// else the default), or the one before when that build is unknown.
    /// Returns the entry booted.
    pub fn restart(&self) -> Option<String> {
        let mut h = self.lock();
        h.domains.retain(|d| d.detail.info.domid == 0);
        h.reindex();
        let entry = h.boot.boot();
        let build = entry
            .as_ref()
            .and_then(|e| h.boot.build_ids.get(e))
            .and_then(|id| h.builds.iter().find(|b| b.build_id.as_ref() == Some(id)))
            .cloned();
        if let Some(mut build) = build {
            // The command line is the boot entry's, the same for every build.
            build.commandline = std::mem::take(&mut h.hypervisor.commandline);
            h.hypervisor = build;
        }
        entry
    }
}

impl BootLoader for SimBoot<'_> {
    fn entries(&self) -> Result<Vec<BootEntry>> {
        Ok(self.sim.read().boot.entries.clone())
    }

    fn default_entry(&self) -> Result<Option<String>> {
        Ok(self.sim.read().boot.saved_entry.clone())
    }

    fn next_entry(&self) -> Result<Option<String>> {
        Ok(self.sim.read().boot.next_entry.clone())
    }

    fn boot_once(&self, id: &str) -> Result<()> {
        self.sim.lock().boot.boot_once(id)
    }

    fn commit(&self, id: &str) -> Result<()> {
        self.sim.lock().boot.commit(id)
    }

    fn keep_entry(&self, hypervisor: &str, copy: &str, id: &str, title: &str) -> Result<()> {
        self.sim.lock().boot.keep_entry(hypervisor, copy, id, title)
    }

    fn build_id_of(&self, id: &str) -> Result<Option<String>> {
        self.sim.read().boot.build_id_of(id)
    }
}
