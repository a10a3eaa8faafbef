//! Entitlements: what a plan version gives a customer besides prices. `features` are
//! booleans (a customer on the plan has them); `limits` are metered allowances per billing
//! period (for example 1,000,000 tokens of the large model a month): a limit on a meter,
//! optionally only for usage with some group-by values. They change with plan versions like
//! prices do: the version in force for the period is the one that counts.
//!
//! It owns the declaration's validation (its file shape, [`EntitlementsSpec`], is in
//! [`crate::config`] with the rest of `[[plans]]`), and the pure question "does this usage fit
//! the limits"; the live decider asks it (`live::book`), nothing here reads storage.

use std::collections::BTreeMap;

use serde::Serialize;
use tally_domain::{Aggregation, Meter};

pub use crate::config::{EntitlementsSpec, LimitSpec};

/// A plan version's validated entitlements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Entitlements {
    pub features: Vec<String>,
    pub limits: Vec<LimitSpec>,
}

impl Entitlements {
    /// Whether the plan has `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// The limits that usage of `meter` with `group` counts against.
    pub fn limits_for<'a>(
        &'a self,
        meter: &'a str,
        group: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a LimitSpec> + 'a {
        self.limits
            .iter()
            .filter(move |l| l.meter == meter && matches(l, group))
    }
}

/// Whether a request (or its hold) with `group` counts against limit `l`: every value the
/// limit names is the request's, or the request does not say (a request that names no model
/// may be for the limited one, so it counts: the conservative side).
pub fn matches(l: &LimitSpec, group: &BTreeMap<String, String>) -> bool {
    l.group
        .iter()
        .all(|(k, v)| group.get(k).is_none_or(|g| g == v))
}

/// Like [`fn@matches`], for group values stored as parallel name and value lists.
pub fn matches_lists(l: &LimitSpec, names: &[String], values: &[String]) -> bool {
    l.group.iter().all(|(k, v)| {
        names
            .iter()
            .position(|n| n == k)
            .and_then(|i| values.get(i))
            == Some(v)
    })
}

/// Validates `plans[i].entitlements` against the declared meters: feature names are tokens,
/// a limit names a declared meter that adds up (SUM or COUNT: what a period's limit of a
/// maximum or a latest value would mean is not defined) and group-by names of that meter, and
/// is not negative.
pub fn validate(
    spec: EntitlementsSpec,
    i: usize,
    meters: &[Meter],
) -> Result<Entitlements, (String, String)> {
    let at = |f: String| format!("plans[{i}].entitlements.{f}");
    for (j, f) in spec.features.iter().enumerate() {
        let ok = !f.is_empty()
            && f.len() <= 64
            && f.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err((
                at(format!("features[{j}]")),
                "must match [A-Za-z0-9_-]{1,64}".into(),
            ));
        }
    }
    for (j, l) in spec.limits.iter().enumerate() {
        let field = |f: &str| at(format!("limits[{j}].{f}"));
        let Some(meter) = meters.iter().find(|m| m.slug.as_str() == l.meter) else {
            return Err((
                field("meter"),
                format!("no meter {:?} is declared", l.meter),
            ));
        };
        if !matches!(meter.aggregation, Aggregation::Sum | Aggregation::Count) {
            return Err((
                field("meter"),
                format!(
                    "{} is {:?}: limits are on SUM or COUNT meters",
                    l.meter, meter.aggregation
                ),
            ));
        }
        if let Some(k) = l
            .group
            .keys()
            .find(|k| !meter.group_by.iter().any(|(n, _)| n == *k))
        {
            return Err((field("group"), format!("{} has no group-by {k:?}", l.meter)));
        }
        if l.limit.is_sign_negative() {
            return Err((field("limit"), "must not be negative".into()));
        }
    }
    Ok(Entitlements {
        features: spec.features,
        limits: spec.limits,
    })
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn limit(group: &[(&str, &str)]) -> LimitSpec {
        LimitSpec {
            meter: "llm_tokens".into(),
            group: group
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            limit: Decimal::from(1000),
        }
    }

    #[test]
    fn a_limit_counts_usage_with_every_value_it_names() {
        let usage: BTreeMap<String, String> = [
            ("model".into(), "gpt-4o".into()),
            ("kind".into(), "output".into()),
        ]
        .into();
        assert!(matches(&limit(&[]), &usage));
        assert!(matches(&limit(&[("model", "gpt-4o")]), &usage));
        assert!(!matches(&limit(&[("model", "o1")]), &usage));
        assert!(
            matches(&limit(&[("region", "eu")]), &usage),
            "a value the request does not name counts"
        );
        assert!(
            matches(&limit(&[("model", "gpt-4o")]), &BTreeMap::new()),
            "so does a request without a group"
        );
        let names = vec!["kind".to_owned(), "model".to_owned()];
        let values = vec!["output".to_owned(), "gpt-4o".to_owned()];
        assert!(matches_lists(
            &limit(&[("model", "gpt-4o")]),
            &names,
            &values
        ));
        assert!(!matches_lists(&limit(&[("model", "o1")]), &names, &values));
    }

    #[test]
    fn entitlements_are_validated_against_the_meters() {
        let meters = tally_domain::meter::validate_meters(
            serde_json::from_value(serde_json::json!([
                {"slug": "llm_tokens", "event_type": "llm.tokens", "aggregation": "SUM",
                 "value_property": "$.tokens", "group_by": {"model": "$.model"}},
                {"slug": "seats", "event_type": "seat", "aggregation": "MAX", "value_property": "$.n"}
            ]))
            .unwrap(),
        )
        .unwrap();
        let ok = EntitlementsSpec {
            features: vec!["web_search".into()],
            limits: vec![limit(&[("model", "gpt-4o")])],
        };
        assert!(validate(ok, 0, &meters).is_ok());
        let bad = |s: EntitlementsSpec| validate(s, 2, &meters).unwrap_err().0;
        assert_eq!(
            bad(EntitlementsSpec {
                features: vec!["a b".into()],
                limits: vec![]
            }),
            "plans[2].entitlements.features[0]"
        );
        let mut l = limit(&[("region", "eu")]);
        assert_eq!(
            bad(EntitlementsSpec {
                features: vec![],
                limits: vec![l.clone()]
            }),
            "plans[2].entitlements.limits[0].group"
        );
        l.group.clear();
        l.meter = "seats".into();
        assert_eq!(
            bad(EntitlementsSpec {
                features: vec![],
                limits: vec![l.clone()]
            }),
            "plans[2].entitlements.limits[0].meter"
        );
        l.meter = "llm_tokens".into();
        l.limit = Decimal::NEGATIVE_ONE;
        assert_eq!(
            bad(EntitlementsSpec {
                features: vec![],
                limits: vec![l]
            }),
            "plans[2].entitlements.limits[0].limit"
        );
    }
}
