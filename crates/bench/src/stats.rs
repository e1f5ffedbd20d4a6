//! Summaries: percentiles of one run's latencies (a sorted Vec is exact at these counts) and the
//! median/spread of a figure over rounds.

use serde::Serialize;

/// Percentile `p` (0–100) of sorted nanosecond samples, nearest-rank. None when empty.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// A figure over rounds: median and spread.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Summary {
    /// Median over rounds.
    pub(crate) median: f64,
    /// Smallest round.
    pub(crate) min: f64,
    /// Largest round.
    pub(crate) max: f64,
    /// Every round, in run order.
    pub(crate) rounds: Vec<f64>,
}

impl Summary {
    /// Summarises the rounds; None when there are none.
    pub(crate) fn of(rounds: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = rounds.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            rounds: rounds.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let hundred: Vec<u64> = (1..=100).collect();
        let cases: [(&[u64], f64, Option<u64>); 6] = [
            (&hundred, 50.0, Some(50)),
            (&hundred, 99.0, Some(99)),
            (&hundred, 100.0, Some(100)),
            (&hundred, 0.0, Some(1)),
            (&[7], 99.0, Some(7)),
            (&[], 50.0, None),
        ];
        for (xs, p, want) in cases {
            assert_eq!(percentile(xs, p), want, "p{p} of {} samples", xs.len());
        }
    }

    #[test]
    fn summaries() {
        type Spread = Option<(f64, f64, f64)>;
        let cases: [(&[f64], Spread); 4] = [
            (&[3.0, 1.0, 2.0], Some((2.0, 1.0, 3.0))),
            (&[4.0, 1.0, 2.0, 3.0], Some((2.5, 1.0, 4.0))),
            (&[f64::NAN, 5.0], Some((5.0, 5.0, 5.0))),
            (&[], None),
        ];
        for (xs, want) in cases {
            assert_eq!(
                Summary::of(xs).map(|s| (s.median, s.min, s.max)),
                want,
                "{xs:?}"
            );
        }
    }
}
