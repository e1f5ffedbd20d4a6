//! Protobuf well-known types as Istio YAML writes them: `google.protobuf.Duration` (a string
//! such as `5s`), `google.protobuf.Struct` (any mapping) and `google.protobuf.Value` (any value,
//! [`FreeForm`]), per the protobuf JSON mapping
//! (<https://protobuf.dev/programming-guides/json/>). The wrapper types (`BoolValue`,
//! `UInt32Value` ...) are plain `Option<bool>`, `Option<u32>` ... in the spec structs.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use ward_policy::duration::{self, Grammar};

/// `google.protobuf.Duration`, written as a string: `5s`, `1.5s`, `100ms`, `1m30s`, `1h`
/// (the grammar of [`ward_policy::duration`]). A string that is not a duration is a load error
/// (WARD0105) at the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as `5s`, `500ms` or `1m30s`")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        duration::parse(text, Grammar::ISTIO)
            .map(Duration)
            .map_err(E::custom)
    }
}

impl Serialize for Duration {
    /// The protobuf JSON form: seconds with up to nine fractional digits, e.g. `1.5s`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let nanos = self.0.subsec_nanos();
        let text = if nanos == 0 {
            format!("{}s", self.0.as_secs())
        } else {
            let fraction = format!("{nanos:09}");
            format!("{}.{}s", self.0.as_secs(), fraction.trim_end_matches('0'))
        };
        serializer.serialize_str(&text)
    }
}

/// `google.protobuf.Struct`: a mapping of any YAML values (EnvoyFilter `patch.value`). Ward
/// keeps it as written and does not interpret it.
pub type Struct = serde_json::Map<String, serde_json::Value>;

/// Any YAML value, kept as JSON: a `google.protobuf.Value`, or a subtree Ward does not type
/// (an operator's Helm `values`). Nothing below it is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct FreeForm(pub serde_json::Value);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::yaml::parse_documents;
    use std::time::Duration as Std;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        timeout: Option<Duration>,
        value: Option<Struct>,
        any: Option<FreeForm>,
    }

    fn holder(yaml: &str) -> Result<Holder, String> {
        let docs = parse_documents(yaml).unwrap();
        decode::<Holder>(&docs[0], "spec").map_err(|e| {
            let at = e.at().unwrap();
            format!("{}:{}: {e}", at.path, at.line)
        })
    }

    #[test]
    fn durations_parse_and_print_as_protobuf_json() {
        for (text, want, printed) in [
            ("5s", Std::from_secs(5), "\"5s\""),
            ("1.5s", Std::from_millis(1500), "\"1.5s\""),
            ("100ms", Std::from_millis(100), "\"0.1s\""),
            ("1m30s", Std::from_secs(90), "\"90s\""),
        ] {
            let got = holder(&format!("timeout: {text}\n"))
                .unwrap()
                .timeout
                .unwrap();
            assert_eq!(got.get(), want, "{text}");
            assert_eq!(serde_json::to_string(&got).unwrap(), printed, "{text}");
        }
        let err = holder("a: 1\n").unwrap_err();
        assert!(err.contains("unknown field `a`"), "{err}");
        for bad in ["5", "soon", "-1s", "{s: 1}"] {
            let err = holder(&format!("timeout: {bad}\n")).unwrap_err();
            assert!(err.starts_with("spec.timeout:1: "), "{bad}: {err}");
        }
    }

    #[test]
    fn structs_take_any_mapping_and_nothing_else() {
        let yaml = "value:\n  name: envoy.lua\n  typed_config:\n    \"@type\": type.googleapis.com/x\n    n: [1, 2.5, true, null, {k: v}]\n";
        let value = holder(yaml).unwrap().value.unwrap();
        assert_eq!(
            serde_json::to_string(&value).unwrap(),
            r#"{"name":"envoy.lua","typed_config":{"@type":"type.googleapis.com/x","n":[1,2.5,true,null,{"k":"v"}]}}"#
        );
        let err = holder("value: [1]\n").unwrap_err();
        assert!(err.starts_with("spec.value:1: expected a mapping"), "{err}");
    }

    #[test]
    fn free_form_takes_any_value() {
        let got = holder("any:\n  a: [1, x, {b: null}]\n  8080: true\n").unwrap();
        assert_eq!(
            got.any.unwrap().0,
            serde_json::json!({"a": [1, "x", {"b": null}], "8080": true})
        );
        assert_eq!(holder("any: 3\n").unwrap().any.unwrap().0, 3);
    }
}
