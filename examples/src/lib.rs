//! Shared pieces of the example programs: the cluster member and its event log.
//!
//! - `cluster`: several instances of one singleton job, with a graceful stop and a crash
//!   of the holder, in one process on the in-memory backend or, with `--backend URL`,
//!   as one process per instance against a real server.
//! - `member`: one cluster member, printing one JSON object per event, for `cluster` and
//!   for the fault-injection harness (the `leasehold-faults` crate), which runs it as its
//!   cluster's processes.
//! - `axum_service`: an HTTP service with a singleton job, `/healthz` from
//!   `Runner::health`, `/leader` from the backend's `describe`, and one shutdown token
//!   that stops the server and the runner (drain, release) on SIGTERM.
//! - `prometheus`: a singleton job with the runner's metrics (feature `metrics`) served
//!   to Prometheus at `/metrics` by `metrics-exporter-prometheus`.
//! - `starve`: CPU starvation of a member's own runtime on signals, for the harness.

pub mod args;
pub mod member;
pub mod starve;
