//! [`Refusal`]: the one value for "no" on the data path. Whatever refuses a connection or a
//! request (a policy, a missing route, an app that is down, a malformed request, a TLS failure)
//! returns a `Refusal`; the socket code carries it out (a status, a reset or a local reply) and
//! the connection's result ([`crate::connection::ConnResult`]) or the request's log line records
//! it. Nothing here does I/O.

use std::fmt;

use http::StatusCode;
use ward_policy::Decision;

/// Who was at fault when a connection or request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client side: bad handshake, malformed request, went away.
    Downstream,
    /// The server side: refused, reset, unreachable.
    Upstream,
    /// A policy decision refused or closed it.
    Policy,
    /// Ward itself (no route any more, no identity where one must be, a task cut short).
    Internal,
}

impl Fault {
    /// The access log's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Downstream => "downstream",
            Fault::Upstream => "upstream",
            Fault::Policy => "policy",
            Fault::Internal => "internal",
        }
    }
}

/// The `response_flags` of the access log and of the `istio_tcp_*` metrics: ztunnel's names for
/// connections, Envoy's short names for requests
/// (<https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#config-access-log-format-response-flags>).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// `-`: no flag (served, or failed mid-stream without a more precise cause).
    None,
    /// `DENY`: refused or closed by policy (AuthorizationPolicy or PeerAuthentication).
    Deny,
    /// `CONNECT`: the next hop could not be reached, or the CONNECT was malformed.
    Connect,
    /// `TLS_FAILURE`: a TLS handshake failed.
    TlsFailure,
    /// `IDENTITY_ERROR`: a peer without the identity it must have.
    IdentityError,
    /// `NR`: no route (no listener or port configured for it any more).
    NoRoute,
    /// `UH`: no healthy upstream (the service has no endpoints).
    NoHealthyUpstream,
    /// `UF`: the upstream failed before it answered.
    UpstreamFailure,
    /// `UPE`: the upstream answered in a protocol that was not asked for.
    UpstreamProtocolError,
    /// `UC`: the upstream connection ended before the response.
    UpstreamConnectionTermination,
    /// `NC`: a route names a destination that is no service the proxy knows (or a subset no
    /// DestinationRule defines).
    NoClusterFound,
    /// `UT`: the route's timeout (or the last attempt's) passed before the response.
    UpstreamRequestTimeout,
    /// `FI`: answered by a VirtualService fault abort.
    FaultInjected,
    /// `DI`: held by a VirtualService fault delay.
    DelayInjected,
    /// `UO`: refused by the destination's circuit breaker (DestinationRule `connectionPool`).
    UpstreamOverflow,
    /// `DT`: the connection reached its maximum duration (DestinationRule
    /// `connectionPool.tcp.maxConnectionDuration`).
    DurationTimeout,
    /// `DPE`: the client's request broke HTTP's framing rules (a head with both
    /// `Content-Length` and `Transfer-Encoding`: `crate::framing`).
    DownstreamProtocolError,
}

impl ResponseFlag {
    /// The spelling in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::Deny => "DENY",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::TlsFailure => "TLS_FAILURE",
            ResponseFlag::IdentityError => "IDENTITY_ERROR",
            ResponseFlag::NoRoute => "NR",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamFailure => "UF",
            ResponseFlag::UpstreamProtocolError => "UPE",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::DurationTimeout => "DT",
            ResponseFlag::DownstreamProtocolError => "DPE",
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection or a request is refused, and how to say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The response flag.
    pub flag: ResponseFlag,
    /// Who was at fault.
    pub fault: Fault,
    /// The status to answer with (an HBONE `CONNECT`'s, or an HTTP local reply's); `None`: reset
    /// the connection.
    pub status: Option<StatusCode>,
    /// The deciding policy as `ns/name`, when a policy decided.
    pub policy: Option<String>,
    /// The deciding rule's index, when one matched.
    pub rule: Option<usize>,
    /// What happened: the access log's `error` for a connection, `response_code_details` for a
    /// request (Envoy's detail strings where Envoy has one, e.g.
    /// `rbac_access_denied_matched_policy[ns/name]`).
    pub detail: String,
    /// The body of an HTTP local reply.
    pub body: &'static str,
    /// Close an HTTP/1.1 connection after the local reply: the bytes after a refused `CONNECT`
    /// or upgrade may be another protocol's, never a next request (Envoy closes too).
    pub(crate) close: bool,
}

