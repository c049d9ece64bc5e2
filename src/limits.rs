//! The limits on JSON that enters the system: a task's context, a queue message, a handler's
//! result. One owner, so every entry point refuses the same inputs with the same words.
//!
//! Depth counts nested arrays and objects: `1` and `"a"` are depth 0, `{}` and `[1]` depth 1,
//! `{"a": [1]}` depth 2. Size is the length of the compact JSON text in bytes.
//!
//! Text is checked *before* it is parsed ([`parse`]), by a scan that does not recurse, so a
//! hostile message can never overflow a stack or hit serde_json's own recursion limit (128,
//! which fails a whole batch decode instead of one row). The depth limit is below that
//! recursion limit, so anything accepted here parses.

use serde_json::Value;
use std::io;

/// The deepest nesting of arrays and objects accepted anywhere.
pub const MAX_JSON_DEPTH: usize = 64;

/// The largest JSON text accepted anywhere (16 MiB).
pub const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// Why a JSON document was refused. `what` names the document ("task context", "result", ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{what} nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects (the limit)")]
    TooDeep { what: String },
    #[error("{what} is {bytes} bytes of JSON; the limit is {MAX_JSON_BYTES} bytes")]
    TooLarge { what: String, bytes: usize },
    #[error("{what} is not valid JSON: {reason}")]
    Invalid { what: String, reason: String },
}

/// Whether JSON text nests deeper than `limit`, found without parsing or recursing. Brackets
/// inside strings are skipped (escapes honoured); the text need not be valid JSON.
pub fn text_exceeds_depth(text: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses JSON text that entered from outside, refusing it when it is over the size or depth
/// limit or not JSON.
pub fn parse(text: &str, what: &str) -> Result<Value, LimitError> {
    if text.len() > MAX_JSON_BYTES {
        return Err(LimitError::TooLarge {
            what: what.to_string(),
            bytes: text.len(),
        });
    }
    if text_exceeds_depth(text, MAX_JSON_DEPTH) {
        return Err(LimitError::TooDeep {
            what: what.to_string(),
        });
    }
    serde_json::from_str(text).map_err(|e| LimitError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// Checks a value built in this process (a handler's result, a context passed to
/// `create_task`) against both limits. The depth walk does not recurse; the size is counted
/// while serializing, which is safe once the depth is known to be within the limit, and stops
/// as soon as it passes the limit.
pub fn check_value(value: &Value, what: &str) -> Result<(), LimitError> {
    if value_exceeds_depth(value, MAX_JSON_DEPTH) {
        return Err(LimitError::TooDeep {
            what: what.to_string(),
        });
    }
    let mut counter = ByteCounter(0);
    if serde_json::to_writer(&mut counter, value).is_err() {
        return Err(LimitError::TooLarge {
            what: what.to_string(),
            bytes: counter.0,
        });
    }
    Ok(())
}

/// Whether a value nests deeper than `limit` (an explicit stack, no recursion).
pub fn value_exceeds_depth(value: &Value, limit: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > limit {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

/// Counts bytes and fails once past the size limit, so a huge value is not serialized whole.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        if self.0 > MAX_JSON_BYTES {
            return Err(io::Error::other("over the size limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_containers_and_skips_strings() {
        assert!(!text_exceeds_depth("1", 0));
        assert!(text_exceeds_depth("{}", 0));
        assert!(!text_exceeds_depth(r#"{"a": [1]}"#, 2));
        assert!(text_exceeds_depth(r#"{"a": [1]}"#, 1));
        assert!(!text_exceeds_depth(r#"{"a": "[[[[\"[[["}"#, 1));
        assert!(!text_exceeds_depth(r#"["\\", "[["]"#, 1));
    }

    #[test]
    fn parse_takes_the_limit_and_refuses_one_more() {
        assert!(parse(&nested(MAX_JSON_DEPTH), "message").is_ok());
        let err = parse(&nested(MAX_JSON_DEPTH + 1), "message").unwrap_err();
        assert_eq!(
            err,
            LimitError::TooDeep {
                what: "message".into()
            }
        );
        assert!(err.to_string().contains("64 levels"), "{err}");
        // Far past serde_json's own recursion limit, and far past any stack: refused by the scan.
        assert!(matches!(
            parse(&nested(1_000_000), "message"),
            Err(LimitError::TooDeep { .. })
        ));
    }

    #[test]
    fn parse_refuses_huge_and_invalid_text() {
        let huge = format!("\"{}\"", "x".repeat(MAX_JSON_BYTES));
        assert!(matches!(parse(&huge, "result"), Err(LimitError::TooLarge { .. })));
        let err = parse("{\"a\":", "result").unwrap_err();
        assert!(matches!(err, LimitError::Invalid { .. }), "{err}");
    }

    #[test]
    fn check_value_walks_depth_and_counts_size() {
        assert!(check_value(&json!({"a": [1, {"b": null}]}), "result").is_ok());
        let mut deep = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            deep = json!([deep]);
        }
        assert!(check_value(&deep, "result").is_ok());
        let too_deep = json!({ "x": deep });
        assert_eq!(
            check_value(&too_deep, "result"),
            Err(LimitError::TooDeep {
                what: "result".into()
            })
        );
        let huge = json!(["y".repeat(MAX_JSON_BYTES)]);
        assert!(matches!(
            check_value(&huge, "result"),
            Err(LimitError::TooLarge { .. })
        ));
    }
}
