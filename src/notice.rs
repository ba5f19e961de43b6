//! Maintenance notices to guest owners, as cloud providers give them: a
//! record in each guest's own xenstore area, which the guest may read and
//! not write (`xenstore-read xenmaint/scheduled-events` inside it), shaped
//! like EC2's scheduled events: a JSON list of events with `Code`,
//! `Description`, `EventId`, `NotBefore`, `NotAfter` (RFC 3339, UTC) and
//! `State`. `xenmaint notify` schedules one for every guest (state
//! `scheduled`); a run then marks each guest's `active` as it saves or shuts
//! it down and brings it back, and `completed` once it passed its checks.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::plan::Action;

/// Under `/local/domain/<domid>/`: the guest's own area.
pub const GUEST_KEY: &str = "xenmaint/scheduled-events";

/// Where `notify` keeps the host's schedule, in the state folder: a run
/// carries its event on to each guest it brings back.
const SCHEDULE_FILE: &str = "schedule.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Scheduled,
    Active,
    Completed,
    Canceled,
}

/// One event, in EC2's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    pub code: String,
    pub description: String,
    pub event_id: String,
    pub not_before: String,
    pub not_after: String,
    pub state: State,
}

/// What `notify` announced for this host's next maintenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub event_id: String,
    pub description: String,
    pub not_before: String,
    pub not_after: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error(
        "{0:?} is not a time: give RFC 3339 (2026-12-24T06:00:00Z) or +DURATION from now (+2h)"
    )]
    BadTime(String),
    #[error("the window ends ({not_after}) before it begins ({not_before})")]
    EmptyWindow {
        not_before: String,
        not_after: String,
    },
    #[error("the maintenance schedule {path}: {why}")]
    File { path: PathBuf, why: String },
}

/// EC2's codes: a saved guest keeps its memory across the host's reboot
/// (maintenance); a shut-down one reboots; one the run leaves alone is
/// stopped by the host's reboot.
pub fn code(action: Action) -> &'static str {
    match action {
        Action::Save => "system-maintenance",
        Action::Shutdown => "system-reboot",
        _ => "instance-stop",
    }
}

fn describe(action: Action, what: &str) -> String {
    let how = match action {
        Action::Save => {
            "this guest is saved and restored (its memory and uptime kept, paused meanwhile)"
        }
        Action::Shutdown => "this guest is shut down and started again",
        _ => "this guest is left alone, and stopped by the host's reboot",
    };
    format!("{what}: {how}")
}

/// The event a guest is told about: its host's schedule, else the run's
/// own (`id`, from `start` for `seconds`).
pub fn event(
    schedule: Option<&Schedule>,
    action: Action,
    state: State,
    run: (&str, SystemTime, f64),
) -> Event {
    let (id, start, seconds) = run;
    let (event_id, what, not_before, not_after) = match schedule {
        Some(s) => (
            s.event_id.clone(),
            s.description.clone(),
            s.not_before.clone(),
            s.not_after.clone(),
        ),
        None => (
            format!("xenmaint-{id}"),
            "host maintenance".to_owned(),
            rfc3339(start),
            rfc3339(start + Duration::from_secs_f64(seconds.max(0.0))),
        ),
    };
    Event {
        code: code(action).to_owned(),
        description: describe(action, &what),
        event_id,
        not_before,
        not_after,
        state,
    }
}

/// What is written to the guest: a list, as EC2's.
pub fn text(event: &Event) -> String {
    serde_json::to_string(&[event]).expect("an event serializes")
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339, or `+DURATION` from `now`; normalized to RFC 3339 UTC.
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, NoticeError> {
    let bad = || NoticeError::BadTime(s.to_owned());
    match s.strip_prefix('+') {
        Some(d) => Ok(now + humantime::parse_duration(d.trim()).map_err(|_| bad())?),
        None => humantime::parse_rfc3339_weak(s.trim()).map_err(|_| bad()),
    }
}

/// A window from two times as given (see `parse_time`).
pub fn schedule(
    description: &str,
    not_before: &str,
    not_after: &str,
    now: SystemTime,
) -> Result<Schedule, NoticeError> {
    let (from, to) = (parse_time(not_before, now)?, parse_time(not_after, now)?);
    if to < from {
        return Err(NoticeError::EmptyWindow {
            not_before: rfc3339(from),
            not_after: rfc3339(to),
        });
    }
    let secs = from
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(Schedule {
        event_id: format!("xenmaint-{secs}"),
        description: description.to_owned(),
        not_before: rfc3339(from),
        not_after: rfc3339(to),
    })
}

fn schedule_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SCHEDULE_FILE)
}

