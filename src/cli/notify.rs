//! The `notify` verb: each guest told of the coming maintenance (see
//! `crate::notice`).

use std::path::Path;
use std::time::SystemTime;

use super::output::Output;
use super::run::Context;
use super::CliError;
use crate::notice::{self, State};

/// `window`: (description, not before, not after); None withdraws the
/// scheduled maintenance.
pub fn notify(
    ctx: &Context<'_>,
    state_dir: &Path,
    window: Option<(&str, &str, &str)>,
    out: &Output,
) -> Result<(), CliError> {
    let now = SystemTime::now();
    let (schedule, state) = match window {
        Some((description, from, to)) => (
            notice::schedule(description, from, to, now)?,
            State::Scheduled,
        ),
        None => match notice::load(state_dir)? {
            Some(s) => (s, State::Canceled),
            None => {
                if out.json {
                    out.event("notified", &serde_json::json!({"schedule": null}))?;
                } else {
                    out.line("notify: no maintenance is scheduled; nothing to cancel")?;
                }
                return Ok(());
            }
        },
    };
    let plan = crate::plan::plan(ctx.ts, &ctx.policy, ctx.facts.as_ref())?;
    // Kept before the guests are told: a run started meanwhile carries it on.
    notice::store(state_dir, (state == State::Scheduled).then_some(&schedule))?;
    let mut rows = Vec::new();
    let mut unwritten = 0;
    for g in &plan.guests {
        let event = notice::event(Some(&schedule), g.action, state, ("", now, 0.0));
        let written = ctx.ts.set_notice(g.domid, &notice::text(&event));
        if let Err(e) = &written {
            unwritten += 1;
            log::error!("{}: its notice could not be written: {e}", g.name);
        }
        if out.json {
            out.event(
                "notified",
                &serde_json::json!({
                    "guest": g.name, "uuid": g.uuid, "domid": g.domid,
                    "notice": event, "written": written.is_ok(),
                }),
            )?;
        }
        rows.push(vec![
            g.name.clone(),
            g.domid.to_string(),
            event.code,
            format!("{:?}", event.state).to_lowercase(),
            if written.is_ok() {
                "written"
            } else {
                "NOT WRITTEN"
            }
            .into(),
        ]);
    }
    if !out.json {
        out.line(&format!(
            "notify: {} ({} to {}), event {}",
            schedule.description, schedule.not_before, schedule.not_after, schedule.event_id
        ))?;
        out.table(&["NAME", "ID", "CODE", "STATE", "NOTICE"], &rows)?;
    }
    match unwritten {
        0 => Ok(()),
        n => Err(CliError::NoticeUnwritten(n)),
    }
}
