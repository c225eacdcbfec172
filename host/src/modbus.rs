//! The `wasmgate:device/modbus` capability: Modbus TCP and RTU requests from
//! a guest to the endpoints (network addresses, serial lines) and unit ids
//! it was granted.
//!
//! - **Gateway state** ([`Modbus`]): the gateway's `[allow]`, one [`Line`]
//!   per endpoint (a connection or an open serial line, shared by every app
//!   granted it, its requests one at a time, as an RTU bus needs), and each
//!   app's counters.
//! - **Per-app state** ([`ModbusCtx`]): the app's grants, its request rate
//!   and its instance's [`IoClock`].
//!
//! Every request is checked against the app's grants and `[allow]` before
//! any I/O, and refused with `denied` naming what was asked. The wait for
//! the device is timed on the instance's I/O clock, so it does not count
//! against the call's deadline, and it is bounded by the request's timeout
//! and the call's I/O budget. A timeout or a transport error closes the
//! line's connection (a late answer must not be taken for the next
//! request's); the next request connects again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};
use wasmtime::component::{HasData, Linker};

use crate::bindings::wasmgate::device::modbus::{self as generated, Host, Target};
use crate::bindings::{IoError, ModbusException};
use crate::capability::{AppSetup, Capability, Figure, HasCtx, PerApp, ReportScope};
use crate::grants::{Endpoint, Grants, ModbusRules};
use crate::io_clock::{IoClock, IoCounters};
use crate::rate::SharedLimit;

/// The protocol's limits on one request (Modbus application protocol
/// v1.1b3, section 6).
const MAX_READ_BITS: u16 = 2000;
const MAX_READ_REGISTERS: u16 = 125;
const MAX_WRITE_BITS: usize = 1968;
const MAX_WRITE_REGISTERS: usize = 123;

/// The modbus unit's gateway state.
pub struct Modbus {
    allow: Arc<ModbusRules>,
    pool: Arc<Pool>,
    counters: PerApp<IoCounters>,
}

impl Modbus {
    /// The unit for a gateway whose `[allow]` is `allow`.
    pub fn new(allow: Grants) -> Modbus {
        Modbus {
            allow: Arc::new(ModbusRules::new(&allow.modbus)),
            pool: Arc::default(),
            counters: PerApp::default(),
        }
    }
}

/// The gateway's lines, one per endpoint, made on first use.
#[derive(Default)]
struct Pool {
    lines: Mutex<HashMap<Endpoint, Arc<Line>>>,
}

