//! The contract between the `leasehold` runner and the lease backends it runs on.
//!
//! This crate is small and changes rarely, so that backend authors (ours and third
//! parties') depend on it alone, the way `tower-service` or `tracing-core` work:
//!
//! - [`LockBackend`] hands out [`Lease`]s on named keys: try once to acquire, refresh,
//!   release, and wait for a release notification.
//! - [`LockKey`] is a validated routine name; [`FencingToken`] numbers every acquisition of
//!   a key so that stale holders can be rejected by whatever they write to.
//! - [`Error`] is the one error type every backend converts into.
//! - [`BatchRefresh`] and [`BatchRefreshExt`] let a backend refresh many leases in one
//!   request while sharing the bookkeeping every such backend needs.
//! - [`MemoryBackend`] is the reference implementation: a process-local backend that
//!   honours every part of the contract and runs on tokio's clock, so tests with paused
//!   time work.
//!
//! The runner, retry policy, timing and all sleeping live in the `leasehold` crate: a backend
//! does I/O only. The behaviour a backend must show is checked by the published
//! `leasehold-conformance` suite.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod backend;
mod batch;
mod capabilities;
mod describe;
mod error;
mod fencing;
mod key;
mod memory;
mod record;

pub use backend::{Lease, LockBackend};
pub use batch::{BatchRefresh, BatchRefreshExt, RefreshStart, refresh_rest};
pub use capabilities::Capabilities;
pub use describe::{
    HOLDER_IDENTITY_ENV, LeaseInfo, MAX_HOLDER_IDENTITY_LEN, check_holder_identity,
    process_identity,
};
pub use error::{BoxError, Error, Result};
pub use fencing::FencingToken;
pub use key::LockKey;
pub use memory::MemoryBackend;
pub use record::{MAX_RECORD_LEN, RecordWrite, check_record};
