//! The behaviour suite every `leasehold` lease backend must pass, ours and third parties'.
//!
//! Each case is a documented `pub async fn` in [`cases`] taking a [`Harness`]. The
//! [`conformance_tests!`] macro turns every case into its own named `#[test]`, so a
//! failure names the behaviour that broke. In a backend crate's `tests/conformance.rs`:
//!
//! ```ignore
//! leasehold_conformance::conformance_tests!(|| async {
//!     MyBackend::connect(&std::env::var("MY_URL").unwrap()).await.unwrap()
//! });
//! ```
//!
//! The closure is called for every client a case needs (many cases use several, as
//! separate processes would); it returns any [`leasehold::LockBackend`]. Each case runs on
//! its own multi-thread tokio runtime, under a key prefix unique to the case and the run,
//! so cases run in parallel against one server. Cases a backend cannot pass by design
//! are skipped according to its [`leasehold::Capabilities`] (release notifications,
//! expiry reports), and TTLs are raised to its minimum. For slow backends, scale all
//! timing:
//!
//! ```ignore
//! leasehold_conformance::conformance_tests!(|| async { connect().await }, time_scale = 2.0);
//! ```
//!
//! To skip every case when the server is missing (outside CI), call [`skip`] from the
//! factory. [`measure`] holds the timing code the backends' latency benchmarks share.
//!
//! What a backend's own tests share with the suite: [`wait`] (waiting on events and
//! conditions with a deadline) and [`unique`]/[`unique_key`] (names no other test
//! uses). With the `servers` feature, `servers` starts throwaway Redis, etcd and
//! PostgreSQL servers for tests, one per test binary with `shared()`, and
//! `require_server!` opens a test that needs one (skipped when the server binary is
//! missing outside CI, failed under CI). With the `containers` feature, `containers`
//! starts the same servers as containers of their official images (or of images built
//! from Debian's packages), for running the suite the way a backend's users deploy.
//!
//! The runner-level cases use the real `leasehold::Runner` with short TTLs (one second,
//! scaled), and real time: they take a few seconds each.
//!
//! # Feature flags
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cases;
#[cfg(feature = "containers")]
#[cfg_attr(docsrs, doc(cfg(feature = "containers")))]
pub mod containers;
mod faulty;
mod harness;
pub mod measure;
mod names;
#[cfg(feature = "servers")]
#[cfg_attr(docsrs, doc(cfg(feature = "servers")))]
pub mod servers;
pub mod wait;

pub use faulty::Faulty;
pub use harness::{Harness, Skipped, skip};
pub use names::{unique, unique_key};

#[doc(hidden)]
pub use harness::run_case;

/// Expands to one `#[test]` per conformance case, named after the case, running it
/// against the backend the factory closure returns. See the [crate docs](crate).
///
/// ```ignore
/// leasehold_conformance::conformance_tests!(|| async { leasehold::MemoryBackend::new() });
/// leasehold_conformance::conformance_tests!(|| async { connect().await }, time_scale = 2.0);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!($factory, time_scale = 1.0);
    };
    ($factory:expr, time_scale = $scale:expr $(,)?) => {
        $crate::__conformance_cases!(
            ($factory, $scale)
            exclusivity
            contended_acquire_has_exactly_one_winner
            release_then_immediate_reacquire
            release_is_idempotent
            refresh_extends_the_lease
            lease_expires_without_refresh
            refresh_after_takeover_reports_lost
            refresh_many_answers_for_each_lease
            independent_keys
            fencing_tokens_strictly_increase
            zero_ttl_is_rejected
            ttls_outside_the_declared_bounds_are_rejected
            release_notification_wakes_a_waiter
            expires_in_reports_the_remaining_ttl
            describe_names_the_holder_and_its_token
            list_returns_the_held_keys_under_a_prefix
            force_release_frees_the_key_and_the_holder_learns_it
            records_are_compare_and_set_by_the_holder
            record_writes_of_an_earlier_holder_are_fenced
            record_values_up_to_the_limit_are_kept_exactly
            one_instance_across_runners
            takeover_when_holder_shuts_down
            takeover_when_holder_vanishes
            routine_cancelled_then_stopped_when_lease_lost
            restart_after_return
            restart_after_panic
            scheduled_fires_run_once_across_runners
            go_example_two_members
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (($factory:expr, $scale:expr) $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case(stringify!($case), $scale, $factory, |harness| {
                    ::std::boxed::Box::pin(async move { $crate::cases::$case(&harness).await })
                });
            }
        )*
    };
}
