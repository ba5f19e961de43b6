//! An open libxl context: the handle every libxl call goes through.

use std::path::Path;
use std::ptr::{self, NonNull};

use xenlight_sys as sys;

use super::logger::Logger;
use crate::toolstack::{Result, ToolstackError};

/// The device libxl opens to issue hypercalls; only a Xen dom0 has it.
const PRIVCMD: &str = "/dev/xen/privcmd";
/// Lists "control_d" in the control domain (xenfs).
const CAPABILITIES: &str = "/proc/xen/capabilities";

/// An open libxl context with its logger and child-process hooks.
///
/// Field order matters: `Drop` frees the ctx first, then the hooks and the
/// logger it points at are dropped.
pub struct Context {
    ctx: NonNull<sys::libxl_ctx>,
    _hooks: Box<sys::libxl_childproc_hooks>,
    _logger: Box<Logger>,
}

// SAFETY: libxl_ctx is internally locked (a recursive mutex) and documented as
// usable from several threads at once; the logger and hooks it points at are
// immutable after setup and the logger keeps no state.
unsafe impl Send for Context {}
// SAFETY: as for Send: every libxl entry point takes the ctx lock itself.
unsafe impl Sync for Context {}

impl Context {
    /// Opens libxl on this host, or says clearly why this machine cannot.
    pub fn new() -> Result<Context> {
        check_dom0(Path::new(PRIVCMD), Path::new(CAPABILITIES))?;
        Context::open()
    }

    /// libxl_ctx_alloc with a real logger and our SIGCHLD mode, without the
    /// dom0 pre-checks (tests call it to prove libxl fails cleanly off Xen).
    pub(crate) fn open() -> Result<Context> {
        let mut logger = Logger::new();
        let mut raw: *mut sys::libxl_ctx = ptr::null_mut();
        // SAFETY: raw is a valid out-pointer; the logger is non-NULL (libxl
        // crashes on a NULL one) and boxed, so its address stays valid until
        // after libxl_ctx_free in Drop.
        let rc = unsafe {
            sys::libxl_ctx_alloc(&mut raw, sys::LIBXL_VERSION as i32, 0, logger.as_ptr())
        };
        let Some(ctx) = NonNull::new(raw).filter(|_| rc == 0) else {
            return Err(ToolstackError::NotDom0(format!(
                "libxl could not open a context ({}); is xenstored running?",
                super::error_name(rc)
            )));
        };
        // libxl reaps only its own children (save helper, hotplug scripts),
        // so std::process children of ours keep their exit status; libvirt
        // drives libxl the same way.
        let hooks = Box::new(sys::libxl_childproc_hooks {
            chldowner: sys::libxl_sigchld_owner_libxl_always_selective_reap,
            ..Default::default()
        });
        // SAFETY: ctx is freshly allocated and has no children yet (setmode's
        // precondition); hooks is boxed and outlives the ctx (field order).
        unsafe { sys::libxl_childproc_setmode(ctx.as_ptr(), &*hooks, ptr::null_mut()) };
        Ok(Context {
            ctx,
            _hooks: hooks,
            _logger: logger,
        })
    }

    /// The raw handle, for the wrapper's own calls.
    pub(crate) fn as_ptr(&self) -> *mut sys::libxl_ctx {
        self.ctx.as_ptr()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: ctx came from libxl_ctx_alloc and is freed exactly once; all
        // our calls are synchronous, so no async op is in flight (which
        // libxl_ctx_free asserts).
        unsafe { sys::libxl_ctx_free(self.ctx.as_ptr()) };
    }
}

/// Cheap checks that turn "not a dom0" into one clear line before libxl is
/// asked (libxl's own failure off Xen is a screenful of xencall errors).
pub(crate) fn check_dom0(privcmd: &Path, capabilities: &Path) -> Result<()> {
    if !privcmd.exists() {
        return Err(ToolstackError::NotDom0(format!(
            "{} missing (not running under Xen, or the xen_privcmd module is not loaded)",
            privcmd.display()
        )));
    }
    if let Ok(caps) = std::fs::read_to_string(capabilities) {
        if !caps.split_whitespace().any(|c| c == "control_d") {
            return Err(ToolstackError::NotDom0(format!(
                "{} lacks control_d: this is a Xen guest, not the control domain",
                capabilities.display()
            )));
        }
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(privcmd)
    {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(ToolstackError::PermissionDenied {
                path: privcmd.display().to_string(),
            })
        }
        // Other open errors are left for libxl to report in its own words.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_privcmd_is_not_dom0() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_dom0(&dir.path().join("privcmd"), &dir.path().join("caps")).unwrap_err();
        assert!(matches!(err, ToolstackError::NotDom0(_)));
        assert!(err.to_string().starts_with("not a Xen dom0: "), "{err}");
        assert!(err.to_string().contains("privcmd missing"), "{err}");
    }

    #[test]
    fn a_domu_is_not_dom0() {
        let dir = tempfile::tempdir().unwrap();
        let privcmd = dir.path().join("privcmd");
        std::fs::write(&privcmd, "").unwrap();
        let caps = dir.path().join("caps");
        std::fs::write(&caps, "\n").unwrap();
        let err = check_dom0(&privcmd, &caps).unwrap_err();
        assert!(err.to_string().contains("not the control domain"), "{err}");
        std::fs::write(&caps, "control_d\n").unwrap();
        check_dom0(&privcmd, &caps).unwrap();
    }

    #[test]
    fn context_off_dom0_is_a_typed_error() {
        if Path::new(PRIVCMD).exists() {
            // On a real dom0 (the nested host) the context must open.
            Context::new().expect("libxl context on a dom0");
        } else {
            let err = Context::new()
                .err()
                .expect("no Xen here, yet a context opened");
            assert!(matches!(err, ToolstackError::NotDom0(_)), "{err}");
        }
    }

    #[test]
    fn libxl_itself_fails_cleanly_off_dom0() {
        if Path::new(PRIVCMD).exists() {
            return;
        }
        // Past the pre-checks, libxl_ctx_alloc runs for real: with our logger
        // it must return an error, not crash (a NULL logger segfaults here).
        let err = Context::open().err().expect("libxl opened without Xen");
        assert!(
            err.to_string().contains("libxl could not open a context"),
            "{err}"
        );
    }
}
