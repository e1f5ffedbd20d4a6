//! A test's metrics, read the way Prometheus reads them: the registry encoded as OpenMetrics
//! text (`prometheus_client::encoding::text::encode`, what `/metrics` serves), parsed into
//! samples, and summed by metric name and a subset of labels.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::registry::Registry;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample name, with its suffix (`istio_tcp_connections_failed_total`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Every sample of a registry at one moment.
#[derive(Clone, Debug, Default)]
pub struct MetricsText {
    /// The encoded text, for messages.
    pub text: String,
    /// The parsed samples.
    pub samples: Vec<Sample>,
}

impl MetricsText {
    /// Encode `registry` and parse it.
    pub fn encode(registry: &Registry) -> MetricsText {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry)
            .expect("metrics encode to a String");
        MetricsText::parse(&text)
    }

    /// Parse OpenMetrics text; comment lines are skipped, a line that does not parse panics (the
    /// registry wrote it, so that is a harness bug).
    pub fn parse(text: &str) -> MetricsText {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable metrics line {l:?}")))
            .collect();
        MetricsText {
            text: text.to_owned(),
            samples,
        }
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn select<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> Vec<&'a Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The sum of the samples named `name` whose labels include `labels`; 0 when none matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        // A fold from +0: `Sum` of no f64 is -0, which prints as "-0".
        self.select(name, labels)
            .iter()
            .fold(0.0, |total, s| total + s.value)
    }
}

impl fmt::Display for Sample {
    /// `name{k="v",...} value`, only the labels that are not `unknown`, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .filter(|(_, v)| v.as_str() != "unknown")
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        write!(f, "{}{{{}}} {}", self.name, labels.join(","), self.value)
    }
}

/// `name{k="v",...} value` or `name value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, value) = match rest.strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (BTreeMap::new(), rest),
    };
    let value = value.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The label pairs after `{`, up to the closing `}`; returns them and the rest of the line.
/// Values are quoted, with `\\`, `\"` and `\n` escapes.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].to_owned();
        let mut chars = rest[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = &rest[eq + 1..][1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_escaped_labels() {
        let m = MetricsText::parse(
            "# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\\\\z\"} 3\nb 2.5\n# EOF\n",
        );
        assert_eq!(m.samples.len(), 2);
        assert_eq!(m.samples[0].labels["y"], "q\"\\z");
        assert_eq!(m.sum("a_total", &[("x", "1")]), 3.0);
        assert_eq!(m.sum("a_total", &[("x", "2")]), 0.0);
        assert_eq!(m.sum("b", &[]), 2.5);
    }
}
