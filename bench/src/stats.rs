//! `Samples`: durations measured over many rounds, and their percentiles.

use std::time::Duration;

use serde::Serialize;

/// Durations of one measurement, in the order they were taken.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples(Vec<Duration>);

/// What the report keeps of a [`Samples`]: count and percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
}

impl Samples {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    pub(crate) fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    /// The `q`-quantile (0.0 to 1.0) by the nearest-rank method: the smallest sample
    /// with at least `q` of all samples at or below it. `None` without samples.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        // Nearest rank: ceil(q * n), 1-based; q = 0 gives the minimum.
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        sorted.get(rank.clamp(1, n) - 1).copied()
    }

    pub(crate) fn summary(&self) -> Summary {
        let us = |q| self.quantile(q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
        Summary {
            count: self.0.len(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            max_us: us(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Samples {
        Samples(values.iter().map(|&v| Duration::from_millis(v)).collect())
    }

    #[test]
    fn quantiles_follow_the_nearest_rank_method() {
        let samples = ms(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(samples.quantile(0.5), Some(Duration::from_millis(5)));
        assert_eq!(samples.quantile(0.99), Some(Duration::from_millis(10)));
        assert_eq!(samples.quantile(0.1), Some(Duration::from_millis(1)));
        assert_eq!(samples.quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(samples.quantile(1.0), Some(Duration::from_millis(10)));
    }

    #[test]
    fn p99_of_a_hundred_samples_is_the_99th() {
        let samples = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(samples.quantile(0.99), Some(Duration::from_millis(99)));
        let summary = samples.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_us, 50_000.0);
        assert_eq!(summary.max_us, 100_000.0);
    }

    #[test]
    fn no_samples_have_no_quantiles() {
        let samples = Samples::default();
        assert_eq!(samples.quantile(0.5), None);
        assert!(samples.summary().p50_us.is_nan());
    }
}
