//! The WASI a guest gets: what a language runtime needs, and nothing else.
//!
//! Linked: clocks, random, I/O streams, stdio (stdout and stderr go to the
//! app's log; stdin is empty), an empty environment and argument list, exit,
//! and a filesystem whose only preopen is the app's own directory. The
//! filesystem goes through cap-std (inside wasmtime-wasi), which refuses
//! `..`, absolute paths and symlinks that lead out of the preopened
//! directory.
//!
//! The `wasi:sockets` interfaces are linked too (some language runtimes,
//! CPython in componentize-py, import them whether the app uses the network
//! or not). TCP connects and UDP datagrams reach the addresses the app was
//! granted and nothing else (and only those addresses' datagrams come back);
//! name lookup and listening are refused.
//!
//! Outgoing `wasi:http` (wasmtime-wasi-http) reaches the URL prefixes the
//! app was granted: [`HttpGrants`] checks every request before it is sent,
//! and refuses the rest with `HTTP-request-denied`.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream, WasiCli, WasiCliCtxView, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksCtxView, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io as wasi_io, random, sockets};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSockets, WasiSocketsCtxView, WasiSocketsView};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiView};

use crate::capability::{AppSetup, Capability, Figure, HasCtx, ReportScope};
use crate::grants::{HttpRules, HttpTarget, Protocol};
use crate::rate::LogGate;

mod timed_io;

/// The most WASI resources (open files, streams, pollables) an app may hold
/// at once.
pub const MAX_WASI_RESOURCES: usize = 256;

/// The WASI capability: no gateway state of its own.
pub struct Wasi;

/// An app's WASI state: its context, the resource table WASI's resources
/// live in, and the tail of what it wrote to stderr (for crash reports).
pub struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    /// The instance's I/O clock: waits in `wasi:io` are timed on it.
    io: Arc<crate::io_clock::IoClock>,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_grants: HttpGrants,
    pub stderr_tail: StderrTail,
}

/// The check every outgoing HTTP request goes through before it is sent:
/// the app's HTTP grants (checked against `[allow]` when the config was read
/// or the deployment came), parsed once, with their timeouts.
pub struct HttpGrants {
    app: Arc<str>,
    rules: HttpRules,
    /// The app's device-request bucket: each request takes a token, so a
    /// loop of requests cannot flood the granted server.
    rate: crate::rate::SharedLimit,
    metrics: Arc<crate::metrics::AppMetrics>,
}

