//! The WASI a guest gets: what a language runtime needs, and nothing else.
//!
//! Linked: clocks, random, I/O streams, stdio (stdout and stderr go to the
//! app's log; stdin is empty), an empty environment and argument list, exit,
//! and a filesystem whose only preopen is the app's own directory. Not
//! linked at all: sockets and name lookup, so a component that imports them
//! fails to start with an error naming the import. The filesystem goes
//! through cap-std (inside wasmtime-wasi), which refuses `..`, absolute paths
//! and symlinks that lead out of the preopened directory.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream, WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io as wasi_io, random};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiView};

use crate::app::AppCtx;

/// The guest's WASI context: its directory at `/`, stdio into the log.
pub fn context(app: &Arc<str>, dir: &Path, last_stderr: &Arc<Mutex<String>>) -> anyhow::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(GuestOutput::new(app.clone(), Stream::Stdout, None))
        .stderr(GuestOutput::new(app.clone(), Stream::Stderr, Some(last_stderr.clone())))
        .preopened_dir(dir, "/", FsPerms::ReadWrite)?;
    Ok(builder.build())
}

struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// Add the WASI interfaces listed in the module header to the linker.
pub fn add(linker: &mut Linker<AppCtx>) -> wasmtime::Result<()> {
    let l = linker;
    wasi_io::error::add_to_linker::<AppCtx, HasIo>(l, |t| &mut t.table)?;
    wasi_io::poll::add_to_linker::<AppCtx, HasIo>(l, |t| &mut t.table)?;
    wasi_io::streams::add_to_linker::<AppCtx, HasIo>(l, |t| &mut t.table)?;
    clocks::wall_clock::add_to_linker::<AppCtx, WasiClocks>(l, AppCtx::clocks)?;
    clocks::monotonic_clock::add_to_linker::<AppCtx, WasiClocks>(l, AppCtx::clocks)?;
    random::random::add_to_linker::<AppCtx, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure::add_to_linker::<AppCtx, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure_seed::add_to_linker::<AppCtx, WasiRandom>(l, |t| t.wasi.random())?;
    cli::exit::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::environment::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::stdin::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::stdout::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::stderr::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::terminal_input::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::terminal_output::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::terminal_stdin::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::terminal_stdout::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    cli::terminal_stderr::add_to_linker::<AppCtx, WasiCli>(l, AppCtx::cli)?;
    filesystem::types::add_to_linker::<AppCtx, WasiFilesystem>(l, AppCtx::filesystem)?;
    filesystem::preopens::add_to_linker::<AppCtx, WasiFilesystem>(l, AppCtx::filesystem)?;
    Ok(())
}

impl WasiView for AppCtx {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: complete lines become log lines of the app
/// (stdout at info, stderr at warn). Stderr's last line is also kept so a
/// crash report can say what the guest printed before it trapped (a Rust
/// panic message, for example).
struct GuestOutput {
    app: Arc<str>,
    stream: Stream,
    last_line: Option<Arc<Mutex<String>>>,
}

impl GuestOutput {
    fn new(app: Arc<str>, stream: Stream, last_line: Option<Arc<Mutex<String>>>) -> Self {
        GuestOutput { app, stream, last_line }
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
            stream: self.stream,
            last_line: self.last_line.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    app: Arc<str>,
    stream: Stream,
    last_line: Option<Arc<Mutex<String>>>,
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
        match self.stream {
            Stream::Stdout => tracing::info!(app = %app, stream = "stdout", "{text}"),
            Stream::Stderr => tracing::warn!(app = %app, stream = "stderr", "{text}"),
        }
        if let Some(last) = &self.last_line
            && let Ok(mut last) = last.lock()
        {
            last.clear();
            last.push_str(text);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
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
