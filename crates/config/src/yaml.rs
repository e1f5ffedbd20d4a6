//! YAML documents as located trees, and field paths.
//!
//! serde-saphyr parses each document into a [`Node`] tree whose nodes carry their 1-based file
//! line (serde-saphyr's locations count from the start of the stream, so they are already file
//! lines). Typed specs are then deserialized from the tree by `decode::decode`, which tracks the
//! field path as it descends; serde-saphyr's own errors carry a line but no path. Keeping the
//! tree also lets the loader accept any value under parts of a document it does not model (the
//! `Istio` resource's helm values) and find the line of any field later, for semantic errors
//! ([`FieldLines`]).
//!
//! Booleans follow YAML 1.2 (`true`/`false` only), so `country: no` stays a string.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// One YAML node and the file line it starts on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) value: Value,
    /// The source text of a non-string scalar (`0x10`, `1.10`, `true`), so that it can be read
    /// into a string field exactly as written.
    raw: Option<String>,
    /// Byte offset and length of the scalar in the source, until `raw` is filled.
    span: Option<(usize, usize)>,
}

/// The value of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The value of `key` when this node is a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text().as_deref() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The entries when this node is a mapping.
    pub(crate) fn entries(&self) -> &[(Node, Node)] {
        match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }

    /// The string when this node is a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar as written (strings as their value); `None` for null and collections.
    pub(crate) fn text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
            Value::Bool(b) => Some(self.raw.clone().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Some(self.raw.clone().unwrap_or_else(|| i.to_string())),
            Value::UInt(u) => Some(self.raw.clone().unwrap_or_else(|| u.to_string())),
            Value::Float(x) => Some(self.raw.clone().unwrap_or_else(|| x.to_string())),
        }
    }

    /// What kind of node this is, for messages.
    pub(crate) fn describe(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn fill_raw(&mut self, source: &str) {
        if let Some((start, len)) = self.span.take() {
            if !matches!(self.value, Value::Str(_) | Value::Seq(_) | Value::Map(_)) {
                self.raw = source
                    .get(start..start.saturating_add(len))
                    .map(str::to_owned);
            }
        }
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.fill_raw(source)),
            Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.fill_raw(source);
                v.fill_raw(source);
            }),
            _ => {}
        }
    }

    /// An empty mapping (a missing `spec`), placed on `line`.
    pub(crate) fn empty_map(line: usize) -> Node {
        Node {
            line,
            value: Value::Map(Vec::new()),
            raw: None,
            span: None,
        }
    }
}

/// Reads any YAML node, with its location, through serde-saphyr.
impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned: Spanned<AnyValue> = Spanned::deserialize(deserializer)?;
        // `defined` is where an alias's anchor was written: the text to copy for a scalar.
        let span = spanned.defined.span();
        let span = match (span.byte_offset(), span.byte_len()) {
            (Some(start), Some(len)) => usize::try_from(start).ok().zip(usize::try_from(len).ok()),
            _ => None,
        };
        Ok(Node {
            line: usize::try_from(spanned.referenced.line()).unwrap_or(0),
            value: spanned.value.0,
            raw: None,
            span,
        })
    }
}

struct AnyValue(Value);

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyVisitor).map(AnyValue)
    }
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::UInt(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::UInt)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

/// A stream that is not valid YAML.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct SyntaxError {
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

/// Parses every document of a YAML stream. Empty and null documents are skipped.
///
/// Nesting deeper than serde-saphyr's default budget (64 levels) is an error. serde-saphyr
/// descends once per level with large frames (tens of KiB each in debug builds): more than a
/// 2 MiB thread, such as a tokio worker or a test thread, holds at that depth. So parsing runs
/// on a thread with [`PARSE_STACK`] bytes of stack, whatever the caller's stack is: the
/// caller's own when it runs inside [`on_parser_stack`], else a thread of its own.
/// A panic in the parser is a syntax error of this stream, not of the caller.
pub(crate) fn parse_documents(source: &str) -> Result<Vec<Node>, SyntaxError> {
    let failed = |message: String| SyntaxError {
        line: None,
        message,
    };
    let parse = || {
        std::panic::catch_unwind(|| parse_here(source))
            .unwrap_or_else(|_| Err(failed("the YAML parser stopped unexpectedly".to_owned())))
    };
    if ON_PARSER_STACK.get() {
        return parse();
    }
    on_parser_stack(parse).unwrap_or_else(|message| Err(failed(message)))
}

