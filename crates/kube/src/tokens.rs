//! ServiceAccount tokens, verified by the API server's TokenReview API: how `ward proxy` on
//! Kubernetes gets its first certificate (Istio's `istio-ca` audience, as istiod's).
//!
//! The review must say the token is authenticated for the audience, its user must be
//! `system:serviceaccount:<namespace>:<name>`, and a token bound to a pod names the pod in its
//! extra fields (`authentication.kubernetes.io/pod-name`). The API server itself refuses a bound
//! token whose pod is gone (or was replaced: the pod UID is checked), so a deleted pod's token
//! gets nothing.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use kube::Client;
use ward_control::ca_grpc::{ReviewFuture, ReviewedToken, TokenReviewer};

/// The audience proxies' tokens must carry (Istio's).
pub const AUDIENCE: &str = "istio-ca";

/// The extra field of a bound token that names its pod.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// The username prefix of ServiceAccount tokens.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// Why a token was refused. Never carries the token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The API server did not authenticate it (expired, wrong audience, pod gone, forged).
    #[error("the API server did not authenticate the token{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotAuthenticated(Option<String>),
    /// Authenticated, but not for this audience.
    #[error("the token is not for audience {0}")]
    Audience(String),
    /// Authenticated, but not a ServiceAccount's.
    #[error("the token is not a ServiceAccount token")]
    NotServiceAccount,
    /// The TokenReview call failed.
    #[error("TokenReview failed: {0}")]
    Api(String),
}

/// Decides what a TokenReview status proves for `audience`. Pure.
pub fn reviewed(status: &TokenReviewStatus, audience: &str) -> Result<ReviewedToken, TokenError> {
    if status.authenticated != Some(true) {
        return Err(TokenError::NotAuthenticated(status.error.clone()));
    }
    // The API server returns the audiences the token was checked for; an empty list means the
    // API server's own audiences, which is not `istio-ca`.
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(TokenError::Audience(audience.to_owned()));
    }
    let user = status.user.as_ref().ok_or(TokenError::NotServiceAccount)?;
    let name = user.username.as_deref().unwrap_or("");
    let (namespace, service_account) = name
        .strip_prefix(SERVICE_ACCOUNT_USER)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or(TokenError::NotServiceAccount)?;
    let pod = user
        .extra
        .as_ref()
        .and_then(|e| e.get(POD_NAME))
        .and_then(|v| v.first())
        .cloned();
    Ok(ReviewedToken {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod,
    })
}

/// Reviews tokens with the API server.
pub struct Reviewer {
    client: Client,
    audience: String,
}

impl Reviewer {
    /// A reviewer for tokens of `audience` (normally [`AUDIENCE`]).
    pub fn new(client: Client, audience: &str) -> Reviewer {
        Reviewer {
            client,
            audience: audience.to_owned(),
        }
    }

    /// One TokenReview.
    pub async fn review(&self, token: &str) -> Result<ReviewedToken, TokenError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let done = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Api(e.to_string()))?;
        reviewed(&done.status.unwrap_or_default(), &self.audience)
    }
}

impl TokenReviewer for Reviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(async move {
            Reviewer::review(self, token)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(
        authenticated: bool,
        audiences: &[&str],
        user: &str,
        pod: Option<&str>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
            error: None,
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                extra: pod.map(|p| [(POD_NAME.to_owned(), vec![p.to_owned()])].into()),
                ..UserInfo::default()
            }),
        }
    }

    #[test]
    fn only_an_authenticated_service_account_token_for_the_audience_binds() {
        let ok = reviewed(
            &status(
                true,
                &["istio-ca"],
                "system:serviceaccount:app:cli",
                Some("cli-0"),
            ),
            AUDIENCE,
        )
        .unwrap();
        assert_eq!(
            ok,
            ReviewedToken {
                namespace: "app".into(),
                service_account: "cli".into(),
                pod: Some("cli-0".into())
            }
        );
        let cases = [
            (
                "not authenticated",
                status(false, &["istio-ca"], "system:serviceaccount:app:cli", None),
                TokenError::NotAuthenticated(None),
            ),
            (
                "other audience",
                status(
                    true,
                    &["https://kubernetes.default.svc"],
                    "system:serviceaccount:app:cli",
                    None,
                ),
                TokenError::Audience("istio-ca".into()),
            ),
            (
                "a user",
                status(true, &["istio-ca"], "alice", None),
                TokenError::NotServiceAccount,
            ),
            (
                "no sa name",
                status(true, &["istio-ca"], "system:serviceaccount:app:", None),
                TokenError::NotServiceAccount,
            ),
            (
                "extra colon",
                status(true, &["istio-ca"], "system:serviceaccount:app:a:b", None),
                TokenError::NotServiceAccount,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(reviewed(&s, AUDIENCE).unwrap_err(), want, "{name}");
        }
    }
}
