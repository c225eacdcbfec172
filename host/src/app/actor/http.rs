//! The actor of an app that serves HTTP (a `wasi:http/proxy` component).
//!
//! Such an app has no long-lived instance: the actor binds its granted
//! address once (through the `http_serve` unit, which owns the socket
//! side), and each admitted request runs in a fresh instance with the
//! app's limits and deadline, in its own task. The actor keeps answering
//! control messages meanwhile:
//!
//! - a new version of the same address replaces only the component behind
//!   the listener: requests in flight finish on the old one, the next ones
//!   run the new one, and clients never see the listener close;
//! - a new version that serves elsewhere, or that is a wasmgate app, stops
//!   the server and starts the new version in its place;
//! - a stop or shutdown stops listening and lets requests in flight finish
//!   (up to the call timeout).
//!
//! A request that traps or runs past its deadline is answered `500` and
//! counted (`http_serve.failed`, and the app's traps); it does not restart
//! the app, since nothing outlives the request. So a new version has no
//! probation to fail: it is kept once its first instance starts.

use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{Actor, AppBase, AppVersion, Control, HOST_CALL_GRACE, Outcome, Phase};
use super::{describe, within};
use crate::app::{AppCtx, Prepared};
use crate::app::{AppError, AppEvent, AppState};
use crate::http_serve::{Handler, Server, text_response};
use std::sync::atomic::Ordering::Relaxed;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// A serving HTTP app: its server and what handles its requests.
pub(super) struct HttpApp {
    server: Server<RequestHandler>,
    handler: Arc<RequestHandler>,
}

/// A version that serves HTTP, with its `ProxyPre` at hand.
struct Serving {
    version: AppVersion,
    pre: ProxyPre<AppCtx>,
}

impl Serving {
    /// `version` if it is a `wasi:http/proxy` component; else itself back.
    fn of(version: AppVersion) -> Result<Serving, Box<AppVersion>> {
        match &*version.pre {
            Prepared::HttpProxy(pre) => Ok(Serving {
                pre: pre.clone(),
                version,
            }),
            Prepared::App(_) => Err(Box::new(version)),
        }
    }
}

/// Makes an instance of the current version for each request.
pub(super) struct RequestHandler {
    base: AppBase,
    current: RwLock<Arc<Serving>>,
    /// Every request's instance task, so that a stop waits for them.
    instances: TaskTracker,
}

impl Handler for RequestHandler {
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<hyper::body::Incoming>,
        permit: OwnedSemaphorePermit,
    ) -> hyper::Response<HyperOutgoingBody> {
        let serving = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let metrics = &self.base.metrics;
        let (mut store, io, stderr_tail) = match self.base.store(&serving.version) {
            Ok(made) => made,
            Err(e) => return self.failed(&e.to_string()),
        };
        let (sender, response) = oneshot::channel();
        let mut http = store.data_mut().units.wasi.http_view();
        let request = match http.new_incoming_request(Scheme::Http, request) {
            Ok(request) => request,
            Err(e) => {
                // No Host header on an HTTP/1.0 request, say: the client's fault.
                return text_response(400, &format!("bad request: {e}\n"));
            }
        };
        let out = match http.new_response_outparam(sender) {
            Ok(out) => out,
            Err(e) => return self.failed(&format!("{e:#}")),
        };
        let pre = serving.pre.clone();
        let timeout = serving.version.config.call_timeout;
        let handler = self.clone();
        // The instance runs in its own task: once it has given the
        // response's head it may still be writing the body.
        let instance = self.instances.spawn(async move {
            let _permit = permit;
            let called = Instant::now();
            let result = within(
                called,
                timeout,
                &io,
                std::pin::pin!(async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, request, out)
                        .await
                }),
            )
            .await;
            handler.base.metrics.served_call(called.elapsed());
            store.data_mut().units.device.flush();
            let result = result.map_err(|e| describe(&e, "handle", &stderr_tail));
            if let Err(crash) = &result {
                handler.base.metrics.traps.fetch_add(1, Relaxed);
                tracing::warn!(app = %handler.base.name, "an HTTP request failed: {crash}");
            }
            result
        });
        match response.await {
            Ok(Ok(response)) => {
                metrics.http_served.fetch_add(1, Relaxed);
                response
            }
            Ok(Err(code)) => {
                // The guest answered with an error code of its own.
                metrics.http_served.fetch_add(1, Relaxed);
                text_response(500, &format!("the app answered with an error: {code:?}\n"))
            }
            Err(_) => {
                // The instance ended without a response: why is what it returned.
                let why = match instance.await {
                    // Its task logged the crash.
                    Ok(Err(_)) => None,
                    Ok(Ok(())) => Some("it returned without giving a response".to_string()),
                    Err(e) => Some(format!("its task failed: {e}")),
                };
                metrics.http_failed.fetch_add(1, Relaxed);
                if let Some(why) = why {
                    tracing::warn!(app = %self.base.name, "an HTTP request failed: {why}");
                }
                text_response(
                    500,
                    "the app failed to answer; the gateway's log says why\n",
                )
            }
        }
    }
}

impl RequestHandler {
    /// A request the host could not hand to an instance: logged, counted,
    /// answered `500`.
    fn failed(&self, why: &str) -> hyper::Response<HyperOutgoingBody> {
        self.base.metrics.http_failed.fetch_add(1, Relaxed);
        tracing::warn!(app = %self.base.name, "an HTTP request could not start: {why}");
        text_response(
            500,
            "the app failed to answer; the gateway's log says why\n",
        )
    }
}

