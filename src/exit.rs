//! Exit codes, one meaning each. Scripts may rely on them; they are listed in
//! README.md and only ever added to.

/// Everything asked was done.
pub const SUCCESS: i32 = 0;
/// An operation failed (the message says which and why).
pub const FAILURE: i32 = 1;
/// The command line was wrong (clap's own code for usage errors).
pub const USAGE: i32 = 2;
/// No usable Xen toolstack here: not a dom0, not root, toolstack down.
pub const NOT_DOM0: i32 = 3;
/// The named domain does not exist.
pub const NO_SUCH_DOMAIN: i32 = 4;
/// An input file (simulated host, image, journal...) is missing or invalid.
pub const BAD_INPUT: i32 = 5;
/// A guest did not do as asked (shut down, reboot) within the timeout.
pub const TIMEOUT: i32 = 6;
/// `plan` found errors: a maintenance run would be refused.
pub const PLAN_BLOCKED: i32 = 7;
/// Another xenmaint run holds the host's lock.
pub const LOCKED: i32 = 8;
/// A maintenance step was refused: domains the run has not accounted for
/// run on the host (created since the plan, or started again by hand).
pub const HOST_CHANGED: i32 = 9;
/// Refused: a file whose contents xenmaint would run as root (the policy
/// file, a hook, the patch command) can be changed by someone else.
pub const UNTRUSTED: i32 = 10;
/// Stopped by SIGINT or SIGTERM at a consistent point (128 + SIGINT).
pub const INTERRUPTED: i32 = 130;
