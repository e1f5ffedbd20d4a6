//! Which requests and connections a proxy writes to its access log: the `accessLogging` part of
//! the Telemetry resources that apply to the workload, merged in Istio's order (the same levels
//! as `crate::tracing_policy`), and a small evaluator for `filter.expression`. Pure.
//!
//! Envoy evaluates the filter as CEL over request attributes
//! (https://istio.io/latest/docs/reference/config/telemetry/#AccessLogging-Filter). Ward
//! evaluates the subset filters are written in: comparisons (`==`, `!=`, and for integers and
//! durations `<`, `<=`, `>`, `>=`) of an attribute with a literal of its type — `response.code`
//! (int), `response.duration` (`duration('1.5s')`), `request.method`, `request.url_path`,
//! `request.host`, `request.headers['name']`, `source.principal` (strings), `connection.mtls`
//! (bool, also on its own) — the string tests `.startsWith('x')`, `.endsWith('x')`,
//! `.contains('x')`, combined with `&&`, `||`, `!` and parentheses, and the literals
//! `true`/`false`. Anything else (another attribute, a type mismatch, another function) is an
//! error at load naming the expression, so a filter never silently logs more or less than
//! written. A record without the attribute (a TCP connection has no response code or method, a
//! request may lack the header) does not match a comparison of it (in CEL, a missing attribute
//! is an error, and Envoy then does not log). docs/http.md, "Which records are written".

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

/// A request or connection as a filter sees it: the CEL attributes Ward evaluates
/// (https://istio.io/latest/docs/reference/config/telemetry/#AccessLogging-Filter; the names
/// are Envoy's, https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes).
/// `None`: the attribute is not known for this record (a TCP connection has no method).
#[derive(Clone, Copy, Default)]
pub struct Record<'a> {
    /// `response.code`.
    pub code: Option<u16>,
    /// `response.duration`: from the request's arrival to the response's end.
    pub duration: Option<std::time::Duration>,
    /// `request.method`.
    pub method: Option<&'a str>,
    /// `request.url_path`: the path without its query.
    pub url_path: Option<&'a str>,
    /// `request.host`: the authority.
    pub host: Option<&'a str>,
    /// `request.headers[...]`.
    pub headers: Option<&'a dyn Headers>,
    /// `connection.mtls`: whether the peer presented a verified certificate.
    pub mtls: Option<bool>,
    /// `source.principal`: the peer's SPIFFE id (without `spiffe://`, as Istio's
    /// `source.principal` policy field; the `spiffe://` form is accepted too).
    pub source_principal: Option<&'a str>,
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("code", &self.code)
            .field("method", &self.method)
            .field("url_path", &self.url_path)
            .finish_non_exhaustive()
    }
}

/// Request headers by lower-case name.
pub trait Headers {
    /// The value of header `name` (lower case), when present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;
}

impl AccessLogPolicy {
    /// The request headers either side's filter reads (lower case): what a proxy keeps of a
    /// request for its log record, and nothing more.
    pub fn filter_headers(&self) -> Vec<String> {
        let mut names = Vec::new();
        for rule in [&self.server, &self.client] {
            if let Some(f) = &rule.filter {
                f.expr.header_names(&mut names);
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

impl LogRule {
    /// Whether the record `r` is written.
    pub fn logs_record(&self, r: &Record<'_>) -> bool {
        !self.disabled && self.filter.as_ref().is_none_or(|f| f.expr.eval_record(r))
    }
}

/// An attribute a filter reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    /// `response.code` (int).
    ResponseCode,
    /// `response.duration` (duration).
    ResponseDuration,
    /// `request.method` (string).
    RequestMethod,
    /// `request.url_path` (string).
    RequestUrlPath,
    /// `request.host` (string).
    RequestHost,
    /// `request.headers['name']` (string), the name lower-cased.
    RequestHeader(String),
    /// `connection.mtls` (bool).
    ConnectionMtls,
    /// `source.principal` (string).
    SourcePrincipal,
}

/// The type of an attribute or literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Int,
    Str,
    Bool,
    Duration,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Int => "an integer",
            Type::Str => "a string",
            Type::Bool => "a bool",
            Type::Duration => "a duration",
        }
    }
}

impl Attr {
    /// The attribute spelled `name` (not headers, which are indexed).
    fn named(name: &str) -> Option<Attr> {
        Some(match name {
            "response.code" => Attr::ResponseCode,
            "response.duration" => Attr::ResponseDuration,
            "request.method" => Attr::RequestMethod,
            "request.url_path" => Attr::RequestUrlPath,
            "request.host" => Attr::RequestHost,
            "connection.mtls" => Attr::ConnectionMtls,
            "source.principal" => Attr::SourcePrincipal,
            _ => return None,
        })
    }

