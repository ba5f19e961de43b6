//! Finds libxenlight and xentoollog with pkg-config, then takes the Rust
//! bindings from bindgen (when libclang can be loaded) or from the copy
//! pre-generated for this libxl series under `vendor/` (a dom0 rarely has
//! clang). A libxl series with no vendored bindings is refused: the safe
//! wrapper is written against those exact layouts, one set per series (the
//! structs' sizes and offsets differ between series).
//!
//! The series is passed on as `cfg(libxl_series = "4.20")`, to dependants as
//! DEP_XENLIGHT_SERIES, and to this crate's tests as XENLIGHT_SYS_SERIES.
//! With XENLIGHT_SYS_CHECK_VENDOR set, a build whose bindgen output differs
//! from the vendored copy fails: how CI checks a series whose headers are
//! unpacked beside the installed ones (pkg-config's PKG_CONFIG_SYSROOT_DIR
//! and PKG_CONFIG_LIBDIR pointed at them).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// libxl series (major.minor) this crate has bindings for.
const SUPPORTED: &[&str] = &["4.17", "4.20"];

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=XENLIGHT_SYS_USE_VENDOR");
    println!("cargo:rerun-if-env-changed=XENLIGHT_SYS_WRITE_VENDOR");
    println!("cargo:rerun-if-env-changed=XENLIGHT_SYS_CHECK_VENDOR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_SYSROOT_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    println!("cargo::rustc-check-cfg=cfg(libxl_have, values(any()))");
    let series_values: Vec<String> = SUPPORTED.iter().map(|s| format!("\"{s}\"")).collect();
    println!(
        "cargo::rustc-check-cfg=cfg(libxl_series, values({}))",
        series_values.join(", ")
    );
    println!("cargo::rustc-check-cfg=cfg(xenlight_sys_generated)");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let vendor_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor");

    // docs.rs-style builds: no library to link, vendored bindings only.
    if env::var_os("DOCS_RS").is_some() {
        emit_series(SUPPORTED[0]);
        copy_vendor(&vendor_root, SUPPORTED[0], &out);
        return;
    }

    let xenlight = pkg_config::Config::new()
        .atleast_version("4.2")
        .probe("xenlight")
        .unwrap_or_else(|e| {
            fail(&format!(
                "libxenlight not found by pkg-config ({e}); on Debian install libxen-dev"
            ))
        });
    // xentoollog is only a private requirement of xenlight.pc, yet we call
    // its functions directly, so link it explicitly.
    let toollog = pkg_config::probe_library("xentoollog").unwrap_or_else(|e| {
        fail(&format!(
            "xentoollog not found by pkg-config ({e}); on Debian install libxen-dev"
        ))
    });

    // xenstore, likewise: read directly for what guests publish.
    let xenstore = pkg_config::probe_library("xenstore").unwrap_or_else(|e| {
        fail(&format!(
            "xenstore not found by pkg-config ({e}); on Debian install libxen-dev"
        ))
    });

    let series = series_of(&xenlight.version);
    let write_vendor = env::var_os("XENLIGHT_SYS_WRITE_VENDOR").is_some();
    if !SUPPORTED.contains(&series.as_str()) && !write_vendor {
        fail(&format!(
            "libxl {} is not supported: xenlight-sys has bindings for libxl {} only. \
             Generate and review bindings for {series} with scripts/regenerate-bindings, \
             then add \"{series}\" to SUPPORTED in xen-sys/build.rs",
            xenlight.version,
            SUPPORTED.join(", ")
        ));
    }

    emit_series(&series);

    let mut include_paths = xenlight.include_paths.clone();
    include_paths.extend(toollog.include_paths.iter().cloned());
    include_paths.extend(xenstore.include_paths.iter().cloned());
    if include_paths.is_empty() {
        include_paths.push(PathBuf::from("/usr/include"));
    }
    emit_have_cfgs(&include_paths);

    let force_vendor = env::var_os("XENLIGHT_SYS_USE_VENDOR").is_some();
    if !force_vendor && clang_sys::load().is_ok() {
        let generated = generate(&include_paths);
        let path = out.join("bindings.rs");
        fs::write(&path, &generated).expect("write generated bindings");
        // The drift test compares these with the vendored copy.
        println!("cargo:rustc-env=XENLIGHT_SYS_GENERATED={}", path.display());
        println!("cargo:rustc-cfg=xenlight_sys_generated");
        if write_vendor {
            let dir = vendor_root.join(format!("xenlight-{series}"));
            fs::create_dir_all(&dir).expect("create vendor directory");
            fs::write(dir.join("bindings.rs"), &generated).expect("write vendored bindings");
        }
        if env::var_os("XENLIGHT_SYS_CHECK_VENDOR").is_some() {
            let vendored = vendor_root.join(format!("xenlight-{series}/bindings.rs"));
            if fs::read_to_string(&vendored).ok().as_deref() != Some(generated.as_str()) {
                fail(&format!(
                    "{} differs from what bindgen makes of the libxl {series} headers found; \
                     run scripts/regenerate-bindings against them and review",
                    vendored.display()
                ));
            }
        }
    } else if write_vendor || env::var_os("XENLIGHT_SYS_CHECK_VENDOR").is_some() {
        fail("XENLIGHT_SYS_WRITE_VENDOR and XENLIGHT_SYS_CHECK_VENDOR need libclang (Debian: libclang-dev)");
    } else {
        copy_vendor(&vendor_root, &series, &out);
    }
}

