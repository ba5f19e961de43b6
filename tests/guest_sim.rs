//! Single-guest operations on the simulated host: the safety rules of save,
//! restore, shutdown and reboot, each with the failure that must not lose a
//! guest. (The same operations on real Xen are the nested-Xen suite's.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xenmaint::domain::{DomainRef, DomainState, ShutdownReason};
use xenmaint::guest::{
    self, AfterSave, OpError, PowerOptions, Recovery, RestoreOptions, SaveOptions,
};
use xenmaint::image::{manifest_path, Checksum, ImageError};
use xenmaint::sim::{Fault, Sim};
use xenmaint::toolstack::{Call, Request, Toolstack};

mod common;

/// The example host, its guests' disks real files under `dir`.
fn sim(dir: &Path) -> Sim {
    Sim::new(common::example_host(dir)).unwrap()
}

fn name(n: &str) -> DomainRef {
    DomainRef::Name(n.into())
}

fn no_progress() -> impl Fn(guest::Progress) + Sync {
    |_| {}
}

fn restore(ts: &Sim, image: &Path, paused: bool) -> Result<guest::RestoreReport, OpError> {
    guest::restore(
        ts,
        image,
        &RestoreOptions {
            paused,
            ..Default::default()
        },
        &no_progress(),
    )
}

use common::save_opts;

fn state(ts: &Sim, n: &str) -> Option<DomainState> {
    ts.list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.name == n)
        .map(|d| d.state)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn save_then_restore_brings_the_same_guest_back() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let before = ts
        .domain_detail(ts.resolve(&name("web-1")).unwrap().domid)
        .unwrap();
    let r = guest::save(&ts, &name("web-1"), &save_opts(t.path()), &no_progress()).unwrap();

    // Destroyed only after the image and manifest are durable and verified.
    assert_eq!(state(&ts, "web-1"), None);
    assert_eq!(
        r.image,
        t.path().join(format!("images/{}.xl", before.info.uuid))
    );
    assert!(manifest_path(&r.image).exists());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&t.path().join("images")), 0o700);
    assert_eq!(mode(&r.image), 0o600);
    assert_eq!(
        files(&t.path().join("images")).len(),
        2,
        "no temp files left"
    );
    guest::verify(&r.image).unwrap();

    let back = restore(&ts, &r.image, false).unwrap();
    assert!(back.checksum_verified);
    let after = ts.domain_detail(back.domid).unwrap();
    assert_eq!(after.info.name, "web-1");
    assert_eq!(after.info.uuid, before.info.uuid);
    assert_eq!(after.info.state, DomainState::Running);
    assert_eq!(after.nics[0].mac, before.nics[0].mac);
    assert_eq!(after.nics[0].ip, before.nics[0].ip);
    assert_eq!(after.disks[0].path, before.disks[0].path);
    assert!(r.image.exists(), "images are kept by default");
}

#[test]
fn read_back_reads_the_image_from_the_device_before_the_guest_goes() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let opts = SaveOptions {
        read_back: true,
        ..save_opts(t.path())
    };
    let r = guest::save(&ts, &name("web-1"), &opts, &no_progress()).unwrap();
    assert!(r.read_back);
    assert_eq!(state(&ts, "web-1"), None, "destroyed once read back intact");
    let plain = guest::save(&ts, &name("db-1"), &save_opts(t.path()), &no_progress()).unwrap();
    assert!(!plain.read_back && plain.timings.verify_ms == 0);
    guest::verify(&r.image).unwrap();
}

#[test]
fn keep_running_is_a_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let opts = SaveOptions {
        then: AfterSave::Resume,
        ..save_opts(t.path())
    };
    let r = guest::save(&ts, &name("db-1"), &opts, &no_progress()).unwrap();
    assert_eq!(state(&ts, "db-1"), Some(DomainState::Running));
    assert!(r.kept_running && r.image.exists());
}

