//! Band statistics as TiTiler's `/statistics` reports them (rio-tiler, over numpy): min, max,
//! mean, population standard deviation, median and percentiles as rio-tiler ranks them, the
//! most and least frequent values, and a 10-bin histogram over `[min, max]`. Pure arithmetic
//! on the values a worker read; the tests compare the numbers with rio-tiler's own.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BandStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: f64,
    pub sum: f64,
    pub std: f64,
    pub median: f64,
    pub majority: f64,
    pub minority: f64,
    pub unique: f64,
    /// `[counts (10), edges (11)]`.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub histogram: (Vec<u64>, Vec<f64>),
    pub valid_percent: f64,
    pub masked_pixels: f64,
    pub valid_pixels: f64,
    pub percentile_2: f64,
    pub percentile_98: f64,
}

/// rio-tiler's quantile (its weighted quantile with every weight 1): the first sorted value
/// whose rank reaches `p`% of the count, with no interpolation; the median is `p` = 50.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    // The same float operations as rio-tiler's, so a rank on the boundary falls alike.
    let q = (p / 100.0) * sorted.len() as f64;
    let rank = (q.ceil() as usize).saturating_sub(1).min(sorted.len() - 1);
    sorted[rank]
}

/// numpy's `histogram(values, bins=10)`: edges spaced evenly over `[min, max]` (or
/// `[v - 0.5, v + 0.5]` when every value is `v`), the last bin closed.
fn histogram(values: &[f64], min: f64, max: f64) -> (Vec<u64>, Vec<f64>) {
    const BINS: usize = 10;
    let (first, last) = if min == max {
        (min - 0.5, max + 0.5)
    } else {
        (min, max)
    };
    let step = (last - first) / BINS as f64;
    let mut edges: Vec<f64> = (0..BINS).map(|i| first + step * i as f64).collect();
    edges.push(last);
    let mut counts = vec![0u64; BINS];
    for &v in values {
        let mut i = (((v - first) / (last - first)) * BINS as f64) as usize;
        i = i.min(BINS - 1);
        // Rounding may place a value next to its bin: the edges decide.
        if i > 0 && v < edges[i] {
            i -= 1;
        } else if i < BINS - 1 && v >= edges[i + 1] {
            i += 1;
        }
        counts[i] += 1;
    }
    (counts, edges)
}

/// Statistics of `values` where `valid`, out of all `values.len()` pixels read. `None` when no
/// value is valid.
pub fn band_stats(values: &[f64], valid: &[bool]) -> Option<BandStats> {
    let mut data: Vec<f64> = values
        .iter()
        .zip(valid)
        .filter(|(v, ok)| **ok && !v.is_nan())
        .map(|(v, _)| *v)
        .collect();
    if data.is_empty() {
        return None;
    }
    let total = values.len() as f64;
    let n = data.len() as f64;
    let sum: f64 = data.iter().sum();
    let mean = sum / n;
    let std = (data.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    data.sort_by(|a, b| a.partial_cmp(b).expect("no NaN left"));
    let (min, max) = (data[0], data[data.len() - 1]);
    // Runs of equal values in sorted order: the most and least frequent, the first (smallest)
    // on ties, as numpy's argmax and argmin over `unique`.
    let (mut majority, mut minority) = ((data[0], 0usize), (data[0], usize::MAX));
    let mut unique = 0;
    let mut run = (data[0], 0usize);
    for &v in data.iter().chain(std::iter::once(&f64::NAN)) {
        if v == run.0 {
            run.1 += 1;
            continue;
        }
        unique += 1;
        if run.1 > majority.1 {
            majority = run;
        }
        if run.1 < minority.1 {
            minority = run;
        }
        run = (v, 1);
    }
    Some(BandStats {
        min,
        max,
        mean,
        count: n,
        sum,
        std,
        median: percentile(&data, 50.0),
        majority: majority.0,
        minority: minority.0,
        unique: unique as f64,
        histogram: histogram(&data, min, max),
        valid_percent: (n / total * 100.0 * 100.0).round() / 100.0,
        masked_pixels: total - n,
        valid_pixels: n,
        percentile_2: percentile(&data, 2.0),
        percentile_98: percentile(&data, 98.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_numpys() {
        let values = [1.0, 2.0, 2.0, 3.0, 4.0, 10.0, 0.0];
        let valid = [true, true, true, true, true, true, false];
        let s = band_stats(&values, &valid).unwrap();
        assert_eq!((s.min, s.max, s.sum, s.count), (1.0, 10.0, 22.0, 6.0));
        assert!((s.mean - 22.0 / 6.0).abs() < 1e-12);
        // numpy.std([1, 2, 2, 3, 4, 10]) = sqrt(53.33… / 6)
        assert!(
            (s.std - (160.0f64 / 3.0 / 6.0).sqrt()).abs() < 1e-12,
            "{}",
            s.std
        );
        // Ranks, not interpolation: the 3rd of 6 values for the median.
        assert_eq!(
            (s.median, s.percentile_2, s.percentile_98),
            (2.0, 1.0, 10.0)
        );
        assert_eq!((s.majority, s.minority, s.unique), (2.0, 1.0, 5.0));
        assert_eq!(s.histogram.0, [1, 2, 1, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.histogram.1.len(), 11);
        assert_eq!(s.histogram.1[10], 10.0);
        assert_eq!((s.valid_pixels, s.masked_pixels), (6.0, 1.0));
        assert_eq!(s.valid_percent, 85.71);
    }

    #[test]
    fn one_value_everywhere_and_nothing_valid() {
        let s = band_stats(&[5.0; 4], &[true; 4]).unwrap();
        assert_eq!(s.histogram.1.first(), Some(&4.5));
        assert_eq!(s.histogram.0.iter().sum::<u64>(), 4);
        assert_eq!(s.std, 0.0);
        assert!(band_stats(&[f64::NAN, 1.0], &[true, false]).is_none());
    }
}
