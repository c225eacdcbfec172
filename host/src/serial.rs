//! The `wasmgate:device/serial` capability: raw bytes on the serial ports an
//! app was granted.
//!
//! - **Gateway state** ([`Serial`]): the gateway's `[allow]`, which ports
//!   are open and by which app (a port is held by one app at a time), and
//!   each app's counters.
//! - **Per-app state** ([`SerialCtx`]): the app's grants, its request rate
//!   (shared with its other device requests), its instance's [`IoClock`],
//!   and the ports it holds, as resources in its table.
//!
//! `open` checks the app's grants and `[allow]` before the device is
//! touched, and refuses anything else with `denied` naming the path. Reads
//! and writes are timed on the instance's I/O clock: the wait does not count
//! against the call's deadline, it is bounded by the timeout and the call's
//! I/O budget, and a stop or a swap cancels it. A port closes when the guest
//! drops its handle or the instance ends (its table goes with its store),
//! and the port is then free for the next open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::bindings::IoError;
use crate::bindings::wasmgate::device::serial::{
    self as generated, Host, HostPort, Parity, Settings,
};
use crate::capability::{AppSetup, Capability, Figure, HasCtx, PerApp, ReportScope};
use crate::grants::{self, BAUD_RATES, Grants, SerialGrant};
use crate::io_clock::{IoClock, IoCounters};
use crate::rate::SharedLimit;

/// The most one read returns, or one write takes.
const MAX_TRANSFER: usize = 65_536;

/// The serial unit's gateway state.
pub struct Serial {
    allow: Arc<Grants>,
    /// Open ports, and the app holding each.
    held: Arc<Mutex<HashMap<String, Arc<str>>>>,
    counters: PerApp<Counters>,
}

impl Serial {
    /// The unit for a gateway whose `[allow]` is `allow`.
    pub fn new(allow: Grants) -> Serial {
        Serial {
            allow: Arc::new(Grants {
                serial: allow.serial,
                ..Grants::default()
            }),
            held: Arc::default(),
            counters: PerApp::default(),
        }
    }
}

