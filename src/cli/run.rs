//! The maintenance-run verbs: drain, patch, reboot --host, resume, rollback,
//! status.

use std::time::{Duration, Instant};

use super::output::Output;
use super::steps::Steps;
use super::{Args, CliError, HostRebootArgs, PolicyArgs};
use crate::boot::{BootLoader, Grub};
use crate::domain::printable;
use crate::guest::PowerOptions;
use crate::plan::{HostFacts, Policy, RealHost};
use crate::sequencer::{GuestState, Phase, RunState, Sequencer, Step, Verification};
use crate::toolstack::Toolstack;

/// What every run verb needs, from the command line.
pub struct Context<'a> {
    pub ts: &'a dyn Toolstack,
    pub policy: Policy,
    pub args: &'a Args,
    boot: Box<dyn BootLoader + 'a>,
    pub facts: Box<dyn HostFacts + 'a>,
    /// The simulated host, when it is one: it reboots itself.
    sim: Option<&'a crate::sim::Sim>,
    /// What the run verbs show on a terminal as they go.
    steps: Steps,
}

pub fn context<'a>(
    args: &'a Args,
    ts: &'a dyn Toolstack,
    sim: Option<&'a crate::sim::Sim>,
    policy: Option<&PolicyArgs>,
) -> Result<Context<'a>, CliError> {
    let policy = match policy {
        Some(p) => p.policy(args)?,
        None => super::load_policy(args, None)?,
    };
    // A simulated host has a simulated boot loader and network: never this
    // machine's GRUB, never a probe of this machine's neighbours.
    let (boot, facts): (Box<dyn BootLoader>, Box<dyn HostFacts + 'a>) = match sim {
        Some(sim) => (Box::new(sim.boot_loader()), Box::new(sim.host_facts())),
        None => (Box::new(Grub::default()), Box::new(RealHost)),
    };
    Ok(Context {
        ts,
        policy,
        args,
        boot,
        facts,
        sim,
        steps: Steps::new(args.json || args.quiet),
    })
}

fn no_failpoint(_: &str) -> bool {
    false
}

fn sequencer<'a>(ctx: &'a Context<'a>) -> Sequencer<'a> {
    Sequencer {
        ts: ctx.ts,
        boot: ctx.boot.as_ref(),
        facts: ctx.facts.as_ref(),
        policy: ctx.policy.clone(),
        state_dir: ctx.args.state_dir(),
        lock_path: ctx.args.lock(),
        power: PowerOptions {
            wait: true,
            timeout: Duration::from_secs(ctx.policy.shutdown_s.max(1.0) as u64 * 4),
            force: true,
            poll: Duration::from_millis(250),
            reap_grace: Duration::from_secs(5),
        },
        failpoint: &no_failpoint,
        stop: crate::interrupt::flag(),
        observer: &ctx.steps,
    }
}

fn report(
    ctx: &Context<'_>,
    out: &Output,
    event: &str,
    id: &str,
    state: &RunState,
) -> Result<(), CliError> {
    ctx.steps.finish();
    if out.json {
        out.event(event, &serde_json::json!({"run": id, "state": state}))?;
        return Ok(());
    }
    out.line(&format!("run {id}: {:?}", state.phase).to_lowercase())?;
    let rows: Vec<Vec<String>> = state
        .plan
        .guests
        .iter()
        .map(|g| {
            let st = state
                .guests
                .get(&g.uuid)
                .cloned()
                .unwrap_or(GuestState::Pending);
            let checks = state.verified.get(&g.uuid).map(checks).unwrap_or_default();
            vec![g.name.clone(), g.uuid.to_string(), describe(&st), checks]
        })
        .collect();
    out.table(&["NAME", "UUID", "STATE", "CHECKS"], &rows)?;
    if let Some((hv, took)) = &state.booted {
        out.line(&if *took {
            format!("hypervisor: Xen {} booted as planned; boot default committed", hv.release)
        } else {
            format!(
                "hypervisor: THE PATCH DID NOT TAKE: Xen {} booted (was {}); the old boot default is kept",
                hv.release, state.hypervisor_before.release
            )
        })?;
    }
    if let Some(reason) = &state.halted {
        out.line(&format!("halted: {}", printable(reason)))?;
    }
    Ok(())
}

