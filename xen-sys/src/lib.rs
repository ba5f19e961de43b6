//! Raw FFI bindings to libxenlight (libxl) and xentoollog, Xen 4.17 and 4.20.
//!
//! Nothing here is safe or clever: the generated items are the C API as the
//! headers declare it. The `xenmaint` crate wraps them. Bindings come from
//! bindgen at build time when libclang is available, otherwise from the copy
//! in the repository's `vendor/xenlight-<series>/` for the installed series
//! (see `build.rs`), which is `cfg(libxl_series = "...")`.
//!
//! `LIBXL_HAVE_*` feature macros are exposed as `cfg(libxl_have = "...")`,
//! lower-cased without the prefix, and passed to dependants as
//! `DEP_XENLIGHT_HAVE`.

#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]
#![allow(clippy::all)]
#![allow(rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
