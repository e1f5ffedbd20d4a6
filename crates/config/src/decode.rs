//! Typed decoding: a serde deserializer over a [`Node`] tree that tracks the field path.
//!
//! Every error leaves with the path and line of the node where it surfaced, e.g.
//! `spec.rules[0].from[0]` at line 12 for `unknown field \`sorce\``. An unknown field is placed
//! at the enclosing mapping, on the key's line. Messages use YAML words ("a list", "a mapping"),
//! not Rust ones, and suggest the closest known name.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};

use crate::yaml::{push_index, push_key, Node, Value};

/// A document part that does not fit its schema.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// A field the schema does not define.
    #[error("{message}")]
    UnknownField { message: String, at: Option<At> },
    /// A value of the wrong type or shape, or a missing required field.
    #[error("{message}")]
    Invalid { message: String, at: Option<At> },
}

/// Where a [`DecodeError`] happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) path: String,
    pub(crate) line: usize,
}

impl DecodeError {
    /// The innermost location wins: it is set once, by the node where the error surfaced.
    fn located(mut self, path: &str, line: usize) -> Self {
        let at = match &mut self {
            DecodeError::UnknownField { at, .. } | DecodeError::Invalid { at, .. } => at,
        };
        if at.is_none() {
            *at = Some(At {
                path: path.to_owned(),
                line,
            });
        }
        self
    }

    pub(crate) fn at(&self) -> Option<&At> {
        match self {
            DecodeError::UnknownField { at, .. } | DecodeError::Invalid { at, .. } => at.as_ref(),
        }
    }
}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError::Invalid {
            message: msg.to_string(),
            at: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DecodeError::UnknownField {
            message: unknown_name_message("field", field, expected),
            at: None,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DecodeError::Invalid {
            message: unknown_name_message("value", variant, expected),
            at: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DecodeError::Invalid {
            message: format!("missing required field `{field}`"),
            at: None,
        }
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DecodeError::Invalid {
            message: format!(
                "expected {}, found {}",
                humanize_expected(&exp.to_string()),
                humanize_unexpected(&unexp)
            ),
            at: None,
        }
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DecodeError::Invalid {
            message: format!(
                "invalid value {}, expected {}",
                humanize_unexpected(&unexp),
                humanize_expected(&exp.to_string())
            ),
            at: None,
        }
    }
}

/// `unknown field \`sorce\`, expected \`source\``, or with several candidates
/// `unknown field \`principal\`, expected one of ... (did you mean \`principals\`?)`.
pub(crate) fn unknown_name_message(what: &str, name: &str, expected: &[&str]) -> String {
    match expected {
        [] => format!("unknown {what} `{name}`, there are no {what}s"),
        [only] => format!("unknown {what} `{name}`, expected `{only}`"),
        many => {
            let list = many
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ");
            match closest(name, many) {
                Some(best) => format!(
                    "unknown {what} `{name}`, expected one of {list} (did you mean `{best}`?)"
                ),
                None => format!("unknown {what} `{name}`, expected one of {list}"),
            }
        }
    }
}

/// The candidate within a small edit distance of `name`, ignoring case.
pub(crate) fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(&name, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars. `row` has `b.len() + 1` cells, so every index below is in
/// bounds.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Turns serde's Rust-flavoured expectations into YAML words.
fn humanize_expected(exp: &str) -> String {
    if exp.starts_with("struct ") {
        return "a mapping".to_owned();
    }
    if exp.starts_with("enum ") {
        return "one of the allowed values".to_owned();
    }
    match exp {
        "a sequence" => "a list".to_owned(),
        "a map" => "a mapping".to_owned(),
        "u8" | "u16" | "u32" | "u64" => format!("a non-negative integer ({exp})"),
        "i8" | "i16" | "i32" | "i64" => format!("an integer ({exp})"),
        "a boolean" => "`true` or `false`".to_owned(),
        other => other.to_owned(),
    }
}

fn humanize_unexpected(unexp: &Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Unit => "null".to_owned(),
        Unexpected::Seq => "a list".to_owned(),
        Unexpected::Map => "a mapping".to_owned(),
        other => other.to_string(),
    }
}

fn not_an_enum(node: &Node) -> DecodeError {
    DecodeError::Invalid {
        message: format!(
            "expected one of the allowed values, found {}",
            node.describe()
        ),
        at: None,
    }
}

/// Deserializes `T` from `node`, whose field path is `path` (e.g. `spec`).
pub(crate) fn decode<T: DeserializeOwned>(node: &Node, path: &str) -> Result<T, DecodeError> {
    T::deserialize(NodeDe {
        node,
        path: path.to_owned(),
        key: false,
    })
}

/// A serde deserializer over one [`Node`].
struct NodeDe<'n> {
    node: &'n Node,
    path: String,
    /// Mapping keys: integers may be written as strings (`"8080":`), as JSON requires.
    key: bool,
}

