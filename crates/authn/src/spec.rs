//! The Istio `RequestAuthentication` API, field for field.
//!
//! Mirrors istio/api `security/v1beta1/request_authentication.proto` (`RequestAuthentication`,
//! `JWTRule`, `JWTHeader`, `ClaimToHeader`), served as `security.istio.io/v1` and `v1beta1`
//! with one schema. Field names are the proto JSON names (camelCase); unknown fields are
//! rejected. Nothing here interprets a value: [`crate::Authenticator::new`] does.

use serde::{Deserialize, Serialize};
use ward_policy::spec::{PolicyTargetReference, WorkloadSelector};

/// `spec` of an Istio `RequestAuthentication`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads the rules apply to; unset = every workload of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Single attachment target (Gateway, Service ...). Deprecated by Istio for `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Attachment targets (waypoints, gateways).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The JWTs the selected workloads accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted issuer and how to find, check and forward its tokens (istio `JWTRule`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The `iss` a token must carry to be checked by this rule. Required.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values; a token needs one of them. Empty = no audience check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its JWKS. Ignored when `jwks` is set. Unset and no `jwks`:
    /// the fetcher discovers it from the issuer (OpenID Connect Discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The JWKS itself, as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers to read the token from. With `fromParams` and `fromCookies` empty too, the
    /// defaults are `Authorization: Bearer <token>` then the `access_token` query parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters to read the token from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies to read the token from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header that receives the verified payload, base64url-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token for the upstream request. Default false: the token is removed.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout, a duration such as `"5s"` or `"10ms"`. Default 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A header that may carry a token (istio `JWTHeader`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name, matched case-insensitively.
    pub name: String,
    /// Text before the token in the value, e.g. `"Bearer "`. Case-sensitive.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// Copy one claim into one request header (istio `ClaimToHeader`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header to set (overwritten).
    pub header: String,
    /// Claim to copy; `.` separates nested claims (`nested.key`). Only string, integer and
    /// boolean claims are copied.
    pub claim: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_example_round_trips() {
        let json = r#"{
            "selector": {"matchLabels": {"app": "httpbin"}},
            "jwtRules": [{
                "issuer": "test-issuer-1@istio.io",
                "jwksUri": "https://example.com/jwks.json",
                "audiences": ["a"],
                "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                "fromParams": ["my_token"],
                "fromCookies": ["session"],
                "outputPayloadToHeader": "x-test-payload",
                "forwardOriginalToken": true,
                "outputClaimToHeaders": [{"header": "x-jwt-iss", "claim": "iss"}],
                "timeout": "10ms"
            }]
        }"#;
        let spec: RequestAuthenticationSpec = serde_json::from_str(json).unwrap();
        let rule = &spec.jwt_rules[0];
        assert_eq!(rule.issuer, "test-issuer-1@istio.io");
        assert_eq!(rule.from_headers[0].prefix, "Bearer ");
        assert_eq!(rule.from_cookies, ["session"]);
        assert!(rule.forward_original_token);
        assert_eq!(rule.timeout.as_deref(), Some("10ms"));
        let again: RequestAuthenticationSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn unknown_fields_rejected() {
        let cases = [
            r#"{"jwtRules":[{"issuer":"i","jwtHeaders":["x"]}]}"#,
            r#"{"jwtRule":[]}"#,
            r#"{"jwtRules":[{"issuer":"i","fromHeaders":[{"name":"a","prefx":"b"}]}]}"#,
        ];
        for json in cases {
            assert!(
                serde_json::from_str::<RequestAuthenticationSpec>(json).is_err(),
                "{json}"
            );
        }
    }
}