impl HttpApp {
    /// Stop listening, and let connections and instances finish, for up to
    /// the call timeout and its grace each.
    async fn stop(self, timeout: std::time::Duration) {
        let grace = timeout + HOST_CALL_GRACE;
        self.server.shutdown(grace).await;
        self.handler.instances.close();
        let _ = tokio::time::timeout(grace, self.handler.instances.wait()).await;
    }
}

impl Actor {
    /// Check that `self.version` instantiates, then serve it on its granted
    /// address. An error is the crash report.
    pub(super) async fn start_http(&mut self) -> Result<HttpApp, AppError> {
        let serving = Serving::of(self.version.clone())
            .map_err(|_| AppError::Trap("not a wasi:http/proxy component".into()))?;
        self.check_instantiates(&serving).await?;
        let version = &serving.version;
        let grants = version.config.grants.clone();
        let (number, digest) = (version.number, version.digest.clone());
        let handler = Arc::new(RequestHandler {
            base: self.base.clone(),
            current: RwLock::new(Arc::new(serving)),
            instances: TaskTracker::new(),
        });
        let server = self
            .base
            .shared
            .units
            .http_serve
            .bind(&grants, handler.clone(), self.base.metrics.clone())
            .await
            .map_err(|e| AppError::Preparing {
                unit: "http_serve",
                reason: format!("{e:#}"),
            })?;
        tracing::info!(
            app = %self.base.name,
            version = number,
            component = &digest[..12],
            "serving HTTP on http://{}",
            server.address()
        );
        Ok(HttpApp { server, handler })
    }

    /// Make one instance of `serving` and drop it: a component that cannot
    /// even start is a crash at start, not a `500` at every request.
    async fn check_instantiates(&mut self, serving: &Serving) -> Result<(), AppError> {
        let (mut store, io, stderr_tail) = self.base.store(&serving.version)?;
        within(
            Instant::now(),
            serving.version.config.call_timeout,
            &io,
            std::pin::pin!(serving.pre.instantiate_async(&mut store)),
        )
        .await
        .map(drop)
        .map_err(|e| describe(&e, "instantiation", &stderr_tail))
    }

    pub(super) async fn serve_http(
        &mut self,
        app: Box<HttpApp>,
        cancel: &CancellationToken,
    ) -> Phase {
        let timeout = self.version.config.call_timeout;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    app.stop(timeout).await;
                    self.set_state(AppState::Stopped);
                    return Phase::Done;
                }
                Some(control) = self.control.recv() => match control {
                    Control::Swap { version, reply, outcome, .. } => {
                        if let Some(next) = self.swap_http(&app, *version, reply, outcome).await {
                            app.stop(timeout).await;
                            return next;
                        }
                    }
                    Control::Stop(done) => {
                        app.stop(timeout).await;
                        self.set_state(AppState::Stopped);
                        let _ = done.send(());
                        return Phase::Stopped;
                    }
                    Control::Start(done) => { let _ = done.send(()); }
                    Control::Remove(done) => {
                        app.stop(timeout).await;
                        self.set_state(AppState::Stopped);
                        let _ = done.send(());
                        return Phase::Done;
                    }
                },
                Some(event) = self.events.recv() => {
                    let error = AppError::ServesHttp { app: self.base.name.to_string() };
                    match event {
                        AppEvent::Desired { reply, .. } => { let _ = reply.send(Err(error)); }
                        AppEvent::Action { reply, .. } => { let _ = reply.send(Err(error)); }
                    }
                }
                _ = app.server.accept() => {}
            }
        }
    }

    /// Install `version` in place of the server (which the caller stops):
    /// the phase that starts it.
    fn restart_on(
        &mut self,
        version: AppVersion,
        reply: oneshot::Sender<Result<(), AppError>>,
        outcome: oneshot::Sender<Outcome>,
    ) -> Phase {
        tracing::info!(app = %self.base.name, "version {} is a {} component or serves elsewhere: restarting the app on it", version.number, version.pre.world());
        self.install(version, reply, outcome);
        let saved = self.base.saved_state().unwrap_or_default();
        Phase::Start(saved)
    }

    /// A new version for a serving HTTP app. One that serves HTTP on the
    /// same grant replaces the component behind the listener (`None`: keep
    /// serving); any other is installed and started in place of the
    /// server (`Some(phase)`: the caller stops the server first).
    async fn swap_http(
        &mut self,
        app: &HttpApp,
        version: AppVersion,
        reply: oneshot::Sender<Result<(), AppError>>,
        outcome: oneshot::Sender<Outcome>,
    ) -> Option<Phase> {
        let serving = match Serving::of(version) {
            Ok(serving)
                if serving.version.config.grants.serve_http
                    == self.version.config.grants.serve_http =>
            {
                serving
            }
            Ok(Serving { version, .. }) => return Some(self.restart_on(version, reply, outcome)),
            Err(version) => return Some(self.restart_on(*version, reply, outcome)),
        };
        let started = Instant::now();
        if let Err(e) = self.check_instantiates(&serving).await {
            tracing::warn!(app = %self.base.name, "version {} refused: {e}; version {} keeps serving", serving.version.number, self.version.number);
            let _ = reply.send(Err(AppError::NotStarted {
                reason: Box::new(e),
                running: self.version.number,
            }));
            return None;
        }
        let version = serving.version.clone();
        *app.handler
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(serving);
        tracing::info!(
            app = %self.base.name,
            from = self.version.number,
            to = version.number,
            component = &version.digest[..12],
            "hot swap done in {} us; still serving on http://{}",
            started.elapsed().as_micros(),
            app.server.address()
        );
        self.version = version;
        self.crashes.clear();
        self.set_state(AppState::Running);
        let _ = reply.send(Ok(()));
        let _ = outcome.send(Outcome::Kept);
        None
    }
}
