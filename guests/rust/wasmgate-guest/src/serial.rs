//! Raw bytes on the serial ports the app was granted.
//!
//! ```ignore
//! use wasmgate_guest::serial;
//!
//! let mut port = serial::Framed::new(serial::open("/dev/ttyUSB0", 9600)?);
//! port.write(b"MEAS?\r\n")?;
//! let line = port.read_until(b'\n', 256, 500)?;
//! ```
//!
//! A port is held by one app at a time, from `open` until the [`Port`] is
//! dropped. Errors are [`IoError`]s: `denied` (not granted), `timeout`
//! (nothing came; the port stays open), `closed` (cannot be opened, in use,
//! or failed), `invalid` and `limit`. [`crate::modbus::kind`] names them.

pub use crate::bindings::wasmgate::device::serial::{Parity, Port, Settings};
pub use crate::bindings::wasmgate::device::types::IoError;

/// Open `path` at `baud`, 8 data bits, no parity, one stop bit.
pub fn open(path: &str, baud: u32) -> Result<Port, IoError> {
    Port::open(
        path,
        Settings {
            baud,
            parity: Parity::None,
            stop_bits: 1,
        },
    )
}

/// A port with a buffer, for reading lines (or any delimited frames):
/// bytes read past a delimiter are kept for the next frame, so reads go to
/// the host in chunks rather than a byte at a time (each read counts against
/// the app's device-request rate).
pub struct Framed {
    pub port: Port,
    pending: Vec<u8>,
}

impl Framed {
    pub fn new(port: Port) -> Framed {
        Framed {
            port,
            pending: Vec::new(),
        }
    }

    /// The next frame up to and including `delimiter`, or `max` bytes of
    /// one. A read that waits `timeout_ms` for nothing ends it: the timeout
    /// is returned, and what came so far stays for the next call.
    pub fn read_until(
        &mut self,
        delimiter: u8,
        max: usize,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, IoError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == delimiter) {
                return Ok(self.pending.drain(..=end).collect());
            }
            if self.pending.len() >= max {
                return Ok(self.pending.drain(..max).collect());
            }
            let more = self.port.read(4096, Some(timeout_ms))?;
            self.pending.extend(more);
        }
    }

    /// Write all of `data`.
    pub fn write(&self, data: &[u8]) -> Result<(), IoError> {
        self.port.write(data)
    }
}