    fn ty(&self) -> Type {
        match self {
            Attr::ResponseCode => Type::Int,
            Attr::ResponseDuration => Type::Duration,
            Attr::ConnectionMtls => Type::Bool,
            _ => Type::Str,
        }
    }

    fn value(&self, r: &Record<'_>) -> Option<Lit> {
        let s = |v: Option<&str>| v.map(|v| Lit::Str(v.to_owned()));
        match self {
            Attr::ResponseCode => r.code.map(|c| Lit::Int(i64::from(c))),
            Attr::ResponseDuration => r.duration.map(Lit::Duration),
            Attr::RequestMethod => s(r.method),
            Attr::RequestUrlPath => s(r.url_path),
            Attr::RequestHost => s(r.host),
            Attr::RequestHeader(name) => s(r.headers.and_then(|h| h.get(name))),
            Attr::ConnectionMtls => r.mtls.map(Lit::Bool),
            Attr::SourcePrincipal => r
                .source_principal
                .map(|p| Lit::Str(p.strip_prefix("spiffe://").unwrap_or(p).to_owned())),
        }
    }
}

/// A literal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lit {
    /// `404`
    Int(i64),
    /// `'GET'`, `"GET"`
    Str(String),
    /// `true`
    Bool(bool),
    /// `duration("1.5s")`
    Duration(std::time::Duration),
}

impl Lit {
    fn ty(&self) -> Type {
        match self {
            Lit::Int(_) => Type::Int,
            Lit::Str(_) => Type::Str,
            Lit::Bool(_) => Type::Bool,
            Lit::Duration(_) => Type::Duration,
        }
    }
}

/// A string test (CEL's string functions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrFn {
    /// `.startsWith('x')`
    StartsWith,
    /// `.endsWith('x')`
    EndsWith,
    /// `.contains('x')`
    Contains,
}

/// The string methods, by name.
const STRING_FNS: [(&str, StrFn); 3] = [
    ("startsWith", StrFn::StartsWith),
    ("endsWith", StrFn::EndsWith),
    ("contains", StrFn::Contains),
];

/// A filter expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `true` or `false`.
    Const(bool),
    /// `<attribute> <op> <literal>` (or the literal first: stored the attribute's way round).
    Cmp(Attr, Cmp, Lit),
    /// A bool attribute on its own: `connection.mtls`.
    Is(Attr),
    /// `<attribute>.startsWith('x')`...
    Str(Attr, StrFn, String),
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

impl Cmp {
    /// The same comparison with its operands swapped (`400 <= x` is `x >= 400`).
    fn flipped(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            c => c,
        }
    }

    fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Cmp::Eq => o == Equal,
            Cmp::Ne => o != Equal,
            Cmp::Lt => o == Less,
            Cmp::Le => o != Greater,
            Cmp::Gt => o == Greater,
            Cmp::Ge => o != Less,
        }
    }
}

impl Expr {
    /// The value for a record whose response code is `code` and of which nothing else is known.
    pub fn eval(&self, code: Option<u16>) -> bool {
        self.eval_record(&Record {
            code,
            ..Record::default()
        })
    }