impl Pool {
    fn line(&self, endpoint: &Endpoint) -> Arc<Line> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .entry(endpoint.clone())
            .or_insert_with(|| {
                Arc::new(Line {
                    endpoint: endpoint.clone(),
                    connection: tokio::sync::Mutex::new(None),
                    stale: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone()
    }
}

/// One endpoint's connection, shared by every app granted it. Its mutex
/// serialises requests: one at a time on the wire, each app waiting its
/// turn in order.
pub struct Line {
    endpoint: Endpoint,
    connection: tokio::sync::Mutex<Option<Context>>,
    /// A request was cut off (timed out or cancelled): its answer may still
    /// come, so the next request on the line opens it anew rather than
    /// read that answer as its own (on an RTU line nothing else would tell
    /// them apart).
    stale: std::sync::atomic::AtomicBool,
}

/// One request, as the guest asked for it.
#[derive(Debug, Clone)]
enum Request {
    ReadCoils(u16, u16),
    ReadDiscreteInputs(u16, u16),
    ReadHoldingRegisters(u16, u16),
    ReadInputRegisters(u16, u16),
    WriteCoils(u16, Vec<bool>),
    WriteRegisters(u16, Vec<u16>),
}

/// What a request returned.
enum Answer {
    Bits(Vec<bool>),
    Words(Vec<u16>),
    Written,
}

impl Request {
    fn check(&self) -> Result<(), String> {
        let (what, count, max) = match self {
            Request::ReadCoils(_, n) => ("coils", usize::from(*n), usize::from(MAX_READ_BITS)),
            Request::ReadDiscreteInputs(_, n) => (
                "discrete inputs",
                usize::from(*n),
                usize::from(MAX_READ_BITS),
            ),
            Request::ReadHoldingRegisters(_, n) => (
                "holding registers",
                usize::from(*n),
                usize::from(MAX_READ_REGISTERS),
            ),
            Request::ReadInputRegisters(_, n) => (
                "input registers",
                usize::from(*n),
                usize::from(MAX_READ_REGISTERS),
            ),
            Request::WriteCoils(_, v) => ("coils written", v.len(), MAX_WRITE_BITS),
            Request::WriteRegisters(_, v) => ("registers written", v.len(), MAX_WRITE_REGISTERS),
        };
        if count == 0 || count > max {
            return Err(format!("{count} {what}: a request takes 1 to {max}"));
        }
        let (address, count) = match self {
            Request::ReadCoils(a, n)
            | Request::ReadDiscreteInputs(a, n)
            | Request::ReadHoldingRegisters(a, n)
            | Request::ReadInputRegisters(a, n) => (*a, usize::from(*n)),
            Request::WriteCoils(a, v) => (*a, v.len()),
            Request::WriteRegisters(a, v) => (*a, v.len()),
        };
        if usize::from(address) + count > 65_536 {
            return Err(format!(
                "{count} {what} from address {address} run past the last address, 65535"
            ));
        }
        Ok(())
    }

    async fn send(&self, context: &mut Context) -> tokio_modbus::Result<Answer> {
        Ok(match self {
            Request::ReadCoils(a, n) => context.read_coils(*a, *n).await?.map(Answer::Bits),
            Request::ReadDiscreteInputs(a, n) => context
                .read_discrete_inputs(*a, *n)
                .await?
                .map(Answer::Bits),
            Request::ReadHoldingRegisters(a, n) => context
                .read_holding_registers(*a, *n)
                .await?
                .map(Answer::Words),
            Request::ReadInputRegisters(a, n) => context
                .read_input_registers(*a, *n)
                .await?
                .map(Answer::Words),
            Request::WriteCoils(a, v) if v.len() == 1 => context
                .write_single_coil(*a, v[0])
                .await?
                .map(|()| Answer::Written),
            Request::WriteCoils(a, v) => context
                .write_multiple_coils(*a, v)
                .await?
                .map(|()| Answer::Written),
            Request::WriteRegisters(a, v) if v.len() == 1 => context
                .write_single_register(*a, v[0])
                .await?
                .map(|()| Answer::Written),
            Request::WriteRegisters(a, v) => context
                .write_multiple_registers(*a, v)
                .await?
                .map(|()| Answer::Written),
        })
    }
}

impl Line {
    /// Send `request` to `unit`, connecting first if need be, all within
    /// `limit` on the instance's I/O clock. A transport error drops the
    /// connection; a request cut off by a timeout or a cancel leaves the
    /// line stale, so the next request reopens it.
    async fn request(
        &self,
        unit: u8,
        request: &Request,
        limit: Duration,
        io: &IoClock,
    ) -> Result<Answer, IoError> {
        let endpoint = &self.endpoint;
        let done = io
            .wait(limit, async {
                // Waiting for the line (other apps' requests) is I/O time too.
                let mut connection = self.connection.lock().await;
                if self.stale.swap(false, Ordering::Relaxed) {
                    *connection = None;
                }
                if connection.is_none() {
                    *connection = Some(connect(endpoint).await?);
                }
                let Some(context) = connection.as_mut() else {
                    return Err(IoError::Closed(format!("{endpoint}: not connected")));
                };
                context.set_slave(Slave(unit));
                // Dropped before the line's guard (declared after it) if the
                // wait is cut off mid-request: the line is stale before the
                // next request can take it.
                let mut in_flight = InFlight(&self.stale, true);
                let sent = request.send(context).await;
                in_flight.1 = false;
                match sent {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(code)) => Err(IoError::Exception(exception(code))),
                    Err(e) => {
                        *connection = None;
                        Err(IoError::Closed(format!("{endpoint}: {e}")))
                    }
                }
            })
            .await;
        done.unwrap_or_else(|cut| Err(cut.io_error(&format!("{endpoint} unit {unit}"), limit)))
    }
}

/// Marks its line stale when dropped with a request still in flight: that
/// request's answer may yet come, and must not be read as another's.
struct InFlight<'a>(&'a std::sync::atomic::AtomicBool, bool);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

async fn connect(endpoint: &Endpoint) -> Result<Context, IoError> {
    let closed = |e: std::io::Error| IoError::Closed(format!("{endpoint}: cannot connect: {e}"));
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let address = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(closed)?
                .next()
                .ok_or_else(|| IoError::Closed(format!("{endpoint}: {host} has no address")))?;
            tokio_modbus::client::tcp::connect(address)
                .await
                .map_err(closed)
        }
        Endpoint::Rtu {
            path,
            baud,
            parity,
            stop_bits,
        } => {
            let port = crate::serial::open_line(path, *baud, *parity, *stop_bits)
                .map_err(|e| IoError::Closed(format!("{endpoint}: cannot open the line: {e}")))?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

fn exception(code: tokio_modbus::ExceptionCode) -> ModbusException {
    ModbusException {
        code: u8::from(code),
        name: format!("{code}"),
    }
}

/// Per-app state of the modbus interface.
pub struct ModbusCtx {
    app: Arc<str>,
    grants: ModbusRules,
    allow: Arc<ModbusRules>,
    pool: Arc<Pool>,
    io: Arc<IoClock>,
    rate: SharedLimit,
    counters: Arc<IoCounters>,
}

impl ModbusCtx {
    /// Check, then send. Every refusal is counted and named.
    async fn call(&mut self, target: Target, request: Request) -> Result<Answer, IoError> {
        self.counters.begin();
        let answer = self.checked(target, request).await;
        self.counters.ended(answer)
    }

    async fn checked(&mut self, target: Target, request: Request) -> Result<Answer, IoError> {
        let endpoint = Endpoint::parse(&target.endpoint).map_err(IoError::Denied)?;
        let unit = target.unit;
        // Permission before anything else: the app's grant, and [allow]
        // (which every grant was checked against, checked again here).
        let Some(grant) = self
            .grants
            .covering(&endpoint, unit)
            .filter(|_| self.allow.covering(&endpoint, unit).is_some())
        else {
            tracing::debug!(app = %self.app, "modbus denied: {endpoint} unit {unit}");
            return Err(IoError::Denied(format!(
                "modbus {endpoint} unit {unit} is not granted to app {}",
                self.app
            )));
        };
        request.check().map_err(IoError::Invalid)?;
        let limit = crate::io_clock::request_limit(target.timeout_ms, grant.timeout_ms)?;
        crate::io_clock::admit(&self.rate, &self.io)?;
        self.pool
            .line(&endpoint)
            .request(unit, &request, limit, &self.io)
            .await
    }
}

struct ModbusData;

impl HasData for ModbusData {
    type Data<'a> = &'a mut ModbusCtx;
}

impl Capability for Modbus {
    type Ctx = ModbusCtx;
    const NAME: &'static str = "modbus";

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<ModbusCtx> {
        Ok(ModbusCtx {
            app: app.app.clone(),
            grants: ModbusRules::new(&app.config.grants.modbus),
            allow: self.allow.clone(),
            pool: self.pool.clone(),
            io: app.io.clone(),
            rate: app.rates.device_requests(app.config.io_requests_per_s),
            counters: self.counters.get(app.app),
        })
    }

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let counters = self.counters.get(app.app);
        let figure = Figure::counter;
        vec![
            figure("requests", "Modbus requests the app made.", &counters.calls),
            figure(
                "denied",
                "Modbus requests refused: not granted to the app.",
                &counters.denied,
            ),
            figure(
                "timeouts",
                "Modbus requests the device did not answer in time.",
                &counters.timeouts,
            ),
            figure(
                "failures",
                "Modbus requests whose connection failed or closed.",
                &counters.failures,
            ),
        ]
    }

    fn add_to_linker<T: HasCtx<Modbus>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, ModbusData>(linker, T::ctx)
    }
}

