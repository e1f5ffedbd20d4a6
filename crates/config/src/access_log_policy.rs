//! Which requests and connections a proxy writes to its access log: the `accessLogging` part of
//! the Telemetry resources that apply to the workload, merged in Istio's order (the same levels
//! as `crate::tracing_policy`), and a small evaluator for `filter.expression`. Pure.
//!
//! Envoy evaluates the filter as CEL over request attributes
//! (https://istio.io/latest/docs/reference/config/telemetry/#AccessLogging-Filter). Ward
//! evaluates the subset most filters use: comparisons of `response.code` with an integer
//! (`==`, `!=`, `<`, `<=`, `>`, `>=`), combined with `&&`, `||`, `!` and parentheses, and the
//! literals `true`/`false`. Anything else is an error at load naming the expression, so a filter
//! never silently logs more or less than written. A connection without a response code (TCP)
//! does not match a `response.code` comparison (in CEL, a missing attribute is an error, and
//! Envoy then does not log). docs/http.md, "Which records are written".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::istio::{TelemetrySpec, TelemetryWorkloadMode};
use crate::load::{ConfigSet, Resource};

/// The access logging of one proxy, per direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessLogPolicy {
    /// Inbound requests and connections (and a gateway's).
    #[serde(default)]
    pub server: LogRule,
    /// Outbound requests and connections.
    #[serde(default)]
    pub client: LogRule,
}

/// Whether a record is written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRule {
    /// No record at all.
    #[serde(default)]
    pub disabled: bool,
    /// Only the records the filter matches; `None`: all.
    #[serde(default)]
    pub filter: Option<LogFilter>,
}

impl LogRule {
    /// Whether the record of a request answered with `code` (`None`: a TCP connection) is
    /// written.
    pub fn logs(&self, code: Option<u16>) -> bool {
        !self.disabled && self.filter.as_ref().is_none_or(|f| f.expr.eval(code))
    }
}

/// A parsed `filter.expression`, serialized as its text.
#[derive(Clone, Debug, PartialEq)]
pub struct LogFilter {
    /// The expression as written.
    pub text: String,
    /// Its parse.
    pub expr: Expr,
}

impl Serialize for LogFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let expr = parse(&text).map_err(serde::de::Error::custom)?;
        Ok(LogFilter { text, expr })
    }
}

/// A filter expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `true` or `false`.
    Const(bool),
    /// `response.code <op> <value>`.
    Code(Cmp, i64),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Expr {
    /// The value for a record whose response code is `code`.
    pub fn eval(&self, code: Option<u16>) -> bool {
        match self {
            Expr::Const(b) => *b,
            Expr::Code(cmp, v) => code.is_some_and(|c| {
                let c = i64::from(c);
                match cmp {
                    Cmp::Eq => c == *v,
                    Cmp::Ne => c != *v,
                    Cmp::Lt => c < *v,
                    Cmp::Le => c <= *v,
                    Cmp::Gt => c > *v,
                    Cmp::Ge => c >= *v,
                }
            }),
            Expr::Not(e) => !e.eval(code),
            Expr::And(a, b) => a.eval(code) && b.eval(code),
            Expr::Or(a, b) => a.eval(code) || b.eval(code),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Int(i64),
    Op(&'static str),
    Open,
    Close,
    /// A string literal, or any other character: only ever an error.
    Other(String),
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' {
            out.push(Token::Open);
            i += 1;
        } else if c == b')' {
            out.push(Token::Close);
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n = s[start..i]
                .parse()
                .map_err(|_| format!("`{}` is too large a number", &s[start..i]))?;
            out.push(Token::Int(n));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_.".contains(&b[i])) {
                i += 1;
            }
            out.push(Token::Ident(s[start..i].to_owned()));
        } else if let Some(op) = ["&&", "||", "==", "!=", "<=", ">=", "<", ">", "!"]
            .into_iter()
            .find(|op| s[i..].starts_with(op))
        {
            out.push(Token::Op(op));
            i += op.len();
        } else {
            // Kept for the parser to name in its error, after what comes before it.
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(Token::Other(c.to_string()));
            i += c.len_utf8();
        }
    }
    Ok(out)
}

/// Parse a filter expression (the grammar in the module docs).
pub fn parse(s: &str) -> Result<Expr, String> {
    let toks = tokens(s)?;
    let mut p = Parser { toks: &toks, at: 0 };
    let e = p.or()?;
    if p.at != toks.len() {
        return Err(format!(
            "unexpected {:?} after a complete expression",
            toks[p.at]
        ));
    }
    Ok(e)
}

