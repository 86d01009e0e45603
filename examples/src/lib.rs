//! Shared pieces of the example programs: the cluster member and its event log.
//!
//! - `cluster`: several instances of one singleton job, with a graceful stop and a crash
//!   of the holder, in one process on the in-memory backend or, with `--backend URL`,
//!   as one process per instance against a real server.
//! - `member`: one cluster member, printing one JSON object per event, for `cluster` and
//!   for fault-injection tests.
//! - `faults`: the fault-injection harness that runs `member` processes against
//!   throwaway servers, injects faults and checks the results.
//! - `starve`: CPU starvation of a member's own runtime on signals, for the harness.

pub mod args;
pub mod faults;
pub mod member;
pub mod starve;
