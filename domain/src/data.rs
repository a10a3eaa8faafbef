//! Reading properties out of an event's `data` object by JSON path, exactly.
//!
//! Paths are `$.a.b` (object keys only). Numbers are read from their JSON text straight into
//! a `Decimal`; no value ever passes through a float. This module knows nothing of meters.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A path into `data`: `$.usage.input_tokens` is `["usage", "input_tokens"]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JsonPath(Vec<String>);

/// Why a path or a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("JSON path {0:?} must look like `$.key` or `$.key.nested`")]
    BadPath(String),
    #[error("`data` is not a JSON object")]
    NotObject,
    #[error("property {path} is missing")]
    Missing { path: String },
    #[error("property {path} is {found}, expected a number or a numeric string")]
    NotNumber { path: String, found: String },
    #[error("property {path} is a nested object or array, expected a scalar")]
    NotScalar { path: String },
}

impl JsonPath {
    pub fn parse(s: &str) -> Result<Self, DataError> {
        let rest = s
            .strip_prefix("$.")
            .ok_or_else(|| DataError::BadPath(s.to_owned()))?;
        let segments: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if segments.iter().any(|seg| seg.is_empty()) {
            return Err(DataError::BadPath(s.to_owned()));
        }
        Ok(JsonPath(segments))
    }
}

impl TryFrom<String> for JsonPath {
    type Error = DataError;
    fn try_from(s: String) -> Result<Self, DataError> {
        JsonPath::parse(&s)
    }
}

impl From<JsonPath> for String {
    fn from(p: JsonPath) -> String {
        p.to_string()
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$.{}", self.0.join("."))
    }
}

/// A JSON object's members as raw value texts, keys borrowed from the input when they have no
/// escapes. Objects in usage events are small, so lookup is a linear scan; a repeated key
/// reads as its last value (as serde_json's maps do).
struct Object<'a>(Vec<(Cow<'a, str>, &'a str)>);

