//! Declared meters (OpenMeter's model): `{slug, event_type, aggregation, value_property,
//! group_by}`. A meter selects events by `type`, reads an exact quantity from `data` and
//! names the group-by values the usage is split by (for example model and token kind).
//!
//! Meters are data, not code: this module validates a declaration and reads one event; it
//! never stores or aggregates anything.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::aggregation::Aggregation;
use crate::data::{DataError, DataView, JsonPath};
use crate::ids::MeterSlug;

/// The most group-by properties a meter may declare.
pub const GROUP_BY_MAX: usize = 8;
/// The most decimal places a quantity may have (rollups store `Decimal(38, 9)`).
pub const QUANTITY_SCALE_MAX: u32 = 9;
/// The largest quantity one event may carry.
pub const QUANTITY_MAX: Decimal = Decimal::from_parts(0xA4C6_8000, 0x38D7E, 0, false, 0); // 1e15
/// The longest group-by value kept, in bytes.
pub const GROUP_VALUE_MAX_BYTES: usize = 256;

/// A meter as written in configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSpec {
    /// Unique name, used in rollups, prices and invoices.
    pub slug: String,
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

/// A validated meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub slug: MeterSlug,
    pub event_type: String,
    pub aggregation: Aggregation,
    pub value_property: Option<JsonPath>,
    /// Sorted by name, so group values always come out in the same order.
    pub group_by: Vec<(String, JsonPath)>,
}

/// A meter declaration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    #[error("meter {slug:?}: {detail}")]
    Invalid { slug: String, detail: String },
}

/// What a meter read out of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterReading {
    /// The quantity (1 for COUNT and UNIQUE_COUNT).
    pub value: Decimal,
    /// For UNIQUE_COUNT, the value property as text; empty otherwise.
    pub unique_value: String,
    /// Group-by values in the meter's group-by order; an absent property is an empty string.
    pub group_values: Vec<String>,
}

/// Why a meter could not read an event: always a `invalid_quantity` rejection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("property {path} is {value}, quantities must not be negative")]
    Negative { path: String, value: Decimal },
    #[error("property {path} is {value}, at most {QUANTITY_SCALE_MAX} decimal places are kept")]
    TooPrecise { path: String, value: Decimal },
    #[error("property {path} is {value}, at most {QUANTITY_MAX} per event")]
    TooLarge { path: String, value: Decimal },
    #[error("group-by property {path} is longer than {GROUP_VALUE_MAX_BYTES} bytes")]
    GroupValueTooLong { path: String },
    #[error("property {path} is missing")]
    MissingValue { path: String },
    #[error("property {path} is longer than {GROUP_VALUE_MAX_BYTES} bytes")]
    UniqueValueTooLong { path: String },
}

impl TryFrom<MeterSpec> for Meter {
    type Error = MeterError;

    fn try_from(spec: MeterSpec) -> Result<Meter, MeterError> {
        let invalid = |detail: String| MeterError::Invalid {
            slug: spec.slug.clone(),
            detail,
        };
        let slug = MeterSlug::new(spec.slug.clone()).map_err(|e| invalid(format!("slug: {e}")))?;
        if spec.event_type.is_empty() {
            return Err(invalid("event_type is empty".into()));
        }
        let value_property = match (&spec.value_property, spec.aggregation.needs_value()) {
            (Some(p), _) => {
                Some(JsonPath::parse(p).map_err(|e| invalid(format!("value_property: {e}")))?)
            }
            (None, true) => {
                return Err(invalid(format!(
                    "aggregation {} needs a value_property",
                    spec.aggregation
                )))
            }
            (None, false) => None,
        };
        if spec.group_by.len() > GROUP_BY_MAX {
            return Err(invalid(format!(
                "at most {GROUP_BY_MAX} group_by properties"
            )));
        }
        let mut group_by = Vec::with_capacity(spec.group_by.len());
        for (name, path) in &spec.group_by {
            if name.is_empty() {
                return Err(invalid("group_by has an empty name".into()));
            }
            let path =
                JsonPath::parse(path).map_err(|e| invalid(format!("group_by.{name}: {e}")))?;
            group_by.push((name.clone(), path));
        }
        Ok(Meter {
            slug,
            event_type: spec.event_type,
            aggregation: spec.aggregation,
            value_property,
            group_by,
        })
    }
}

