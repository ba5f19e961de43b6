//! xenstore access for the few things libxl has no public call for: what a
//! guest publishes about itself under its `attr/` keys, and the maintenance
//! notice xenmaint writes into a guest's own area for it to read.

use std::ffi::{c_char, c_void, CStr, CString};

use xenlight_sys as sys;

/// A connection to xenstored, closed on drop.
pub struct Xenstore {
    handle: *mut sys::xs_handle,
}

/// Keys under one directory are bounded: a guest writes its own `attr/`
/// tree and may make it as large as xenstored's quota allows.
const MAX_ENTRIES: usize = 256;

impl Xenstore {
    /// `None` when xenstored cannot be reached (not a dom0, or not running).
    pub fn open() -> Option<Xenstore> {
        // SAFETY: xs_open takes flags only; it returns NULL or a handle we own.
        let handle = unsafe { sys::xs_open(sys::XS_OPEN_READONLY.into()) };
        (!handle.is_null()).then_some(Xenstore { handle })
    }

    /// A connection that may write (dom0's toolstack may write anywhere).
    pub fn open_writable() -> Option<Xenstore> {
        // SAFETY: as in open, with no flags: a read-write connection.
        let handle = unsafe { sys::xs_open(0) };
        (!handle.is_null()).then_some(Xenstore { handle })
    }

    /// Writes `value` at `path` (made, with its parents, if missing: a new
    /// node takes its parent's permissions, so one under a guest's home is
    /// readable by that guest and writable only by dom0).
    pub fn write(&self, path: &str, value: &str) -> std::io::Result<()> {
        let path = CString::new(path).map_err(std::io::Error::other)?;
        let len = u32::try_from(value.len()).map_err(std::io::Error::other)?;
        // SAFETY: handle is open; path is NUL-terminated; value is len
        // readable bytes, copied by libxenstore before it returns.
        let ok = unsafe {
            sys::xs_write(
                self.handle,
                sys::XBT_NULL,
                path.as_ptr(),
                value.as_ptr() as *const c_void,
                len,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The value at `path`, if it exists and is readable.
    pub fn read(&self, path: &str) -> Option<String> {
        let path = CString::new(path).ok()?;
        let mut len: u32 = 0;
        // SAFETY: handle is open; path is NUL-terminated; libxenstore returns
        // NULL or a malloc'd buffer of `len` bytes (plus a NUL) that we free.
        let p = unsafe { sys::xs_read(self.handle, sys::XBT_NULL, path.as_ptr(), &mut len) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p points to len readable bytes, per xs_read's contract.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) };
        let value = String::from_utf8_lossy(bytes).into_owned();
        // SAFETY: p was malloc'd by libxenstore and is not used after this.
        unsafe { libc::free(p) };
        Some(value)
    }

    /// The names of the entries under `path` (at most MAX_ENTRIES).
    pub fn directory(&self, path: &str) -> Vec<String> {
        let Ok(path) = CString::new(path) else {
            return Vec::new();
        };
        let mut num: u32 = 0;
        // SAFETY: as in read; the result is one malloc'd block holding the
        // pointer array and the strings, freed with a single free().
        let list =
            unsafe { sys::xs_directory(self.handle, sys::XBT_NULL, path.as_ptr(), &mut num) };
        if list.is_null() {
            return Vec::new();
        }
        let names = (0..num as usize)
            .take(MAX_ENTRIES)
            .filter_map(|i| {
                // SAFETY: list holds num pointers to NUL-terminated strings.
                let s: *mut c_char = unsafe { *list.add(i) };
                // SAFETY: each entry is a NUL-terminated string in the block.
                (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
            })
            .collect();
        // SAFETY: one block, allocated by libxenstore, not used after this.
        unsafe { libc::free(list as *mut c_void) };
        names
    }

    /// Every (relative key, value) under `root`, depth-first, bounded in
    /// depth and count.
    pub fn tree(&self, root: &str, max_depth: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((rel, depth)) = stack.pop() {
            if out.len() >= MAX_ENTRIES {
                break;
            }
            let full = if rel.is_empty() {
                root.to_owned()
            } else {
                format!("{root}/{rel}")
            };
            if !rel.is_empty() {
                if let Some(v) = self.read(&full).filter(|v| !v.is_empty()) {
                    out.push((rel.clone(), v));
                }
            }
            if depth < max_depth {
                for name in self.directory(&full) {
                    let child = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((child, depth + 1));
                }
            }
        }
        out
    }
}

impl Drop for Xenstore {
    fn drop(&mut self) {
        // SAFETY: handle came from xs_open and is closed exactly once.
        unsafe { sys::xs_close(self.handle) };
    }
}