impl NodeDe<'_> {
    fn fail(&self, err: DecodeError) -> DecodeError {
        err.located(&self.path, self.node.line)
    }

    fn null_where(&self, what: &str, hint: &str) -> DecodeError {
        self.fail(DecodeError::Invalid {
            message: format!("expected {what}, found null (write `{hint}` for an empty one)"),
            at: None,
        })
    }

    fn integer_key<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if let (true, Value::Str(s)) = (self.key, &self.node.value) {
            let parsed = if let Ok(u) = s.trim().parse::<u64>() {
                visitor.visit_u64(u)
            } else if let Ok(i) = s.trim().parse::<i64>() {
                visitor.visit_i64(i)
            } else {
                visitor.visit_str(s)
            };
            return parsed.map_err(|e| self.fail(e));
        }
        self.deserialize_any(visitor)
    }
}

macro_rules! integer_methods {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
                self.integer_key(visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::UInt(u) => visitor.visit_u64(*u),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                path: &self.path,
                value: None,
            }),
        };
        result.map_err(|e| self.fail(e))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match &self.node.value {
            Value::Str(s) => visitor.visit_str(s),
            Value::Bool(_) | Value::Int(_) | Value::UInt(_) | Value::Float(_) => {
                // A plain scalar that looks like a number is read as written: `1.10` stays
                // "1.10", never "1.1".
                let text = self.node.text().unwrap_or_default();
                visitor.visit_str(&text)
            }
            Value::Null => Err(DecodeError::Invalid {
                message: "expected a string, found null".to_owned(),
                at: None,
            }),
            Value::Seq(_) | Value::Map(_) => return self.deserialize_any(visitor),
        };
        result.map_err(|e| self.fail(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.node.value {
            Value::Null => Err(self.null_where("a list", "[]")),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.node.value {
            Value::Null => Err(self.null_where("a mapping", "{}")),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        // A string (`STRICT`), or a mapping with a single key (`{variant: value}`).
        let (variant, value) = match &self.node.value {
            Value::Str(_) | Value::Bool(_) | Value::Int(_) | Value::UInt(_) | Value::Float(_) => {
                (self.node, None)
            }
            Value::Map(entries) => match entries.as_slice() {
                [(variant, value)] => (variant, Some(value)),
                _ => return Err(self.fail(not_an_enum(self.node))),
            },
            Value::Null | Value::Seq(_) => return Err(self.fail(not_an_enum(self.node))),
        };
        let result = visitor.visit_enum(EnumDe {
            variant,
            value,
            path: &self.path,
        });
        result.map_err(|e| self.fail(e))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    integer_methods! {
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
    }

    serde::forward_to_deserialize_any! {
        bool f32 f64 bytes byte_buf unit unit_struct
    }
}

struct SeqDe<'n, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'n, Node>>,
    path: &'p str,
}

impl<'de> SeqAccess<'de> for SeqDe<'_, '_> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, node)) => seed
                .deserialize(NodeDe {
                    node,
                    path: push_index(self.path, i),
                    key: false,
                })
                .map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'n, 'p> {
    entries: std::slice::Iter<'n, (Node, Node)>,
    path: &'p str,
    /// The value of the key just returned, with its field path.
    value: Option<(&'n Node, String)>,
}

impl<'de> MapAccess<'de> for MapDe<'_, '_> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let key_text = key.text().unwrap_or_else(|| key.describe().to_owned());
        self.value = Some((value, push_key(self.path, &key_text)));
        // A bad key (an unknown field) is reported at the enclosing mapping, on the key's line.
        seed.deserialize(NodeDe {
            node: key,
            path: self.path.to_owned(),
            key: true,
        })
        .map(Some)
        .map_err(|e| e.located(self.path, key.line))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let Some((node, path)) = self.value.take() else {
            return Err(de::Error::custom("a mapping value was read before its key"));
        };
        seed.deserialize(NodeDe {
            node,
            path,
            key: false,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An enum written as a string (`STRICT`) or as a one-key mapping (`{variant: value}`).
struct EnumDe<'n, 'p> {
    variant: &'n Node,
    value: Option<&'n Node>,
    path: &'p str,
}

impl<'de, 'n, 'p> EnumAccess<'de> for EnumDe<'n, 'p> {
    type Error = DecodeError;
    type Variant = VariantDe<'n, 'p>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DecodeError> {
        let text = self.variant.text().unwrap_or_default();
        let variant = seed.deserialize(IntoDeserializer::<DecodeError>::into_deserializer(
            text.as_str(),
        ))?;
        Ok((
            variant,
            VariantDe {
                value: self.value,
                path: self.path,
            },
        ))
    }
}

struct VariantDe<'n, 'p> {
    value: Option<&'n Node>,
    path: &'p str,
}

impl VariantDe<'_, '_> {
    fn value_de(&self) -> Result<NodeDe<'_>, DecodeError> {
        match self.value {
            Some(node) => Ok(NodeDe {
                node,
                path: self.path.to_owned(),
                key: false,
            }),
            None => Err(de::Error::custom(
                "expected a mapping with a single key, found a plain value",
            )),
        }
    }
}

impl<'de> VariantAccess<'de> for VariantDe<'_, '_> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        match self.value {
            None => Ok(()),
            Some(node) if node.value == Value::Null => Ok(()),
            Some(_) => Err(de::Error::custom("expected a plain value, found a mapping")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        seed.deserialize(self.value_de()?)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value_de()?.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value_de()?.deserialize_map(visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_documents;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Spec {
        name: Option<String>,
        port: Option<u16>,
        labels: Option<BTreeMap<String, String>>,
        items: Option<Vec<Item>>,
        mode: Option<Mode>,
        by_port: Option<BTreeMap<u32, Mode>>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Item {
        source: Option<String>,
        number: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[allow(clippy::upper_case_acronyms)] // Istio's enum spelling
    enum Mode {
        STRICT,
        DISABLE,
    }

    fn doc(yaml: &str) -> Node {
        let mut docs = parse_documents(yaml).unwrap();
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn decode_errors_carry_path_and_line() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "name: a\nitems:\n  - number: 1\n  - sorce: x\n    number: 2\n",
                "spec.items[1]",
                4,
                "unknown field `sorce`, expected one of `source`, `number` (did you mean `source`?)",
            ),
            (
                "items:\n  - source: x\n",
                "spec.items[0]",
                2,
                "missing required field `number`",
            ),
            (
                "port: 70000\n",
                "spec.port",
                1,
                "invalid value integer `70000`, expected a non-negative integer (u16)",
            ),
            (
                "port: \"80\"\n",
                "spec.port",
                1,
                "expected a non-negative integer (u16), found string \"80\"",
            ),
            (
                "mode: STRCT\n",
                "spec.mode",
                1,
                "unknown value `STRCT`, expected one of `STRICT`, `DISABLE` (did you mean `STRICT`?)",
            ),
            (
                "items:\n  - number:\n",
                "spec.items[0].number",
                2,
                "expected a non-negative integer (u32), found null",
            ),
            (
                "labels:\n  app.kubernetes.io/name: [x]\n",
                "spec.labels[\"app.kubernetes.io/name\"]",
                2,
                "expected a string, found a list",
            ),
        ];
        for (yaml, path, line, message) in cases {
            let err = decode::<Spec>(&doc(yaml), "spec").unwrap_err();
            let at = err.at().unwrap();
            assert_eq!((at.path.as_str(), at.line), (*path, *line), "{yaml}");
            assert_eq!(err.to_string(), *message, "{yaml}");
        }
    }

    #[test]
    fn decode_reads_values_as_written() {
        let yaml = "name: 1.10\nlabels: {version: 1.10, on: yes, n: 007}\nbyPort:\n  \"8080\": STRICT\n  9090: DISABLE\nmode: STRICT\n";
        let spec: Spec = decode(&doc(yaml), "spec").unwrap();
        assert_eq!(spec.name.as_deref(), Some("1.10"));
        let labels = spec.labels.unwrap();
        assert_eq!(labels["version"], "1.10");
        assert_eq!(labels["on"], "yes");
        assert_eq!(labels["n"], "007");
        let by_port = spec.by_port.unwrap();
        assert_eq!(by_port[&8080], Mode::STRICT);
        assert_eq!(by_port[&9090], Mode::DISABLE);
        assert_eq!(spec.mode, Some(Mode::STRICT));
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("sorce", "source"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("principal", &["principals", "namespaces"]),
            Some("principals")
        );
        assert_eq!(closest("zzz", &["principals", "namespaces"]), None);
    }
}
