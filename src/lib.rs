//! xenmaint: safe, resumable hypervisor maintenance for Xen dom0 hosts.
//!
//! - [`domain`]: plain data about a host and its domains.
//! - [`address`]: where a guest answers (recorded, then probed).
//! - [`toolstack`]: the seam every higher layer speaks.
//! - [`libxl`]: the real toolstack (safe wrapper over xenlight-sys).
//! - [`sim`]: a simulated host for logic, fault-injection and scale tests.
//! - [`image`]: xl-format save images and their checks.
//! - [`cli`]: the command line.

pub mod address;
pub mod allocator;
pub mod boot;
pub mod buildid;
pub mod cli;
pub mod condition;
pub mod config;
pub mod devices;
pub mod domain;
pub mod durable;
pub mod exit;
pub mod guest;
pub mod hooks;
pub mod image;
pub mod interrupt;
pub mod journal;
pub mod libxl;
pub mod lock;
pub mod notice;
pub mod plan;
pub mod sequencer;
pub mod sim;
pub mod toolstack;
pub mod trust;