    /// Adds the headers this expression reads to `out`.
    pub fn header_names(&self, out: &mut Vec<String>) {
        match self {
            Expr::Cmp(Attr::RequestHeader(h), ..)
            | Expr::Is(Attr::RequestHeader(h))
            | Expr::Str(Attr::RequestHeader(h), ..) => out.push(h.clone()),
            Expr::Not(e) => e.header_names(out),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.header_names(out);
                b.header_names(out);
            }
            _ => {}
        }
    }

    /// The value for `r`. A comparison or test of an attribute the record does not have is
    /// false (CEL makes it an error, and Envoy then does not log); `!` of it is true.
    pub fn eval_record(&self, r: &Record<'_>) -> bool {
        match self {
            Expr::Const(b) => *b,
            Expr::Cmp(attr, cmp, lit) => attr.value(r).is_some_and(|v| cmp.holds(v.cmp(lit))),
            Expr::Is(attr) => attr.value(r) == Some(Lit::Bool(true)),
            Expr::Str(attr, f, arg) => match attr.value(r) {
                Some(Lit::Str(v)) => match f {
                    StrFn::StartsWith => v.starts_with(arg.as_str()),
                    StrFn::EndsWith => v.ends_with(arg.as_str()),
                    StrFn::Contains => v.contains(arg.as_str()),
                },
                _ => false,
            },
            Expr::Not(e) => !e.eval_record(r),
            Expr::And(a, b) => a.eval_record(r) && b.eval_record(r),
            Expr::Or(a, b) => a.eval_record(r) || b.eval_record(r),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Int(i64),
    Str(String),
    Op(&'static str),
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    /// `.name` after an operand: a method call (`.startsWith`).
    Method(String),
    /// Any other character: only ever an error.
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
        } else if c == b'[' {
            out.push(Token::OpenBracket);
            i += 1;
        } else if c == b']' {
            out.push(Token::CloseBracket);
            i += 1;
        } else if c == b'\'' || c == b'"' {
            // A CEL string literal; `\` escapes the next character.
            let mut text = String::new();
            let mut chars = s[i + 1..].char_indices();
            let mut end = None;
            while let Some((j, ch)) = chars.next() {
                match ch {
                    '\\' => match chars.next() {
                        Some((_, e)) => text.push(e),
                        None => break,
                    },
                    ch if ch == char::from(c) => {
                        end = Some(i + 1 + j + 1);
                        break;
                    }
                    ch => text.push(ch),
                }
            }
            let Some(end) = end else {
                return Err("a string literal is not closed".to_owned());
            };
            out.push(Token::Str(text));
            i = end;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n = s[start..i]
                .parse()
                .map_err(|_| format!("`{}` is too large a number", &s[start..i]))?;
            out.push(Token::Int(n));
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'.' {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_.".contains(&b[i])) {
                i += 1;
            }
            let word = &s[start..i];
            // `a.b.startsWith`: the attribute, then the method; `].startsWith` likewise.
            match word.rfind('.') {
                Some(dot) if STRING_FNS.iter().any(|(n, _)| *n == &word[dot + 1..]) => {
                    if dot > 0 {
                        out.push(Token::Ident(word[..dot].to_owned()));
                    }
                    out.push(Token::Method(word[dot + 1..].to_owned()));
                }
                _ if c == b'.' => out.push(Token::Other(word.to_owned())),
                _ => out.push(Token::Ident(word.to_owned())),
            }
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

/// A Go/protobuf duration as CEL's `duration()` takes it: `1.5s`, `300ms`, `1m30s`, `2h`.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
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

/// What can stand on one side of a comparison.
enum Operand {
    Attr(Attr),
    Lit(Lit),
}

const SUPPORTED: &str = "Ward's filters read response.code, response.duration, \
    request.method, request.url_path, request.host, request.headers['name'], connection.mtls \
    and source.principal";

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.at)
    }

    fn expect(&mut self, t: &Token, what: &str) -> Result<(), String> {
        if self.peek() == Some(t) {
            self.at += 1;
            Ok(())
        } else {
            Err(what.to_owned())
        }
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
                self.expect(&Token::Close, "a `(` is not closed")?;
                Ok(e)
            }
            Some(Token::Ident(id)) if id == "true" || id == "false" => {
                self.at += 1;
                Ok(Expr::Const(id == "true"))
            }
            Some(Token::Ident(_)) => {
                let left = self.operand()?;
                if let (Operand::Attr(attr), Some(Token::Method(name))) =
                    (&left, self.peek().cloned())
                {
                    self.at += 1;
                    let Some(f) = STRING_FNS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
                    else {
                        return Err(format!("`.{name}` is not supported"));
                    };
                    if attr.ty() != Type::Str {
                        return Err(format!(
                            "`{}` is not a string: no `.{name}`",
                            attr_text(attr)
                        ));
                    }
                    return self.string_test(attr.clone(), f, &name);
                }
                self.comparison(left)
            }
            Some(Token::Int(_) | Token::Str(_)) => {
                let left = self.operand()?;
                self.comparison(left)
            }
            Some(Token::Other(c)) => Err(format!("`{c}` is not supported here")),
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("the expression ends too early".to_owned()),
        }
    }

    /// `(<string literal>)` after a string function.
    fn string_test(&mut self, attr: Attr, f: StrFn, name: &str) -> Result<Expr, String> {
        self.expect(
            &Token::Open,
            &format!("`.{name}` takes one string: ('...')"),
        )?;
        let Some(Token::Str(arg)) = self.peek().cloned() else {
            return Err(format!("`.{name}` takes one string literal"));
        };
        self.at += 1;
        self.expect(&Token::Close, &format!("`.{name}(` is not closed"))?;
        Ok(Expr::Str(attr, f, arg))
    }

    fn attr_named(&mut self, name: &str) -> Result<Attr, String> {
        if name == "request.headers" {
            self.expect(
                &Token::OpenBracket,
                "`request.headers` is read as request.headers['name']",
            )?;
            let Some(Token::Str(header)) = self.peek().cloned() else {
                return Err("a header is named by a string: request.headers['name']".into());
            };
            self.at += 1;
            self.expect(&Token::CloseBracket, "a `[` is not closed")?;
            return Ok(Attr::RequestHeader(header.to_ascii_lowercase()));
        }
        Attr::named(name).ok_or_else(|| format!("`{name}` is not supported: {SUPPORTED}"))
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.peek().cloned() {
            Some(Token::Int(n)) => {
                self.at += 1;
                Ok(Operand::Lit(Lit::Int(n)))
            }
            Some(Token::Str(s)) => {
                self.at += 1;
                Ok(Operand::Lit(Lit::Str(s)))
            }
            Some(Token::Ident(id)) if id == "true" || id == "false" => {
                self.at += 1;
                Ok(Operand::Lit(Lit::Bool(id == "true")))
            }
            Some(Token::Ident(id)) if id == "duration" => {
                self.at += 1;
                self.expect(&Token::Open, "duration takes a string: duration('1s')")?;
                let Some(Token::Str(text)) = self.peek().cloned() else {
                    return Err("duration takes a string: duration('1s')".into());
                };
                self.at += 1;
                self.expect(&Token::Close, "a `duration(` is not closed")?;
                parse_duration(&text)
                    .map(|d| Operand::Lit(Lit::Duration(d)))
                    .ok_or_else(|| format!("`{text}` is not a duration (e.g. 1.5s, 300ms, 1m)"))
            }
            Some(Token::Ident(id)) => {
                self.at += 1;
                Ok(Operand::Attr(self.attr_named(&id)?))
            }
            Some(Token::Other(c)) => Err(format!("`{c}` is not supported here")),
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("the expression ends too early".to_owned()),
        }
    }

    /// `left <op> right`, one side an attribute and the other a literal of its type; a bool
    /// attribute may stand alone.
    fn comparison(&mut self, left: Operand) -> Result<Expr, String> {
        let cmp = match self.peek() {
            Some(Token::Op("==")) => Some(Cmp::Eq),
            Some(Token::Op("!=")) => Some(Cmp::Ne),
            Some(Token::Op("<")) => Some(Cmp::Lt),
            Some(Token::Op("<=")) => Some(Cmp::Le),
            Some(Token::Op(">")) => Some(Cmp::Gt),
            Some(Token::Op(">=")) => Some(Cmp::Ge),
            _ => None,
        };
        let Some(cmp) = cmp else {
            return match left {
                Operand::Attr(a) if a.ty() == Type::Bool => Ok(Expr::Is(a)),
                Operand::Attr(a) => Err(format!(
                    "`{}` must be compared with ==, !=, <, <=, > or >=",
                    attr_text(&a)
                )),
                Operand::Lit(_) => Err("a literal must be compared with an attribute".into()),
            };
        };
        self.at += 1;
        let right = self.operand()?;
        let (attr, cmp, lit) = match (left, right) {
            (Operand::Attr(a), Operand::Lit(l)) => (a, cmp, l),
            (Operand::Lit(l), Operand::Attr(a)) => (a, cmp.flipped(), l),
            _ => return Err("a comparison needs an attribute and a literal".into()),
        };
        if attr.ty() != lit.ty() {
            return Err(format!(
                "`{}` can only be compared with {}",
                attr_text(&attr),
                attr.ty().name()
            ));
        }
        if matches!(attr.ty(), Type::Str | Type::Bool) && !matches!(cmp, Cmp::Eq | Cmp::Ne) {
            return Err(format!(
                "`{}` can only be compared with == or !=",
                attr_text(&attr)
            ));
        }
        Ok(Expr::Cmp(attr, cmp, lit))
    }
}

