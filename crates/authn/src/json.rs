//! Strict JSON for untrusted JWT segments and JWKS documents.
//!
//! `serde_json::Value` keeps the last of two equal keys, so `{"sub":"u","sub":"admin"}` would
//! read as `admin` here and possibly as `u` in the app behind the proxy. RFC 7519 §4: "The
//! Claim Names within a JWT Claims Set MUST be unique; JWT parsers MUST either reject JWTs with
//! duplicate Claim Names or use a JSON parser that returns only the lexically last duplicate
//! member name". Ward rejects. Nesting is capped too, well below serde_json's own limit.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays/objects accepted (a JWT payload rarely goes past 4).
pub(crate) const MAX_DEPTH: usize = 32;

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON: {0}")]
pub(crate) struct StrictJsonError(serde_json::Error);

/// Parses `bytes` as JSON, rejecting duplicate object keys and nesting deeper than
/// [`MAX_DEPTH`].
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed { depth: 0 }
        .deserialize(&mut de)
        .map_err(StrictJsonError)?;
    de.end().map_err(StrictJsonError)?;
    Ok(value)
}

/// Deserializes one value at nesting level `depth`.
#[derive(Clone, Copy)]
struct StrictSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl StrictSeed {
    fn nested<E: serde::de::Error>(self) -> Result<StrictSeed, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom("nesting too deep"));
        }
        Ok(StrictSeed {
            depth: self.depth + 1,
        })
    }
}

impl<'de> Visitor<'de> for StrictSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom("duplicate object key"));
            }
            let value = map.next_value_seed(inner)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let deep_ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let deep_bad = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let cases: Vec<(&str, &str, bool)> = vec![
            ("object", r#"{"a":1,"b":[true,null,"x",1.5,-3]}"#, true),
            ("duplicate key", r#"{"sub":"u","sub":"admin"}"#, false),
            ("nested duplicate", r#"{"a":{"x":1,"x":2}}"#, false),
            ("same key at two levels", r#"{"a":{"a":1}}"#, true),
            (
                "escaped duplicate",
                r#"{"sub":"u","s\u0075b":"admin"}"#,
                false,
            ),
            ("trailing garbage", r#"{"a":1} x"#, false),
            ("not json", "hello", false),
            ("depth at cap", &deep_ok, true),
            ("depth over cap", &deep_bad, false),
        ];
        for (name, input, ok) in cases {
            assert_eq!(parse(input.as_bytes()).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn value_matches_serde_json_when_valid() {
        let input = br#"{"iss":"a","aud":["x","y"],"n":{"m":[1,2,{"k":false}]},"f":2.5}"#;
        let strict = parse(input).unwrap();
        let loose: Value = serde_json::from_slice(input).unwrap();
        assert_eq!(strict, loose);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }
    }
}
