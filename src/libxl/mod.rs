//! The safe wrapper over libxl (xenlight-sys). Everything unsafe about libxl
//! is contained here; the rest of xenmaint sees `Libxl` as a `Toolstack`.

mod context;
mod inventory;
mod lifecycle;
mod logger;
mod xenstore;

use std::ffi::CStr;

pub use context::Context;
pub use inventory::Libxl;
pub use xenstore::Xenstore;

use std::ffi::c_char;

use xenlight_sys as sys;

/// Copies a C string libxl handed us.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for this call.
pub(crate) unsafe fn opt_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// libxl's name for an error code, e.g. "ERROR_DOMAIN_NOTFOUND (-21)".
pub fn error_name(code: i32) -> String {
    // SAFETY: libxl_error_to_string only looks the value up in a static table
    // and returns NULL or a static NUL-terminated string.
    let name = unsafe { sys::libxl_error_to_string(code) };
    if name.is_null() {
        format!("error {code}")
    } else {
        // SAFETY: non-NULL results point into libxl's static string table.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        format!("ERROR_{} ({code})", name.to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_names_come_from_libxl() {
        assert_eq!(
            super::error_name(xenlight_sys::ERROR_DOMAIN_NOTFOUND),
            "ERROR_DOMAIN_NOTFOUND (-21)"
        );
        assert_eq!(super::error_name(-9999), "error -9999");
    }
}
