//! How a meter combines the values of many events: SUM, COUNT, MIN, MAX.
//!
//! A [`Partial`] is the mergeable state of one group of events. Folding events one by one
//! and merging partials in any order and grouping gives the same result (property-tested), so
//! rollups written in separate batches can be merged by readers exactly.

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
}

impl Aggregation {
    /// The name stored in rollups and shown in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "SUM",
            Aggregation::Count => "COUNT",
            Aggregation::Min => "MIN",
            Aggregation::Max => "MAX",
        }
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
            other => Err(format!(
                "unknown aggregation {other:?}, expected SUM, COUNT, MIN or MAX"
            )),
        }
    }
}

/// The mergeable state of a group of events. `min`/`max` are meaningful only when
/// `count > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub count: u64,
    pub sum: Decimal,
    pub min: Decimal,
    pub max: Decimal,
}

impl Default for Partial {
    fn default() -> Self {
        Partial {
            count: 0,
            sum: Decimal::ZERO,
            min: Decimal::ZERO,
            max: Decimal::ZERO,
        }
    }
}

impl Partial {
    /// The state of a single event with `value` (1 for COUNT meters).
    pub fn of(value: Decimal) -> Partial {
        Partial {
            count: 1,
            sum: value,
            min: value,
            max: value,
        }
    }

    /// Adds one event's value. `None` if the sum would overflow.
    pub fn fold(&mut self, value: Decimal) -> Option<()> {
        self.merge(&Partial::of(value))
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
        Some(())
    }

    /// The meter's quantity for this group.
    pub fn value(&self, aggregation: Aggregation) -> Decimal {
        match aggregation {
            Aggregation::Sum => self.sum,
            Aggregation::Count => Decimal::from(self.count),
            Aggregation::Min => self.min,
            Aggregation::Max => self.max,
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
        for v in [dec(15, 1), dec(3, 0), dec(25, 2)] {
            p.fold(v).unwrap();
        }
        assert_eq!(p.value(Aggregation::Sum), dec(475, 2));
        assert_eq!(p.value(Aggregation::Count), Decimal::from(3));
        assert_eq!(p.value(Aggregation::Min), dec(25, 2));
        assert_eq!(p.value(Aggregation::Max), dec(3, 0));
    }

    #[test]
    fn parses_names() {
        assert_eq!("SUM".parse::<Aggregation>(), Ok(Aggregation::Sum));
        assert!("sum".parse::<Aggregation>().is_err());
    }

    proptest! {
        #[test]
        fn merging_in_any_split_equals_folding(values in prop::collection::vec((0i64..1_000_000_000, 0u32..6), 0..60), split in 0usize..60) {
            let values: Vec<Decimal> = values.into_iter().map(|(u, s)| dec(u, s)).collect();
            let mut whole = Partial::default();
            for v in &values { whole.fold(*v).unwrap(); }
            let cut = split.min(values.len());
            let (mut left, mut right) = (Partial::default(), Partial::default());
            for v in &values[..cut] { left.fold(*v).unwrap(); }
            for v in &values[cut..] { right.fold(*v).unwrap(); }
            let mut merged = right;
            merged.merge(&left).unwrap();
            prop_assert_eq!(merged, whole);
        }
    }
}
