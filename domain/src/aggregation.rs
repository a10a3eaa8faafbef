//! How a meter combines the values of many events: SUM, COUNT, MIN, MAX, UNIQUE_COUNT,
//! LATEST.
//!
//! A [`Partial`] is the mergeable state of one group of events for every aggregation but
//! UNIQUE_COUNT: folding events one by one and merging partials in any order and grouping
//! gives the same result (property-tested), so per-window quantities merge exactly into period
//! quantities. UNIQUE_COUNT cannot be merged from counts (the same value may appear in two
//! windows); it is always computed from the values themselves (the public view
//! `v_usage_readings`).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A meter's aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Aggregation {
    Sum,
    Count,
    Min,
    Max,
    /// Distinct values of the value property (any scalar, compared as text).
    UniqueCount,
    /// The value of the event with the latest event time (ties: the greater event id).
    Latest,
}

impl Aggregation {
    /// The name stored in rollups and shown in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "SUM",
            Aggregation::Count => "COUNT",
            Aggregation::Min => "MIN",
            Aggregation::Max => "MAX",
            Aggregation::UniqueCount => "UNIQUE_COUNT",
            Aggregation::Latest => "LATEST",
        }
    }

    /// Whether per-window quantities can be merged into a period quantity ([`Partial`]).
    pub fn mergeable(self) -> bool {
        !matches!(self, Aggregation::UniqueCount)
    }

    /// Whether the value property is read as a decimal quantity (UNIQUE_COUNT reads text).
    pub fn reads_decimal(self) -> bool {
        !matches!(self, Aggregation::Count | Aggregation::UniqueCount)
    }

    /// Whether the aggregation reads a value property (COUNT does not).
    pub fn needs_value(self) -> bool {
        !matches!(self, Aggregation::Count)
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "SUM" => Ok(Aggregation::Sum),
            "COUNT" => Ok(Aggregation::Count),
            "MIN" => Ok(Aggregation::Min),
            "MAX" => Ok(Aggregation::Max),
            "UNIQUE_COUNT" => Ok(Aggregation::UniqueCount),
            "LATEST" => Ok(Aggregation::Latest),
            other => Err(format!(
                "unknown aggregation {other:?}, expected SUM, COUNT, MIN, MAX, UNIQUE_COUNT or LATEST"
            )),
        }
    }
}

/// The mergeable state of a group of events. `min`/`max`/`latest` are meaningful only when
/// `count > 0`. `latest` is the value at the greatest `latest_at` ordering key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub count: u64,
    pub sum: Decimal,
    pub min: Decimal,
    pub max: Decimal,
    pub latest: Decimal,
    /// Ordering key of `latest`: event time (or window start) and a tiebreak.
    pub latest_at: (i64, u64),
}

impl Default for Partial {
    fn default() -> Self {
        Partial {
            count: 0,
            sum: Decimal::ZERO,
            min: Decimal::ZERO,
            max: Decimal::ZERO,
            latest: Decimal::ZERO,
            latest_at: (i64::MIN, 0),
        }
    }
}

impl Partial {
    /// The state of a single event (or window) with `value` at ordering key `at`.
    pub fn of(value: Decimal, at: (i64, u64)) -> Partial {
        Partial {
            count: 1,
            sum: value,
            min: value,
            max: value,
            latest: value,
            latest_at: at,
        }
    }

    /// Adds one value at ordering key `at`. `None` if the sum would overflow.
    pub fn fold(&mut self, value: Decimal, at: (i64, u64)) -> Option<()> {
        self.merge(&Partial::of(value, at))
    }

    /// Merges another partial into this one. `None` (and `self` unchanged) on overflow.
    pub fn merge(&mut self, other: &Partial) -> Option<()> {
        if other.count == 0 {
            return Some(());
        }
        if self.count == 0 {
            *self = *other;
            return Some(());
        }
        let sum = self.sum.checked_add(other.sum)?;
        let count = self.count.checked_add(other.count)?;
        self.sum = sum;
        self.count = count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.latest_at > self.latest_at {
            self.latest = other.latest;
            self.latest_at = other.latest_at;
        }
        Some(())
    }

    /// The meter's quantity for this group. `None` for UNIQUE_COUNT, which partials cannot
    /// express.
    pub fn value(&self, aggregation: Aggregation) -> Option<Decimal> {
        match aggregation {
            Aggregation::Sum => Some(self.sum),
            Aggregation::Count => Some(Decimal::from(self.count)),
            Aggregation::Min => Some(self.min),
            Aggregation::Max => Some(self.max),
            Aggregation::Latest => Some(self.latest),
            Aggregation::UniqueCount => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(units: i64, scale: u32) -> Decimal {
        Decimal::new(units, scale)
    }

    #[test]
    fn folds_each_aggregation() {
        let mut p = Partial::default();
        for (t, v) in [(5, dec(15, 1)), (9, dec(3, 0)), (7, dec(25, 2))] {
            p.fold(v, (t, 0)).unwrap();
        }
        assert_eq!(p.value(Aggregation::Sum), Some(dec(475, 2)));
        assert_eq!(p.value(Aggregation::Count), Some(Decimal::from(3)));
        assert_eq!(p.value(Aggregation::Min), Some(dec(25, 2)));
        assert_eq!(p.value(Aggregation::Max), Some(dec(3, 0)));
        assert_eq!(
            p.value(Aggregation::Latest),
            Some(dec(3, 0)),
            "the value at time 9"
        );
        assert_eq!(p.value(Aggregation::UniqueCount), None);
    }

    #[test]
    fn parses_names() {
        assert_eq!("SUM".parse::<Aggregation>(), Ok(Aggregation::Sum));
        assert_eq!(
            "UNIQUE_COUNT".parse::<Aggregation>(),
            Ok(Aggregation::UniqueCount)
        );
        assert_eq!("LATEST".parse::<Aggregation>(), Ok(Aggregation::Latest));
        assert!("sum".parse::<Aggregation>().is_err());
        for a in [
            Aggregation::Sum,
            Aggregation::Count,
            Aggregation::Min,
            Aggregation::Max,
            Aggregation::UniqueCount,
            Aggregation::Latest,
        ] {
            assert_eq!(a.as_str().parse::<Aggregation>(), Ok(a));
        }
    }

    proptest! {
        #[test]
        fn merging_in_any_order_and_split_equals_folding(
            values in prop::collection::vec((0i64..1_000_000_000, 0u32..6, 0i64..1000), 0..60),
            split in 0usize..60,
            seed in any::<u64>(),
        ) {
            // distinct ordering keys, as (event time, event index) always are
            let values: Vec<(Decimal, (i64, u64))> =
                values.into_iter().enumerate().map(|(i, (u, s, t))| (dec(u, s), (t, i as u64))).collect();
            let mut whole = Partial::default();
            for (v, at) in &values { whole.fold(*v, *at).unwrap(); }
            // fold a permutation in two parts and merge them the other way round
            let mut shuffled = values.clone();
            let n = shuffled.len();
            for i in 0..n { shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % n.max(1)); }
            let cut = split.min(n);
            let (mut left, mut right) = (Partial::default(), Partial::default());
            for (v, at) in &shuffled[..cut] { left.fold(*v, *at).unwrap(); }
            for (v, at) in &shuffled[cut..] { right.fold(*v, *at).unwrap(); }
            let mut merged = right;
            merged.merge(&left).unwrap();
            prop_assert_eq!(merged, whole);
        }
    }
}
