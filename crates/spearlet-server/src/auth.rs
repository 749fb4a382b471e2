//! Bearer-token authentication and per-token scopes, for gRPC and HTTP alike.
//!
//! Invariants:
//! - A token is compared in constant time against every configured token (digests, so lengths
//!   do not leak either), and is never logged: [`SecretToken`]'s `Debug` is redacted and a
//!   [`Principal`] names a token only by its position in the configuration.
//! - Authentication (who) happens once per request at the edge: the gRPC layer here, the HTTP
//!   gateway's middleware. Authorization (may this principal do this to that task) happens in
//!   the service handlers, after the task a request names is known, through
//!   [`Principal::require`] and [`Principal::require_task`].
//! - With no tokens configured every request is the unrestricted principal.

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use spearlet_core::{SpearError, SpearResult};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::errors::to_status;

/// A bearer token from the configuration or the environment.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(token: impl Into<String>) -> SecretToken {
        SecretToken(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SecretToken(<redacted>)")
    }
}

/// What a token may do. Each scope includes the ones before it: `admin` ⊇ `invoke` ⊇ `read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read tasks, executions, stats, health and metrics.
    Read,
    /// Invoke existing tasks, cancel executions; and read.
    Invoke,
    /// Create, replace and delete tasks, upload artifacts; and invoke and read.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Invoke => "invoke",
            Scope::Admin => "admin",
        }
    }
}

/// The caller a request was authenticated as.
#[derive(Debug)]
pub struct Principal {
    /// How logs and errors name the token: `auth.tokens[2]`, never the token itself.
    pub label: String,
    /// The widest scope granted.
    granted: Scope,
    /// Exact task names, or prefixes ending in `*`. Empty: every task.
    task_patterns: Vec<String>,
    /// The token itself, so a call forwarded to a cluster peer is authorized there by the
    /// peer's own rules as this caller. `None` when authentication is off.
    token: Option<SecretToken>,
}

impl Principal {
    /// The caller when authentication is off: every scope, every task.
    pub fn unrestricted() -> Principal {
        Principal {
            label: "anonymous (no auth configured)".into(),
            granted: Scope::Admin,
            task_patterns: Vec::new(),
            token: None,
        }
    }

    /// The `authorization` header that identifies this caller to a cluster peer.
    pub fn forwarded_authorization(&self) -> Option<String> {
        self.token
            .as_ref()
            .map(|token| format!("Bearer {}", token.expose()))
    }

    /// The widest scope granted.
    pub fn scope(&self) -> Scope {
        self.granted
    }

    /// The task names and prefixes (ending in `*`) the token is limited to; empty: every task.
    pub fn task_patterns(&self) -> &[String] {
        &self.task_patterns
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.granted >= scope
    }

    /// PERMISSION_DENIED unless the token has `scope`.
    pub fn require(&self, scope: Scope) -> SpearResult<()> {
        if self.has(scope) {
            return Ok(());
        }
        Err(SpearError::permission_denied(format!(
            "the token {} has scope {}; this request needs {}",
            self.label,
            self.granted.as_str(),
            scope.as_str()
        )))
    }

    /// Whether the token may touch the task named `task_name`.
    pub fn allows_task(&self, task_name: &str) -> bool {
        self.task_patterns.is_empty()
            || self
                .task_patterns
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => task_name.starts_with(prefix),
                    None => task_name == pattern,
                })
    }

    /// Whether the token is limited to some tasks (so node-wide listings must be filtered).
    pub fn is_limited_to_tasks(&self) -> bool {
        !self.task_patterns.is_empty()
    }

    /// PERMISSION_DENIED unless the token has `scope` and may touch `task_name`.
    pub fn require_task(&self, scope: Scope, task_name: &str) -> SpearResult<()> {
        self.require(scope)?;
        if self.allows_task(task_name) {
            return Ok(());
        }
        Err(SpearError::permission_denied(format!(
            "the token {} may not use task {task_name:?} (it is limited to {})",
            self.label,
            self.task_patterns.join(", ")
        )))
    }
}

/// The configured tokens, ready to check requests against.
pub struct AccessPolicy {
    tokens: Vec<([u8; 32], Arc<Principal>)>,
    unrestricted: Arc<Principal>,
}