#[test]
fn a_guest_left_suspended_stays_as_it_stopped_until_resumed() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let domid = ts.resolve(&name("db-1")).unwrap().domid;
    let opts = SaveOptions {
        then: AfterSave::LeaveSuspended,
        ..save_opts(t.path())
    };
    let r = guest::save(&ts, &name("db-1"), &opts, &no_progress()).unwrap();
    assert!(!r.kept_running && r.then == AfterSave::LeaveSuspended);
    guest::verify(&r.image).unwrap();
    let d = ts.resolve(&name("db-1")).unwrap();
    assert_eq!(d.domid, domid, "the same domain, not destroyed");
    assert_eq!(d.shutdown_reason, Some(ShutdownReason::Suspend));
    // Not a second copy: a restore of its image is refused while it exists.
    assert!(restore(&ts, &r.image, false).is_err());
    ts.resume(domid).unwrap();
    assert_eq!(state(&ts, "db-1"), Some(DomainState::Running));
}

#[test]
fn a_guest_with_a_qemu_served_disk_is_destroyed_rather_than_left_suspended() {
    // qemu's cache in dom0 is written out only by its orderly close.
    let t = tempfile::tempdir().unwrap();
    let mut h = common::example_host(t.path());
    let d = h
        .domains
        .iter_mut()
        .find(|d| d.detail.info.name == "db-1")
        .unwrap();
    d.detail.disks[0].backend = "qdisk".into();
    let ts = Sim::new(h).unwrap();
    let opts = SaveOptions {
        then: AfterSave::LeaveSuspended,
        ..save_opts(t.path())
    };
    let r = guest::save(&ts, &name("db-1"), &opts, &no_progress()).unwrap();
    assert_eq!(r.then, AfterSave::Destroy);
    assert!(ts.resolve(&name("db-1")).is_err(), "destroyed");
}

/// The simulator's injected save failure comes before the suspend (as a
/// handshake that timed out): the guest never stopped, and says so, also
/// when libxl refuses to resume it (it was never suspended: no failure);
/// nothing is destroyed and no image is left.
#[test]
fn a_failed_save_leaves_the_guest_running_and_no_image() {
    for faults in [&[Call::Save][..], &[Call::Save, Call::Resume]] {
        let t = tempfile::tempdir().unwrap();
        let ts = sim(t.path());
        for &call in faults {
            ts.inject(Fault {
                call,
                domid: None,
                message: "xc_domain_save: EIO".into(),
                times: None,
            });
        }
        let e = guest::save(&ts, &name("web-1"), &save_opts(t.path()), &no_progress()).unwrap_err();
        assert!(
            matches!(
                &e,
                OpError::SaveFailed {
                    outcome: Recovery::NotSuspended,
                    ..
                }
            ),
            "{faults:?}: {e}"
        );
        let text = e.to_string();
        assert!(text.contains("never suspended and keeps running"), "{text}");
        assert!(!text.contains("it is suspended"), "{text}");
        let s = state(&ts, "web-1");
        assert!(
            matches!(s, Some(DomainState::Running | DomainState::Blocked)),
            "{faults:?}: {s:?}"
        );
        assert_eq!(files(&t.path().join("images")), Vec::<PathBuf>::new());
    }
}

#[test]
fn a_paused_guest_is_refused_at_once_and_left_paused() {
    // A paused guest cannot answer the suspend request (libxl would wait a
    // minute, then fail): refused before anything is asked of it.
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let domid = ts.resolve(&name("web-1")).unwrap().domid;
    ts.pause(domid).unwrap();
    let e = guest::save(&ts, &name("web-1"), &save_opts(t.path()), &no_progress()).unwrap_err();
    assert!(matches!(&e, OpError::Paused(n) if n == "web-1"), "{e}");
    assert!(e.to_string().contains("xl unpause web-1"), "{e}");
    assert_eq!(state(&ts, "web-1"), Some(DomainState::Paused));
    assert_eq!(files(&t.path().join("images")), Vec::<PathBuf>::new());
}