/// What one app's serial calls came to, since the gateway started.
#[derive(Debug, Default)]
struct Counters {
    io: IoCounters,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// An open port, held by the app until the handle is dropped.
pub struct PortHandle {
    stream: tokio_serial::SerialStream,
    /// The grant's `timeout_ms`, for calls that give none.
    timeout_ms: u32,
    /// The path is taken while the handle lives.
    claim: Claim,
}

/// An entry in the gateway's open ports, removed when the port closes.
struct Claim {
    path: String,
    held: Arc<Mutex<HashMap<String, Arc<str>>>>,
}

impl Claim {
    /// Take `path` for `app`, unless some app holds it.
    fn take(
        held: &Arc<Mutex<HashMap<String, Arc<str>>>>,
        path: &str,
        app: &Arc<str>,
    ) -> Result<Claim, IoError> {
        let mut open = held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = open.get(path) {
            // Another app's name is not this one's business.
            let who = if holder == app {
                "this app"
            } else {
                "another app"
            };
            return Err(IoError::Closed(format!("{path} is open already, by {who}")));
        }
        open.insert(path.to_string(), app.clone());
        Ok(Claim {
            path: path.to_string(),
            held: held.clone(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut open = self.held.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&self.path);
    }
}

/// Per-app state of the serial interface.
pub struct SerialCtx {
    app: Arc<str>,
    grants: Grants,
    allow: Arc<Grants>,
    held: Arc<Mutex<HashMap<String, Arc<str>>>>,
    io: Arc<IoClock>,
    rate: SharedLimit,
    counters: Arc<Counters>,
    table: ResourceTable,
}

impl SerialCtx {
    /// The grant of `path`, if both the app's grants and `[allow]` have it.
    fn granted(&self, path: &str) -> Result<&SerialGrant, IoError> {
        self.grants
            .serial_grant(path)
            .filter(|_| self.allow.serial_grant(path).is_some())
            .ok_or_else(|| {
                tracing::debug!(app = %self.app, "serial denied: {path}");
                IoError::Denied(format!(
                    "serial port {path} is not granted to app {}",
                    self.app
                ))
            })
    }

    fn open_port(&mut self, path: &str, settings: Settings) -> Result<PortHandle, IoError> {
        // Permission before anything else.
        let timeout_ms = self.granted(path)?.timeout_ms;
        if !BAUD_RATES.contains(&settings.baud) {
            return Err(IoError::Invalid(format!(
                "baud {} is not between 300 and 921600",
                settings.baud
            )));
        }
        if !matches!(settings.stop_bits, 1 | 2) {
            return Err(IoError::Invalid(format!(
                "{} stop bits: 1 or 2",
                settings.stop_bits
            )));
        }
        crate::io_clock::admit(&self.rate, &self.io)?;
        let claim = Claim::take(&self.held, path, &self.app)?;
        let parity = match settings.parity {
            Parity::None => grants::Parity::None,
            Parity::Even => grants::Parity::Even,
            Parity::Odd => grants::Parity::Odd,
        };
        let stream = open_line(path, settings.baud, parity, settings.stop_bits)
            .map_err(|e| IoError::Closed(format!("cannot open {path}: {e}")))?;
        Ok(PortHandle {
            stream,
            timeout_ms,
            claim,
        })
    }

    async fn read_port(
        &mut self,
        port: &Resource<PortHandle>,
        max: u32,
        timeout_ms: Option<u32>,
    ) -> Result<Vec<u8>, IoError> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if !(1..=MAX_TRANSFER).contains(&max) {
            return Err(IoError::Invalid(format!(
                "a read of {max} bytes: 1 to {MAX_TRANSFER}"
            )));
        }
        let handle = self.table.get_mut(port).map_err(closed_handle)?;
        let limit = crate::io_clock::request_limit(timeout_ms, handle.timeout_ms)?;
        crate::io_clock::admit(&self.rate, &self.io)?;
        let mut buffer = vec![0u8; max];
        // A read cut off by the timeout or a cancel takes nothing from the
        // port: what arrives later is there for the next read.
        match self.io.wait(limit, handle.stream.read(&mut buffer)).await {
            Ok(Ok(0)) => Err(IoError::Closed("the port was closed".into())),
            Ok(Ok(n)) => {
                buffer.truncate(n);
                self.counters
                    .bytes_read
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(buffer)
            }
            Ok(Err(e)) => Err(IoError::Closed(format!("reading the port: {e}"))),
            Err(cut) => Err(cut.io_error(&format!("reading {}", handle.claim.path), limit)),
        }
    }

    async fn write_port(
        &mut self,
        port: &Resource<PortHandle>,
        data: &[u8],
    ) -> Result<(), IoError> {
        if data.len() > MAX_TRANSFER {
            return Err(IoError::Invalid(format!(
                "a write of {} bytes: at most {MAX_TRANSFER}",
                data.len()
            )));
        }
        let handle = self.table.get_mut(port).map_err(closed_handle)?;
        let limit = crate::io_clock::request_limit(None, handle.timeout_ms)?;
        crate::io_clock::admit(&self.rate, &self.io)?;
        let written = async {
            handle.stream.write_all(data).await?;
            handle.stream.flush().await
        };
        match self.io.wait(limit, written).await {
            Ok(Ok(())) => {
                self.counters
                    .bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(IoError::Closed(format!("writing the port: {e}"))),
            Err(cut) => Err(cut.io_error(&format!("writing {}", handle.claim.path), limit)),
        }
    }
}

/// Open a serial line: 8 data bits, `parity`, 1 or 2 stop bits (the serial
/// unit's ports and the modbus unit's RTU lines alike).
pub(crate) fn open_line(
    path: &str,
    baud: u32,
    parity: grants::Parity,
    stop_bits: u8,
) -> tokio_serial::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt as _;
    tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(match parity {
            grants::Parity::None => tokio_serial::Parity::None,
            grants::Parity::Even => tokio_serial::Parity::Even,
            grants::Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .open_native_async()
}

/// A handle the table does not hold is a host bug or a forged handle:
/// answered as a closed port rather than a trap, since the guest can do
/// nothing worse with it than fail.
fn closed_handle(e: wasmtime::component::ResourceTableError) -> IoError {
    IoError::Closed(format!("not an open port: {e}"))
}

struct SerialData;

impl HasData for SerialData {
    type Data<'a> = &'a mut SerialCtx;
}

impl Capability for Serial {
    type Ctx = SerialCtx;
    const NAME: &'static str = "serial";

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<SerialCtx> {
        Ok(SerialCtx {
            app: app.app.clone(),
            grants: Grants {
                serial: app.config.grants.serial.clone(),
                ..Grants::default()
            },
            allow: self.allow.clone(),
            held: self.held.clone(),
            io: app.io.clone(),
            rate: app.rates.device_requests(app.config.io_requests_per_s),
            counters: self.counters.get(app.app),
            table: ResourceTable::new(),
        })
    }

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let counters = self.counters.get(app.app);
        let figure = Figure::counter;
        vec![
            figure(
                "calls",
                "Serial opens, reads and writes the app made.",
                &counters.io.calls,
            ),
            figure(
                "denied",
                "Serial opens refused: the port is not granted to the app.",
                &counters.io.denied,
            ),
            figure(
                "timeouts",
                "Serial reads and writes that timed out.",
                &counters.io.timeouts,
            ),
            figure(
                "failures",
                "Serial calls whose port could not be opened, failed or closed.",
                &counters.io.failures,
            ),
            figure(
                "bytes_read",
                "Bytes the app read from serial ports.",
                &counters.bytes_read,
            ),
            figure(
                "bytes_written",
                "Bytes the app wrote to serial ports.",
                &counters.bytes_written,
            ),
        ]
    }

    fn add_to_linker<T: HasCtx<Serial>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, SerialData>(linker, T::ctx)
    }
}

impl Host for SerialCtx {}

impl HostPort for SerialCtx {
    async fn open(
        &mut self,
        path: String,
        settings: Settings,
    ) -> wasmtime::Result<Result<Resource<PortHandle>, IoError>> {
        self.counters.io.begin();
        let opened = self.open_port(&path, settings);
        Ok(match self.counters.io.ended(opened) {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(e) => Err(e),
        })
    }

