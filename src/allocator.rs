//! The heap allocator the xenmaint binary runs on (and the sequencer's
//! benchmark, which measures that binary's work): mimalloc.
//!
//! Why not glibc's: a run frees thousands of small objects per guest (parsed
//! configs, records, manifests) between allocations of a few KiB, and glibc
//! merges its fast bins again before each of those (`malloc_consolidate`).
//! Measured on the sequencer's benchmark (10,000 simulated guests, two
//! lanes), glibc's allocator took about a quarter of the CPU; mimalloc cuts
//! the run's CPU by a sixth or more. Only Rust's allocations move: libxl and
//! libc keep glibc's malloc, and memory crosses the boundary only as C
//! memory freed with `libc::free` or libxl's dispose functions.
//!
//! Built with `no_thp`: mimalloc turns transparent huge pages off for the
//! process (prctl PR_SET_THP_DISABLE, inherited by hooks and libxl's
//! helpers); zeroing 2 MiB pages for a heap this small cost 3% more CPU.
//!
//! The library does not set it (`#[global_allocator]` belongs to a binary):
//! the fuzzers and tests keep the system allocator.

/// Put `#[global_allocator] static A: Allocator = Allocator {};` in a binary.
pub type Allocator = mimalloc::MiMalloc;
