//! Modbus on the endpoints and unit ids the app was granted.
//!
//! ```ignore
//! use wasmgate_guest::modbus::{Unit, WordOrder};
//!
//! let meter = Unit::new("tcp://10.0.0.5:502", 1).timeout_ms(500);
//! let power = meter.read_f32(InputRegisters, 12, WordOrder::HighFirst)?;
//! meter.write_register(40, 1)?;
//! ```
//!
//! Every call returns an [`IoError`] the app can act on: `denied` (not
//! granted: a configuration error), `timeout` and `closed` (the device is
//! away; the next call connects again), `exception` (the device refused the
//! request), `invalid` and `limit`.

pub use crate::bindings::wasmgate::device::modbus::{
    Target, read_coils, read_discrete_inputs, read_holding_registers, read_input_registers,
    write_coils, write_registers,
};
pub use crate::bindings::wasmgate::device::types::{IoError, ModbusException};

/// What kind of failure an [`IoError`] is, as a word (`"timeout"`, ...).
pub fn kind(error: &IoError) -> &'static str {
    match error {
        IoError::Denied(_) => "denied",
        IoError::Invalid(_) => "invalid",
        IoError::Limit(_) => "limit",
        IoError::Timeout(_) => "timeout",
        IoError::Closed(_) => "closed",
        IoError::Exception(_) => "exception",
    }
}

/// Which registers a value is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registers {
    Holding,
    Input,
}

/// How a 32-bit value lies across two registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    /// The first register holds the high 16 bits (big-endian, most devices).
    HighFirst,
    /// The first register holds the low 16 bits ("word swapped").
    LowFirst,
}

/// Two registers as one 32-bit value.
pub fn u32_from(words: [u16; 2], order: WordOrder) -> u32 {
    let (high, low) = match order {
        WordOrder::HighFirst => (words[0], words[1]),
        WordOrder::LowFirst => (words[1], words[0]),
    };
    (u32::from(high) << 16) | u32::from(low)
}

/// A 32-bit value as two registers.
pub fn words_from(value: u32, order: WordOrder) -> [u16; 2] {
    let (high, low) = ((value >> 16) as u16, value as u16);
    match order {
        WordOrder::HighFirst => [high, low],
        WordOrder::LowFirst => [low, high],
    }
}

/// A register's raw value times a scale factor of `10^exponent` (SunSpec
/// style: `scaled(2301, -1)` is 230.1).
pub fn scaled(raw: i64, exponent: i32) -> f64 {
    raw as f64 * 10f64.powi(exponent)
}

/// One unit on a granted endpoint.
#[derive(Debug, Clone)]
pub struct Unit {
    target: Target,
}

impl Unit {
    /// Unit `unit` on `endpoint` (`tcp://host:port`), with the grant's
    /// timeout.
    pub fn new(endpoint: &str, unit: u8) -> Unit {
        Unit {
            target: Target {
                endpoint: endpoint.to_string(),
                unit,
                timeout_ms: None,
            },
        }
    }

    /// Wait at most `ms` for each answer.
    pub fn timeout_ms(mut self, ms: u32) -> Unit {
        self.target.timeout_ms = Some(ms);
        self
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn read_coils(&self, address: u16, count: u16) -> Result<Vec<bool>, IoError> {
        read_coils(&self.target, address, count)
    }

    pub fn read_discrete_inputs(&self, address: u16, count: u16) -> Result<Vec<bool>, IoError> {
        read_discrete_inputs(&self.target, address, count)
    }

    pub fn read_holding_registers(&self, address: u16, count: u16) -> Result<Vec<u16>, IoError> {
        read_holding_registers(&self.target, address, count)
    }

    pub fn read_input_registers(&self, address: u16, count: u16) -> Result<Vec<u16>, IoError> {
        read_input_registers(&self.target, address, count)
    }

    /// `count` registers of either kind.
    pub fn read(&self, kind: Registers, address: u16, count: u16) -> Result<Vec<u16>, IoError> {
        match kind {
            Registers::Holding => self.read_holding_registers(address, count),
            Registers::Input => self.read_input_registers(address, count),
        }
    }

    /// A 32-bit unsigned value from two registers.
    pub fn read_u32(
        &self,
        kind: Registers,
        address: u16,
        order: WordOrder,
    ) -> Result<u32, IoError> {
        let words = self.read(kind, address, 2)?;
        match words[..] {
            [a, b] => Ok(u32_from([a, b], order)),
            _ => Err(IoError::Closed(format!(
                "{} registers came back, not 2",
                words.len()
            ))),
        }
    }

    /// A 32-bit signed value from two registers.
    pub fn read_i32(
        &self,
        kind: Registers,
        address: u16,
        order: WordOrder,
    ) -> Result<i32, IoError> {
        self.read_u32(kind, address, order).map(|v| v as i32)
    }

    /// An IEEE 754 single from two registers.
    pub fn read_f32(
        &self,
        kind: Registers,
        address: u16,
        order: WordOrder,
    ) -> Result<f32, IoError> {
        self.read_u32(kind, address, order).map(f32::from_bits)
    }

    pub fn write_coil(&self, address: u16, value: bool) -> Result<(), IoError> {
        write_coils(&self.target, address, &[value])
    }

    pub fn write_coils(&self, address: u16, values: &[bool]) -> Result<(), IoError> {
        write_coils(&self.target, address, values)
    }

    pub fn write_register(&self, address: u16, value: u16) -> Result<(), IoError> {
        write_registers(&self.target, address, &[value])
    }

    pub fn write_registers(&self, address: u16, values: &[u16]) -> Result<(), IoError> {
        write_registers(&self.target, address, values)
    }

    /// A 32-bit value into two registers.
    pub fn write_u32(&self, address: u16, value: u32, order: WordOrder) -> Result<(), IoError> {
        write_registers(&self.target, address, &words_from(value, order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_two_bits_across_two_registers_in_either_order() {
        assert_eq!(
            u32_from([0x0001, 0x0002], WordOrder::HighFirst),
            0x0001_0002
        );
        assert_eq!(u32_from([0x0001, 0x0002], WordOrder::LowFirst), 0x0002_0001);
        for order in [WordOrder::HighFirst, WordOrder::LowFirst] {
            assert_eq!(u32_from(words_from(0xdead_beef, order), order), 0xdead_beef);
        }
        assert_eq!(scaled(2301, -1), 230.10000000000002);
    }
}
