//! Serving HTTP for an app: the capability behind a `serve_http` grant.
//!
//! A component of the `wasi:http/proxy` world (a Spin HTTP component, say)
//! exports `wasi:http/incoming-handler` instead of wasmgate's `app`
//! interface. Such an app runs as a small HTTP server on the one address it
//! was granted, capped by `[allow]`:
//!
//! - The listener is bound once, when the app starts. A hot swap replaces
//!   only the component behind it, so clients never see it close.
//! - Each request gets a fresh instance, with the app's limits and deadline
//!   (the app actor makes it: see `app::http`). A request that traps or runs
//!   past its deadline costs only that request: it is answered `500` and
//!   counted, and the next one runs in a new instance.
//! - At most `max_in_flight` requests run at once; more are answered `503`
//!   at once rather than queued, so a burst costs the gateway at most that
//!   many instances. Connections are capped too, and a client gets
//!   [`HEADER_TIMEOUT`] to send its request's head.
//! - Beyond loopback every request must carry the token of the `[allow]`
//!   entry (`Authorization: Bearer TOKEN`), compared by sha256 in constant
//!   time; the token never reaches the log or the guest.
//!
//! This module owns the socket side (listening, connections, the token,
//! the caps) and the unit's figures; it calls back into a [`Handler`] for
//! each admitted request, so it knows nothing of stores or instances.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::capability::{AppSetup, Capability, Figure, HasCtx, ReportScope};
use crate::grants::Grants;
use crate::metrics::AppMetrics;

/// How long a client has to send a request's head after connecting (or
/// between requests on a kept-alive connection): an idle or trickling
/// client does not hold a connection slot for longer.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections one app's server holds open; more are closed at
/// once.
pub const MAX_CONNECTIONS: usize = 64;

/// The unit: the gateway's `[allow]` entries for serving HTTP.
pub struct HttpServe {
    allow: Grants,
}

impl HttpServe {
    pub fn new(allow: Grants) -> HttpServe {
        HttpServe { allow }
    }

    /// Bind the address `app` (an app's `serve_http` grants) names, after
    /// checking it against `[allow]` again, and load the token the `[allow]`
    /// entry requires. Errors say which, and why.
    pub async fn bind<H: Handler>(
        &self,
        app: &Grants,
        handler: Arc<H>,
        metrics: Arc<AppMetrics>,
    ) -> anyhow::Result<Server<H>> {
        let grant = app.serve_http.first().context(
            "the component serves HTTP (it exports wasi:http/incoming-handler), but the app has no serve_http grant: give it one, e.g. serve_http = [{ address = \"127.0.0.1:8080\" }] under [app.grants]",
        )?;
        let address = grant
            .socket_addr()
            .with_context(|| format!("serve_http: {:?} is not an ip:port", grant.address))?;
        let allowed = self.allow.serve_http_grant(address).with_context(|| {
            format!("serving HTTP on {address} is not within the gateway's [allow]")
        })?;
        let token = match &allowed.token_file {
            Some(path) => Some(TokenDigest::load(path)?),
            None if !address.ip().is_loopback() => anyhow::bail!(
                "{address} reaches beyond this machine and [allow] gives no token_file for it"
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("serving HTTP: cannot listen on {address}"))?;
        Ok(Server {
            listener,
            address,
            token,
            in_flight: Arc::new(Semaphore::new(grant.max_in_flight as usize)),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            handler,
            metrics,
        })
    }
}

impl Capability for HttpServe {
    /// Nothing per instance: the server belongs to the app, not to one of
    /// its instances, and the guest imports nothing from this unit.
    type Ctx = ();
    const NAME: &'static str = "http_serve";

    fn instance(&self, _app: &AppSetup<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    /// Nothing for an app that never had a request: most apps serve no
    /// HTTP, and four zeros each would only be noise in `wasmgate apps`
    /// and `/metrics`.
    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let m = &app.metrics;
        let counters = [
            &m.http_served,
            &m.http_busy,
            &m.http_unauthorized,
            &m.http_failed,
        ];
        if counters.iter().all(|c| c.load(Relaxed) == 0) {
            return Vec::new();
        }
        vec![
            Figure::counter(
                "requests",
                "HTTP requests the app answered itself.",
                &m.http_served,
            ),
            Figure::counter(
                "busy",
                "HTTP requests answered 503: max_in_flight were running.",
                &m.http_busy,
            ),
            Figure::counter(
                "unauthorized",
                "HTTP requests answered 401: no or a wrong token.",
                &m.http_unauthorized,
            ),
            Figure::counter(
                "failed",
                "HTTP requests answered 500: the instance trapped, ran past its deadline or gave no response.",
                &m.http_failed,
            ),
        ]
    }

