//! Meters in the catalog: one version of a meter (the body of `POST /v1/meters`, or a
//! `[[meters]]` entry of the file as version 1), validated by the domain's rules
//! ([`tally_domain::meter::Meter::try_from`]) with errors naming the field (`meter.slug`,
//! `meter.value_property`). Pure.
//!
//! Each meter is a sequence of immutable versions; the rater prices with the highest version
//! of every stored meter, and a plan naming a meter that is not stored is refused. A new
//! version keeps the meter's aggregation (stored usage was aggregated with it; a different
//! aggregation is a new meter).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tally_domain::meter::{Meter, MeterError, MeterSpec};
use tally_domain::Aggregation;
use tally_platform::ConfigError;

use crate::catalog::customers::{check_version, first_version};

/// One version of a meter: the fields of a `[[meters]]` entry plus `version`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeterEntry {
    /// Unique name, used in rollups, prices and invoices.
    pub slug: String,
    /// 1, 2, ...: a change is a new, higher version. Default 1.
    #[serde(default = "first_version")]
    pub version: u32,
    /// The CloudEvent `type` this meter selects.
    pub event_type: String,
    /// SUM, COUNT, MIN, MAX, UNIQUE_COUNT or LATEST.
    pub aggregation: Aggregation,
    /// JSON path of the quantity in `data`; required unless the aggregation is COUNT.
    #[serde(default)]
    pub value_property: Option<String>,
    /// Group-by name to JSON path in `data`.
    #[serde(default)]
    pub group_by: BTreeMap<String, String>,
}

impl MeterEntry {
    /// Version `version` of a meter declared in the file.
    pub fn from_spec(spec: &MeterSpec, version: u32) -> MeterEntry {
        MeterEntry {
            slug: spec.slug.clone(),
            version,
            event_type: spec.event_type.clone(),
            aggregation: spec.aggregation,
            value_property: spec.value_property.clone(),
            group_by: spec.group_by.clone(),
        }
    }

    /// The declaration without its version.
    pub fn spec(&self) -> MeterSpec {
        MeterSpec {
            slug: self.slug.clone(),
            event_type: self.event_type.clone(),
            aggregation: self.aggregation,
            value_property: self.value_property.clone(),
            group_by: self.group_by.clone(),
        }
    }

    /// The stored body of this version.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether `other` declares the same meter (every field but the version).
    pub fn same_definition(&self, other: &MeterEntry) -> bool {
        MeterEntry {
            version: other.version,
            ..self.clone()
        } == *other
    }
}

/// Validates one meter version; `at` names the entry (`meter`, `meters[2]`).
pub fn validate_meter(entry: &MeterEntry, at: &str) -> Result<Meter, ConfigError> {
    check_version(entry.version, &format!("{at}.version"))?;
    Meter::try_from(entry.spec()).map_err(|e| {
        let MeterError::Invalid { detail, .. } = &e;
        ConfigError::invalid(format!("{at}.{}", field_of(detail)), e)
    })
}

/// The field a domain meter error is about, from its detail (`value_property: ...`).
fn field_of(detail: &str) -> &'static str {
    if detail.starts_with("slug") {
        "slug"
    } else if detail.starts_with("event_type") {
        "event_type"
    } else if detail.contains("value_property") {
        "value_property"
    } else {
        "group_by"
    }
}

/// Refuses a new version that changes the aggregation of the stored `latest`.
pub fn check_successor(
    latest: &MeterEntry,
    next: &MeterEntry,
    at: &str,
) -> Result<(), ConfigError> {
    if latest.aggregation != next.aggregation {
        return Err(ConfigError::invalid(
            format!("{at}.aggregation"),
            format!(
                "meter {} aggregates with {} (version {}); a different aggregation is a new \
                 meter with another slug",
                latest.slug, latest.aggregation, latest.version
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: &str) -> MeterEntry {
        serde_json::from_str(json).expect("a meter")
    }

    #[test]
    fn bad_meters_are_refused_naming_the_field() {
        for (json, field) in [
            (
                r#"{"slug":"a b","event_type":"t","aggregation":"COUNT"}"#,
                "meter.slug",
            ),
            (
                r#"{"slug":"m","event_type":"","aggregation":"COUNT"}"#,
                "meter.event_type",
            ),
            (
                r#"{"slug":"m","event_type":"t","aggregation":"SUM"}"#,
                "meter.value_property",
            ),
            (
                r#"{"slug":"m","event_type":"t","aggregation":"SUM","value_property":"tokens"}"#,
                "meter.value_property",
            ),
            (
                r#"{"slug":"m","event_type":"t","aggregation":"COUNT","group_by":{"x":"nope"}}"#,
                "meter.group_by",
            ),
            (
                r#"{"slug":"m","version":0,"event_type":"t","aggregation":"COUNT"}"#,
                "meter.version",
            ),
        ] {
            let err = validate_meter(&entry(json), "meter")
                .expect_err(json)
                .to_string();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
    }

    #[test]
    fn a_new_version_keeps_the_aggregation() {
        let v1 = entry(r#"{"slug":"m","event_type":"t","aggregation":"COUNT"}"#);
        let mut v2 = v1.clone();
        v2.version = 2;
        v2.group_by.insert("tool".into(), "$.tool".into());
        assert!(check_successor(&v1, &v2, "meter").is_ok());
        assert!(v1.same_definition(&v1.clone()) && !v1.same_definition(&v2));
        v2.aggregation = Aggregation::Sum;
        let err = check_successor(&v1, &v2, "meter").expect_err("refused");
        assert!(err.to_string().contains("meter.aggregation"), "{err}");
    }
}
