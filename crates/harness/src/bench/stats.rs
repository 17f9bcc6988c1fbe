//! The summary of a benchmark's repeated figures: median and spread, so a report shows
//! how much the runs agree and not only the best of them.

use serde::Serialize;

/// The median and the range of a set of figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The median (the mean of the two middle figures for an even count).
    pub median: f64,
    /// The smallest figure.
    pub min: f64,
    /// The largest figure.
    pub max: f64,
}

impl Spread {
    /// The spread of `figures`; `None` when there are none or one is not a number.
    pub fn of(figures: &[f64]) -> Option<Spread> {
        if figures.is_empty() || figures.iter().any(|figure| figure.is_nan()) {
            return None;
        }
        let mut sorted = figures.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// `median [min..max]` with `decimals` decimals, for the lines a person reads.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.decimals$} [{:.decimals$}..{:.decimals$}]",
            self.median, self.min, self.max
        )
    }
}

/// The `fraction` quantile (0.0..=1.0) of `figures` by the nearest-rank method; `None`
/// when there are none.
pub fn quantile(figures: &[f64], fraction: f64) -> Option<f64> {
    if figures.is_empty() {
        return None;
    }
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (fraction.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Medians of odd and even counts, the range, and quantiles by nearest rank.
    #[test]
    fn medians_ranges_and_quantiles() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]).expect("figures");
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 2.0, 3.0]).expect("figures");
        assert_eq!(even.median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[1.0, f64::NAN]).is_none());
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&hundred, 0.5), Some(50.0));
        assert_eq!(quantile(&hundred, 0.99), Some(99.0));
        assert_eq!(quantile(&hundred, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], 0.0), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
