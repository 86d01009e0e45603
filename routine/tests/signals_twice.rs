//! A second SIGTERM during the drain ends it at once (its own test binary: it signals its
//! own process).
#![cfg(all(unix, feature = "signals"))]

mod second_signal;

#[tokio::test]
async fn a_second_sigterm_during_the_drain_drops_the_routines_still_running() {
    second_signal::a_second_signal_during_the_drain_drops_the_routines_still_running("TERM").await;
}
