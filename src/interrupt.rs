//! SIGINT and SIGTERM: a step in progress (a save, a restore) is never cut
//! half way by the first one, because a save cut short leaves its guest
//! suspended. The first signal asks the run to stop starting new steps; the
//! step in progress finishes and the run stops at a consistent point of its
//! journal, where `resume` or `rollback` pick it up. A second signal ends
//! the process at once (the journal still tells `resume` what was under way).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static NEVER: AtomicBool = AtomicBool::new(false);

/// Installs the handlers (once per process).
pub fn install() -> std::io::Result<()> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it runs first: with the flag already set by
        // an earlier signal, this one exits at once.
        signal_hook::flag::register_conditional_shutdown(
            sig,
            crate::exit::INTERRUPTED,
            flag.clone(),
        )?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
}

/// The flag the first signal sets (never set before `install`).
pub fn flag() -> &'static AtomicBool {
    FLAG.get().map_or(&NEVER, |f| f.as_ref())
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}
