//! Host side of the `wasmgate:device/log` interface: a guest's log lines go
//! to the gateway's log (tracing) with the app's name on every line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rate::RateLimit;
use wasmtime::component::{HasData, Linker};

use crate::bindings::wasmgate::device::log::{self as generated, Host, Level};

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

/// The app's log rate limit, shared by `log` and its stdout and stderr
/// (see `rate`): lines past it are dropped and counted, with one warning a
/// second saying how many.
#[derive(Clone)]
pub struct LogGate(Arc<Mutex<Gate>>);

struct Gate {
    limit: RateLimit,
    dropped: u64,
    warned: Instant,
    metrics: Arc<crate::metrics::AppMetrics>,
}

impl LogGate {
    pub fn new(metrics: Arc<crate::metrics::AppMetrics>) -> LogGate {
        LogGate(Arc::new(Mutex::new(Gate {
            limit: crate::rate::log_lines(),
            dropped: 0,
            warned: Instant::now(),
            metrics,
        })))
    }

    /// Whether the app may log one more line now.
    pub fn admit(&self, app: &str) -> bool {
        let Ok(mut gate) = self.0.lock() else {
            return true;
        };
        if gate.limit.allow() {
            return true;
        }
        gate.dropped += 1;
        gate.metrics
            .log_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if gate.warned.elapsed() >= Duration::from_secs(1) {
            tracing::warn!(
                app,
                dropped = gate.dropped,
                "log lines dropped: the app logs more than {} lines a second",
                gate.limit.per_second()
            );
            gate.warned = Instant::now();
        }
        false
    }
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new(Arc::default())
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

/// Store data that holds an app's [`LogCtx`].
pub trait LogView: Send {
    fn log(&mut self) -> &mut LogCtx;
}

/// Add the log interface to the linker.
pub fn add_to_linker<T: LogView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    generated::add_to_linker::<T, LogData>(linker, T::log)
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
