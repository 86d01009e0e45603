// The README is the crate documentation, and its examples are doctests; one of them uses
// the Redis backend, so without the `redis` feature a shorter text stands in. The crate's
// `README.md` is a link to the repository's, so that the package carries it.
#![cfg_attr(feature = "redis", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "redis"),
    doc = "Background tasks and cluster-wide singleton jobs on pluggable lease backends. \
           See the README of the `leasehold` repository for the full guide."
)]
//!
//! # Feature flags
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod attempt;
mod backend_slot;
mod backoff;
mod builder;
mod config;
mod context;
mod default;
mod env;
mod events;
mod guard;
mod handle;
mod health;
mod hold;
mod instance;
mod keeper;
mod launch;
mod metrics;
mod observe;
mod options;
mod outcome;
mod report;
mod runner;
mod schedule;
mod shared;
mod signals;
mod state;
mod task;

pub use builder::RunnerBuilder;
pub use config::RunnerConfig;
pub use context::{CancelReason, Context};
pub use default::{check_default_config, default_runner, run, run_named};
pub use env::connect;
pub use events::{Event, EventKind, FireSkipReason};
pub use handle::RoutineHandle;
pub use health::{Health, LateLease};
pub use observe::observe;
pub use options::RunOptions;
pub use outcome::Outcome;
pub use runner::Runner;
pub use schedule::scheduled_fire;
pub use schedule::spec::MissedFires;
pub use state::RoutineState;

pub use leasehold_core::{
    BoxError, Capabilities, Error, FencingToken, HOLDER_IDENTITY_ENV, Lease, LeaseInfo,
    LockBackend, LockKey, MAX_HOLDER_IDENTITY_LEN, MAX_RECORD_LEN, MemoryBackend, RecordWrite,
    Result, check_holder_identity, check_record, process_identity,
};

/// Time zones for [`RunOptions::cron`]: the `chrono-tz` crate, re-exported so that its
/// version matches this crate's.
pub use chrono_tz;

/// The Redis backend (feature `redis`, on by default).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    pub use leasehold_redis::*;
}

/// The etcd v3 backend (feature `etcd`).
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd {
    pub use leasehold_etcd::*;
}

/// The PostgreSQL advisory-lock backend (feature `postgres`).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    pub use leasehold_postgres::*;
}
