//! Small value checks the networking specs share: ports, percentages, regexes, required
//! fields and protobuf oneofs. Each pushes WARD0105 errors onto a list of findings, so one
//! object reports every problem it has.

use std::net::IpAddr;

use ipnet::IpNet;

use super::port_number;
use crate::diag::{code, Finding};
use crate::yaml::push_key;

/// Istio's limit on a regex's length (istio/istio `pkg/config/validation`,
/// `validateStringRegexp`: "regex is too large, max length allowed is 1024").
const MAX_REGEX_LEN: usize = 1024;

/// An error at `path`.
pub(crate) fn invalid(out: &mut Vec<Finding>, path: &str, message: impl Into<String>) {
    out.push(Finding::error(code::INVALID, path, message));
}

/// A field the proto marks REQUIRED, when it is absent.
pub(crate) fn require<T>(out: &mut Vec<Finding>, path: &str, field: &str, value: Option<&T>) {
    if value.is_none() {
        invalid(out, path, format!("missing required field `{field}`"));
    }
}

/// A string the proto marks REQUIRED, when it is absent or empty.
pub(crate) fn require_text(out: &mut Vec<Finding>, path: &str, field: &str, value: Option<&str>) {
    if value.is_none_or(str::is_empty) {
        invalid(out, path, format!("missing required field `{field}`"));
    }
}

/// A list Istio requires to be non-empty, when it is absent or empty.
pub(crate) fn require_items<T>(
    out: &mut Vec<Finding>,
    path: &str,
    field: &str,
    value: Option<&[T]>,
) {
    if value.is_none_or(<[T]>::is_empty) {
        invalid(
            out,
            path,
            format!("missing required field `{field}` (at least one item)"),
        );
    }
}

/// A protobuf oneof: at most one of `members` (JSON name, whether set) may be set.
pub(crate) fn one_of(out: &mut Vec<Finding>, path: &str, members: &[(&str, bool)]) {
    let set: Vec<String> = members
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    if set.len() > 1 {
        let all: Vec<String> = members
            .iter()
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        invalid(
            out,
            path,
            format!(
                "only one of {} may be set; found {}",
                all.join(", "),
                set.join(" and ")
            ),
        );
    }
}

/// Two fields that exclude each other (Istio's validation rejects both together).
pub(crate) fn not_both(out: &mut Vec<Finding>, path: &str, a: (&str, bool), b: (&str, bool)) {
    if a.1 && b.1 {
        invalid(
            out,
            path,
            format!("`{}` and `{}` cannot both be set", a.0, b.0),
        );
    }
}

/// A port number in 1-65535, at `path` (the number field itself).
pub(crate) fn port(out: &mut Vec<Finding>, path: &str, number: u32) {
    if port_number(number).is_none() {
        invalid(out, path, format!("port {number} is out of range 1-65535"));
    }
}

/// An optional port where 0 means unset (proto3 `uint32 port` in a match).
pub(crate) fn port_if_set(out: &mut Vec<Finding>, path: &str, number: Option<u32>) {
    if let Some(number) = number.filter(|n| *n != 0) {
        port(out, path, number);
    }
}

/// A percentage in 0-100.
pub(crate) fn percentage(out: &mut Vec<Finding>, path: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        invalid(
            out,
            path,
            format!("percentage {value} is out of range 0-100"),
        );
    }
}

/// A count Istio requires to be non-negative.
pub(crate) fn non_negative(out: &mut Vec<Finding>, path: &str, value: Option<i32>) {
    if let Some(value) = value.filter(|v| *v < 0) {
        invalid(out, path, format!("{value} is negative"));
    }
}

