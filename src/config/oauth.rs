//! OAuth (SASL OAUTHBEARER, PostgreSQL 18): the `oauth_*` keywords and the bearer-token hook.
//!
//! A library has no browser and no device-code prompt, so unlike libpq this client has no built-in OAuth flow:
//! the application obtains the token (from its identity provider, a workload identity, a cache) in a hook it
//! gives [`Config::oauth_bearer_token`]. The client calls the hook only when a server asks for OAUTHBEARER, after
//! the server said which authorization server and scope it trusts (libpq's discovery), and presents the token
//! on a second connection, as libpq does.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Config;

/// The error an OAuth token hook returns; any error type converts into it with `?` or `.into()`.
pub type OAuthHookError = Box<dyn std::error::Error + Send + Sync>;

/// The future an OAuth token hook returns: the bearer token, or why there is none. `Send` on native targets,
/// as the client's futures are; on wasm32-wasip2, whose runtime is single-threaded, it need not be.
#[cfg(not(target_os = "wasi"))]
pub type OAuthTokenFuture = Pin<Box<dyn Future<Output = Result<String, OAuthHookError>> + Send>>;
/// The future an OAuth token hook returns: the bearer token, or why there is none. `Send` on native targets,
/// as the client's futures are; on wasm32-wasip2, whose runtime is single-threaded, it need not be.
#[cfg(target_os = "wasi")]
pub type OAuthTokenFuture = Pin<Box<dyn Future<Output = Result<String, OAuthHookError>>>>;

/// The application's hook that obtains an OAuth bearer token (see [`Config::oauth_bearer_token`]).
#[derive(Clone)]
pub(crate) struct OAuthHook(Arc<dyn Fn(OAuthRequest) -> OAuthTokenFuture + Send + Sync>);

impl OAuthHook {
    /// Asks the application for a token.
    #[cfg_attr(
        not(any(feature = "tokio", target_os = "wasi")),
        allow(dead_code, reason = "only the async client reconnects with a token")
    )]
    pub(crate) fn call(&self, request: OAuthRequest) -> OAuthTokenFuture {
        (self.0)(request)
    }
}

impl fmt::Debug for OAuthHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<OAuth token hook>")
    }
}

/// What the server and the configuration say about the token a connection needs; the argument of the hook
/// given to [`Config::oauth_bearer_token`].
///
/// The authorization server the token must come from is named twice: by `oauth_issuer` in the configuration
/// and by the discovery document the server advertised. The client checks that both name the same issuer
/// (byte for byte, as libpq does) before it calls the hook, so a server cannot send the application to an
/// authorization server it did not choose.
#[derive(Clone)]
pub struct OAuthRequest {
    pub(crate) issuer: String,
    pub(crate) openid_configuration: String,
    pub(crate) scope: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
}

impl OAuthRequest {
    /// The issuer identifier of the authorization server (`oauth_issuer`, without a `/.well-known/` part if it
    /// was given as a discovery URI).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The URL of the authorization server's discovery document (OpenID Connect Discovery or RFC 8414), as the
    /// server advertised it or `oauth_issuer` gave it.
    pub fn openid_configuration(&self) -> &str {
        &self.openid_configuration
    }

    /// The scope to ask for: `oauth_scope` if set, else the scope the server advertised (libpq lets the
    /// configuration win too). `None` if neither says.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The OAuth client identifier (`oauth_client_id`), if set.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The OAuth client secret (`oauth_client_secret`), if set. `Debug` never shows it.
    pub fn client_secret(&self) -> Option<&str> {
        self.client_secret.as_deref()
    }
}

