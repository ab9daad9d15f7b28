//! Latency histograms (HDR, microseconds) and how they travel between processes.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value recorded exactly enough: 10 minutes in microseconds; larger values saturate.
const HIGHEST_US: u64 = 600_000_000;

/// An empty histogram of microseconds, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// A histogram as `(value, count)` pairs, to send as JSON.
pub type Buckets = Vec<(u64, u64)>;

pub fn to_buckets(h: &Histogram<u64>) -> Buckets {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn add_buckets(h: &mut Histogram<u64>, buckets: &Buckets) {
    for &(value, count) in buckets {
        h.saturating_record_n(value, count);
    }
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// `p50 … ms, p90 …, p99 …, p99.9 …, max …`, as the summary tables print it.
    pub fn percentiles(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Summary {
        count: h.len(),
        min_ms: ms(h.min()),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip() {
        let mut h = new_hist();
        for v in [1u64, 10, 100, 1000, 10_000, 100_000] {
            h.record_n(v, v).unwrap();
        }
        let mut back = new_hist();
        add_buckets(&mut back, &to_buckets(&h));
        assert_eq!(summarize(&h), summarize(&back));
        assert_eq!(back.len(), 111_111);
    }
}