    async fn read(
        &mut self,
        port: Resource<PortHandle>,
        max: u32,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<Vec<u8>, IoError>> {
        self.counters.io.begin();
        let read = self.read_port(&port, max, timeout_ms).await;
        Ok(self.counters.io.ended(read))
    }

    async fn write(
        &mut self,
        port: Resource<PortHandle>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), IoError>> {
        self.counters.io.begin();
        let written = self.write_port(&port, &data).await;
        Ok(self.counters.io.ended(written))
    }

    async fn drop(&mut self, port: Resource<PortHandle>) -> wasmtime::Result<()> {
        // Closing the stream and freeing the claim.
        self.table.delete(port)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_held_by_one_app_at_a_time_and_freed_when_closed() {
        let held = Arc::default();
        let (meter, other): (Arc<str>, Arc<str>) = ("meter".into(), "other".into());
        let claim = Claim::take(&held, "/dev/ttyUSB0", &meter).expect("free");
        let again = Claim::take(&held, "/dev/ttyUSB0", &meter).err();
        assert!(
            matches!(&again, Some(IoError::Closed(m)) if m.ends_with("by this app")),
            "{again:?}"
        );
        let theirs = Claim::take(&held, "/dev/ttyUSB0", &other).err();
        assert!(
            matches!(&theirs, Some(IoError::Closed(m)) if m.ends_with("by another app")),
            "{theirs:?}"
        );
        assert!(Claim::take(&held, "/dev/ttyUSB1", &other).is_ok());
        drop(claim);
        assert!(Claim::take(&held, "/dev/ttyUSB0", &other).is_ok());
    }
}