impl Host for ModbusCtx {
    async fn read_coils(
        &mut self,
        target: Target,
        address: u16,
        count: u16,
    ) -> wasmtime::Result<Result<Vec<bool>, IoError>> {
        Ok(self
            .call(target, Request::ReadCoils(address, count))
            .await
            .map(bits))
    }

    async fn read_discrete_inputs(
        &mut self,
        target: Target,
        address: u16,
        count: u16,
    ) -> wasmtime::Result<Result<Vec<bool>, IoError>> {
        Ok(self
            .call(target, Request::ReadDiscreteInputs(address, count))
            .await
            .map(bits))
    }

    async fn read_holding_registers(
        &mut self,
        target: Target,
        address: u16,
        count: u16,
    ) -> wasmtime::Result<Result<Vec<u16>, IoError>> {
        Ok(self
            .call(target, Request::ReadHoldingRegisters(address, count))
            .await
            .map(words))
    }

    async fn read_input_registers(
        &mut self,
        target: Target,
        address: u16,
        count: u16,
    ) -> wasmtime::Result<Result<Vec<u16>, IoError>> {
        Ok(self
            .call(target, Request::ReadInputRegisters(address, count))
            .await
            .map(words))
    }

    async fn write_coils(
        &mut self,
        target: Target,
        address: u16,
        values: Vec<bool>,
    ) -> wasmtime::Result<Result<(), IoError>> {
        Ok(self
            .call(target, Request::WriteCoils(address, values))
            .await
            .map(|_| ()))
    }

