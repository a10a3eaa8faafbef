//! Dimensional prices (an AI price book): a unit price per combination of group-by values,
//! e.g. per model and token kind. A charge is computed per group of the meter (one per
//! `group_key`), at the rate whose values equal the group's values for the price's
//! dimensions. A group without a matching rate, and without a `default_unit_price`, is left
//! unpriced (and counted, like usage without a plan).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::exact;

/// One rate of a price book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// One value per dimension, in the order of `dimensions`.
    pub values: Vec<String>,
    #[serde(deserialize_with = "exact::decimal")]
    pub unit_price: Decimal,
}

/// A validated price book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dimensional {
    /// Group-by names the rates are keyed by.
    pub dimensions: Vec<String>,
    pub rates: Vec<Rate>,
    /// For groups no rate matches; none: such groups are unpriced.
    pub default_unit_price: Option<Decimal>,
}

impl Dimensional {
    /// Validates a price book against the meter's group-by names. Errors name the field
    /// relative to the price (`rates[2].values`).
    pub fn new(
        dimensions: Vec<String>,
        rates: Vec<Rate>,
        default_unit_price: Option<Decimal>,
        group_by: &[String],
    ) -> Result<Dimensional, (String, String)> {
        let err = |f: String, d: String| Err((f, d));
        if dimensions.is_empty() {
            return err(
                "dimensions".into(),
                "needs at least one group-by name".into(),
            );
        }
        for (i, name) in dimensions.iter().enumerate() {
            if !group_by.contains(name) {
                return err(
                    format!("dimensions[{i}]"),
                    format!("{name:?} is not a group-by of the meter (it has {group_by:?})"),
                );
            }
            if dimensions[..i].contains(name) {
                return err(format!("dimensions[{i}]"), format!("{name:?} is repeated"));
            }
        }
        if rates.is_empty() {
            return err("rates".into(), "needs at least one rate".into());
        }
        for (i, r) in rates.iter().enumerate() {
            if r.values.len() != dimensions.len() {
                return err(
                    format!("rates[{i}].values"),
                    format!(
                        "has {} values for {} dimensions",
                        r.values.len(),
                        dimensions.len()
                    ),
                );
            }
            if negative(r.unit_price) {
                return err(
                    format!("rates[{i}].unit_price"),
                    format!("{} is negative", r.unit_price),
                );
            }
            if rates[..i].iter().any(|o| o.values == r.values) {
                return err(
                    format!("rates[{i}].values"),
                    format!("{:?} has two rates", r.values),
                );
            }
        }
        if default_unit_price.is_some_and(negative) {
            return err("default_unit_price".into(), "is negative".into());
        }
        Ok(Dimensional {
            dimensions,
            rates,
            default_unit_price,
        })
    }

    /// The unit price for a group (names sorted, values alongside); a missing dimension
    /// reads as the empty string.
    pub fn rate(&self, names: &[String], values: &[String]) -> Option<Decimal> {
        let value_of = |dim: &String| {
            names
                .iter()
                .position(|n| n == dim)
                .and_then(|i| values.get(i))
                .map_or("", String::as_str)
        };
        self.rates
            .iter()
            .find(|r| {
                r.values
                    .iter()
                    .zip(&self.dimensions)
                    .all(|(v, dim)| v == value_of(dim))
            })
            .map(|r| r.unit_price)
            .or(self.default_unit_price)
    }
}

fn negative(d: Decimal) -> bool {
    d.is_sign_negative() && !d.is_zero()
}

/// `model=gpt-4o,kind=output`, for messages.
pub fn describe(names: &[String], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn book(default: Option<&str>) -> Dimensional {
        let rate = |m: &str, k: &str, p: &str| Rate {
            values: s(&[m, k]),
            unit_price: p.parse().unwrap(),
        };
        Dimensional::new(
            s(&["model", "kind"]),
            vec![
                rate("gpt-4o", "input", "0.0000025"),
                rate("gpt-4o", "output", "0.00001"),
                rate("claude-haiku", "input", "0.0000008"),
            ],
            default.map(|d| d.parse().unwrap()),
            &s(&["kind", "model"]),
        )
        .unwrap()
    }

    #[test]
    fn each_group_takes_the_rate_of_its_values() {
        let names = s(&["kind", "model"]); // sorted, as the aggregator stores them
        let b = book(None);
        let rate = |k: &str, m: &str| b.rate(&names, &s(&[k, m]));
        assert_eq!(rate("output", "gpt-4o"), Some("0.00001".parse().unwrap()));
        assert_eq!(rate("input", "gpt-4o"), Some("0.0000025".parse().unwrap()));
        assert_eq!(
            rate("input", "claude-haiku"),
            Some("0.0000008".parse().unwrap())
        );
        assert_eq!(rate("output", "claude-haiku"), None);
        let with_default = book(Some("0.00002"));
        assert_eq!(
            with_default.rate(&names, &s(&["output", "claude-haiku"])),
            Some("0.00002".parse().unwrap())
        );
    }

    #[test]
    fn a_bad_price_book_names_the_field() {
        let group_by = s(&["kind", "model"]);
        let rate = |v: &[&str], p: &str| Rate {
            values: s(v),
            unit_price: p.parse().unwrap(),
        };
        let field = |dims: &[&str], rates: Vec<Rate>| {
            Dimensional::new(s(dims), rates, None, &group_by)
                .unwrap_err()
                .0
        };
        assert_eq!(
            field(&["region"], vec![rate(&["eu"], "1")]),
            "dimensions[0]"
        );
        assert_eq!(field(&["model"], vec![]), "rates");
        assert_eq!(
            field(&["model"], vec![rate(&["a", "b"], "1")]),
            "rates[0].values"
        );
        assert_eq!(
            field(&["model"], vec![rate(&["a"], "-1")]),
            "rates[0].unit_price"
        );
        assert_eq!(
            field(&["model"], vec![rate(&["a"], "1"), rate(&["a"], "2")]),
            "rates[1].values"
        );
    }
}
