//! The vacuum-cleaner example (examples/vacuum), after the cloud.iO endpoint
//! library's test connector: a device made of nested objects (the robot's
//! battery, motor, brushes, position and status), each object's attributes
//! mapped onto flat attribute names with dots — `battery.level`,
//! `brushes.main.rpm`, `status.mode` — that the device model declares one by
//! one, so every value is still checked and typed.
//!
//! The cloud sets `status.mode` (`clean`, `pause`, `dock`) through the twin
//! and calls `locate` (returns the position) and `empty-bin`. Cleaning
//! drains the battery and fills the bin; docking charges it.

use wasmgate_guest::{App, Config, Fields, Timestamp, Value, info, warn};

/// One object of the robot: attribute names under a common prefix.
trait Object {
    const PREFIX: &'static str;
    fn attributes(&self) -> Vec<(&'static str, Value)>;
}

struct Battery {
    level: f64,
    charging: bool,
}

impl Object for Battery {
    const PREFIX: &'static str = "battery";
    fn attributes(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("level", Value::Number(self.level)),
            ("charging", Value::Boolean(self.charging)),
        ]
    }
}

struct Brushes {
    main_rpm: i64,
    side_rpm: i64,
}

impl Object for Brushes {
    const PREFIX: &'static str = "brushes";
    fn attributes(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("main.rpm", Value::Integer(self.main_rpm)),
            ("side.rpm", Value::Integer(self.side_rpm)),
        ]
    }
}

struct Position {
    x: f64,
    y: f64,
    heading: f64,
}

impl Object for Position {
    const PREFIX: &'static str = "position";
    fn attributes(&self) -> Vec<(&'static str, Value)> {
        vec![("x", Value::Number(self.x)), ("y", Value::Number(self.y))]
    }
}

struct Status {
    mode: String,
    bin_percent: f64,
}

impl Object for Status {
    const PREFIX: &'static str = "status";
    fn attributes(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("mode", Value::Text(self.mode.clone())),
            ("bin", Value::Number(self.bin_percent)),
        ]
    }
}

/// `prefix.name` for each of an object's attributes.
fn flatten<O: Object>(object: &O, into: &mut Fields) {
    for (name, value) in object.attributes() {
        into.push((format!("{}.{name}", O::PREFIX), value));
    }
}

struct Vacuum {
    battery: Battery,
    brushes: Brushes,
    position: Position,
    status: Status,
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Vacuum {
    fn step(&mut self) {
        match self.status.mode.as_str() {
            "clean" => {
                self.battery.charging = false;
                self.battery.level = (self.battery.level - 0.5).max(0.0);
                self.brushes.main_rpm = 1500;
                self.brushes.side_rpm = 800;
                self.status.bin_percent = (self.status.bin_percent + 1.0).min(100.0);
                self.position.heading += 0.3;
                self.position.x = round(self.position.x + self.position.heading.cos() * 0.2);
                self.position.y = round(self.position.y + self.position.heading.sin() * 0.2);
                if self.battery.level <= 10.0 || self.status.bin_percent >= 100.0 {
                    info!("going back to the dock");
                    self.status.mode = "dock".into();
                }
            }
            "dock" => {
                self.brushes.main_rpm = 0;
                self.brushes.side_rpm = 0;
                self.position.x = round(self.position.x * 0.5);
                self.position.y = round(self.position.y * 0.5);
                self.battery.charging = true;
                self.battery.level = (self.battery.level + 2.0).min(100.0);
            }
            _ => {
                self.brushes.main_rpm = 0;
                self.brushes.side_rpm = 0;
                self.battery.charging = false;
            }
        }
    }

    fn attributes(&self) -> Fields {
        let mut fields = Vec::new();
        flatten(&self.battery, &mut fields);
        flatten(&self.brushes, &mut fields);
        flatten(&self.position, &mut fields);
        flatten(&self.status, &mut fields);
        fields
    }
}

impl App for Vacuum {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let device = wasmgate_guest::this_device();
        let mode = match device.desired("status.mode") {
            Some(Value::Text(mode)) => mode,
            _ => "dock".to_string(),
        };
        let vacuum = Vacuum {
            battery: Battery {
                level: config.parse_or("battery", 80.0)?,
                charging: false,
            },
            brushes: Brushes {
                main_rpm: 0,
                side_rpm: 0,
            },
            position: Position {
                x: 0.0,
                y: 0.0,
                heading: 0.0,
            },
            status: Status {
                mode,
                bin_percent: 0.0,
            },
        };
        info!("vacuum ready: mode {}", vacuum.status.mode);
        Ok(vacuum)
    }

    fn on_tick(&mut self, _now: Timestamp) {
        self.step();
        let attributes = self.attributes();
        if let Err(e) = wasmgate_guest::this_device().report(&attributes) {
            warn!("report refused: {}: {}", e.kind(), e.message());
        }
        info!(
            "{}: battery {:.1} %, bin {:.0} %, at ({:.2}, {:.2})",
            self.status.mode,
            self.battery.level,
            self.status.bin_percent,
            self.position.x,
            self.position.y
        );
    }

    fn on_desired(&mut self, _device: String, changes: Fields) -> Result<(), String> {
        for (name, value) in changes {
            match (name.as_str(), value) {
                ("status.mode", Value::Text(mode)) => {
                    if !matches!(mode.as_str(), "clean" | "pause" | "dock") {
                        return Err(format!("unknown mode {mode:?} (clean, pause or dock)"));
                    }
                    info!("mode {} -> {mode}", self.status.mode);
                    self.status.mode = mode;
                }
                (other, _) => return Err(format!("{other} cannot be set")),
            }
        }
        Ok(())
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        _argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        match name.as_str() {
            "locate" => Ok(Some(Value::Text(format!(
                "{:.2},{:.2}",
                self.position.x, self.position.y
            )))),
            "empty-bin" => {
                let before = self.status.bin_percent;
                self.status.bin_percent = 0.0;
                info!("bin emptied ({before:.0} % full)");
                Ok(Some(Value::Number(before)))
            }
            other => Err(format!("unknown action {other}")),
        }
    }
}

wasmgate_guest::app!(Vacuum);
