//! The `plan` verb.

use super::output::Output;
use super::CliError;
use crate::plan::{self, Action, HostFacts, Policy, Severity};
use crate::toolstack::Toolstack;

const MIB: u64 = 1 << 20;

pub fn plan(
    ts: &dyn Toolstack,
    policy: &Policy,
    facts: &dyn HostFacts,
    out: &Output,
) -> Result<(), CliError> {
    let p = plan::plan(ts, policy, facts)?;
    let errors = p
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if out.json {
        out.event("plan", &p)?;
    } else {
        out.line(&format!(
            "plan: Xen {}, {} guest(s), {} at a time; nothing has been changed",
            p.hypervisor,
            p.guests.len(),
            p.concurrency
        ))?;
        let rows: Vec<Vec<String>> = p
            .guests
            .iter()
            .map(|g| {
                vec![
                    g.order.to_string(),
                    g.name.clone(),
                    match g.action {
                        Action::Save => "save",
                        Action::Shutdown => "shutdown",
                        Action::Skip => "skip",
                        Action::Dump => "dump",
                    }
                    .into(),
                    g.condition.to_string(),
                    g.priority.to_string(),
                    (g.memory_kib / 1024).to_string(),
                    (g.image_bytes / MIB).to_string(),
                    format!("{:.1}", g.est_drain_s),
                    format!("{:.1}", g.est_resume_s),
                    g.nics
                        .iter()
                        .filter_map(|n| n.ip.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        out.table(
            &[
                "ORDER",
                "NAME",
                "ACTION",
                "STATE",
                "PRIORITY",
                "MEM(MiB)",
                "IMAGE(MiB)",
                "DRAIN(s)",
                "RESUME(s)",
                "IP",
            ],
            &rows,
        )?;
        out.line(&format!(
            "images: {} MiB needed in {}, {} MiB free",
            p.space_needed / MIB,
            p.image_dir.display(),
            p.space_free / MIB
        ))?;
        out.line(&format!(
            "estimate: drain {:.0} s, resume {:.0} s, plus the host's own reboot",
            p.est_drain_s, p.est_resume_s
        ))?;
        for f in &p.findings {
            let who = f
                .guest
                .as_deref()
                .map(|g| format!("{g} "))
                .unwrap_or_default();
            let level = match f.severity {
                Severity::Error => "ERROR",
                Severity::Warning => "warning",
            };
            out.line(&crate::domain::printable(&format!(
                "{level}: {who}{}",
                f.message
            )))?;
        }
        out.line(if errors == 0 {
            "plan: ready"
        } else {
            "plan: BLOCKED"
        })?;
    }
    if errors > 0 {
        return Err(CliError::PlanBlocked(errors));
    }
    Ok(())
}
