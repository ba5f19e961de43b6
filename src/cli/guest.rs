//! The single-guest verbs: save, restore, verify, shutdown, reboot, destroy,
//! pause, unpause. Results go out as one line (or one JSON record); progress
//! as a bar on a terminal, or `progress` events with --json.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::output::Output;
use super::{CliError, WaitArgs};
use crate::domain::{printable, DomainRef};
use crate::guest::{self as ops, PowerOptions, Progress, RestoreOptions, SaveOptions};
use crate::toolstack::{Request, Toolstack};

const MIB: f64 = (1 << 20) as f64;

/// Runs `f` with a progress reporter suited to the output mode.
fn with_progress<T>(
    out: &Output,
    op: &'static str,
    quiet: bool,
    f: impl FnOnce(&(dyn Fn(Progress) + Sync)) -> T,
) -> T {
    if out.json {
        let report = |p: Progress| {
            let _ = out.event(
                "progress",
                &serde_json::json!({"op": op, "bytes": p.bytes, "total": p.total}),
            );
        };
        return f(&report);
    }
    // indicatif draws nothing when stderr is not a terminal.
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(op);
    let report = |p: Progress| {
        bar.set_length(p.total.max(p.bytes));
        bar.set_position(p.bytes);
    };
    let result = f(&report);
    bar.finish_and_clear();
    result
}

pub fn save(
    ts: &dyn Toolstack,
    domain: &DomainRef,
    opts: &SaveOptions,
    out: &Output,
    quiet: bool,
) -> Result<(), CliError> {
    let r = with_progress(out, "save", quiet, |p| ops::save(ts, domain, opts, p))?;
    if out.json {
        return Ok(out.event("saved", &r)?);
    }
    out.line(&format!(
        "saved {} ({}) to {}: {:.1} MiB in {:.1} s ({:.0} MiB/s), checked and synced{}; guest {}",
        printable(&r.name),
        r.uuid,
        r.image.display(),
        r.size as f64 / MIB,
        r.timings.save_ms as f64 / 1000.0,
        r.timings.throughput_mib_s,
        if r.read_back {
            ", read back intact"
        } else {
            ""
        },
        if r.kept_running {
            "resumed"
        } else {
            "destroyed"
        },
    ))?;
    Ok(())
}

pub fn restore(
    ts: &dyn Toolstack,
    image: &Path,
    opts: &RestoreOptions,
    out: &Output,
    quiet: bool,
) -> Result<(), CliError> {
    let r = with_progress(out, "restore", quiet, |p| ops::restore(ts, image, opts, p))?;
    if out.json {
        return Ok(out.event("restored", &r)?);
    }
    out.line(&format!(
        "restored {} ({}) as domain {} from {} in {:.1} s; {}; {}",
        printable(&r.name),
        r.uuid,
        r.domid,
        r.image.display(),
        r.restore_ms as f64 / 1000.0,
        if r.checksum_verified {
            "checksum matched its manifest"
        } else {
            "no manifest (an xl image): stream structure checked"
        },
        if r.paused { "left paused" } else { "running" },
    ))?;
    Ok(())
}

pub fn verify(image: &Path, out: &Output, quiet: bool) -> Result<(), CliError> {
    // A large image takes a while to read and checksum.
    let bar = super::steps::spinner(
        quiet || out.json,
        &format!("verifying {}", printable(&image.display().to_string())),
    );
    let r = ops::verify(image);
    bar.finish_and_clear();
    let r = r?;
    if out.json {
        return Ok(out.event("verified", &r)?);
    }
    out.line(&format!(
        "{}: intact xl image of {} ({} guest saved on Xen {}), {:.1} MiB, {}, {}",
        r.image.display(),
        printable(&r.name),
        serde_json::to_value(r.stream.guest)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        r.stream.saved_on_xen,
        r.size as f64 / MIB,
        r.checksum,
        if r.manifest {
            "matches its manifest"
        } else {
            "no manifest"
        },
    ))?;
    for p in &r.programs {
        out.line(&format!(
            "  a restore runs {} as root in dom0 ({}){}",
            p.path.display(),
            p.role,
            match &p.refused {
                Some(why) => format!(": REFUSED, {why}"),
                None => String::new(),
            }
        ))?;
    }
    Ok(())
}

pub fn power(
    ts: &dyn Toolstack,
    domain: &DomainRef,
    what: Request,
    wait: &WaitArgs,
    out: &Output,
    quiet: bool,
) -> Result<(), CliError> {
    let opts = PowerOptions {
        wait: wait.wait,
        timeout: Duration::from_secs(wait.timeout),
        force: wait.force,
        poll: Duration::from_millis(250),
        reap_grace: Duration::from_secs(5),
    };
    let (event, to, verb) = match what {
        Request::Shutdown => ("shutdown", "shut down", "shut down"),
        Request::Reboot => ("reboot", "reboot", "rebooted"),
    };
    let bar = super::steps::spinner(
        !wait.wait || quiet || out.json,
        &format!("waiting for {} to {to}", printable(&domain.to_string())),
    );
    let r = ops::power(ts, domain, what, &opts);
    bar.finish_and_clear();
    let r = r?;
    if out.json {
        return Ok(out.event(event, &r)?);
    }
    let line = match (r.waited || r.forced, r.new_domid) {
        (false, _) => format!("asked {} to {event}", printable(&r.name)),
        (true, Some(id)) => format!("{} {verb}: now domain {id}", printable(&r.name)),
        (true, None) => format!("{} {verb}", printable(&r.name)),
    };
    let forced = if r.forced {
        " (forced: it did not comply and was destroyed)"
    } else {
        ""
    };
    out.line(&format!("{line}{forced}"))?;
    Ok(())
}

pub fn destroy(
    ts: &dyn Toolstack,
    domain: &DomainRef,
    yes: bool,
    out: &Output,
) -> Result<(), CliError> {
    if !yes {
        let info = ts.resolve(domain)?;
        let shown = format!("{} (domain {})", printable(&info.name), info.domid);
        if !std::io::stdin().is_terminal() || !confirm(&shown)? {
            return Err(CliError::NotConfirmed(shown));
        }
    }
    let info = ops::destroy(ts, domain)?;
    if out.json {
        return Ok(out.event("destroyed", &info)?);
    }
    out.line(&format!(
        "destroyed {} (domain {})",
        printable(&info.name),
        info.domid
    ))?;
    Ok(())
}

fn confirm(what: &str) -> Result<bool, CliError> {
    eprint!("destroy {what}? Its memory state is lost. [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub fn pause(
    ts: &dyn Toolstack,
    domain: &DomainRef,
    pause: bool,
    out: &Output,
) -> Result<(), CliError> {
    let info = ops::pause(ts, domain, pause)?;
    let event = if pause { "paused" } else { "unpaused" };
    if out.json {
        return Ok(out.event(event, &info)?);
    }
    out.line(&format!(
        "{event} {} (domain {})",
        printable(&info.name),
        info.domid
    ))?;
    Ok(())
}