#[test]
fn a_live_save_of_a_pv_guest_without_shadow_paging_is_refused_before_it_starts() {
    // Debian 13's Xen has no shadow paging: libxc could not track the pages a
    // PV guest dirties during a live save. Refused before anything is asked
    // of the guest; saved without --live, it goes as usual.
    let t = tempfile::tempdir().unwrap();
    let mut host = common::example_host(t.path());
    host.physinfo.shadow_paging = false;
    let ts = Sim::new(host).unwrap();
    let before = state(&ts, "web-1");
    let live = SaveOptions {
        live: true,
        ..save_opts(t.path())
    };
    let e = guest::save(&ts, &name("web-1"), &live, &no_progress()).unwrap_err();
    assert!(
        matches!(&e, OpError::LiveNeedsShadow(n) if n == "web-1"),
        "{e}"
    );
    assert!(e.to_string().contains("without --live"), "{e}");
    assert_eq!(state(&ts, "web-1"), before, "untouched");
    assert!(ts.suspends().is_empty(), "nothing was suspended");
    assert_eq!(files(&t.path().join("images")), Vec::<PathBuf>::new());
    guest::save(&ts, &name("web-1"), &save_opts(t.path()), &no_progress()).unwrap();
    assert_eq!(state(&ts, "web-1"), None, "saved and destroyed");
}

#[test]
fn an_existing_image_is_never_overwritten_and_the_guest_is_untouched() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let out = t.path().join("web.save");
    std::fs::write(&out, "precious").unwrap();
    let opts = SaveOptions {
        out: Some(out.clone()),
        ..save_opts(t.path())
    };
    let before = state(&ts, "web-1");
    let e = guest::save(&ts, &name("web-1"), &opts, &no_progress()).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
    assert!(before.is_some());
    assert_eq!(state(&ts, "web-1"), before, "the guest was not suspended");
}

/// Without the look first (a run's fresh image directory), publishing
/// still refuses to replace an image or a manifest: the guest runs on and
/// what was there stays as it was.
#[test]
fn publishing_never_replaces_an_image_or_a_manifest() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let (image, manifest) = (t.path().join("web.xl"), t.path().join("web.manifest.json"));
    let opts = SaveOptions {
        out: Some(image.clone()),
        fresh_dir: true,
        paused_ok: false,
        ..save_opts(t.path())
    };
    for planted in [&image, &manifest] {
        std::fs::write(planted, "precious").unwrap();
        let e = guest::save(&ts, &name("web-1"), &opts, &no_progress()).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{planted:?}: {e}");
        assert_eq!(std::fs::read_to_string(planted).unwrap(), "precious");
        assert_eq!(
            state(&ts, "web-1"),
            Some(DomainState::Running),
            "{planted:?}"
        );
        std::fs::remove_file(planted).unwrap();
        assert!(
            !image.exists() && !manifest.exists(),
            "{planted:?}: left behind"
        );
    }
    guest::save(&ts, &name("web-1"), &opts, &no_progress()).unwrap();
    guest::verify(&image).unwrap();
}

#[test]
fn dom0_and_unknown_domains_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let e = guest::save(&ts, &DomainRef::Id(0), &save_opts(t.path()), &no_progress()).unwrap_err();
    assert!(matches!(e, OpError::Dom0("save")));
    assert!(matches!(
        guest::destroy(&ts, &DomainRef::Id(0)),
        Err(OpError::Dom0(_))
    ));
    assert!(matches!(
        guest::pause(&ts, &DomainRef::Id(0), true),
        Err(OpError::Dom0(_))
    ));
    let e = guest::save(&ts, &name("ghost"), &save_opts(t.path()), &no_progress()).unwrap_err();
    assert_eq!(e.to_string(), "no such domain: ghost");
}

/// Saves web-1 and returns the image path and the bytes of the image.
fn saved_image(ts: &Sim, dir: &Path) -> (PathBuf, Vec<u8>) {
    let r = guest::save(ts, &name("web-1"), &save_opts(dir), &no_progress()).unwrap();
    let bytes = std::fs::read(&r.image).unwrap();
    (r.image, bytes)
}

