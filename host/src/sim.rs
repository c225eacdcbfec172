//! A Modbus TCP device to develop against: a room with a heater, served by
//! tokio-modbus's TCP server. The demo runs it in-process (`[simulator]` in
//! gateway.toml); `wasmgate sim modbus` runs it on its own.
//!
//! Its registers, on any unit id:
//!
//! | what | kind | address | value |
//! |---|---|---|---|
//! | temperature | input register | 0 | tenths of a °C, signed (215 is 21.5 °C) |
//! | humidity | input register | 1 | tenths of a % |
//! | heating | coil | 0 | on or off; the app switches it |
//!
//! Every second the room warms by 0.3 °C while the heating is on and cools
//! by 0.15 °C while it is off (between 5 and 35 °C). Anything else it is
//! asked is answered with a Modbus exception, as a real device would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

/// Input register of the temperature, in tenths of a °C.
pub const TEMPERATURE_REGISTER: u16 = 0;
/// Input register of the relative humidity, in tenths of a %.
pub const HUMIDITY_REGISTER: u16 = 1;
/// Coil of the heating.
pub const HEATING_COIL: u16 = 0;

/// The simulated room.
#[derive(Debug, Clone)]
pub struct Room {
    pub temperature: f64,
    pub heating: bool,
    step: u64,
}

impl Room {
    pub fn new(temperature: f64) -> Room {
        Room {
            temperature,
            heating: false,
            step: 0,
        }
    }

    /// One second passes.
    pub fn advance(&mut self) {
        self.step += 1;
        let change = if self.heating { 0.3 } else { -0.15 };
        self.temperature = (self.temperature + change).clamp(5.0, 35.0);
    }

    fn humidity(&self) -> f64 {
        45.0 + 8.0 * (self.step as f64 / 10.0).sin()
    }

    /// The two input registers, as the device encodes them.
    fn input_registers(&self) -> [u16; 2] {
        let tenths = |x: f64| (x * 10.0).round() as i16 as u16;
        [tenths(self.temperature), tenths(self.humidity())]
    }

    /// Answer one request.
    pub fn answer(&mut self, request: Request<'_>) -> Result<Response, ExceptionCode> {
        match request {
            Request::ReadInputRegisters(address, count) => {
                let registers = self.input_registers();
                let range = usize::from(address)..usize::from(address) + usize::from(count);
                registers
                    .get(range)
                    .map(|words| Response::ReadInputRegisters(words.to_vec()))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            Request::ReadCoils(HEATING_COIL, 1) => Ok(Response::ReadCoils(vec![self.heating])),
            Request::WriteSingleCoil(HEATING_COIL, on) => {
                self.heating = on;
                Ok(Response::WriteSingleCoil(HEATING_COIL, on))
            }
            Request::WriteMultipleCoils(HEATING_COIL, ref values) if values.len() == 1 => {
                self.heating = values[0];
                Ok(Response::WriteMultipleCoils(HEATING_COIL, 1))
            }
            Request::ReadCoils(..)
            | Request::WriteSingleCoil(..)
            | Request::WriteMultipleCoils(..)
            | Request::ReadHoldingRegisters(..)
            | Request::WriteSingleRegister(..)
            | Request::WriteMultipleRegisters(..)
            | Request::ReadDiscreteInputs(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// The room behind tokio-modbus's server.
#[derive(Clone)]
struct RoomService(Arc<Mutex<Room>>);

impl tokio_modbus::server::Service for RoomService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let mut room = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::future::ready(room.answer(request))
    }
}

/// The simulator, bound to its address and ready to serve.
pub struct Simulator {
    listener: tokio::net::TcpListener,
    room: Arc<Mutex<Room>>,
}

impl Simulator {
    /// Bind `listen` (loopback only), so that a taken port is an error at
    /// start, before any app polls the device.
    pub async fn bind(listen: SocketAddr, start_temperature: f64) -> anyhow::Result<Simulator> {
        if !listen.ip().is_loopback() {
            anyhow::bail!(
                "{listen} is not a loopback address: the simulator is for this machine only"
            );
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("the Modbus simulator cannot listen on {listen}: {e}"))?;
        tracing::info!(
            "Modbus simulator (a room with a heater) on tcp://{listen}: input registers 0 (°C × 10) and 1 (% rh × 10), coil 0 (heating)"
        );
        Ok(Simulator {
            listener,
            room: Arc::new(Mutex::new(Room::new(start_temperature))),
        })
    }

    /// Serve until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let physics = {
            let room = self.room.clone();
            let cancel = cancel.clone();
            async move {
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = every_second.tick() => {
                            room.lock().unwrap_or_else(|e| e.into_inner()).advance();
                        }
                    }
                }
            }
        };
        let service = RoomService(self.room);
        let on_connected = |stream, address| {
            let service = service.clone();
            async move { accept_tcp_connection(stream, address, |_| Ok(Some(service.clone()))) }
        };
        let on_error = |e| tracing::debug!("Modbus simulator: a connection failed: {e}");
        let server = Server::new(self.listener).serve_until(
            &on_connected,
            on_error,
            cancel.cancelled_owned(),
        );
        let (served, ()) = tokio::join!(server, physics);
        served.map(|_| ()).map_err(anyhow::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_warms_while_heated_and_answers_like_a_device() {
        let mut room = Room::new(20.0);
        assert_eq!(
            room.answer(Request::ReadInputRegisters(0, 1)),
            Ok(Response::ReadInputRegisters(vec![200]))
        );
        assert_eq!(
            room.answer(Request::WriteSingleCoil(HEATING_COIL, true)),
            Ok(Response::WriteSingleCoil(HEATING_COIL, true))
        );
        room.advance();
        room.advance();
        assert_eq!(
            room.answer(Request::ReadInputRegisters(TEMPERATURE_REGISTER, 1)),
            Ok(Response::ReadInputRegisters(vec![206]))
        );
        // Below zero, the register is two's complement.
        let cold = Room::new(-1.5);
        assert_eq!(cold.input_registers()[0], (-15_i16) as u16);
        // What it does not have is an exception.
        assert_eq!(
            room.answer(Request::ReadInputRegisters(1, 5)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            room.answer(Request::ReadHoldingRegisters(0, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }
}