/// A regex: not empty, at most 1024 bytes, and compiling. Ward compiles it with the Rust
/// `regex` crate; Istio (Envoy) uses RE2, whose syntax the crate follows closely (neither has
/// look-around or backreferences).
pub(crate) fn regex(out: &mut Vec<Finding>, path: &str, re: &str) {
    if re.is_empty() {
        invalid(out, path, "a regex must not be empty");
        return;
    }
    if re.len() > MAX_REGEX_LEN {
        invalid(
            out,
            path,
            format!(
                "the regex is {} bytes long; Istio allows at most {MAX_REGEX_LEN}",
                re.len()
            ),
        );
        return;
    }
    if let Err(err) = regex::Regex::new(re) {
        invalid(
            out,
            path,
            format!(
                "`{re}` is not a valid regex: {}; Ward compiles regexes with the Rust `regex` \
                 crate, Istio uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
                regex_error_summary(&err)
            ),
        );
    }
}

/// The one-line reason of a regex error (the crate's message spans several lines, with a
/// caret under the offending part).
fn regex_error_summary(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

/// An IP address or a CIDR block (`destinationSubnets`).
pub(crate) fn ip_or_cidr(out: &mut Vec<Finding>, path: &str, value: &str) {
    if value.parse::<IpAddr>().is_err() && value.parse::<IpNet>().is_err() {
        invalid(
            out,
            path,
            format!("`{value}` is not an IP address or CIDR block"),
        );
    }
}

/// `path.field` for a field of the object at `path`.
pub(crate) fn at(path: &str, field: &str) -> String {
    push_key(path, field)
}

/// A required string field (`field` of the object at `path`) that is empty.
pub(crate) fn non_empty(value: &str, path: &str, field: &str) -> Option<Finding> {
    value.is_empty().then(|| {
        Finding::error(
            code::INVALID,
            push_key(path, field),
            format!("`{field}` must not be empty"),
        )
    })
}

/// A string longer than the CRD's `MaxLength` (counted in characters, as Kubernetes does).
pub(crate) fn max_len(value: &str, max: usize, path: &str) -> Option<Finding> {
    let len = value.chars().count();
    (len > max).then(|| {
        Finding::error(
            code::INVALID,
            path,
            format!("{len} characters: at most {max} are allowed"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(check: impl FnOnce(&mut Vec<Finding>)) -> Vec<String> {
        let mut out = Vec::new();
        check(&mut out);
        out.into_iter().map(|f| f.message).collect()
    }

    #[test]
    fn regexes_compile_or_say_why() {
        assert_eq!(
            messages(|o| regex(o, "p", "^/api/v[0-9]+/.*$")),
            Vec::<String>::new()
        );
        assert_eq!(
            messages(|o| regex(o, "p", "/api/(v1")),
            vec![
                "`/api/(v1` is not a valid regex: unclosed group; Ward compiles regexes with \
                  the Rust `regex` crate, Istio uses RE2 syntax \
                  (https://github.com/google/re2/wiki/Syntax)"
                    .to_owned()
            ]
        );
        assert_eq!(
            messages(|o| regex(o, "p", "")),
            vec!["a regex must not be empty"]
        );
        assert_eq!(messages(|o| regex(o, "p", &"a".repeat(1025))).len(), 1);
    }

    #[test]
    fn one_of_names_the_members_set() {
        assert_eq!(
            messages(|o| one_of(
                o,
                "p",
                &[("exact", true), ("prefix", false), ("regex", true)]
            )),
            vec!["only one of `exact`, `prefix`, `regex` may be set; found `exact` and `regex`"]
        );
        assert!(messages(|o| one_of(o, "p", &[("exact", true), ("prefix", false)])).is_empty());
    }

    #[test]
    fn ranges() {
        assert_eq!(messages(|o| port(o, "p", 0)).len(), 1);
        assert_eq!(messages(|o| port(o, "p", 65_536)).len(), 1);
        assert!(messages(|o| port(o, "p", 65_535)).is_empty());
        assert!(messages(|o| port_if_set(o, "p", Some(0))).is_empty());
        assert_eq!(messages(|o| percentage(o, "p", 100.5)).len(), 1);
        assert_eq!(messages(|o| percentage(o, "p", f64::NAN)).len(), 1);
        assert!(messages(|o| percentage(o, "p", 0.0)).is_empty());
    }
}