#[test]
fn a_corrupt_image_leaves_nothing_running() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let (image, bytes) = saved_image(&ts, t.path());
    // A bit flipped inside guest memory: structure intact, checksum not.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 2000;
    flipped[at] ^= 1;
    std::fs::write(&image, &flipped).unwrap();
    let e = restore(&ts, &image, false).unwrap_err();
    assert!(
        matches!(e, OpError::Image(ImageError::ChecksumMismatch { .. })),
        "{e}"
    );
    assert_eq!(
        state(&ts, "web-1"),
        None,
        "nothing may run from a corrupt image"
    );

    // Truncated: refused before anything runs.
    std::fs::write(&image, &bytes[..bytes.len() - 16]).unwrap();
    let e = restore(&ts, &image, false).unwrap_err();
    assert!(matches!(e, OpError::Image(ImageError::Truncated(_))), "{e}");
    assert_eq!(state(&ts, "web-1"), None);

    // The intact image still restores.
    std::fs::write(&image, &bytes).unwrap();
    restore(&ts, &image, true).unwrap();
    assert_eq!(state(&ts, "web-1"), Some(DomainState::Paused));
}

#[test]
fn a_restore_that_libxl_rejects_is_blamed_on_the_corrupt_image() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let (image, mut bytes) = saved_image(&ts, t.path());
    // Corrupt the page the simulator checks (as libxc would reject a bad
    // page table): the restore itself fails, before the stream's end.
    let tag = b"xenmaint-sim:";
    let at = bytes.windows(tag.len()).position(|w| w == tag).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&image, &bytes).unwrap();
    let e = restore(&ts, &image, false).unwrap_err();
    assert!(
        matches!(e, OpError::Image(ImageError::ChecksumMismatch { .. })),
        "{e}"
    );
    assert_eq!(state(&ts, "web-1"), None);
}

/// Sets the checksum a manifest records.
fn record_checksum(image: &Path, checksum: &str) {
    let path = manifest_path(image);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["checksum"] = checksum.into();
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn an_image_is_checked_with_the_checksum_kind_its_manifest_names() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let (image, bytes) = saved_image(&ts, t.path());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest_path(&image)).unwrap()).unwrap();
    assert!(manifest["checksum"].as_str().unwrap().starts_with("xxh64:"));

    // As xenmaint wrote manifests before xxh64: still verified, and restored.
    let mut old = Checksum::like("xxh3-128:").unwrap();
    old.update(&bytes);
    record_checksum(&image, &old.finish());
    assert_eq!(guest::verify(&image).unwrap().checksum, old.finish());
    assert!(restore(&ts, &image, true).unwrap().checksum_verified);
    ts.destroy(ts.resolve(&name("web-1")).unwrap().domid)
        .unwrap();

    // The right kind, a wrong value: refused (the check is not skipped).
    record_checksum(&image, &format!("xxh3-128:{:032x}", 1));
    let e = restore(&ts, &image, false).unwrap_err();
    assert!(
        matches!(e, OpError::Image(ImageError::ChecksumMismatch { .. })),
        "{e}"
    );
    assert_eq!(state(&ts, "web-1"), None);

    // A kind this xenmaint does not know: refused before anything is created.
    record_checksum(&image, "sha256:00");
    let e = restore(&ts, &image, false).unwrap_err();
    assert!(
        matches!(e, OpError::Image(ImageError::UnknownChecksum(_))),
        "{e}"
    );
    assert!(guest::verify(&image).is_err());
    assert_eq!(state(&ts, "web-1"), None);
}

#[test]
fn an_image_without_manifest_restores_like_xl_would() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let (image, _) = saved_image(&ts, t.path());
    std::fs::remove_file(manifest_path(&image)).unwrap();
    let r = restore(&ts, &image, false).unwrap();
    assert!(!r.checksum_verified);
    assert_eq!(state(&ts, "web-1"), Some(DomainState::Running));
}

