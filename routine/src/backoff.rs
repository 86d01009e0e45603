//! Exponential backoff with jitter, for restarts after panics and backend errors.

use std::time::Duration;

use rand::Rng;

/// Doubles from `min` up to `max`, with ±25% jitter so that a fleet restarted together
/// does not retry in lockstep.
///
/// Only the attempt count is kept; the bounds are passed to each
/// [`next_wait`](Backoff::next_wait) (they are the routine's settings): a named routine's
/// task keeps three backoffs for as long as it runs, and bounds in each took 120 bytes
/// of every routine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The next wait: `min * 2^attempt`, jittered, always within `[min, max]` (`max` is
    /// at least `min`).
    pub(crate) fn next_wait(&mut self, min: Duration, max: Duration) -> Duration {
        let max = max.max(min);
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        self.attempt = self.attempt.saturating_add(1);
        let base = min.saturating_mul(factor).min(max);
        let jitter = rand::rng().random_range(0.75..=1.25);
        base.mul_f64(jitter).clamp(min, max)
    }

    /// Starts again from `min`.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_bounds() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(600);
        let mut backoff = Backoff::new();
        let mut previous_base = Duration::ZERO;
        for attempt in 0..40u32 {
            let wait = backoff.next_wait(min, max);
            assert!(
                wait >= min && wait <= max,
                "wait {wait:?} must stay in [min, max]"
            );
            let base = min
                .saturating_mul(2u32.saturating_pow(attempt.min(30)))
                .min(max);
            assert!(
                wait >= base.mul_f64(0.75).max(min) && wait <= base.mul_f64(1.25).min(max),
                "attempt {attempt}: wait {wait:?} must be within 25% of {base:?}"
            );
            assert!(base >= previous_base, "the base must never shrink");
            previous_base = base;
        }
        assert_eq!(previous_base, max, "the base must reach the maximum");
    }

    #[test]
    fn reset_starts_again_from_min() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        let mut backoff = Backoff::new();
        for _ in 0..10 {
            backoff.next_wait(min, max);
        }
        backoff.reset();
        assert!(
            backoff.next_wait(min, max) <= min.mul_f64(1.25),
            "first wait after reset is about min"
        );
    }

    #[test]
    fn jitter_spreads_waits() {
        let mut waits = std::collections::HashSet::new();
        for _ in 0..20 {
            let (min, max) = (Duration::from_secs(1), Duration::from_secs(600));
            let mut backoff = Backoff::new();
            backoff.next_wait(min, max);
            waits.insert(backoff.next_wait(min, max));
        }
        assert!(
            waits.len() > 1,
            "20 fleets must not all wait exactly the same time"
        );
    }
}