    async fn write_registers(
        &mut self,
        target: Target,
        address: u16,
        values: Vec<u16>,
    ) -> wasmtime::Result<Result<(), IoError>> {
        Ok(self
            .call(target, Request::WriteRegisters(address, values))
            .await
            .map(|_| ()))
    }
}

fn bits(answer: Answer) -> Vec<bool> {
    match answer {
        Answer::Bits(bits) => bits,
        _ => Vec::new(),
    }
}

fn words(answer: Answer) -> Vec<u16> {
    match answer {
        Answer::Words(words) => words,
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_cut_off_mid_flight_leaves_its_line_stale() {
        let stale = std::sync::atomic::AtomicBool::new(false);
        drop(InFlight(&stale, false));
        assert!(!stale.load(Ordering::Relaxed), "answered: the line is fine");
        drop(InFlight(&stale, true));
        assert!(stale.load(Ordering::Relaxed), "cut off: reopen it");
    }

    #[test]
    fn requests_outside_the_protocols_limits_are_invalid() {
        assert!(Request::ReadHoldingRegisters(0, 125).check().is_ok());
        assert_eq!(
            Request::ReadHoldingRegisters(0, 126).check(),
            Err("126 holding registers: a request takes 1 to 125".into())
        );
        assert!(Request::ReadCoils(0, 0).check().is_err());
        assert!(Request::WriteRegisters(0, vec![1; 124]).check().is_err());
        assert!(Request::WriteCoils(65_535, vec![true]).check().is_ok());
        assert_eq!(
            Request::ReadInputRegisters(65_530, 10).check(),
            Err("10 input registers from address 65530 run past the last address, 65535".into())
        );
    }
}
