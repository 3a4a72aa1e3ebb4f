//! Statistics of the benchmark samples: median, a distribution-free 95%
//! confidence interval for it, and a bootstrap interval for a ratio of two
//! medians.
//!
//! Owns nothing but arithmetic: no I/O, no clock, and a fixed-seed generator
//! for the bootstrap, so the same samples always give the same intervals.

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_964;

/// Bootstrap resamples for [`ratio_of_medians`].
const RESAMPLES: usize = 2000;

/// Median, its 95% confidence interval, and the range of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// Lower end of the 95% interval for the median.
    pub ci_low: f64,
    /// Upper end of the 95% interval for the median.
    pub ci_high: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// The summary-CSV fields: `n,median,ci_low,ci_high,mean,min,max`.
    pub fn csv_fields(&self) -> String {
        format!(
            "{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
            self.n, self.median, self.ci_low, self.ci_high, self.mean, self.min, self.max
        )
    }
}

/// Summarizes `values` (NaNs ignored); `None` when nothing is left.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let (lo, hi) = median_ci_ranks(n);
    Some(Summary {
        n,
        median: median_sorted(&sorted),
        ci_low: sorted[lo],
        ci_high: sorted[hi],
        mean: sorted.iter().sum::<f64>() / n as f64,
        min: sorted[0],
        max: sorted[n - 1],
    })
}

/// Median of sorted, non-empty `sorted`.
fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Zero-based ranks of the order statistics bounding a 95% interval for the
/// median of `n >= 1` samples: ranks `n/2 - z*sqrt(n)/2` and
/// `1 + n/2 + z*sqrt(n)/2` (one-based, rounded), the normal approximation of
/// the Binomial(n, 1/2) count of samples below the median. Needs no
/// assumption about the distribution; for small `n` it widens to the range.
pub fn median_ci_ranks(n: usize) -> (usize, usize) {
    let half = n as f64 / 2.0;
    let spread = Z95 * (n as f64).sqrt() / 2.0;
    let lo = (half - spread).round().max(1.0) as usize;
    let hi = ((1.0 + half + spread).round() as usize).min(n);
    (lo - 1, hi - 1)
}

/// The ratio `median(a) / median(b)` and a 95% percentile-bootstrap
/// interval for it (each set resampled independently). `None` if either set
/// is empty or `b`'s median is zero.
pub fn ratio_of_medians(a: &[f64], b: &[f64]) -> Option<(f64, f64, f64)> {
    let ma = summarize(a)?.median;
    let mb = summarize(b)?.median;
    if mb == 0.0 {
        return None;
    }
    let mut rng = SplitMix(0x5eed_1234_abcd_0001);
    let mut scratch_a = vec![0.0; a.len()];
    let mut scratch_b = vec![0.0; b.len()];
    let mut ratios = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        let ra = resampled_median(a, &mut scratch_a, &mut rng);
        let rb = resampled_median(b, &mut scratch_b, &mut rng);
        if rb != 0.0 {
            ratios.push(ra / rb);
        }
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    Some((ma / mb, at(0.025), at(0.975)))
}

fn resampled_median(values: &[f64], scratch: &mut [f64], rng: &mut SplitMix) -> f64 {
    for slot in scratch.iter_mut() {
        *slot = values[rng.below(values.len())];
    }
    scratch.sort_by(f64::total_cmp);
    median_sorted(scratch)
}

/// SplitMix64: a small, fixed-seed generator for the bootstrap.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is far below 2^-40 here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]).map(|s| s.median), Some(2.0));
        assert_eq!(
            summarize(&[4.0, 1.0, 3.0, 2.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
    }

    #[test]
    fn ci_ranks_match_the_binomial_normal_approximation() {
        // n = 200: ranks 86 and 115 (one-based), as in the tables.
        assert_eq!(median_ci_ranks(200), (85, 114));
        // n = 100: ranks 40 and 61.
        assert_eq!(median_ci_ranks(100), (39, 60));
        // Tiny sets widen to the range, never past it.
        assert_eq!(median_ci_ranks(1), (0, 0));
        assert_eq!(median_ci_ranks(3), (0, 2));
    }

    #[test]
    fn ci_brackets_the_median() {
        let values: Vec<f64> = (0..201).map(|i| f64::from((i * 37) % 201)).collect();
        let s = summarize(&values).expect("summary");
        assert_eq!(s.median, 100.0);
        assert!(s.ci_low < s.median && s.median < s.ci_high);
        assert_eq!((s.min, s.max), (0.0, 200.0));
        assert!((s.mean - 100.0).abs() < 1e-9);
    }

    #[test]
    fn ratio_of_equal_sets_is_one_with_an_interval_around_it() {
        let a: Vec<f64> = (0..200).map(|i| 1.0 + f64::from(i % 10) / 100.0).collect();
        let (r, lo, hi) = ratio_of_medians(&a, &a).expect("ratio");
        assert_eq!(r, 1.0);
        assert!(lo <= 1.0 && hi >= 1.0 && hi - lo < 0.1, "{lo} {hi}");
        let doubled: Vec<f64> = a.iter().map(|v| v * 2.0).collect();
        let (r, lo, hi) = ratio_of_medians(&doubled, &a).expect("ratio");
        assert!((r - 2.0).abs() < 1e-12 && lo < 2.0 + 1e-9 && hi > 2.0 - 1e-9);
        assert_eq!(ratio_of_medians(&a, &[0.0]), None);
    }
}