thread_local! {
    /// Whether this thread has [`PARSE_STACK`] bytes of stack ([`on_parser_stack`]).
    static ON_PARSER_STACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
thread_local! {
    /// How many parser threads this thread started.
    pub(crate) static PARSER_THREADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` on a thread with [`PARSE_STACK`] bytes of stack, where every [`parse_documents`]
/// parses in place. A config of many files (one per object on Kubernetes: tens of thousands)
/// then starts one thread, not one per file: a thread per file was a tenth of a control plane's
/// CPU per change (docs/kubernetes.md, "Scale"). The error is why no thread could start; a
/// panic in `f` goes on in the caller.
pub(crate) fn on_parser_stack<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R, String> {
    if ON_PARSER_STACK.get() {
        return Ok(f());
    }
    #[cfg(test)]
    PARSER_THREADS.set(PARSER_THREADS.get() + 1);
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("ward-yaml".to_owned())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || {
                ON_PARSER_STACK.set(true);
                f()
            })
            .map_err(|e| format!("cannot start the YAML parser thread: {e}"))?;
        match thread.join() {
            Ok(result) => Ok(result),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Stack for the parser thread; see [`parse_documents`].
const PARSE_STACK: usize = 32 << 20;

/// The parser's limits: serde-saphyr's defaults, except the counts a large mesh in one file
/// reaches (a file of 2,000 WorkloadEntries is 2,000 documents and about 40,000 nodes). Nesting
/// depth, aliases and the input size keep their defaults (docs/security.md, "Config files").
fn parse_here(source: &str) -> Result<Vec<Node>, SyntaxError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_documents: 100_000,
            max_nodes: 4_000_000,
            max_events: 16_000_000,
        },
    };
    match serde_saphyr::from_multiple_with_options::<Node>(source, options) {
        Ok(mut docs) => {
            docs.iter_mut().for_each(|d| d.fill_raw(source));
            Ok(docs)
        }
        Err(err) => {
            let line = err
                .location()
                .and_then(|l| usize::try_from(l.line()).ok())
                .filter(|l| *l > 0);
            Err(SyntaxError {
                line,
                message: strip_location(&err.to_string()),
            })
        }
    }
}

/// serde-saphyr appends " at line X, column Y"; the diagnostic carries the line itself.
fn strip_location(message: &str) -> String {
    if let Some(at) = message.rfind(" at line ") {
        let tail = &message[at + " at line ".len()..];
        let is_location = tail.split_once(", column ").is_some_and(|(l, c)| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
        });
        if is_location {
            return message[..at].to_owned();
        }
    }
    message.to_owned()
}

// ---------------------------------------------------------------------------------------------
// Field paths

/// Appends a mapping key to a field path: `spec` + `rules` = `spec.rules`. Keys that are not
/// plain identifiers are quoted (`metadata.labels["app.kubernetes.io/name"]`); all-digit keys
/// print like indices (`portLevelMtls[8080]`).
pub(crate) fn push_key(path: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    } else if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
        format!("{path}[{key}]")
    } else {
        let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
        format!("{path}[\"{escaped}\"]")
    }
}

/// Appends a list index to a field path: `spec.rules` + 0 = `spec.rules[0]`.
pub(crate) fn push_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// Rewrites a field path written by other code (`rules[1].when[0]`, `portLevelMtls.8080`,
/// `labels["a.b"]`) into the form [`push_key`] and [`push_index`] produce. Returns the parsed
/// segments' renderings for every prefix, longest last.
fn canonical_prefixes(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    let mut word = String::new();
    let flush_word = |word: &mut String, current: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            *current = push_key(current, word);
            out.push(current.clone());
            word.clear();
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => flush_word(&mut word, &mut current, &mut out),
            '[' => {
                flush_word(&mut word, &mut current, &mut out);
                let mut inner = String::new();
                if chars.peek() == Some(&'"') {
                    chars.next();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some(escaped) = chars.next() {
                                    inner.push(escaped);
                                }
                            }
                            '"' => break,
                            other => inner.push(other),
                        }
                    }
                    // Skip to the closing bracket.
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                    }
                } else {
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                        inner.push(c);
                    }
                }
                current = push_key(&current, &inner);
                out.push(current.clone());
            }
            other => word.push(other),
        }
    }
    flush_word(&mut word, &mut current, &mut out);
    out
}

/// The line of every field of one document, by field path; used to place semantic errors
/// (found after deserialization) on the line of the field they concern. Shared, not copied,
/// by the clones of a resource (a config loads each unchanged file once, `load/cache.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldLines(std::sync::Arc<BTreeMap<String, usize>>);

impl FieldLines {
    /// Indexes every node of a document. A mapping value is placed on its key's line.
    pub(crate) fn index(root: &Node) -> FieldLines {
        let mut lines = BTreeMap::new();
        fn walk(node: &Node, path: String, line: usize, lines: &mut BTreeMap<String, usize>) {
            match &node.value {
                Value::Map(entries) => {
                    for (key, value) in entries {
                        let key_text = key.text().unwrap_or_default();
                        walk(value, push_key(&path, &key_text), key.line, lines);
                    }
                }
                Value::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, push_index(&path, i), item.line, lines);
                    }
                }
                _ => {}
            }
            lines.insert(path, line);
        }
        walk(root, String::new(), root.line, &mut lines);
        FieldLines(std::sync::Arc::new(lines))
    }

    /// The line of `path`, or of its closest ancestor that exists in the document.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        canonical_prefixes(path)
            .iter()
            .rev()
            .find_map(|p| self.0.get(p).copied())
            .or_else(|| self.0.get("").copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Node {
        let mut docs = parse_documents(yaml).unwrap();
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn a_file_may_hold_thousands_of_documents() {
        let yaml = "a: 1\n---\n".repeat(5_000);
        assert_eq!(parse_documents(&yaml).unwrap().len(), 5_000);
    }

    #[test]
    fn documents_have_file_lines_and_empty_ones_are_skipped() {
        let yaml = "# head\na: 1\n---\n---\n# c\nb:\n  c: 2\n...\n---\n[1]\n";
        let docs = parse_documents(yaml).unwrap();
        assert_eq!(
            docs.iter().map(|d| d.line).collect::<Vec<_>>(),
            vec![2, 6, 10]
        );
        assert_eq!(
            docs[1].get("b").and_then(|b| b.get("c")).map(|c| c.line),
            Some(7)
        );
    }

    #[test]
    fn syntax_errors_have_a_line_and_no_duplicated_location() {
        let cases = [
            ("a: 1\n---\nb: [1\n", 3),
            ("a: 1\na: 2\n", 2),
            ("a:\n\t- b\n", 2),
        ];
        for (yaml, line) in cases {
            let err = parse_documents(yaml).unwrap_err();
            assert_eq!(err.line, Some(line), "{yaml}: {err}");
            assert!(!err.message.contains(" at line "), "{}", err.message);
        }
    }

    #[test]
    fn field_lines_find_the_field_or_its_closest_ancestor() {
        let yaml = "spec:\n  rules:\n  - from:\n    - source:\n        principals:\n        - a\n        - b\n  portLevelMtls:\n    8080:\n      mode: STRICT\nmetadata:\n  labels:\n    app.kubernetes.io/name: x\n";
        let lines = FieldLines::index(&doc(yaml));
        let cases = [
            ("spec.rules[0].from[0].source.principals[1]", Some(7)),
            ("spec.rules[0].from[0].source.principals", Some(5)),
            ("spec.rules[0].from[0].source.notPrincipals[3]", Some(4)),
            ("spec.rules[0].to[0]", Some(3)),
            ("spec.portLevelMtls[8080].mode", Some(10)),
            ("spec.portLevelMtls.8080", Some(9)),
            ("spec.portLevelMtls[\"8080\"]", Some(9)),
            ("metadata.labels[\"app.kubernetes.io/name\"]", Some(13)),
            ("nothing.here", Some(1)),
        ];
        for (path, want) in cases {
            assert_eq!(lines.line_of(path), want, "{path}");
        }
    }

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        assert_eq!(push_key("", "spec"), "spec");
        assert_eq!(push_key("spec", "rules"), "spec.rules");
        assert_eq!(push_key("a", "x.y"), "a[\"x.y\"]");
        assert_eq!(push_key("a", "80"), "a[80]");
        assert_eq!(push_key("a", "q\""), "a[\"q\\\"\"]");
        assert_eq!(push_index("a", 3), "a[3]");
    }
}
