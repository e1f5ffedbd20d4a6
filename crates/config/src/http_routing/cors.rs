//! A route's `corsPolicy`, compiled, and what it says about one request (pure). Envoy's CORS
//! filter as Istio configures it
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/cors/v3/cors.proto>):
//! - a preflight is an `OPTIONS` request with `Origin` and `Access-Control-Request-Method`;
//!   from an allowed origin it is answered by the proxy (200, the `Access-Control-Allow-*`
//!   headers); from another origin it is forwarded (`unmatchedPreflights: FORWARD`, the
//!   default) or answered without CORS headers (`IGNORE`);
//! - any other request from an allowed origin is forwarded, and its response gets
//!   `Access-Control-Allow-Origin` (the request's origin), `-Allow-Credentials` and
//!   `-Expose-Headers`;
//! - an origin is allowed when one `allowOrigins` entry matches it (an exact `*` matches any).

use crate::istio::{CorsPolicy, UnmatchedPreflights};

use super::{matcher, Matcher};

/// A compiled `corsPolicy`.
#[derive(Clone, Debug)]
pub struct Cors {
    origins: Vec<Matcher>,
    allow_methods: Option<String>,
    allow_headers: Option<String>,
    expose_headers: Option<String>,
    max_age: Option<u64>,
    allow_credentials: bool,
    forward_unmatched: bool,
}

/// What CORS does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsAnswer {
    /// Not a CORS request, or one from an origin that is not allowed: route it as usual.
    Pass,
    /// A preflight: answer it here, 200, with these headers.
    Preflight(Vec<(&'static str, String)>),
    /// A CORS request from an allowed origin: route it, and add these headers to its response.
    Decorate(Vec<(&'static str, String)>),
}

impl Cors {
    /// Compiles a policy; `Err` names the field of a bad regex.
    pub(super) fn compile(policy: &CorsPolicy) -> Result<Cors, (String, String)> {
        let mut origins = Vec::new();
        for (i, m) in policy.allow_origins.iter().flatten().enumerate() {
            origins.push(matcher(m, false).map_err(|e| (format!("allowOrigins[{i}]"), e))?);
        }
        origins.extend(
            policy
                .allow_origin
                .iter()
                .flatten()
                .map(|o| Matcher::Exact(o.clone())),
        );
        let join =
            |v: &Option<Vec<String>>| v.as_ref().filter(|v| !v.is_empty()).map(|v| v.join(","));
        Ok(Cors {
            origins,
            allow_methods: join(&policy.allow_methods),
            allow_headers: join(&policy.allow_headers),
            expose_headers: join(&policy.expose_headers),
            max_age: policy.max_age.map(|d| d.get().as_secs()),
            allow_credentials: policy.allow_credentials.unwrap_or(false),
            forward_unmatched: policy.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| matches!(m, Matcher::Exact(e) if e == "*") || m.matches(origin, false))
    }

    /// What to do with a request of `method`, with `origin` and
    /// `access-control-request-method` as sent.
    pub fn answer(
        &self,
        method: &str,
        origin: Option<&str>,
        request_method: Option<&str>,
    ) -> CorsAnswer {
        let Some(origin) = origin.filter(|o| !o.is_empty()) else {
            return CorsAnswer::Pass;
        };
        let preflight = method == "OPTIONS" && request_method.is_some_and(|m| !m.is_empty());
        let allowed = self.allows(origin);
        if preflight {
            if !allowed {
                return if self.forward_unmatched {
                    CorsAnswer::Pass
                } else {
                    CorsAnswer::Preflight(Vec::new())
                };
            }
            let mut headers = vec![("access-control-allow-origin", origin.to_owned())];
            if self.allow_credentials {
                headers.push(("access-control-allow-credentials", "true".to_owned()));
            }
            if let Some(m) = &self.allow_methods {
                headers.push(("access-control-allow-methods", m.clone()));
            }
            if let Some(h) = &self.allow_headers {
                headers.push(("access-control-allow-headers", h.clone()));
            }
            if let Some(age) = self.max_age {
                headers.push(("access-control-max-age", age.to_string()));
            }
            return CorsAnswer::Preflight(headers);
        }
        if !allowed {
            return CorsAnswer::Pass;
        }
        let mut headers = vec![("access-control-allow-origin", origin.to_owned())];
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
        if let Some(h) = &self.expose_headers {
            headers.push(("access-control-expose-headers", h.clone()));
        }
        CorsAnswer::Decorate(headers)
    }
}