impl Meter {
    /// The group-by names, in the order of [`MeterReading::group_values`].
    pub fn group_names(&self) -> Vec<String> {
        self.group_by.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Reads the quantity and group-by values from one event's data.
    pub fn read(&self, data: &DataView<'_>) -> Result<MeterReading, ReadError> {
        let mut unique_value = String::new();
        let value = match (&self.value_property, self.aggregation) {
            (Some(path), Aggregation::UniqueCount) => {
                unique_value = data.text(path)?.ok_or_else(|| ReadError::MissingValue {
                    path: path.to_string(),
                })?;
                if unique_value.len() > GROUP_VALUE_MAX_BYTES {
                    return Err(ReadError::UniqueValueTooLong {
                        path: path.to_string(),
                    });
                }
                Decimal::ONE
            }
            (Some(path), a) if a.reads_decimal() => checked_quantity(path, data.decimal(path)?)?,
            _ => Decimal::ONE,
        };
        let mut group_values = Vec::with_capacity(self.group_by.len());
        for (_, path) in &self.group_by {
            let v = data.text(path)?.unwrap_or_default();
            if v.len() > GROUP_VALUE_MAX_BYTES {
                return Err(ReadError::GroupValueTooLong {
                    path: path.to_string(),
                });
            }
            group_values.push(v);
        }
        Ok(MeterReading {
            value,
            unique_value,
            group_values,
        })
    }
}

/// The canonical text of a group: a JSON object of name to value, names sorted (the
/// `group_key` column of readings, partials and charges).
pub fn group_key(names: &[String], values: &[String]) -> String {
    let map: BTreeMap<&str, &str> = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

fn checked_quantity(path: &JsonPath, value: Decimal) -> Result<Decimal, ReadError> {
    let path = || path.to_string();
    if value.is_sign_negative() && !value.is_zero() {
        return Err(ReadError::Negative {
            path: path(),
            value,
        });
    }
    let value = value.normalize();
    if value.scale() > QUANTITY_SCALE_MAX {
        return Err(ReadError::TooPrecise {
            path: path(),
            value,
        });
    }
    if value > QUANTITY_MAX {
        return Err(ReadError::TooLarge {
            path: path(),
            value,
        });
    }
    Ok(value)
}

/// Validates a list of meter declarations: each valid, slugs unique.
pub fn validate_meters(specs: Vec<MeterSpec>) -> Result<Vec<Meter>, MeterError> {
    let mut meters: Vec<Meter> = Vec::with_capacity(specs.len());
    for spec in specs {
        let meter = Meter::try_from(spec)?;
        if meters.iter().any(|m| m.slug == meter.slug) {
            return Err(MeterError::Invalid {
                slug: meter.slug.to_string(),
                detail: "declared twice".into(),
            });
        }
        meters.push(meter);
    }
    Ok(meters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn tokens_meter() -> Meter {
        let spec: MeterSpec = toml_like(
            r#"{"slug":"llm_tokens","event_type":"llm.tokens","aggregation":"SUM",
                "value_property":"$.tokens","group_by":{"model":"$.model","kind":"$.kind"}}"#,
        );
        Meter::try_from(spec).unwrap()
    }

    fn toml_like(json: &str) -> MeterSpec {
        serde_json::from_str(json).unwrap()
    }

    fn read(m: &Meter, data: &str) -> Result<MeterReading, ReadError> {
        let raw = RawValue::from_string(data.to_owned()).unwrap();
        m.read(&DataView::new(&raw).unwrap())
    }

    #[test]
    fn quantity_constant_is_ten_to_the_fifteen() {
        assert_eq!(QUANTITY_MAX, Decimal::from(1_000_000_000_000_000i64));
    }

    #[test]
    fn reads_value_and_groups_in_name_order() {
        let m = tokens_meter();
        assert_eq!(m.group_names(), vec!["kind", "model"]);
        let r = read(&m, r#"{"tokens":"12.50","model":"gpt-4o","kind":"output"}"#).unwrap();
        assert_eq!(r.value, Decimal::new(125, 1));
        assert_eq!(r.group_values, vec!["output", "gpt-4o"]);
    }

    #[test]
    fn missing_group_values_are_empty() {
        let r = read(&tokens_meter(), r#"{"tokens":1}"#).unwrap();
        assert_eq!(r.group_values, vec!["", ""]);
    }

    #[test]
    fn bad_quantities_are_refused() {
        let m = tokens_meter();
        assert!(matches!(
            read(&m, r#"{"tokens":-1}"#),
            Err(ReadError::Negative { .. })
        ));
        assert!(matches!(
            read(&m, r#"{"tokens":0.0000000001}"#),
            Err(ReadError::TooPrecise { .. })
        ));
        assert!(matches!(
            read(&m, r#"{"tokens":1e16}"#),
            Err(ReadError::TooLarge { .. })
        ));
        assert!(matches!(
            read(&m, r#"{"model":"x"}"#),
            Err(ReadError::Data(DataError::Missing { .. }))
        ));
        assert!(
            read(&m, r#"{"tokens":1.500000000}"#).is_ok(),
            "trailing zeros are not precision"
        );
    }

    #[test]
    fn unique_count_reads_text_and_latest_reads_decimals() {
        let uniq = Meter::try_from(toml_like(
            r#"{"slug":"users","event_type":"t","aggregation":"UNIQUE_COUNT","value_property":"$.user"}"#,
        ))
        .unwrap();
        let r = read(&uniq, r#"{"user":"u-1"}"#).unwrap();
        assert_eq!((r.value, r.unique_value.as_str()), (Decimal::ONE, "u-1"));
        assert_eq!(read(&uniq, r#"{"user":42}"#).unwrap().unique_value, "42");
        assert!(matches!(
            read(&uniq, "{}"),
            Err(ReadError::MissingValue { .. })
        ));
        let latest = Meter::try_from(toml_like(
            r#"{"slug":"seats","event_type":"t","aggregation":"LATEST","value_property":"$.seats"}"#,
        ))
        .unwrap();
        assert_eq!(
            read(&latest, r#"{"seats":"12.5"}"#).unwrap().value,
            Decimal::new(125, 1)
        );
        assert!(read(&latest, r#"{"seats":"x"}"#).is_err());
    }

    #[test]
    fn count_meters_need_no_value() {
        let m = Meter::try_from(toml_like(
            r#"{"slug":"tool_calls","event_type":"tool.call","aggregation":"COUNT"}"#,
        ))
        .unwrap();
        assert_eq!(read(&m, "{}").unwrap().value, Decimal::ONE);
    }

    #[test]
    fn declarations_are_validated() {
        let err = |json: &str| Meter::try_from(toml_like(json)).unwrap_err().to_string();
        let msg = err(r#"{"slug":"x","event_type":"t","aggregation":"SUM"}"#);
        assert!(
            msg.starts_with(r#"meter "x": "#) && msg.contains("needs a value_property"),
            "{msg}"
        );
        let msg =
            err(r#"{"slug":"x","event_type":"t","aggregation":"SUM","value_property":"tokens"}"#);
        assert!(msg.starts_with(r#"meter "x": value_property: "#), "{msg}");
        let msg = err(r#"{"slug":"x","event_type":"","aggregation":"COUNT"}"#);
        assert!(msg.starts_with(r#"meter "x": event_type"#), "{msg}");
        let msg = err(
            r#"{"slug":"x","event_type":"t","aggregation":"COUNT","group_by":{"model":"model"}}"#,
        );
        assert!(msg.starts_with(r#"meter "x": group_by.model: "#), "{msg}");
        let msg = err(r#"{"slug":"no spaces","event_type":"t","aggregation":"COUNT"}"#);
        assert!(msg.starts_with(r#"meter "no spaces": slug: "#), "{msg}");
        let dup = vec![
            toml_like(r#"{"slug":"x","event_type":"t","aggregation":"COUNT"}"#),
            toml_like(r#"{"slug":"x","event_type":"u","aggregation":"COUNT"}"#),
        ];
        let msg = validate_meters(dup).unwrap_err().to_string();
        assert_eq!(msg, r#"meter "x": declared twice"#);
    }
}
