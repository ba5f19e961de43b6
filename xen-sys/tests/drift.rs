//! The vendored bindings must be exactly what bindgen makes of the installed
//! libxl headers; otherwise a dom0 without libclang would build against
//! layouts that are not its library's.

#[test]
fn vendored_bindings_match_installed_headers() {
    let Some(generated) = option_env!("XENLIGHT_SYS_GENERATED") else {
        panic!(
            "build.rs could not run bindgen (libclang missing, or XENLIGHT_SYS_USE_VENDOR set), \
             so drift cannot be checked: install libclang-dev"
        );
    };
    let generated = std::fs::read_to_string(generated).expect("read generated bindings");
    let vendored_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vendor/xenlight-4.17/bindings.rs"
    );
    let vendored = std::fs::read_to_string(vendored_path).expect("read vendored bindings");
    if generated != vendored {
        let line = generated
            .lines()
            .zip(vendored.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| generated.lines().count().min(vendored.lines().count()))
            + 1;
        panic!(
            "vendor/xenlight-4.17/bindings.rs differs from the installed headers' bindings \
             (first difference at line {line}); run scripts/regenerate-bindings and review"
        );
    }
}

#[test]
// The cfg values are compile-time constants: they are what is under test.
#[allow(clippy::assertions_on_constants)]
fn feature_macros_become_cfgs() {
    // Declared by every libxl 4.17 header set; a broken libxl.h scan drops it.
    assert!(cfg!(libxl_have = "sigchld_owner_selective_reap"));
    assert!(!cfg!(libxl_have = "no_such_feature"));
}
