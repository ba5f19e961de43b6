//! The administrator's hooks: commands run at each phase boundary of a
//! maintenance run (to notify guest owners, drain a load balancer, page
//! someone). A hook informs; it never decides: one that fails or hangs is
//! logged (and killed after its timeout), and the run goes on, because a
//! run stopped half way by a notification would strand guests.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How one hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEnd {
    Ok,
    Failed(String),
    TimedOut,
}

/// Runs `command` with /bin/sh and `env` added; waits at most `timeout`.
pub fn run(command: &str, env: &[(&str, String)], timeout: Duration) -> HookEnd {
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return HookEnd::Failed(e.to_string()),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return HookEnd::Ok,
            Ok(Some(status)) => return HookEnd::Failed(status.to_string()),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return HookEnd::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return HookEnd::Failed(e.to_string()),
        }
    }
}

/// Runs every hook in order, logging the ones that did not succeed. A hook
/// naming a file that is no longer root's alone (see `trust`) is not run.
pub fn run_all(hooks: &[String], env: &[(&str, String)], timeout: Duration) {
    for hook in hooks {
        if let Err(e) = crate::trust::check_command("the hook", hook) {
            log::warn!("{e}; the hook is not run, the run goes on");
            continue;
        }
        match run(hook, env, timeout) {
            HookEnd::Ok => log::info!("hook `{hook}` done"),
            HookEnd::Failed(why) => log::warn!("hook `{hook}` failed ({why}); the run goes on"),
            HookEnd::TimedOut => {
                log::warn!("hook `{hook}` killed after {timeout:?}; the run goes on")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_sees_its_environment_and_its_exit_status_counts() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("seen");
        let env = [("XENMAINT_PHASE", "drained".to_string())];
        let cmd = format!("echo \"$XENMAINT_PHASE\" > {}", out.display());
        assert_eq!(run(&cmd, &env, Duration::from_secs(10)), HookEnd::Ok);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "drained\n");
        assert!(matches!(
            run("exit 3", &env, Duration::from_secs(10)),
            HookEnd::Failed(s) if s.contains('3')
        ));
    }

    #[test]
    fn a_hook_that_others_can_change_is_not_run() {
        use std::os::unix::fs::PermissionsExt;
        let t = crate::trust::trusted_test_dir();
        let mark = t.path().join("ran");
        let script = t.path().join("notify");
        std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o777)).unwrap();
        let hooks = [script.display().to_string()];
        run_all(&hooks, &[], Duration::from_secs(10));
        assert!(!mark.exists(), "a hook others can write was run");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        run_all(&hooks, &[], Duration::from_secs(10));
        assert!(mark.exists(), "the same hook, root's alone, did not run");
    }

    #[test]
    fn a_hanging_hook_is_killed_at_its_timeout() {
        let started = Instant::now();
        assert_eq!(
            run("sleep 30", &[], Duration::from_millis(200)),
            HookEnd::TimedOut
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
