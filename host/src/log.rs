//! Host side of the `wasmgate:device/log` interface: a guest's log lines go
//! to the gateway's log (tracing) with the app's name on every line.
//!
//! The standard `wasi:logging/logging` (`0.1.0-draft`, what wasmCloud
//! components and libraries written for it import) is the same unit: its
//! lines go through the same rate limit to the same log.

use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

use crate::capability::{AppSetup, Capability, Figure, FigureKind, HasCtx, ReportScope};
use crate::rate::LogGate;

use crate::bindings::wasmgate::device::log::{self as generated, Host, Level};

/// `wasi:logging@0.1.0-draft`, from its upstream WIT (`wit/deps/logging`).
mod standard {
    wasmtime::component::bindgen!({
        path: "../wit/deps/logging",
        world: "wasi:logging/imports",
        imports: { default: trappable },
    });
}
use standard::wasi::logging::logging as wasi_logging;

/// Longer lines are cut here so one call cannot flood the log.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// Per-app state of the log interface.
pub struct LogCtx {
    app: Arc<str>,
    /// The device the app speaks for, on every line too.
    device: Arc<str>,
    gate: LogGate,
}

impl LogCtx {
    pub fn new(app: Arc<str>, device: Arc<str>, gate: LogGate) -> Self {
        LogCtx { app, device, gate }
    }
}

/// Cut `line` to at most `MAX_LINE_BYTES`, on a character boundary.
pub fn clip(line: &str) -> &str {
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

struct LogData;

impl HasData for LogData {
    type Data<'a> = &'a mut LogCtx;
}

/// The log capability: no gateway state of its own.
pub struct Log;

impl Capability for Log {
    type Ctx = LogCtx;
    const NAME: &'static str = "log";

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<LogCtx> {
        Ok(LogCtx::new(
            app.app.clone(),
            app.device.clone(),
            app.rates.log.clone(),
        ))
    }

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        vec![Figure {
            name: "dropped",
            help: "Log lines dropped by the rate limit.",
            kind: FigureKind::Counter,
            value: app
                .metrics
                .log_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        }]
    }

    fn add_to_linker<T: HasCtx<Log>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, LogData>(linker, T::ctx)?;
        wasi_logging::add_to_linker::<T, LogData>(linker, T::ctx)
    }
}

impl Host for LogCtx {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let app = &*self.app;
        if !self.gate.admit(app) {
            return Ok(());
        }
        let message = clip(&message);
        let device = &*self.device;
        match level {
            Level::Trace => tracing::trace!(app = %app, device = %device, "{message}"),
            Level::Debug => tracing::debug!(app = %app, device = %device, "{message}"),
            Level::Info => tracing::info!(app = %app, device = %device, "{message}"),
            Level::Warn => tracing::warn!(app = %app, device = %device, "{message}"),
            Level::Error => tracing::error!(app = %app, device = %device, "{message}"),
        }
        Ok(())
    }
}

impl wasi_logging::Host for LogCtx {
    /// `context` (a logger's name, say) leads the line, as `context: message`;
    /// `critical` is logged as `error`, the gateway's highest level.
    fn log(
        &mut self,
        level: wasi_logging::Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        use wasi_logging::Level as Standard;
        let level = match level {
            Standard::Trace => Level::Trace,
            Standard::Debug => Level::Debug,
            Standard::Info => Level::Info,
            Standard::Warn => Level::Warn,
            Standard::Error | Standard::Critical => Level::Error,
        };
        if context.is_empty() {
            Host::log(self, level, message)
        } else {
            Host::log(self, level, format!("{context}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(MAX_LINE_BYTES);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_LINE_BYTES && clipped.len() >= MAX_LINE_BYTES - 1);
        assert_eq!(clip("short"), "short");
    }
}
