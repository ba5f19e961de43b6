//! shutdown, reboot and destroy, waiting for the guest like an operator
//! watching `xl list` would, and saying so when it does not listen.

use std::time::{Duration, Instant};

use super::OpError;
use crate::domain::{DomId, DomainInfo, DomainRef, DomainState, ShutdownReason, Uuid};
use crate::toolstack::{Request, Toolstack, ToolstackError};

pub struct PowerOptions {
    /// Wait until the guest is down (shutdown) or back (reboot).
    pub wait: bool,
    pub timeout: Duration,
    /// Destroy the guest if it does not comply in time (a reboot then cold
    /// boots it from its config).
    pub force: bool,
    /// How often to look at the domain list while waiting.
    pub poll: Duration,
    /// How long a shut-down domain is left to another toolstack's daemon
    /// before xenmaint reaps (or reboots) it itself.
    pub reap_grace: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PowerReport {
    pub name: String,
    pub uuid: Uuid,
    pub domid: DomId,
    /// The domain id after a reboot (a rebooted guest is a new domain).
    pub new_domid: Option<DomId>,
    pub waited: bool,
    /// The guest did not comply and was destroyed (and, on reboot, booted).
    pub forced: bool,
    pub elapsed_ms: u64,
}

/// Destroys a domain at once (never dom0).
pub fn destroy(ts: &dyn Toolstack, domain: &DomainRef) -> Result<DomainInfo, OpError> {
    let info = ts.resolve(domain)?;
    if info.domid == 0 {
        return Err(OpError::Dom0("destroy"));
    }
    ts.destroy(info.domid)?;
    Ok(info)
}

/// Pauses or unpauses a guest (never dom0: pausing it would hang the host).
pub fn pause(ts: &dyn Toolstack, domain: &DomainRef, pause: bool) -> Result<DomainInfo, OpError> {
    let info = ts.resolve(domain)?;
    if info.domid == 0 {
        return Err(OpError::Dom0(if pause { "pause" } else { "unpause" }));
    }
    if pause {
        ts.pause(info.domid)?;
    } else {
        ts.unpause(info.domid)?;
    }
    Ok(info)
}

/// Asks the guest to shut down or reboot, and with `wait` sees it through.
pub fn power(
    ts: &dyn Toolstack,
    domain: &DomainRef,
    what: Request,
    opts: &PowerOptions,
) -> Result<PowerReport, OpError> {
    let verb = match what {
        Request::Shutdown => "shut down",
        Request::Reboot => "reboot",
    };
    let info = ts.resolve(domain)?;
    if info.domid == 0 {
        return Err(OpError::Dom0(verb));
    }
    // A reboot that nobody else completes is ours to finish: keep the config.
    let config = match what {
        Request::Reboot => ts.domain_detail(info.domid)?.config,
        Request::Shutdown => None,
    };
    let started = Instant::now();
    let mut report = PowerReport {
        name: info.name.clone(),
        uuid: info.uuid,
        domid: info.domid,
        new_domid: None,
        waited: opts.wait,
        forced: false,
        elapsed_ms: 0,
    };
    let asked = ts.request(info.domid, what);
    if let Err(e) = &asked {
        // libxl gives up when a guest never acknowledges the request.
        if !opts.force {
            return Err(asked.expect_err("checked").into());
        }
        log::warn!("{}: request not acknowledged ({e}); forcing", info.name);
    }
    if !opts.wait && asked.is_ok() {
        return Ok(finish(report, started));
    }

    let deadline = started + opts.timeout;
    let mut first_seen_down: Option<Instant> = None;
    loop {
        match observe(ts, &info)? {
            Seen::Gone if what == Request::Shutdown => return Ok(finish(report, started)),
            Seen::Replaced(domid) => {
                // Someone else (xl's per-domain daemon) re-created it: that is
                // the reboot, done once the new domain runs.
                report.new_domid = Some(domid);
                return Ok(finish(report, started));
            }
            Seen::ShutDown(reason)
                if first_seen_down.get_or_insert_with(Instant::now).elapsed()
                    >= opts.reap_grace =>
            {
                // Nobody reaped it within the grace: it is ours to finish. If
                // another toolstack is at it after all (its destroy holds the
                // domain's lock), keep watching instead.
                if reap(ts, info.domid) {
                    if what == Request::Shutdown || reason != ShutdownReason::Reboot {
                        return Ok(finish(report, started));
                    }
                    if let Some(domid) = boot_unless_back(ts, &info, config.as_ref())? {
                        report.new_domid = Some(domid);
                        return Ok(finish(report, started));
                    }
                }
            }
            Seen::ShutDown(_) | Seen::Gone | Seen::Running | Seen::Building => {}
        }
        if Instant::now() >= deadline || asked.is_err() {
            if !opts.force {
                return Err(OpError::Timeout {
                    name: info.name.clone(),
                    what: verb,
                    secs: opts.timeout.as_secs(),
                });
            }
            log::warn!("{}: did not {verb} in time; destroying it", info.name);
            destroy_if_present(ts, info.domid)?;
            report.forced = true;
            if what == Request::Reboot {
                report.new_domid = boot_unless_back(ts, &info, config.as_ref())?;
            }
            return Ok(finish(report, started));
        }
        std::thread::sleep(opts.poll);
    }
}

enum Seen {
    Running,
    /// A new domain with the same UUID is being built (paused).
    Building,
    ShutDown(ShutdownReason),
    /// The old domain is gone and nothing replaced it (yet).
    Gone,
    /// A new domain with the same UUID runs.
    Replaced(DomId),
}

fn observe(ts: &dyn Toolstack, info: &DomainInfo) -> Result<Seen, OpError> {
    let list = ts.list_domains()?;
    if let Some(d) = list.iter().find(|d| d.domid == info.domid) {
        return Ok(match (d.state, d.shutdown_reason) {
            (DomainState::Shutdown | DomainState::Crashed, Some(r)) => Seen::ShutDown(r),
            (DomainState::Shutdown | DomainState::Crashed, None) => {
                Seen::ShutDown(ShutdownReason::Unknown)
            }
            _ => Seen::Running,
        });
    }
    Ok(match list.iter().find(|d| d.uuid == info.uuid) {
        Some(d) if d.state == DomainState::Paused => Seen::Building,
        Some(d) => Seen::Replaced(d.domid),
        None => Seen::Gone,
    })
}

fn destroy_if_present(ts: &dyn Toolstack, domid: DomId) -> Result<(), OpError> {
    match ts.destroy(domid) {
        Ok(()) | Err(ToolstackError::NoSuchDomain(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Destroys a shut-down domain; false when another toolstack holds it.
fn reap(ts: &dyn Toolstack, domid: DomId) -> bool {
    match ts.destroy(domid) {
        Ok(()) | Err(ToolstackError::NoSuchDomain(_)) => true,
        Err(e) => {
            log::info!("domain {domid} is being handled elsewhere ({e}); watching");
            false
        }
    }
}

/// Boots the guest again from the config it had and lets it run, unless a
/// domain with its UUID appeared meanwhile (then `None`: keep watching).
fn boot_unless_back(
    ts: &dyn Toolstack,
    info: &DomainInfo,
    config: Option<&serde_json::Value>,
) -> Result<Option<DomId>, OpError> {
    if ts.list_domains()?.iter().any(|d| d.uuid == info.uuid) {
        return Ok(None);
    }
    let config = config.ok_or_else(|| OpError::RebootLost(DomainRef::Name(info.name.clone())))?;
    let domid = ts.create(config)?;
    ts.unpause(domid)?;
    Ok(Some(domid))
}

fn finish(mut report: PowerReport, started: Instant) -> PowerReport {
    report.elapsed_ms = super::millis(started.elapsed());
    report
}
