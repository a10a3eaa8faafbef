//! The shape limits every path applies to an event before parsing it: how deep arrays and
//! objects nest and how long a string may be. The HTTP gateway (`ingest.depth_max`,
//! `ingest.string_max_bytes`) and the aggregator (`aggregator.depth_max`,
//! `aggregator.string_max_bytes`, the same defaults) refuse the same events, so what the
//! gateway refuses is not billed when published straight on NATS. Pure; one pass over the raw
//! bytes, whatever they are (invalid JSON is left to the parser).

/// Default nesting limit of arrays and objects.
pub const DEPTH_MAX: usize = 8;
/// Default length limit of a string, in bytes.
pub const STRING_MAX_BYTES: usize = 1024;

/// Why an event's shape is refused (reason code `malformed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("arrays and objects nest deeper than {max} levels")]
    TooDeep { field: Option<String>, max: usize },
    #[error("a string is longer than {max} bytes")]
    StringTooLong { field: Option<String>, max: usize },
}

impl ShapeError {
    /// The top-level attribute the offending value is in, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ShapeError::TooDeep { field, .. } | ShapeError::StringTooLong { field, .. } => {
                field.as_deref()
            }
        }
    }
}

/// Checks nesting depth and string lengths in one pass over the raw bytes, naming the
/// top-level attribute they occur in. Works on any bytes (invalid JSON is left to the parser).
pub fn check_shape(
    raw: &[u8],
    depth_max: usize,
    string_max_bytes: usize,
) -> Result<(), ShapeError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0usize;
    let mut expect_key = false;
    let mut field: Option<String> = None;
    for (i, &b) in raw.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if depth == 1 && expect_key {
                    field = Some(String::from_utf8_lossy(&raw[start..i]).into_owned());
                    expect_key = false;
                }
            }
            if in_string && i - start >= string_max_bytes {
                let field = if depth == 1 && expect_key {
                    None
                } else {
                    field
                };
                return Err(ShapeError::StringTooLong {
                    field,
                    max: string_max_bytes,
                });
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                start = i + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    expect_key = b == b'{';
                }
                if depth > depth_max {
                    return Err(ShapeError::TooDeep {
                        field,
                        max: depth_max,
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_and_strings_are_bounded_and_named() {
        let deep = format!(
            r#"{{"id":"e","data":{}1{}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        assert_eq!(
            check_shape(deep.as_bytes(), DEPTH_MAX, STRING_MAX_BYTES),
            Err(ShapeError::TooDeep {
                field: Some("data".into()),
                max: 8
            })
        );
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(2000));
        assert!(matches!(
            check_shape(long.as_bytes(), DEPTH_MAX, STRING_MAX_BYTES),
            Err(ShapeError::StringTooLong { .. })
        ));
        assert!(check_shape(br#"{"data":{"a":[1,2]}}"#, DEPTH_MAX, STRING_MAX_BYTES).is_ok());
    }
}