    fn add_to_linker<T: HasCtx<Self>>(_linker: &mut Linker<T>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// What handles an admitted request: one fresh instance of the app.
pub trait Handler: Send + Sync + 'static {
    /// Answer `request`. `permit` is one of the app's `max_in_flight`
    /// slots: keep it until the instance is done (its body may still be
    /// streaming after the response's head went out).
    fn handle(
        self: Arc<Self>,
        request: hyper::Request<hyper::body::Incoming>,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = hyper::Response<HyperOutgoingBody>> + Send;
}

/// An app's listening server.
pub struct Server<H> {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    token: Option<TokenDigest>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// Every connection's task, so that a stop waits for them.
    tracker: TaskTracker,
    /// Cancelled at stop: connections finish the request in progress and close.
    stop: CancellationToken,
    handler: Arc<H>,
    metrics: Arc<AppMetrics>,
}

impl<H: Handler> Server<H> {
    /// Where it listens (the port the OS chose, if the grant said 0).
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.address)
    }

    /// Wait for the next connection and serve it in its own task. Meant for
    /// a `select!` loop: cancelling it loses nothing.
    pub async fn accept(&self) {
        let (stream, peer) = match self.listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin on it.
                tracing::warn!(address = %self.address, "serving HTTP: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        let Ok(slot) = self.connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "serving HTTP: {MAX_CONNECTIONS} connections open; closing a new one");
            return;
        };
        let gate = Arc::new(Gate {
            token: self.token.clone(),
            in_flight: self.in_flight.clone(),
            handler: self.handler.clone(),
            metrics: self.metrics.clone(),
        });
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let gate = gate.clone();
                async move { Ok::<_, std::convert::Infallible>(gate.admit(request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "serving HTTP: connection ended: {e}");
            }
        });
    }

    /// Stop listening, let each connection finish the request it is on,
    /// and wait up to `grace` for them.
    pub async fn shutdown(self, grace: Duration) {
        drop(self.listener);
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(address = %self.address, "serving HTTP: connections still open {} ms after the stop; dropping them", grace.as_millis());
        }
    }
}

/// What every request passes before it reaches the app.
struct Gate<H> {
    token: Option<TokenDigest>,
    in_flight: Arc<Semaphore>,
    handler: Arc<H>,
    metrics: Arc<AppMetrics>,
}

impl<H: Handler> Gate<H> {
    async fn admit(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        if let Some(token) = &self.token
            && !token.matches(bearer(&request))
        {
            self.metrics.http_unauthorized.fetch_add(1, Relaxed);
            let mut response =
                text_response(401, "a token is needed: Authorization: Bearer TOKEN\n");
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.http_busy.fetch_add(1, Relaxed);
            let mut response = text_response(503, "busy: try again\n");
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
            return response;
        };
        self.handler.clone().handle(request, permit).await
    }
}

/// The token of an `Authorization: Bearer` header, if any.
fn bearer<B>(request: &hyper::Request<B>) -> Option<&str> {
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// A token, kept as its sha256 only.
#[derive(Clone)]
struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Read the token from `path`: owner-only, one line, not empty.
    fn load(path: &std::path::Path) -> anyhow::Result<TokenDigest> {
        crate::permissions::check_private(path, "the serve_http token file")
            .map_err(anyhow::Error::msg)?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the serve_http token file {}", path.display()))?;
        let token = text.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "the serve_http token file {} must hold one token, without spaces",
            path.display()
        );
        Ok(TokenDigest(Sha256::digest(token.as_bytes()).into()))
    }

    /// Whether `given` is the token, in time that does not depend on where
    /// they differ.
    fn matches(&self, given: Option<&str>) -> bool {
        let given: [u8; 32] = Sha256::digest(given.unwrap_or("").as_bytes()).into();
        let differ = self
            .0
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        given.len() == self.0.len() && differ == 0
    }
}

/// A plain-text answer the host gives itself (not the app).
pub fn text_response(status: u16, text: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(text.to_string()))
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_itself_and_a_request_without_one_does_not() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").expect("write");
        let mut perms = std::fs::metadata(&path).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).expect("chmod");
        let token = TokenDigest::load(&path).expect("load");
        assert!(token.matches(Some("s3cret-token")));
        assert!(!token.matches(Some("s3cret-tokeN")));
        assert!(!token.matches(Some("")));
        assert!(!token.matches(None));

        let request = hyper::Request::builder()
            .header("authorization", "Bearer s3cret-token")
            .body(())
            .expect("request");
        assert_eq!(bearer(&request), Some("s3cret-token"));
        let basic = hyper::Request::builder()
            .header("authorization", "Basic czNjcmV0")
            .body(())
            .expect("request");
        assert_eq!(bearer(&basic), None);

        // Open to others: refused, naming the fix.
        let mut perms = std::fs::metadata(&path).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(&path, perms).expect("chmod");
        let error = TokenDigest::load(&path).err().expect("refused").to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }
}