impl HttpGrants {
    /// The grant covering `uri`, if any.
    fn grant_for(&self, uri: &hyper::Uri) -> Option<&crate::grants::HttpGrant> {
        let target = HttpTarget::parse(&uri.to_string()).ok()?;
        self.rules.covering(&target)
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for HttpGrants {
    fn send_request(
        &mut self,
        request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(grant) = self.grant_for(request.uri()) else {
            self.metrics.http_denied.fetch_add(1, Relaxed);
            tracing::debug!(app = %self.app, uri = %request.uri(), "http request refused: not granted");
            return Box::new(std::future::ready(Err(
                wasmtime_wasi_http::Error::HttpRequestDenied,
            )));
        };
        if !self.rate.allow() {
            self.metrics.http_limited.fetch_add(1, Relaxed);
            return Box::new(std::future::ready(Err(
                wasmtime_wasi_http::Error::ConnectionLimitReached,
            )));
        }
        self.metrics.http_requests.fetch_add(1, Relaxed);
        // The guest may ask for less time than the grant, never more.
        let most = std::time::Duration::from_millis(u64::from(grant.timeout_ms));
        let asked = options.unwrap_or_default();
        let cap = |wanted: Option<std::time::Duration>| Some(wanted.map_or(most, |w| w.min(most)));
        let options = wasmtime_wasi_http::RequestOptions {
            connect_timeout: cap(asked.connect_timeout),
            first_byte_timeout: cap(asked.first_byte_timeout),
            between_bytes_timeout: cap(asked.between_bytes_timeout),
        };
        // What wasmtime-wasi-http does by default, with the checked options.
        wasmtime_wasi_http::default_hooks().send_request(request, Some(options), fut)
    }
}

impl WasiView for WasiState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The check every socket address goes through, before any I/O: the app's
/// TCP grants (checked against `[allow]` when the config was read or the
/// deployment came), parsed once here, counting refusals as
/// `wasi.sockets_denied`.
fn socket_check(
    app: &AppSetup<'_>,
) -> impl Fn(
    std::net::SocketAddr,
    SocketAddrUse,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    let granted = |protocol| -> Arc<[std::net::SocketAddr]> {
        app.config
            .grants
            .sockets
            .iter()
            .filter(|g| g.protocol == protocol)
            .filter_map(|g| g.address.parse().ok())
            .collect()
    };
    let (tcp, udp) = (granted(Protocol::Tcp), granted(Protocol::Udp));
    let metrics = app.metrics.clone();
    let name = app.app.clone();
    move |address, used| {
        let allowed = match used {
            SocketAddrUse::TcpConnect => tcp.contains(&address),
            // The bind a connect or a first send makes: any local address,
            // an ephemeral port (never a port of the app's choosing, where
            // others could send to it).
            SocketAddrUse::TcpBind => address.ip().is_unspecified() && address.port() == 0,
            SocketAddrUse::UdpBind => {
                !udp.is_empty() && address.ip().is_unspecified() && address.port() == 0
            }
            // Datagrams go to granted addresses, and only theirs come back:
            // wasmtime-wasi drops any other sender's.
            SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => udp.contains(&address),
            // Nothing comes in over TCP.
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
        };
        if !allowed {
            metrics
                .sockets_denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(app = %name, "socket {used:?} {address} refused: not granted");
        }
        Box::pin(std::future::ready(allowed))
    }
}

impl WasiState {
    /// The `wasi:http` view of this instance: for the host to hand a
    /// served request to the guest (the same table, and the same grant
    /// checks on what the guest then sends).
    pub fn http_view(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_grants,
        }
    }
}

impl Capability for Wasi {
    type Ctx = WasiState;
    const NAME: &'static str = "wasi";

    /// The guest's directory at `/`, stdio into the log.
    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<WasiState> {
        let stderr_tail = StderrTail::default();
        let gate = &app.rates.log;
        let who = (app.app.clone(), app.device.clone());
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(GuestOutput::new(
                who.clone(),
                Stream::Stdout,
                None,
                gate.clone(),
            ))
            .stderr(GuestOutput::new(
                who,
                Stream::Stderr,
                Some(stderr_tail.clone()),
                gate.clone(),
            ))
            .preopened_dir(app.files_dir, "/", FsPerms::ReadWrite)?
            // The network is what the app was granted, outbound only: TCP
            // connects and UDP datagrams to granted addresses (and the
            // implicit bind to an ephemeral port they need). No name lookup,
            // no listening. With no socket grants every use is refused.
            .allow_tcp(app.config.grants.any_socket(Protocol::Tcp))
            .allow_udp(app.config.grants.any_socket(Protocol::Udp))
            .allow_ip_name_lookup(false)
            .socket_addr_check(socket_check(app));
        // The table holds every WASI resource of the app, open files among
        // them: capped, so that one app cannot use up the host's file
        // descriptors. Past the cap the call that would add one traps.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_WASI_RESOURCES);
        Ok(WasiState {
            ctx: builder.build(),
            table,
            io: app.io.clone(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_grants: HttpGrants {
                app: app.app.clone(),
                rules: HttpRules::new(&app.config.grants.http),
                rate: app.rates.device_requests(app.config.io_requests_per_s),
                metrics: app.metrics.clone(),
            },
            stderr_tail,
        })
    }

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let figure = Figure::counter;
        let metrics = &app.metrics;
        vec![
            figure(
                "sockets_denied",
                "Socket connects, sends, binds and listens refused: not granted.",
                &metrics.sockets_denied,
            ),
            figure(
                "http_requests",
                "Outgoing HTTP requests sent.",
                &metrics.http_requests,
            ),
            figure(
                "http_denied",
                "Outgoing HTTP requests refused: not granted.",
                &metrics.http_denied,
            ),
            figure(
                "http_limited",
                "Outgoing HTTP requests refused: over the app's io_requests_per_s.",
                &metrics.http_limited,
            ),
        ]
    }