/// A guest's checks after it came back, in a few words.
pub(super) fn checks(v: &Verification) -> String {
    let list = |ips: &[std::net::IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut parts = Vec::new();
    if !v.answered.is_empty() {
        parts.push(format!("answers at {}", list(&v.answered)));
    }
    if !v.silent.is_empty() {
        parts.push(format!("SILENT at {}", list(&v.silent)));
    }
    if v.disks_changed.is_empty() {
        parts.push("disks same".into());
    } else {
        parts.push(format!("DISKS CHANGED: {}", v.disks_changed.join("; ")));
    }
    parts.join("; ")
}

fn describe(st: &GuestState) -> String {
    match st {
        GuestState::Pending => "pending".into(),
        GuestState::InStep { step } => format!("in {step:?}").to_lowercase(),
        GuestState::Saved { image } => format!("saved to {}", image.display()),
        GuestState::ShutDown => "shut down".into(),
        GuestState::Back {
            domid,
            step: Step::Kept,
        } => format!("kept running as domain {domid}"),
        GuestState::Back {
            domid,
            step: Step::Outside,
        } => format!("started outside this run, as domain {domid}"),
        GuestState::Gone { how } => format!("{}: left stopped", printable(how)),
        GuestState::Dumped { core } => format!(
            "core written to {}, destroyed (kept after a shutdown or crash; not brought back)",
            core.display()
        ),
        GuestState::Back { domid, step } => {
            format!(
                "back as domain {domid} ({})",
                format!("{step:?}").to_lowercase()
            )
        }
        GuestState::Failed { step, error } => {
            format!(
                "FAILED in {}: {}",
                format!("{step:?}").to_lowercase(),
                printable(error)
            )
        }
    }
}

pub fn drain(ctx: &Context<'_>, out: &Output) -> Result<(), CliError> {
    let (id, state) = sequencer(ctx).drain()?;
    report(ctx, out, "drained", &id, &state)
}

pub fn patch(ctx: &Context<'_>, command: &str, entry: &str, out: &Output) -> Result<(), CliError> {
    let s = sequencer(ctx);
    s.patch(command, entry)?;
    let (id, state) = s.state()?.expect("patch needs a run");
    report(ctx, out, "patched", &id, &state)
}

pub fn reboot_host(ctx: &Context<'_>, a: &HostRebootArgs, out: &Output) -> Result<(), CliError> {
    let s = sequencer(ctx);
    s.refuse_reboot_now()?;
    let expect = a.expect_version.as_deref();
    let sim = match (ctx.sim, &a.reboot_command) {
        (Some(_), Some(_)) => return Err(CliError::SimRebootCommand),
        (Some(sim), None) => sim,
        (None, command) => {
            if out.json {
                out.event("rebooting", &serde_json::json!({}))?;
            } else {
                out.line("rebooting the host; xenmaint-resume.service brings the guests back")?;
            }
            out.flush()?;
            let command = command.as_deref().unwrap_or(DEFAULT_REBOOT);
            return Ok(s.reboot(command, expect)?);
        }
    };
    let mut booted = None;
    s.reboot_with(expect, || {
        booted = Some(super::simulated::reboot(ctx.args, sim)?);
        Ok(())
    })?;
    let (entry, log) = booted.expect("set by the reboot");
    if out.json {
        out.event(
            "rebooted",
            &serde_json::json!({"entry": entry, "resume_log": log}),
        )?;
    } else {
        out.line(&format!(
            "simulated host rebooted into {}; its resume runs as its unit would (log: {})",
            entry.as_deref().unwrap_or("no boot entry"),
            log.display()
        ))?;
    }
    Ok(())
}

/// What reboots a real host unless --reboot-command says otherwise.
const DEFAULT_REBOOT: &str = "systemctl reboot";

pub fn resume(ctx: &Context<'_>, rollback: bool, out: &Output) -> Result<(), CliError> {
    let s = sequencer(ctx);
    let done = if rollback { s.rollback()? } else { s.resume()? };
    match done {
        Some((id, state)) => report(
            ctx,
            out,
            if rollback { "rolled_back" } else { "resumed" },
            &id,
            &state,
        ),
        None => {
            if out.json {
                out.event("idle", &serde_json::json!({"run": null}))?;
            } else {
                out.line("no maintenance run to resume")?;
            }
            Ok(())
        }
    }
}

/// `--wait`: how long to wait for the run to finish, and how long an
/// unfinished run may go with no xenmaint working on it (at boot the unit
/// may not have started yet) before nothing is expected to finish it.
pub fn status(
    ctx: &Context<'_>,
    wait: bool,
    (timeout, idle_grace): (u64, u64),
    out: &Output,
) -> Result<(), CliError> {
    let s = sequencer(ctx);
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        let state = s.state()?;
        let finished = state
            .as_ref()
            .is_none_or(|(_, st)| matches!(st.phase, Phase::Finished | Phase::Halted));
        if !wait || finished {
            return match state {
                Some((id, st)) => {
                    report(ctx, out, "status", &id, &st)?;
                    // Scripts read the exit status: a finished run that left
                    // something wrong is a failure.
                    match st.trouble().filter(|_| finished) {
                        Some(trouble) => Err(CliError::RunTrouble { run: id, trouble }),
                        None => Ok(()),
                    }
                }
                None => {
                    if out.json {
                        out.event("status", &serde_json::json!({"run": null}))?;
                    } else {
                        out.line("no maintenance run on this host")?;
                    }
                    Ok(())
                }
            };
        }
        if started.elapsed() >= Duration::from_secs(timeout) {
            return Err(CliError::StatusTimeout(timeout));
        }
        // A resume that died (or never ran) will not finish the run.
        if crate::lock::HostLock::holder_alive(&ctx.args.lock()) {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed()
            >= Duration::from_secs(idle_grace)
        {
            let (run, st) = state.expect("an unfinished run was read above");
            report(ctx, out, "status", &run, &st)?;
            return Err(CliError::NobodyWorking {
                run,
                phase: st.phase,
            });
        }
        if let Some((_, st)) = &state {
            ctx.steps.waiting(st);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn prune(ctx: &Context<'_>, keep: usize, out: &Output) -> Result<(), CliError> {
    let p = sequencer(ctx).prune(keep)?;
    if out.json {
        out.event("pruned", &p)?;
    } else {
        out.line(&format!(
            "deleted {} image(s), {} MiB, of {} run(s); kept the images of {} run(s)",
            p.images,
            p.bytes >> 20,
            p.runs.len(),
            p.kept.len()
        ))?;
    }
    Ok(())
}