/// An attribute as written.
fn attr_text(a: &Attr) -> String {
    match a {
        Attr::ResponseCode => "response.code".into(),
        Attr::ResponseDuration => "response.duration".into(),
        Attr::RequestMethod => "request.method".into(),
        Attr::RequestUrlPath => "request.url_path".into(),
        Attr::RequestHost => "request.host".into(),
        Attr::RequestHeader(h) => format!("request.headers['{h}']"),
        Attr::ConnectionMtls => "connection.mtls".into(),
        Attr::SourcePrincipal => "source.principal".into(),
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
    fn attributes_table() {
        struct H(&'static [(&'static str, &'static str)]);
        impl Headers for H {
            fn get(&self, name: &str) -> Option<&str> {
                self.0
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
            }
        }
        let headers = &H(&[("x-tenant", "acme"), ("User-Agent", "kube-probe/1.30")]);
        let req = Record {
            code: Some(503),
            duration: Some(std::time::Duration::from_millis(1500)),
            method: Some("POST"),
            url_path: Some("/fhir/Patient/7"),
            host: Some("ehr.example.com"),
            headers: Some(headers),
            mtls: Some(true),
            source_principal: Some("spiffe://cluster.local/ns/app/sa/web"),
        };
        let plain = Record {
            mtls: Some(false),
            source_principal: None,
            headers: None,
            ..req
        };
        let tcp = Record {
            mtls: Some(true),
            source_principal: Some("cluster.local/ns/app/sa/web"),
            ..Record::default()
        };
        // (expression, [request, plaintext request, tcp connection])
        let cases: &[(&str, [bool; 3])] = &[
            ("request.method == 'POST'", [true, true, false]),
            ("request.method != \"GET\"", [true, true, false]),
            ("request.url_path.startsWith('/fhir/')", [true, true, false]),
            (
                "!request.url_path.startsWith('/healthz')",
                [true, true, true],
            ),
            (
                "request.url_path.endsWith('/7') && response.code >= 500",
                [true, true, false],
            ),
            ("request.url_path.contains('Patient')", [true, true, false]),
            (
                "request.headers['x-tenant'] == 'acme'",
                [true, false, false],
            ),
            (
                "request.headers['X-Tenant'] == 'acme'",
                [true, false, false],
            ),
            (
                "request.headers['user-agent'].startsWith('kube-probe')",
                [true, false, false],
            ),
            ("request.headers['x-missing'] == ''", [false, false, false]),
            ("connection.mtls", [true, false, true]),
            ("!connection.mtls", [false, true, false]),
            ("connection.mtls == false", [false, true, false]),
            (
                "source.principal == 'cluster.local/ns/app/sa/web'",
                [true, false, true],
            ),
            ("response.duration > duration('1s')", [true, true, false]),
            (
                "response.duration <= duration('1m30s')",
                [true, true, false],
            ),
            (
                "response.duration < duration(\"500ms\")",
                [false, false, false],
            ),
            (
                "request.host == 'ehr.example.com' || connection.mtls",
                [true, true, true],
            ),
            ("500 <= response.code", [true, true, false]),
            (
                "'POST' == request.method && (response.code == 503 || false)",
                [true, true, false],
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let got = [req, plain, tcp].map(|r| e.eval_record(&r));
            assert_eq!(&got, want, "{text}");
        }
        let mut names = Vec::new();
        parse("!(request.headers['X-A'] == 'x') || request.headers['b'].contains('y')")
            .unwrap()
            .header_names(&mut names);
        assert_eq!(names, ["x-a", "b"]);
    }

    #[test]
    fn durations() {
        let ms = |v| Some(std::time::Duration::from_millis(v));
        for (text, want) in [
            ("1s", ms(1000)),
            ("1.5s", ms(1500)),
            ("300ms", ms(300)),
            ("1m30s", ms(90_000)),
            ("2h", ms(7_200_000)),
            ("", None),
            ("5", None),
            ("1x", None),
            ("-1s", None),
        ] {
            assert_eq!(parse_duration(text), want, "{text}");
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
            ("request.headers == 'y'", "request.headers['name']"),
            ("request.method >= 'GET'", "== or !="),
            ("request.method == 3", "a string"),
            ("connection.mtls == 'yes'", "a bool"),
            ("response.duration > 5", "a duration"),
            (
                "response.duration > duration('5 parsecs')",
                "not a duration",
            ),
            ("request.url_path.matches('^/x')", "not supported"),
            ("response.code.startsWith('4')", "not a string"),
            ("request.method == 'GET", "not closed"),
            ("request.path == '/x'", "not supported"),
            ("404 == 404", "attribute and a literal"),
            ("request.url_path.startsWith(3)", "string literal"),
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
        assert!(p.filter_headers().is_empty());
        let json = serde_json::to_string(&p).unwrap();
        let back: AccessLogPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}