impl AccessPolicy {
    pub fn new(config: &AuthConfig) -> AccessPolicy {
        let tokens = config
            .tokens
            .iter()
            .enumerate()
            .map(|(index, token)| {
                let principal = Principal {
                    label: format!("auth.tokens[{index}]"),
                    granted: token.scopes.iter().copied().max().unwrap_or(Scope::Read),
                    task_patterns: token.tasks.clone(),
                    token: Some(token.token.clone()),
                };
                (digest(token.token.expose()), Arc::new(principal))
            })
            .collect();
        AccessPolicy {
            tokens,
            unrestricted: Arc::new(Principal::unrestricted()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The principal for an `Authorization` header value (`Bearer <token>`), or UNAUTHENTICATED.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> SpearResult<Arc<Principal>> {
        if !self.is_enabled() {
            return Ok(self.unrestricted.clone());
        }
        let Some(value) = authorization else {
            return Err(SpearError::unauthenticated(
                "this node requires a bearer token: send `authorization: Bearer <token>`",
            ));
        };
        let Some(presented) = bearer_token(value) else {
            return Err(SpearError::unauthenticated(
                "the authorization header must be `Bearer <token>`",
            ));
        };
        let presented = digest_bytes(presented);
        // Every configured token is compared, match or not, so timing says nothing about
        // which one (or whether any) matched.
        let mut matched = None;
        for (configured, principal) in &self.tokens {
            if bool::from(configured.ct_eq(&presented)) {
                matched = Some(principal);
            }
        }
        matched
            .cloned()
            .ok_or_else(|| SpearError::unauthenticated("the bearer token is not valid"))
    }

    /// The principal a request carries, put there by the authentication layer. A request that
    /// did not pass through it is refused when authentication is on.
    pub fn principal_of(&self, extensions: &http::Extensions) -> SpearResult<Arc<Principal>> {
        match extensions.get::<Arc<Principal>>() {
            Some(principal) => Ok(principal.clone()),
            None if !self.is_enabled() => Ok(self.unrestricted.clone()),
            None => Err(SpearError::unauthenticated(
                "the request carries no authenticated principal",
            )),
        }
    }
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme_length = "bearer ".len();
    if value.len() <= scheme_length || !value[..scheme_length].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[scheme_length..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn digest(token: &str) -> [u8; 32] {
    digest_bytes(token.as_bytes())
}

fn digest_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// gRPC methods anyone may call: `grpc.health.v1.Health`, because Kubernetes gRPC probes and
/// load balancers cannot send a token.
const UNAUTHENTICATED_GRPC_PREFIXES: &[&str] = &["/grpc.health.v1.Health/"];

/// Authenticates every gRPC request (but the health service) and puts its [`Principal`] into
/// the request's extensions, where the handlers find it. Refuses with UNAUTHENTICATED.
#[derive(Clone)]
pub struct GrpcAuthenticationLayer {
    pub policy: Arc<AccessPolicy>,
}

impl<S> tower::Layer<S> for GrpcAuthenticationLayer {
    type Service = GrpcAuthentication<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuthentication {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuthentication<S> {
    inner: S,
    policy: Arc<AccessPolicy>,
}

impl<S, RequestBody> tower::Service<http::Request<RequestBody>> for GrpcAuthentication<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        if UNAUTHENTICATED_GRPC_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            return Box::pin(self.inner.call(request));
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|value| value.as_bytes());
        match self.policy.authenticate(authorization) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(error) => {
                tracing::debug!(path, "refused: {}", error.message);
                let response = to_status(error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn policy() -> AccessPolicy {
        AccessPolicy::new(&AuthConfig {
            tokens: vec![
                TokenConfig {
                    token: SecretToken::new("admin-token"),
                    scopes: vec![Scope::Admin],
                    tasks: vec![],
                },
                TokenConfig {
                    token: SecretToken::new("reader"),
                    scopes: vec![Scope::Read],
                    tasks: vec!["team-a-*".into(), "shared".into()],
                },
            ],
        })
    }

    #[test]
    fn tokens_authenticate_to_their_principal() {
        let policy = policy();
        let admin = policy.authenticate(Some(b"Bearer admin-token")).unwrap();
        assert_eq!(admin.label, "auth.tokens[0]");
        let reader = policy.authenticate(Some(b"bearer  reader ")).unwrap();
        assert_eq!(reader.label, "auth.tokens[1]");
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_unauthenticated() {
        let policy = policy();
        for header in [
            None,
            Some(&b"admin-token"[..]),
            Some(b"Basic YWRtaW4="),
            Some(b"Bearer "),
            Some(b"Bearer admin-token2"),
            Some(b"Bearer admin-toke"),
        ] {
            let error = policy.authenticate(header).unwrap_err();
            assert_eq!(error.kind, spearlet_core::ErrorKind::Unauthenticated);
            assert!(!error.message.contains("admin-token"));
        }
    }

    #[test]
    fn scopes_nest_and_task_patterns_bind() {
        let policy = policy();
        let reader = policy.authenticate(Some(b"Bearer reader")).unwrap();
        assert!(reader.require(Scope::Read).is_ok());
        let denied = reader.require(Scope::Invoke).unwrap_err();
        assert_eq!(denied.kind, spearlet_core::ErrorKind::PermissionDenied);
        assert!(denied.message.contains("invoke"), "{}", denied.message);
        assert!(reader.allows_task("team-a-resize"));
        assert!(reader.allows_task("shared"));
        assert!(!reader.allows_task("shared2"));
        assert!(!reader.allows_task("team-b-resize"));
        let denied = reader.require_task(Scope::Read, "team-b-x").unwrap_err();
        assert!(denied.message.contains("team-b-x"), "{}", denied.message);
        let admin = policy.authenticate(Some(b"Bearer admin-token")).unwrap();
        assert!(admin.require_task(Scope::Admin, "anything").is_ok());
    }

    #[test]
    fn without_tokens_everyone_is_unrestricted() {
        let policy = AccessPolicy::new(&AuthConfig::default());
        let principal = policy.authenticate(None).unwrap();
        assert!(principal.has(Scope::Admin));
        assert!(!principal.is_limited_to_tasks());
        assert!(policy.principal_of(&http::Extensions::new()).is_ok());
    }

    #[test]
    fn tokens_are_never_printed() {
        let token = SecretToken::new("s3cret");
        assert!(!format!("{token:?}").contains("s3cret"));
        let config = AuthConfig {
            tokens: vec![TokenConfig {
                token,
                scopes: vec![Scope::Read],
                tasks: vec![],
            }],
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
