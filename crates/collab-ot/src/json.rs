//! Strict JSON for everything a client sends.
//!
//! `serde_json` on its own keeps the last of two equal keys (`{"d":1,"d":1}`
//! parses) and reads integers up to 2^64 − 1, which JavaScript peers cannot
//! represent and the databases cannot store. The wire protocol allows
//! neither: every integer is at most 2^53 − 1 (JavaScript's safe integers)
//! and every object key appears once. Parsing through [`parse_strict`]
//! refuses both while the text is read, so the rest of the server only ever
//! sees values that every peer and every store can hold.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The largest integer on the wire: 2^53 − 1 (`Number.MAX_SAFE_INTEGER`).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a text is not strict JSON; the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

/// Parses `text` as JSON, refusing duplicate object keys and numbers whose
/// magnitude exceeds [`MAX_SAFE_INTEGER`].
pub fn parse_strict(text: &str) -> Result<Value, JsonError> {
    parse_strict_slice(text.as_bytes())
}

/// [`parse_strict`] for raw bytes (an HTTP body); invalid UTF-8 is refused.
pub fn parse_strict_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| {
            if e.is_data() {
                // One of ours (below), without serde's position suffix noise.
                JsonError(e.to_string())
            } else {
                JsonError(format!("not valid JSON: {e}"))
            }
        })
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

fn too_large<E: de::Error>(n: impl fmt::Display) -> E {
    E::custom(format_args!(
        "the number {n} is too large: integers on the wire are at most 2^53 - 1 ({MAX_SAFE_INTEGER})"
    ))
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        if n > MAX_SAFE_INTEGER {
            return Err(too_large(n));
        }
        Ok(Value::Number(n.into()))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        if n.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(too_large(n));
        }
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        // Integers past u64 arrive here too (`1e20`, `18446744073709551616`).
        if n.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(too_large(n));
        }
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("numbers must be finite"))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key \"{}\" appears more than once in one object",
                    key.escape_debug()
                )));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        let v = parse_strict(r#"{"a":[1,-2,1.5,"x",null,true,{"b":{}}]}"#).unwrap();
        assert_eq!(v["a"][1], -2);
        assert_eq!(v["a"][6]["b"], serde_json::json!({}));
        assert_eq!(
            parse_strict(&MAX_SAFE_INTEGER.to_string()).unwrap(),
            MAX_SAFE_INTEGER
        );
        assert!(parse_strict(&format!("-{MAX_SAFE_INTEGER}")).is_ok());
    }

    #[test]
    fn refuses_integers_past_2_pow_53() {
        for big in [
            "9007199254740992",
            "-9007199254740992",
            "9223372036854775808",
            "18446744073709551616",
            "1e20",
            "[1, {\"d\": 9007199254740993}]",
        ] {
            let e = parse_strict(big).unwrap_err().to_string();
            assert!(e.contains("2^53 - 1"), "{big}: {e}");
        }
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        for dup in [r#"{"d":1,"d":1}"#, r#"[{"x":{"d":1,"d":"a"}}]"#] {
            let e = parse_strict(dup).unwrap_err().to_string();
            assert!(e.contains("more than once"), "{dup}: {e}");
        }
        assert!(parse_strict(r#"{"d":1,"e":{"d":1}}"#).is_ok());
    }

    #[test]
    fn reports_syntax_errors() {
        for bad in ["", "{", "[1,]", "nope", "\"\\ud800\""] {
            assert!(parse_strict(bad).is_err(), "{bad}");
        }
        assert!(parse_strict_slice(b"\"\xff\"").is_err());
    }
}