impl fmt::Debug for OAuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthRequest")
            .field("issuer", &self.issuer)
            .field("openid_configuration", &self.openid_configuration)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Config {
    /// Sets the hook that obtains an OAuth bearer token when a server asks for one (SASL OAUTHBEARER,
    /// `oauth` in PostgreSQL 18's `pg_hba.conf`).
    ///
    /// The flow is libpq's: the first connection asks the server which authorization server and scope it
    /// trusts (an empty OAUTHBEARER response); the server answers and refuses that connection; the client
    /// checks the advertised issuer against `oauth_issuer`, which must be set, calls the hook once with an
    /// [`OAuthRequest`], and opens one more connection that presents the token. A token the server rejects
    /// fails the connect with [`ErrorKind::Auth`](crate::ErrorKind::Auth), naming the status, scope and
    /// discovery document the server sent; a hook's error fails it the same way, with the hook's error as the
    /// source. The hook runs once per connect: cache tokens in it if connections are frequent.
    ///
    /// A bearer token lets anyone who sees it in, so it is only sent over TLS or a Unix-domain socket: a server
    /// asking for OAuth over plaintext TCP is refused before anything is sent (use `sslmode=require` or
    /// stronger; `verify-full` makes sure the server is the one the token is meant for). The token never
    /// appears in `Debug`, errors or traces.
    ///
    /// ```
    /// use wasi_pg_client::Config;
    ///
    /// let mut config = Config::parse(
    ///     "host=db.example.com sslmode=verify-full oauth_issuer=https://login.example.com oauth_client_id=app",
    /// )?;
    /// config.oauth_bearer_token(|request| {
    ///     Box::pin(async move {
    ///         // Ask the identity provider at request.openid_configuration() for a token with
    ///         // request.scope(); here, a token from the environment.
    ///         let token = std::env::var("DB_ACCESS_TOKEN")?;
    ///         Ok(token)
    ///     })
    /// });
    /// assert!(format!("{config:?}").contains("<OAuth token hook>"));
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn oauth_bearer_token<F>(&mut self, hook: F) -> &mut Config
    where
        F: Fn(OAuthRequest) -> OAuthTokenFuture + Send + Sync + 'static,
    {
        self.oauth_hook = Some(OAuthHook(Arc::new(hook)));
        self
    }

    /// The hook set by [`Config::oauth_bearer_token`].
    pub(crate) fn get_oauth_hook(&self) -> Option<&OAuthHook> {
        self.oauth_hook.as_ref()
    }

    /// Whether a hook was set with [`Config::oauth_bearer_token`].
    pub fn has_oauth_bearer_token(&self) -> bool {
        self.oauth_hook.is_some()
    }

    /// Sets the OAuth issuer the server must name (`oauth_issuer`): an issuer identifier such as
    /// `https://login.example.com`, or the URL of its discovery document (`.../.well-known/openid-configuration`).
    pub fn oauth_issuer(&mut self, issuer: &str) -> &mut Config {
        self.set_oauth("oauth_issuer", issuer)
    }

    /// Sets the OAuth client identifier passed to the token hook (`oauth_client_id`).
    pub fn oauth_client_id(&mut self, client_id: &str) -> &mut Config {
        self.set_oauth("oauth_client_id", client_id)
    }

    /// Sets the OAuth client secret passed to the token hook (`oauth_client_secret`). It is never shown by
    /// `Debug` or in error messages.
    pub fn oauth_client_secret(&mut self, client_secret: &str) -> &mut Config {
        self.set_oauth("oauth_client_secret", client_secret)
    }

    /// Sets the OAuth scope to ask for (`oauth_scope`); it wins over the scope the server advertises.
    pub fn oauth_scope(&mut self, scope: &str) -> &mut Config {
        self.set_oauth("oauth_scope", scope)
    }

    /// `oauth_issuer`, if set.
    pub fn get_oauth_issuer(&self) -> Option<&str> {
        self.get_raw("oauth_issuer")
    }

    /// `oauth_client_id`, if set.
    pub fn get_oauth_client_id(&self) -> Option<&str> {
        self.get_raw("oauth_client_id")
    }

    /// `oauth_scope`, if set.
    pub fn get_oauth_scope(&self) -> Option<&str> {
        self.get_raw("oauth_scope")
    }

    /// `oauth_client_secret`, for the token hook only.
    #[cfg_attr(
        not(any(feature = "tokio", target_os = "wasi")),
        allow(dead_code, reason = "only the async client calls the hook")
    )]
    pub(crate) fn get_oauth_client_secret(&self) -> Option<&str> {
        self.get_raw("oauth_client_secret")
    }

    fn set_oauth(&mut self, key: &'static str, value: &str) -> &mut Config {
        if value.is_empty() {
            self.raw.remove(key);
            self.given_empty.insert(key);
        } else {
            self.raw.insert(key, value.to_string());
            self.given_empty.remove(key);
        }
        self
    }
}
