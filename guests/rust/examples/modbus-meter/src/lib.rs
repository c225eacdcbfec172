//! The modbus-meter example app (examples/modbus-meter): an energy meter on
//! Modbus TCP, polled every tick into the `energy` series and reported as
//! the twin; a desired `power_limit` is written to the meter.
//!
//! The meter's registers (see the example's README):
//!
//! | input registers | what |
//! |---|---|
//! | 0 | voltage, raw (unsigned) |
//! | 1 | the voltage's scale factor: a signed power of ten (-1: tenths) |
//! | 2, 3 | active power, W, a signed 32-bit value |
//! | 4, 5 | energy, Wh, an unsigned 32-bit value |
//!
//! Holding register 10 is the power limit, in % of the rated power. The
//! 32-bit values span two registers in the order the config's `word_order`
//! says (`high-first`, the default, or `low-first`). The Go build
//! (guests/go/modbusmeter) does the same, value for value.

use wasmgate_guest::modbus::{self, Registers, Unit, WordOrder, scaled};
use wasmgate_guest::{App, Config, Fields, Timestamp, Value, field, info, this_device, warn};

const POWER_LIMIT_REGISTER: u16 = 10;

struct Meter {
    unit: Unit,
    order: WordOrder,
}

/// One reading of the meter.
struct Reading {
    voltage: f64,
    power: i32,
    energy_kwh: f64,
}

impl Meter {
    fn read(&self) -> Result<Reading, modbus::IoError> {
        let words = self.unit.read(Registers::Input, 0, 2)?;
        let (raw, exponent) = match words[..] {
            [raw, exponent] => (raw, exponent as i16),
            _ => return Err(modbus::IoError::Closed("a short answer".into())),
        };
        let power = self.unit.read_i32(Registers::Input, 2, self.order)?;
        let energy_wh = self.unit.read_u32(Registers::Input, 4, self.order)?;
        Ok(Reading {
            voltage: scaled(i64::from(raw), i32::from(exponent)),
            power,
            energy_kwh: f64::from(energy_wh) / 1000.0,
        })
    }
}

impl App for Meter {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let endpoint = config
            .get("endpoint")
            .ok_or("config key endpoint: the meter's tcp://host:port is needed")?;
        let unit: u8 = config.parse_or("unit", 1)?;
        let order = match config.get("word_order").unwrap_or("high-first") {
            "high-first" => WordOrder::HighFirst,
            "low-first" => WordOrder::LowFirst,
            other => {
                return Err(format!(
                    "config key word_order: {other:?} is not high-first or low-first"
                ));
            }
        };
        info!("meter at {endpoint} unit {unit}, 32-bit values {order:?}");
        Ok(Meter {
            unit: Unit::new(endpoint, unit),
            order,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let device = this_device();
        let reading = match self.read() {
            Ok(reading) => reading,
            Err(e) => {
                // Nothing recorded this tick; the next read reconnects.
                warn!("meter read failed ({}): {e:?}", modbus::kind(&e));
                return;
            }
        };
        let values = [
            field("voltage", reading.voltage),
            field("power", i64::from(reading.power)),
            field("energy_kwh", reading.energy_kwh),
        ];
        if let Err(e) = device.record("energy", None, &values) {
            warn!("record refused: {}: {}", e.kind(), e.message());
        }
        if let Err(e) = device.report(&values) {
            warn!("report refused: {}: {}", e.kind(), e.message());
        }
    }

    fn on_desired(&mut self, _device: String, changes: Fields) -> Result<(), String> {
        for (name, value) in &changes {
            match (name.as_str(), value) {
                ("power_limit", Value::Integer(percent)) => {
                    let percent = u16::try_from(*percent).map_err(|e| e.to_string())?;
                    self.unit
                        .write_register(POWER_LIMIT_REGISTER, percent)
                        .map_err(|e| {
                            format!("the meter refused it ({}): {e:?}", modbus::kind(&e))
                        })?;
                    info!("power limit set to {percent} %");
                }
                _ => return Err(format!("cannot apply {name}")),
            }
        }
        this_device()
            .report(&changes)
            .map_err(|e| format!("report: {}", e.message()))
    }
}

wasmgate_guest::app!(Meter);