impl Refusal {
    fn new(flag: ResponseFlag, fault: Fault, detail: impl Into<String>) -> Refusal {
        Refusal {
            flag,
            fault,
            status: None,
            policy: None,
            rule: None,
            detail: detail.into(),
            body: "",
            close: false,
        }
    }

    /// Refused by the client's side (malformed, failed handshake).
    pub(crate) fn downstream(flag: ResponseFlag, detail: impl Into<String>) -> Refusal {
        Refusal::new(flag, Fault::Downstream, detail)
    }

    /// The next hop failed or could not be reached.
    pub(crate) fn upstream(flag: ResponseFlag, detail: impl Into<String>) -> Refusal {
        Refusal::new(flag, Fault::Upstream, detail)
    }

    /// Ward could not serve it (a route gone, an identity missing where one must be).
    pub(crate) fn internal(flag: ResponseFlag, detail: impl Into<String>) -> Refusal {
        Refusal::new(flag, Fault::Internal, detail)
    }

    /// Refused by policy; `policy` names the deciding resource when there is one.
    pub(crate) fn policy(
        policy: Option<String>,
        rule: Option<usize>,
        detail: impl Into<String>,
    ) -> Refusal {
        Refusal {
            policy,
            rule,
            ..Refusal::new(ResponseFlag::Deny, Fault::Policy, detail)
        }
    }

    /// Refused by an AuthorizationPolicy decision (the policy and rule it names, Envoy's
    /// `rbac_access_denied_matched_policy[...]` detail).
    pub(crate) fn denied_by(decision: &Decision) -> Refusal {
        let (policy, rule) = deciding_rule(decision);
        Refusal::policy(policy, rule, decision.response_detail())
    }

    /// The same refusal, answered with `status`.
    #[must_use]
    pub(crate) fn with_status(self, status: StatusCode) -> Refusal {
        Refusal {
            status: Some(status),
            ..self
        }
    }

    /// The same refusal, answered with `status` and a local reply `body`.
    #[must_use]
    pub(crate) fn with_reply(self, status: StatusCode, body: &'static str) -> Refusal {
        Refusal {
            status: Some(status),
            body,
            ..self
        }
    }

    /// The same refusal, closing the connection after the reply when it is HTTP/1.x.
    #[must_use]
    pub(crate) fn closing(self, version: http::Version) -> Refusal {
        Refusal {
            close: version < http::Version::HTTP_2,
            ..self
        }
    }

    /// True when a policy refused it.
    pub(crate) fn by_policy(&self) -> bool {
        self.fault == Fault::Policy
    }
}

/// The policy and rule that decided, for logs.
pub(crate) fn deciding_rule(d: &Decision) -> (Option<String>, Option<usize>) {
    match d.deciding_rule() {
        Some(r) => (Some(r.policy.to_string()), Some(r.rule)),
        None => (d.deciding_policy().map(|p| p.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_keep_their_log_and_label_spellings() {
        let all = [
            (ResponseFlag::None, "-"),
            (ResponseFlag::Deny, "DENY"),
            (ResponseFlag::Connect, "CONNECT"),
            (ResponseFlag::TlsFailure, "TLS_FAILURE"),
            (ResponseFlag::IdentityError, "IDENTITY_ERROR"),
            (ResponseFlag::NoRoute, "NR"),
            (ResponseFlag::NoHealthyUpstream, "UH"),
            (ResponseFlag::UpstreamFailure, "UF"),
            (ResponseFlag::UpstreamProtocolError, "UPE"),
            (ResponseFlag::UpstreamConnectionTermination, "UC"),
            (ResponseFlag::DownstreamProtocolError, "DPE"),
        ];
        for (flag, text) in all {
            assert_eq!(flag.as_str(), text);
            assert_eq!(flag.to_string(), text);
        }
    }

    #[test]
    fn a_policy_refusal_is_deny_and_names_its_policy() {
        let r = Refusal::policy(Some("app/p".into()), Some(2), "x")
            .with_status(StatusCode::UNAUTHORIZED);
        assert_eq!(r.flag, ResponseFlag::Deny);
        assert!(r.by_policy());
        assert_eq!(r.policy.as_deref(), Some("app/p"));
        assert_eq!(r.rule, Some(2));
        assert_eq!(r.status, Some(StatusCode::UNAUTHORIZED));
        let u = Refusal::upstream(ResponseFlag::Connect, "down");
        assert!(!u.by_policy());
        assert_eq!(u.status, None, "no status means reset");
    }
}
