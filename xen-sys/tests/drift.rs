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
    let series = env!("XENLIGHT_SYS_SERIES");
    let vendored_path = format!(
        "{}/../vendor/xenlight-{series}/bindings.rs",
        env!("CARGO_MANIFEST_DIR")
    );
    let vendored = std::fs::read_to_string(&vendored_path).expect("read vendored bindings");
    if generated != vendored {
        let line = generated
            .lines()
            .zip(vendored.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| generated.lines().count().min(vendored.lines().count()))
            + 1;
        panic!(
            "{vendored_path} differs from the installed headers' bindings \
             (first difference at line {line}); run scripts/regenerate-bindings and review"
        );
    }
}

#[test]
// The cfg values are compile-time constants: they are what is under test.
#[allow(clippy::assertions_on_constants)]
fn feature_macros_become_cfgs() {
    // Declared by every libxl header set since 4.17; a broken scan drops it.
    assert!(cfg!(libxl_have = "sigchld_owner_selective_reap"));
    assert!(!cfg!(libxl_have = "no_such_feature"));
    // Defined in libxl.h only under `#if defined(__arm__) || defined(__aarch64__)`:
    // the preprocessor's macros, not the header's text.
    #[cfg(target_arch = "x86_64")]
    assert!(!cfg!(libxl_have = "no_suspend_resume"));
}

#[test]
fn the_series_is_the_one_built_against() {
    let series = env!("XENLIGHT_SYS_SERIES");
    assert!(["4.17", "4.20"].contains(&series), "{series}");
    assert_eq!(cfg!(libxl_series = "4.20"), series == "4.20");
    assert_eq!(cfg!(libxl_series = "4.17"), series == "4.17");
}