impl<'a> Object<'a> {
    /// The single-pass scanner when the text is plain (it almost always is), else serde.
    fn parse(text: &'a str) -> Option<Object<'a>> {
        if let Some(members) = crate::envelope::members(text) {
            return Some(Object(
                members
                    .into_iter()
                    .map(|(k, v)| (Cow::Borrowed(k), v))
                    .collect(),
            ));
        }
        Object::parse_reference(text)
    }

    /// serde_json's reading of the object: the reference the scanner is checked against.
    fn parse_reference(text: &'a str) -> Option<Object<'a>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let obj = Object::deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(obj)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Object<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(key) = map.next_key::<CowStr<'de>>()? {
                    members.push((key.0, map.next_value::<&'de RawValue>()?.get()));
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// A string that borrows from the input unless it has escapes. (serde's own `Cow<str>`
/// borrows only as a direct `#[serde(borrow)]` field, never inside an `Option`.)
pub(crate) struct CowStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A parsed view of one event's `data` object; parse once, read many properties.
pub struct DataView<'a> {
    top: Object<'a>,
}

impl<'a> DataView<'a> {
    pub fn new(data: &'a RawValue) -> Result<Self, DataError> {
        let top = Object::parse(data.get()).ok_or(DataError::NotObject)?;
        Ok(DataView { top })
    }

    /// The raw JSON text at `path`, if present and not `null`.
    pub fn raw(&self, path: &JsonPath) -> Option<&'a str> {
        let (first, rest) = path.0.split_first()?;
        let mut cur: &'a str = self.top.get(first)?;
        for seg in rest {
            cur = Object::parse(cur)?.get(seg)?;
        }
        (cur != "null").then_some(cur)
    }

    /// The exact decimal at `path`: a JSON number, or a string holding one.
    pub fn decimal(&self, path: &JsonPath) -> Result<Decimal, DataError> {
        let raw = self.raw(path).ok_or_else(|| DataError::Missing {
            path: path.to_string(),
        })?;
        let not_number = || DataError::NotNumber {
            path: path.to_string(),
            found: shorten(raw),
        };
        let number_text: Cow<'_, str> = if raw.starts_with('"') {
            unquote(raw).ok_or_else(not_number)?
        } else {
            Cow::Borrowed(raw)
        };
        parse_decimal(number_text.trim()).ok_or_else(not_number)
    }

    /// The scalar at `path` as text (strings unquoted, numbers and booleans as written);
    /// `None` when absent or `null`.
    pub fn text(&self, path: &JsonPath) -> Result<Option<String>, DataError> {
        let Some(raw) = self.raw(path) else {
            return Ok(None);
        };
        match raw.as_bytes().first() {
            Some(b'"') => {
                unquote(raw)
                    .map(|t| Some(t.into_owned()))
                    .ok_or_else(|| DataError::NotScalar {
                        path: path.to_string(),
                    })
            }
            Some(b'{' | b'[') => Err(DataError::NotScalar {
                path: path.to_string(),
            }),
            _ => Ok(Some(raw.to_owned())),
        }
    }
}

/// The contents of a JSON string literal: borrowed when it has no escapes.
fn unquote(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Parses a decimal in plain (`12.5`) or scientific (`1.25e1`) notation, exactly.
pub fn parse_decimal(s: &str) -> Option<Decimal> {
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    if s.contains(['e', 'E']) {
        Decimal::from_scientific(s).ok()
    } else {
        Decimal::from_str(s).ok()
    }
}

fn shorten(s: &str) -> String {
    if s.len() <= 40 {
        s.to_owned()
    } else {
        let cut = (0..=40).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        format!("{}...", &s[..cut])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    #[test]
    fn paths_must_start_with_dollar_dot() {
        assert!(JsonPath::parse("$.a.b").is_ok());
        assert!(JsonPath::parse("a.b").is_err());
        assert!(JsonPath::parse("$.").is_err());
        assert!(JsonPath::parse("$.a..b").is_err());
    }

    #[test]
    fn numbers_are_exact_never_floats() {
        let d = raw(r#"{"a":0.1,"b":"0.2","c":{"d":12345678901234567890.123456789},"e":1e3}"#);
        let v = DataView::new(&d).unwrap();
        assert_eq!(v.decimal(&p("$.a")).unwrap().to_string(), "0.1");
        assert_eq!(v.decimal(&p("$.b")).unwrap().to_string(), "0.2");
        assert_eq!(
            v.decimal(&p("$.c.d")).unwrap().to_string(),
            "12345678901234567890.123456789"
        );
        assert_eq!(v.decimal(&p("$.e")).unwrap(), Decimal::from(1000));
    }

    #[test]
    fn bad_quantities_name_the_path() {
        let d = raw(r#"{"a":"x","b":true,"n":null}"#);
        let v = DataView::new(&d).unwrap();
        assert!(matches!(
            v.decimal(&p("$.a")),
            Err(DataError::NotNumber { .. })
        ));
        assert!(matches!(
            v.decimal(&p("$.b")),
            Err(DataError::NotNumber { .. })
        ));
        assert!(matches!(
            v.decimal(&p("$.n")),
            Err(DataError::Missing { .. })
        ));
        assert!(matches!(
            v.decimal(&p("$.zz")),
            Err(DataError::Missing { .. })
        ));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let d = raw(r#"{"m":"a\"b\u00e9","q":"1\u0035"}"#);
        let v = DataView::new(&d).unwrap();
        assert_eq!(v.text(&p("$.m")).unwrap().as_deref(), Some("a\"b\u{e9}"));
        assert_eq!(v.decimal(&p("$.q")).unwrap(), Decimal::from(15));
    }

    #[test]
    fn text_reads_scalars() {
        let d = raw(r#"{"m":"gpt-4o","n":3,"o":{"x":1}}"#);
        let v = DataView::new(&d).unwrap();
        assert_eq!(v.text(&p("$.m")).unwrap().as_deref(), Some("gpt-4o"));
        assert_eq!(v.text(&p("$.n")).unwrap().as_deref(), Some("3"));
        assert_eq!(v.text(&p("$.missing")).unwrap(), None);
        assert!(v.text(&p("$.o")).is_err());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::Object;

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("1234".to_owned()),
            Just("-1.5E-7".to_owned()),
            Just("\"1234.50\"".to_owned()),
            Just("\"caf\\u00e9\"".to_owned()),
            Just("\"日本\"".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("01".to_owned()),
            Just("1.".to_owned()),
            Just("\"tab\there\"".to_owned()),
            "[a-z0-9 ]{0,8}".prop_map(|s| format!("\"{s}\"")),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|m| {
                    let members: Vec<String> =
                        m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn object() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            "[a-z]{1,3}",
            Just("tokens".to_owned()),
            Just("k\\u0065y".to_owned()),
        ];
        (
            prop::collection::vec((key, value(), " ?", " ?"), 0..6),
            " ?",
            prop_oneof![
                Just(String::new()),
                Just(",".to_owned()),
                Just("x".to_owned())
            ],
        )
            .prop_map(|(members, ws, tail)| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v, a, b)| format!("{a}\"{k}\"{b}:{a}{v}{b}"))
                    .collect();
                format!("{ws}{{{}}}{ws}{tail}", members.join(","))
            })
    }

    #[test]
    fn plain_objects_take_the_scanner() {
        let text = r#" {"tokens": 12.5, "n":{"x":[1,"a"]}, "model":"gpt-4o"} "#;
        assert_eq!(
            crate::envelope::members(text),
            Some(vec![
                ("tokens", "12.5"),
                ("n", r#"{"x":[1,"a"]}"#),
                ("model", "\"gpt-4o\"")
            ])
        );
        assert_eq!(crate::envelope::members(r#"{"k\u0065y":1}"#), None);
    }

    /// Plain objects (no escapes, valid numbers, JSON whitespace, repeated keys allowed):
    /// what the scanner must read itself.
    fn plain_object() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            (-1_000_000i64..1_000_000).prop_map(|n| n.to_string()),
            Just("-1.5E-7".to_owned()),
            Just("0.25".to_owned()),
            Just("\"日本\"".to_owned()),
            Just("null".to_owned()),
            Just("false".to_owned()),
            "[a-z0-9 .]{0,8}".prop_map(|s| format!("\"{s}\"")),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(" , "))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|m| {
                    let members: Vec<String> = m
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":\t{v}"))
                        .collect();
                    format!("{{{}}}", members.join(",\n"))
                }),
            ]
        });
        let ws = prop_oneof![Just(""), Just(" "), Just("\t"), Just("\r\n")];
        (prop::collection::vec(("[a-z]{1,2}", value), 0..6), ws).prop_map(|(members, ws)| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
                .collect();
            format!("{ws}{{{}}}{ws}", members.join(","))
        })
    }

    proptest! {
        /// Plain objects are read by the scanner itself, exactly as serde reads them.
        #[test]
        fn plain_objects_are_scanned_like_serde(text in plain_object()) {
            let scanned = crate::envelope::members(&text);
            prop_assert!(scanned.is_some(), "deferred: {}", text);
            let reference = Object::parse_reference(&text).expect("valid JSON");
            let want: Vec<(&str, &str)> = reference.0.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
            prop_assert_eq!(scanned.unwrap(), want);
        }

        /// The scanner either defers to serde or reads exactly what serde reads: the same
        /// keys in the same order with the same value texts, and never accepts what serde
        /// refuses.
        #[test]
        fn scanned_members_equal_serde_members(text in object()) {
            let reference = Object::parse_reference(&text);
            if let Some(scanned) = crate::envelope::members(&text) {
                let reference = reference.expect("the scanner accepted what serde refuses");
                let want: Vec<(&str, &str)> =
                    reference.0.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
                prop_assert_eq!(scanned, want);
            }
        }
    }
}
