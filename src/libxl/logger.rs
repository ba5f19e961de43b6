//! A xentoollog logger that forwards libxl's messages to the `log` crate.
//!
//! libxl calls it from any of its threads (and relays libxl-save-helper's
//! messages through it), so it holds no state of its own. Panics never cross
//! back into C.

use std::ffi::{c_char, c_int, c_ulong, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use xenlight_sys as sys;

/// Owned logger; its address is handed to libxl, so it lives in a Box that
/// outlives the context (see `Context`'s field order).
#[repr(C)]
pub(crate) struct Logger {
    // Must stay the first field: libxl sees a `xentoollog_logger *`.
    vtable: sys::xentoollog_logger,
}

/// Longest message kept; libxl's are a line or two.
const MESSAGE_MAX: usize = 2048;

impl Logger {
    pub(crate) fn new() -> Box<Logger> {
        Box::new(Logger {
            vtable: sys::xentoollog_logger {
                vmessage: Some(vmessage),
                progress: Some(progress),
                destroy: Some(destroy),
            },
        })
    }

    pub(crate) fn as_ptr(&mut self) -> *mut sys::xentoollog_logger {
        &mut self.vtable
    }
}

/// xentoollog levels as `log` levels. libxl is chatty at DEBUG/VERBOSE, so
/// those only show with -vv.
pub(crate) fn level_of(level: sys::xentoollog_level) -> log::Level {
    match level {
        sys::XTL_CRITICAL | sys::XTL_ERROR => log::Level::Error,
        sys::XTL_WARN => log::Level::Warn,
        sys::XTL_NOTICE | sys::XTL_INFO | sys::XTL_PROGRESS => log::Level::Info,
        sys::XTL_DETAIL => log::Level::Debug,
        _ => log::Level::Trace,
    }
}

fn emit(level: log::Level, context: *const c_char, msg: std::fmt::Arguments<'_>) {
    // SAFETY: libxl passes NULL or a NUL-terminated string valid for the call.
    let ctx = unsafe { super::opt_string(context) }.unwrap_or_else(|| "libxl".into());
    let target = format!("xen::{ctx}");
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(&target)
            .args(msg)
            .build(),
    );
}

unsafe extern "C" fn vmessage(
    _logger: *mut sys::xentoollog_logger,
    level: sys::xentoollog_level,
    errnoval: c_int,
    context: *const c_char,
    format: *const c_char,
    al: *mut sys::__va_list_tag,
) {
    let level = level_of(level);
    if level > log::max_level() || format.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let mut buf = [0u8; MESSAGE_MAX];
        // SAFETY: buf is writable for MESSAGE_MAX bytes and vsnprintf writes at
        // most that many including the NUL; format and al are the printf pair
        // libxl handed us, consumed exactly once here (no va_copy needed).
        let n =
            unsafe { sys::vsnprintf(buf.as_mut_ptr().cast(), MESSAGE_MAX as c_ulong, format, al) };
        if n < 0 {
            return;
        }
        let text = CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        if errnoval >= 0 {
            let err = std::io::Error::from_raw_os_error(errnoval);
            emit(level, context, format_args!("{text}: {err}"));
        } else {
            emit(level, context, format_args!("{text}"));
        }
    }));
}

unsafe extern "C" fn progress(
    _logger: *mut sys::xentoollog_logger,
    context: *const c_char,
    doing_what: *const c_char,
    percent: c_int,
    done: c_ulong,
    total: c_ulong,
) {
    if log::Level::Info > log::max_level() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libxl passes NULL or a NUL-terminated string valid for the call.
        let what = unsafe { super::opt_string(doing_what) }.unwrap_or_default();
        emit(
            log::Level::Info,
            context,
            format_args!("{what}: {percent}% ({done}/{total})"),
        );
    }));
}

/// Only `xtl_logger_destroy` calls this, and nothing does for our logger:
/// its Box is dropped by `Context`.
unsafe extern "C" fn destroy(_logger: *mut sys::xentoollog_logger) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_in_order() {
        assert_eq!(level_of(sys::XTL_CRITICAL), log::Level::Error);
        assert_eq!(level_of(sys::XTL_ERROR), log::Level::Error);
        assert_eq!(level_of(sys::XTL_WARN), log::Level::Warn);
        assert_eq!(level_of(sys::XTL_PROGRESS), log::Level::Info);
        assert_eq!(level_of(sys::XTL_DETAIL), log::Level::Debug);
        assert_eq!(level_of(sys::XTL_DEBUG), log::Level::Trace);
    }

    /// Captures what reaches the `log` crate, for the tests below.
    struct Capture(std::sync::Mutex<Vec<(log::Level, String, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((r.level(), r.target().to_owned(), r.args().to_string()));
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

    fn captured(needle: &str) -> Vec<(log::Level, String, String)> {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Trace);
        CAPTURE
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, m)| m.contains(needle))
            .cloned()
            .collect()
    }

    #[test]
    fn printf_messages_are_formatted_through_the_real_xentoollog() {
        captured("");
        let mut logger = Logger::new();
        // SAFETY: xtl_log is libxentoollog's own variadic entry point; the
        // logger is live, the strings are NUL-terminated, and the variadic
        // arguments match the format (%s: C string, %d: int).
        unsafe {
            sys::xtl_log(
                logger.as_ptr(),
                sys::XTL_ERROR,
                libc::ENOENT,
                c"libxl".as_ptr(),
                c"domain %s has %d vifs".as_ptr(),
                c"web-1".as_ptr(),
                3 as c_int,
            );
        }
        let got = captured("domain web-1 has 3 vifs");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, log::Level::Error);
        assert_eq!(got[0].1, "xen::libxl");
        assert!(got[0]
            .2
            .ends_with(&std::io::Error::from_raw_os_error(libc::ENOENT).to_string()));
    }

    #[test]
    fn long_messages_are_truncated_not_overrun() {
        captured("");
        let mut logger = Logger::new();
        let long = std::ffi::CString::new("x".repeat(10 * MESSAGE_MAX)).unwrap();
        // SAFETY: as above; %s takes the NUL-terminated CString.
        unsafe {
            sys::xtl_log(
                logger.as_ptr(),
                sys::XTL_WARN,
                -1,
                std::ptr::null(),
                c"long:%s".as_ptr(),
                long.as_ptr(),
            );
        }
        let got = captured("long:xxx");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, "xen::libxl", "NULL context defaults to libxl");
        assert_eq!(got[0].2.len(), MESSAGE_MAX - 1);
    }

    #[test]
    fn progress_is_forwarded() {
        captured("");
        let mut logger = Logger::new();
        // SAFETY: live logger, NUL-terminated strings.
        unsafe {
            sys::xtl_progress(
                logger.as_ptr(),
                c"xc".as_ptr(),
                c"saving memory".as_ptr(),
                50,
                100,
            );
        }
        let got = captured("saving memory");
        assert!(!got.is_empty());
        assert_eq!(got.last().unwrap().1, "xen::xc");
        assert!(got.last().unwrap().2.contains("50/100"), "{got:?}");
    }
}