/// The series, for this crate's code and tests and for dependants.
fn emit_series(series: &str) {
    println!("cargo:rustc-cfg=libxl_series=\"{series}\"");
    println!("cargo:rustc-env=XENLIGHT_SYS_SERIES={series}");
    println!("cargo:series={series}");
}

/// "4.17.0" -> "4.17".
fn series_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

fn fail(msg: &str) -> ! {
    eprintln!("error: xenlight-sys: {msg}");
    panic!("xenlight-sys: {msg}");
}

fn copy_vendor(vendor_root: &Path, series: &str, out: &Path) {
    let src = vendor_root.join(format!("xenlight-{series}/bindings.rs"));
    println!("cargo:rerun-if-changed={}", src.display());
    let text = fs::read_to_string(&src).unwrap_or_else(|e| {
        fail(&format!(
            "no vendored bindings for libxl {series} at {} ({e})",
            src.display()
        ))
    });
    fs::write(out.join("bindings.rs"), text).expect("write bindings to OUT_DIR");
}

/// The one bindgen configuration: build.rs, scripts/regenerate-bindings and
/// the drift test all go through here.
fn generate(include_paths: &[PathBuf]) -> String {
    let mut builder = bindgen::Builder::default()
        .header(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("wrapper.h")
                .to_string_lossy(),
        )
        .allowlist_function("libxl_.*|xtl_.*|vsnprintf|xs_(open|close|directory|read|write)")
        .allowlist_type("libxl_.*|xentoollog_.*|xs_transaction_t")
        .allowlist_var("LIBXL_.*|ERROR_.*|XTL_.*|XBT_NULL|XS_OPEN_READONLY")
        // C library types the libxl headers pull in and xenmaint never looks inside: their
        // insides are the C library's (glibc 2.41 of Debian 13 changed FILE's fields, and
        // which typedef names va_list), and would make the bindings of one libxl series
        // differ by the release they are generated on.
        .opaque_type("_IO_FILE")
        .blocklist_type("va_list|__gnuc_va_list")
        .prepend_enum_name(false)
        .derive_default(true)
        .generate_comments(false)
        .layout_tests(true);
    for p in include_paths {
        builder = builder.clang_arg(format!("-I{}", p.display()));
    }
    builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on the libxl headers: {e}")))
        .to_string()
}

/// `#define LIBXL_HAVE_FOO 1` in libxl.h becomes `cfg(libxl_have = "foo")`
/// here, and is passed to dependants as DEP_XENLIGHT_HAVE (comma list). The
/// macros are the C preprocessor's (`cc -E -dM` of wrapper.h): a scan of the
/// header's text would take those under `#if` for other architectures too.
fn emit_have_cfgs(include_paths: &[PathBuf]) {
    let header = include_paths
        .iter()
        .map(|p| p.join("libxl.h"))
        .find(|p| p.exists())
        .unwrap_or_else(|| fail("libxl.h not found; on Debian install libxen-dev"));
    println!("cargo:rerun-if-changed={}", header.display());
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = std::process::Command::new(&cc);
    cmd.args(["-E", "-dM"]);
    for p in include_paths {
        cmd.arg(format!("-I{}", p.display()));
    }
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("wrapper.h"));
    let output = cmd.output().unwrap_or_else(|e| {
        fail(&format!(
            "cannot run the C preprocessor {cc} ({e}); on Debian install gcc"
        ))
    });
    if !output.status.success() {
        fail(&format!(
            "the C preprocessor {cc} failed on wrapper.h: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut haves: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("#define"), Some(name)) => name.strip_prefix("LIBXL_HAVE_"),
                _ => None,
            }
        })
        .map(str::to_ascii_lowercase)
        .collect();
    haves.sort();
    haves.dedup();
    for h in &haves {
        println!("cargo:rustc-cfg=libxl_have=\"{h}\"");
    }
    println!("cargo:have={}", haves.join(","));
}