struct Parser<'t> {
    toks: &'t [Token],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.at)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.peek() == Some(&Token::Op("||")) {
            self.at += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.peek() == Some(&Token::Op("&&")) {
            self.at += 1;
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Token::Op("!")) => {
                self.at += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Token::Open) => {
                self.at += 1;
                let e = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err("a `(` is not closed".to_owned());
                }
                self.at += 1;
                Ok(e)
            }
            Some(Token::Ident(id)) if id == "true" || id == "false" => {
                self.at += 1;
                Ok(Expr::Const(id == "true"))
            }
            Some(Token::Ident(id)) if id == "response.code" => {
                self.at += 1;
                let cmp = match self.peek() {
                    Some(Token::Op("==")) => Cmp::Eq,
                    Some(Token::Op("!=")) => Cmp::Ne,
                    Some(Token::Op("<")) => Cmp::Lt,
                    Some(Token::Op("<=")) => Cmp::Le,
                    Some(Token::Op(">")) => Cmp::Gt,
                    Some(Token::Op(">=")) => Cmp::Ge,
                    _ => {
                        return Err(
                            "`response.code` must be compared with ==, !=, <, <=, > or >=".into(),
                        )
                    }
                };
                self.at += 1;
                let Some(Token::Int(v)) = self.peek().cloned() else {
                    return Err("`response.code` can only be compared with an integer".into());
                };
                self.at += 1;
                Ok(Expr::Code(cmp, v))
            }
            Some(Token::Ident(id)) => Err(format!(
                "`{id}` is not supported: Ward's filters read `response.code` only"
            )),
            Some(Token::Other(c)) => Err(format!("`{c}` is not supported here")),
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("the expression ends too early".to_owned()),
        }
    }
}

/// The access logging of a workload of `namespace` with `labels`. Expressions were checked at
/// load; one that does not parse here (it cannot) is left out.
pub fn access_log_policy(
    set: &ConfigSet,
    root: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> AccessLogPolicy {
    let telemetries: Vec<&Resource<TelemetrySpec>> =
        crate::tracing_policy::applicable(set, root, namespace, labels);
    let mut policy = AccessLogPolicy::default();
    for t in telemetries {
        for logging in t.spec.access_logging.iter().flatten() {
            let mode = logging
                .match_
                .as_ref()
                .and_then(|m| m.mode)
                .unwrap_or(TelemetryWorkloadMode::ClientAndServer);
            let (to_server, to_client) = crate::tracing_policy::sides(mode);
            let filter = logging
                .filter
                .as_ref()
                .and_then(|f| f.expression.as_ref())
                .and_then(|text| {
                    parse(text).ok().map(|expr| LogFilter {
                        text: text.clone(),
                        expr,
                    })
                });
            for (rule, on) in [
                (&mut policy.server, to_server),
                (&mut policy.client, to_client),
            ] {
                if !on {
                    continue;
                }
                if let Some(d) = logging.disabled {
                    rule.disabled = d;
                }
                if filter.is_some() {
                    rule.filter.clone_from(&filter);
                }
            }
        }
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_table() {
        // (expression, code, logged)
        let cases = [
            ("response.code >= 400", Some(404), true),
            ("response.code >= 400", Some(200), false),
            ("response.code >= 400", None, false),
            (
                "response.code == 200 || response.code == 503",
                Some(503),
                true,
            ),
            ("!(response.code < 500)", Some(502), true),
            ("!(response.code < 500)", None, true),
            (
                "response.code > 199 && response.code <= 299",
                Some(204),
                true,
            ),
            ("response.code != 200", Some(200), false),
            ("true", None, true),
            ("false || response.code>=500", Some(500), true),
        ];
        for (text, code, want) in cases {
            let e = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(e.eval(code), want, "{text} with {code:?}");
        }
    }

    #[test]
    fn unsupported_expressions_are_load_errors() {
        for (text, why) in [
            ("xds.cluster_name == 'BlackHoleCluster'", "not supported"),
            ("response.code >= '400'", "integer"),
            ("response.code >= 400 && ~", "not supported"),
            ("response.code", "compared"),
            ("(response.code >= 400", "not closed"),
            ("response.code >= 400 response.code", "after a complete"),
            ("", "too early"),
            ("response.code >= 99999999999999999999", "too large"),
            ("request.headers['x'] == 'y'", "not supported"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn disabled_and_filter_merge_by_level() {
        let base = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  accessLogging: [{filter: {expression: 'response.code >= 400'}}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: off, namespace: app}\nspec:\n  selector: {matchLabels: {app: quiet}}\n  accessLogging: [{disabled: true, match: {mode: CLIENT}}]\n";
        let set = crate::load::load_str("t.yaml", base).unwrap();
        let labels = |app: &str| [("app".to_owned(), app.to_owned())].into();
        let p = access_log_policy(&set, "istio-system", "app", &labels("srv"));
        assert!(p.server.logs(Some(500)) && !p.server.logs(Some(200)));
        let p = access_log_policy(&set, "istio-system", "app", &labels("quiet"));
        assert!(!p.client.logs(Some(500)), "disabled for CLIENT");
        assert!(p.server.logs(Some(500)) && !p.server.logs(Some(200)));
        let json = serde_json::to_string(&p).unwrap();
        let back: AccessLogPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}
