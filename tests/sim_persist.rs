//! A persistent simulated host (`--sim FILE`): its state outlives a command,
//! every call sees the others' changes, a crashed write loses nothing, and
//! its reboot runs the build its boot loader picks.

mod common;

use std::path::{Path, PathBuf};

use xenmaint::boot::BootLoader;
use xenmaint::domain::DomainRef;
use xenmaint::sim::{Sim, STATE_FILE};
use xenmaint::toolstack::{Toolstack, ToolstackError};

/// The example host's description in `dir`, its disks real files there.
fn described(dir: &Path) -> PathBuf {
    let path = dir.join("host.json");
    let host = common::example_host(dir);
    std::fs::write(&path, serde_json::to_vec(&host).unwrap()).unwrap();
    path
}

fn names(ts: &dyn Toolstack) -> Vec<String> {
    ts.list_domains()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect()
}

fn id(ts: &dyn Toolstack, name: &str) -> u32 {
    ts.resolve(&DomainRef::Name(name.into())).unwrap().domid
}

#[test]
fn a_change_outlives_the_process_and_the_description_is_never_written() {
    let t = tempfile::tempdir().unwrap();
    let (desc, state) = (described(t.path()), t.path().join("state"));
    let before = std::fs::read(&desc).unwrap();
    let first = Sim::open(&desc, &state).unwrap();
    first.destroy(id(&first, "db-1")).unwrap();
    drop(first);
    let again = Sim::open(&desc, &state).unwrap();
    assert_eq!(names(&again), ["Domain-0", "web-1", "cache-1"]);
    assert_eq!(std::fs::read(&desc).unwrap(), before, "description changed");
    // Starting again from the description: remove the state.
    std::fs::remove_dir_all(&state).unwrap();
    assert_eq!(names(&Sim::open(&desc, &state).unwrap()).len(), 4);
}

#[test]
fn two_commands_at_once_each_see_the_others_changes_at_every_call() {
    let t = tempfile::tempdir().unwrap();
    let (desc, state) = (described(t.path()), t.path().join("state"));
    let (a, b) = (
        Sim::open(&desc, &state).unwrap(),
        Sim::open(&desc, &state).unwrap(),
    );
    a.pause(id(&a, "web-1")).unwrap();
    let web = b.resolve(&DomainRef::Name("web-1".into())).unwrap();
    assert_eq!(web.state, xenmaint::domain::DomainState::Paused);
    b.destroy(web.domid).unwrap();
    a.destroy(id(&a, "cache-1")).unwrap();
    assert_eq!(names(&a), ["Domain-0", "db-1"], "a lost b's destroy");
    assert_eq!(names(&b), names(&a));
}

#[test]
fn a_write_cut_before_its_rename_leaves_the_state_before_it() {
    let t = tempfile::tempdir().unwrap();
    let (desc, state) = (described(t.path()), t.path().join("state"));
    let sim = Sim::open(&desc, &state).unwrap();
    sim.destroy(id(&sim, "db-1")).unwrap();
    let kept = std::fs::read(state.join(STATE_FILE)).unwrap();
    // What a crash mid-write leaves: a torn temp file beside the state.
    let torn = xenmaint::durable::tmp_path(&state.join(STATE_FILE));
    std::fs::write(&torn, &kept[..kept.len() / 2]).unwrap();
    drop(sim);
    let sim = Sim::open(&desc, &state).unwrap();
    assert_eq!(names(&sim), ["Domain-0", "web-1", "cache-1"]);
    // The next write replaces the leftover and lands.
    sim.destroy(id(&sim, "web-1")).unwrap();
    assert!(sim.broken().is_none());
    assert_eq!(
        names(&Sim::open(&desc, &state).unwrap()),
        ["Domain-0", "cache-1"]
    );
}

#[test]
fn a_state_that_cannot_be_written_fails_every_later_call() {
    let t = tempfile::tempdir().unwrap();
    let (desc, state) = (described(t.path()), t.path().join("state"));
    let sim = Sim::open(&desc, &state).unwrap();
    // The state folder cannot be made once a plain file is there (even by
    // root, whom permissions do not stop).
    let db = id(&sim, "db-1");
    std::fs::write(&state, b"").unwrap();
    let _ = sim.destroy(db);
    assert!(sim.broken().is_some());
    match sim.list_domains() {
        Err(ToolstackError::SimState(why)) => assert!(why.contains("state"), "{why}"),
        other => panic!("a lost state went unreported: {other:?}"),
    }
    // Opened again, the same folder is one clean error naming it.
    let e = Sim::open(&desc, &state.join("x")).unwrap_err().to_string();
    assert!(e.contains("state/x"), "{e}");
}

#[test]
fn a_corrupt_state_is_refused_naming_the_state_file() {
    let t = tempfile::tempdir().unwrap();
    let (desc, state) = (described(t.path()), t.path().join("state"));
    let sim = Sim::open(&desc, &state).unwrap();
    sim.destroy(id(&sim, "db-1")).unwrap();
    std::fs::write(state.join(STATE_FILE), b"{\"hyperv").unwrap();
    let e = Sim::open(&desc, &state).unwrap_err().to_string();
    assert!(e.contains(STATE_FILE) && e.contains("not valid"), "{e}");
}

#[test]
fn a_reboot_runs_the_build_of_the_entry_booted_once_then_the_default() {
    let t = tempfile::tempdir().unwrap();
    let (desc, state) = (described(t.path()), t.path().join("state"));
    let sim = Sim::open(&desc, &state).unwrap();
    let boot = sim.boot_loader();
    let old = sim.version().unwrap();
    let new_build = boot.build_id_of("xen-4.17.7").unwrap();
    assert!(new_build.is_some() && new_build != old.build_id);
    // The fallback copy boots the same build as the hypervisor it copies.
    boot.keep_entry("/boot/xen-4.17-amd64.gz", "/boot/copy.gz", "kept", "kept")
        .unwrap();
    assert_eq!(boot.build_id_of("kept").unwrap(), old.build_id);
    boot.boot_once("xen-4.17.7").unwrap();
    drop(sim);

    let sim = Sim::open(&desc, &state).unwrap();
    assert_eq!(sim.restart().as_deref(), Some("xen-4.17.7"));
    assert_eq!(names(&sim), ["Domain-0"], "guests outlived the reboot");
    let now = sim.version().unwrap();
    assert_eq!(now.build_id, new_build);
    assert_eq!(now.extra, ".7");
    assert_eq!(now.commandline, old.commandline, "the entry's command line");
    // Once: the next reboot is the default's, the old build again.
    assert_eq!(sim.restart().as_deref(), Some("xen"));
    assert_eq!(sim.version().unwrap().build_id, old.build_id);
}

#[test]
fn a_reboot_into_an_entry_of_unknown_build_keeps_the_hypervisor() {
    let t = tempfile::tempdir().unwrap();
    let desc = t.path().join("host.json");
    let mut host = serde_json::to_value(common::example_host(t.path())).unwrap();
    host["boot"]["build_ids"]
        .as_object_mut()
        .unwrap()
        .remove("xen-4.17.7");
    std::fs::write(&desc, host.to_string()).unwrap();
    let sim = Sim::open(&desc, &t.path().join("state")).unwrap();
    let before = sim.version().unwrap();
    sim.boot_loader().boot_once("xen-4.17.7").unwrap();
    assert_eq!(sim.restart().as_deref(), Some("xen-4.17.7"));
    assert_eq!(sim.version().unwrap(), before);
}
