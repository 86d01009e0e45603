//! A second SIGINT during the drain ends it at once: the twin of `signals_twice.rs` for
//! Ctrl-C (its own test binary: it signals its own process).
#![cfg(all(unix, feature = "signals"))]

mod second_signal;

#[tokio::test]
async fn a_second_sigint_during_the_drain_drops_the_routines_still_running() {
    second_signal::a_second_signal_during_the_drain_drops_the_routines_still_running("INT").await;
}