    /// Link the WASI interfaces listed in the module header.
    fn add_to_linker<T: HasCtx<Wasi>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        let l = linker;
        // Function items rather than closures: their lifetimes are generic.
        fn table<T: HasCtx<Wasi>>(t: &mut T) -> &mut ResourceTable {
            &mut t.ctx().table
        }
        fn random<T: HasCtx<Wasi>>(t: &mut T) -> &mut wasmtime_wasi::random::WasiRandomCtx {
            t.ctx().ctx.random()
        }
        fn clocks<T: HasCtx<Wasi>>(t: &mut T) -> WasiClocksCtxView<'_> {
            t.ctx().clocks()
        }
        fn cli<T: HasCtx<Wasi>>(t: &mut T) -> WasiCliCtxView<'_> {
            t.ctx().cli()
        }
        fn fs<T: HasCtx<Wasi>>(t: &mut T) -> WasiFilesystemCtxView<'_> {
            t.ctx().filesystem()
        }
        fn net<T: HasCtx<Wasi>>(t: &mut T) -> WasiSocketsCtxView<'_> {
            t.ctx().sockets()
        }
        fn timed<T: HasCtx<Wasi>>(t: &mut T) -> timed_io::TimedIo<'_> {
            let state = t.ctx();
            timed_io::TimedIo {
                table: &mut state.table,
                io: &state.io,
            }
        }
        wasi_io::error::add_to_linker::<T, HasIo>(l, table::<T>)?;
        wasi_io::poll::add_to_linker::<T, HasTimedIo>(l, timed::<T>)?;
        wasi_io::streams::add_to_linker::<T, HasTimedIo>(l, timed::<T>)?;
        clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, clocks::<T>)?;
        clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, clocks::<T>)?;
        random::random::add_to_linker::<T, WasiRandom>(l, random::<T>)?;
        random::insecure::add_to_linker::<T, WasiRandom>(l, random::<T>)?;
        random::insecure_seed::add_to_linker::<T, WasiRandom>(l, random::<T>)?;
        cli::exit::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::environment::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::stdin::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::stdout::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::stderr::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::terminal_input::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::terminal_output::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, cli::<T>)?;
        filesystem::types::add_to_linker::<T, WasiFilesystem>(l, fs::<T>)?;
        filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, fs::<T>)?;
        sockets::tcp_create_socket::add_to_linker::<T, WasiSockets>(l, net::<T>)?;
        sockets::udp_create_socket::add_to_linker::<T, WasiSockets>(l, net::<T>)?;
        sockets::instance_network::add_to_linker::<T, WasiSockets>(l, net::<T>)?;
        sockets::network::add_to_linker::<T, WasiSockets>(l, &Default::default(), net::<T>)?;
        sockets::ip_name_lookup::add_to_linker::<T, WasiSockets>(l, net::<T>)?;
        sockets::tcp::add_to_linker::<T, WasiSockets>(l, net::<T>)?;
        sockets::udp::add_to_linker::<T, WasiSockets>(l, net::<T>)?;
        // Outgoing HTTP, on the same resource table (its bodies are
        // wasi:io streams), checked by the app's HttpGrants.
        fn http<T: HasCtx<Wasi>>(t: &mut T) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
            t.ctx().http_view()
        }
        use wasmtime_wasi_http::WasiHttp;
        use wasmtime_wasi_http::p2::bindings::{LinkOptions, http as wasi_http};
        wasi_http::outgoing_handler::add_to_linker::<T, WasiHttp>(l, http::<T>)?;
        wasi_http::types::add_to_linker::<T, WasiHttp>(
            l,
            &LinkOptions::default().into(),
            http::<T>,
        )?;
        Ok(())
    }
}

struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

struct HasTimedIo;

impl HasData for HasTimedIo {
    type Data<'a> = timed_io::TimedIo<'a>;
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The last lines a guest wrote to stderr during the current call, so that a
/// crash report can say what the guest printed before it trapped (a Rust
/// panic message, for example).
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Tail>);

#[derive(Default)]
struct Tail {
    lines: Mutex<VecDeque<String>>,
    /// Lines were kept since the last clear. Most calls write nothing, and
    /// checking this is cheaper than taking the lock on every call (P1).
    kept: AtomicBool,
}

/// Lines a crash report quotes.
const TAIL_LINES: usize = 3;

impl StderrTail {
    fn push(&self, line: &str) {
        // Rust's hint about RUST_BACKTRACE says nothing about the crash.
        if line.starts_with("note: run with `RUST_BACKTRACE") {
            return;
        }
        if let Ok(mut tail) = self.0.lines.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
            self.0.kept.store(true, Ordering::Release);
        }
    }

    /// Forget earlier calls' output.
    pub fn clear(&self) {
        // A plain load first: a swap is a locked instruction on every call,
        // and most calls kept nothing (P1).
        if !self.0.kept.load(Ordering::Relaxed) || !self.0.kept.swap(false, Ordering::Acquire) {
            return;
        }
        if let Ok(mut tail) = self.0.lines.lock() {
            tail.clear();
        }
    }

    /// The kept lines joined with " / ", if any.
    pub fn summary(&self) -> Option<String> {
        let tail = self.0.lines.lock().ok()?;
        (!tail.is_empty()).then(|| {
            tail.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" / ")
        })
    }
}

/// A guest's stdout or stderr: complete lines become log lines of the app
/// (stdout at info, stderr at warn); stderr also feeds the [`StderrTail`].
struct GuestOutput {
    app: Arc<str>,
    device: Arc<str>,
    stream: Stream,
    last_lines: Option<StderrTail>,
    gate: LogGate,
}

impl GuestOutput {
    fn new(
        (app, device): (Arc<str>, Arc<str>),
        stream: Stream,
        last_lines: Option<StderrTail>,
        gate: LogGate,
    ) -> Self {
        GuestOutput {
            app,
            device,
            stream,
            last_lines,
            gate,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            app: self.app.clone(),
            device: self.device.clone(),
            stream: self.stream,
            last_lines: self.last_lines.clone(),
            gate: self.gate.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    app: Arc<str>,
    device: Arc<str>,
    stream: Stream,
    last_lines: Option<StderrTail>,
    gate: LogGate,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = crate::log::clip(text.trim_end_matches('\r'));
        if text.is_empty() {
            return;
        }
        let app = &*self.app;
        // The crash report keeps the last lines even when the log drops them.
        if let Some(tail) = &self.last_lines {
            tail.push(text);
        }
        if !self.gate.admit(app) {
            return;
        }
        match self.stream {
            Stream::Stdout => {
                tracing::info!(app = %app, device = %self.device, stream = "stdout", "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(app = %app, device = %self.device, stream = "stderr", "{text}")
            }
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buf.extend_from_slice(data);
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            self.emit(&line[..line.len() - 1]);
        }
        // A guest that never ends its line still gets logged, in pieces.
        if self.buf.len() > crate::log::MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let rest = std::mem::take(&mut self.buf);
        self.emit(&rest);
        Poll::Ready(Ok(()))
    }
}