/// The host's schedule, if `notify` set one.
pub fn load(state_dir: &Path) -> Result<Option<Schedule>, NoticeError> {
    let path = schedule_path(state_dir);
    let file = |why: String| NoticeError::File {
        path: path.clone(),
        why,
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| file(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file(e.to_string())),
    }
}

/// Keeps (or, with None, removes) the host's schedule, crash-safely.
pub fn store(state_dir: &Path, schedule: Option<&Schedule>) -> Result<(), NoticeError> {
    let path = schedule_path(state_dir);
    let file = |why: String| NoticeError::File {
        path: path.clone(),
        why,
    };
    match schedule {
        Some(s) => {
            crate::durable::private_dir(state_dir).map_err(|e| file(e.to_string()))?;
            let bytes = serde_json::to_vec(s).map_err(|e| file(e.to_string()))?;
            crate::durable::replace(&path, &bytes).map_err(|e| file(e.to_string()))
        }
        None => match std::fs::remove_file(&path) {
            Ok(()) => crate::durable::fsync_dir(state_dir).map_err(|e| file(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(file(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_from_now() {
        let now = at("2026-12-05T10:00:00Z");
        assert_eq!(
            rfc3339(parse_time("+2h", now).unwrap()),
            "2026-12-05T12:00:00Z"
        );
        assert_eq!(
            rfc3339(parse_time("2026-12-24T06:00:00Z", now).unwrap()),
            "2026-12-24T06:00:00Z"
        );
        for bad in ["tomorrow", "+soon", "", "2026-13-01T00:00:00Z"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?} taken");
        }
        assert!(matches!(
            schedule("x", "+2h", "+1h", now),
            Err(NoticeError::EmptyWindow { .. })
        ));
    }

    #[test]
    fn an_event_reads_like_ec2s_and_follows_the_schedule() {
        let now = at("2026-12-05T10:00:00Z");
        let s = schedule("Xen security update", "+1h", "+3h", now).unwrap();
        let e = event(Some(&s), Action::Save, State::Scheduled, ("r", now, 60.0));
        let v: serde_json::Value = serde_json::from_str(&text(&e)).unwrap();
        assert_eq!(v[0]["Code"], "system-maintenance");
        assert_eq!(v[0]["State"], "scheduled");
        assert_eq!(v[0]["NotBefore"], "2026-12-05T11:00:00Z");
        assert_eq!(v[0]["NotAfter"], "2026-12-05T13:00:00Z");
        assert_eq!(v[0]["EventId"], s.event_id);
        assert!(v[0]["Description"]
            .as_str()
            .unwrap()
            .starts_with("Xen security update: "));
        // Without a schedule: the run's own window.
        let e = event(None, Action::Shutdown, State::Active, ("r1", now, 600.0));
        assert_eq!(
            (e.code.as_str(), e.event_id.as_str()),
            ("system-reboot", "xenmaint-r1")
        );
        assert_eq!(e.not_after, "2026-12-05T10:10:00Z");
    }

    #[test]
    fn the_schedule_is_kept_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        assert_eq!(load(&dir).unwrap(), None);
        let s = schedule("x", "+1h", "+2h", SystemTime::now()).unwrap();
        store(&dir, Some(&s)).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(s));
        store(&dir, None).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        std::fs::write(dir.join(SCHEDULE_FILE), b"{").unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains(SCHEDULE_FILE));
    }
}