#[test]
fn restore_refuses_a_second_copy_and_missing_disks() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let opts = SaveOptions {
        then: AfterSave::Resume,
        ..save_opts(t.path())
    };
    let r = guest::save(&ts, &name("web-1"), &opts, &no_progress()).unwrap();
    let e = restore(&ts, &r.image, false).unwrap_err();
    assert!(matches!(e, OpError::AlreadyRunning { .. }), "{e}");

    guest::destroy(&ts, &name("web-1")).unwrap();
    std::fs::remove_file(t.path().join("web-1.img")).unwrap();
    let e = restore(&ts, &r.image, false).unwrap_err();
    assert!(matches!(e, OpError::MissingDisk { .. }), "{e}");
    assert!(e.to_string().contains("web-1.img"), "{e}");
    assert_eq!(state(&ts, "web-1"), None);
}

fn power_opts(force: bool) -> PowerOptions {
    PowerOptions {
        wait: true,
        timeout: Duration::from_millis(300),
        force,
        poll: Duration::from_millis(10),
        reap_grace: Duration::ZERO,
    }
}

#[test]
fn shutdown_waits_and_reaps_the_domain() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    guest::power(&ts, &name("cache-1"), Request::Shutdown, &power_opts(false)).unwrap();
    assert_eq!(state(&ts, "cache-1"), None);
}

#[test]
fn reboot_brings_the_guest_back_as_a_new_domain() {
    let t = tempfile::tempdir().unwrap();
    let ts = sim(t.path());
    let before = ts.resolve(&name("db-1")).unwrap();
    let r = guest::power(&ts, &name("db-1"), Request::Reboot, &power_opts(false)).unwrap();
    let after = ts.resolve(&name("db-1")).unwrap();
    assert_eq!(r.new_domid, Some(after.domid));
    assert_ne!(after.domid, before.domid);
    assert_eq!(after.uuid, before.uuid);
    assert_eq!(after.state, DomainState::Running);
}

#[test]
fn a_reboot_completed_by_xl_s_daemon_is_not_done_twice() {
    let t = tempfile::tempdir().unwrap();
    let mut host = sim(t.path()).snapshot();
    for d in &mut host.domains {
        d.xl_daemon = true;
    }
    let ts = Sim::new(host).unwrap();
    let before = ts.resolve(&name("db-1")).unwrap();
    let r = guest::power(&ts, &name("db-1"), Request::Reboot, &power_opts(false)).unwrap();
    let after: Vec<_> = ts
        .list_domains()
        .unwrap()
        .into_iter()
        .filter(|d| d.uuid == before.uuid)
        .collect();
    assert_eq!(after.len(), 1, "exactly one db-1");
    assert_eq!(r.new_domid, Some(after[0].domid));
    assert_ne!(after[0].domid, before.domid);
    guest::power(&ts, &name("web-1"), Request::Shutdown, &power_opts(false)).unwrap();
    assert_eq!(state(&ts, "web-1"), None);
}

fn deaf_sim(dir: &Path) -> Sim {
    let mut host = sim(dir).snapshot();
    for d in &mut host.domains {
        d.ignores_shutdown = d.detail.info.name == "web-1";
    }
    Sim::new(host).unwrap()
}

#[test]
fn a_guest_that_ignores_shutdown_times_out_unless_forced() {
    let t = tempfile::tempdir().unwrap();
    let ts = deaf_sim(t.path());
    let e = guest::power(&ts, &name("web-1"), Request::Shutdown, &power_opts(false)).unwrap_err();
    assert!(matches!(e, OpError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(state(&ts, "web-1").is_some(), "not forced: left alone");

    let r = guest::power(&ts, &name("web-1"), Request::Shutdown, &power_opts(true)).unwrap();
    assert!(r.forced);
    assert_eq!(state(&ts, "web-1"), None);
}

#[test]
fn a_forced_reboot_of_a_deaf_guest_boots_it_from_its_config() {
    let t = tempfile::tempdir().unwrap();
    let ts = deaf_sim(t.path());
    let before = ts.resolve(&name("web-1")).unwrap();
    let r = guest::power(&ts, &name("web-1"), Request::Reboot, &power_opts(true)).unwrap();
    assert!(r.forced);
    let after = ts.resolve(&name("web-1")).unwrap();
    assert_eq!(after.uuid, before.uuid);
    assert_eq!(after.state, DomainState::Running);
}
