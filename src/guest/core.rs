//! `dump_core`: a domain kept after a crash or a shutdown, its memory
//! written to an ELF core (as `xl dump-core` does) that is durable before
//! the domain is destroyed.

use std::fs::File;
use std::path::Path;

use super::OpError;
use crate::domain::{DomId, DomainState};
use crate::durable;
use crate::toolstack::Toolstack;

/// Writes `domid`'s core to `path` (a new file, never over another), makes
/// it durable, then destroys the domain. Only for a domain kept stopped
/// (shut down or crashed): one that runs is saved, not dumped.
pub fn dump_core(ts: &dyn Toolstack, domid: DomId, path: &Path) -> Result<(), OpError> {
    let info = ts.resolve(&crate::domain::DomainRef::Id(domid))?;
    if info.domid == 0 {
        return Err(OpError::Dom0("dump"));
    }
    // Shut down for a save is another tool's (xl save, a migration), not kept.
    let suspended = info.shutdown_reason == Some(crate::domain::ShutdownReason::Suspend);
    if suspended || !matches!(info.state, DomainState::Shutdown | DomainState::Crashed) {
        return Err(OpError::NotKept {
            name: info.name,
            state: info.state,
        });
    }
    let tmp = durable::tmp_path(path);
    if path.exists() {
        return Err(durable::DurableError::Exists { path: path.into() }.into());
    }
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = ts.core_dump(domid, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let file = File::open(&tmp).map_err(|source| durable::DurableError::Io {
        path: tmp.clone(),
        source,
    })?;
    durable::sync(&file, &tmp)?;
    drop(file);
    durable::publish_new(&tmp, path)?;
    ts.destroy(domid)?;
    Ok(())
}
