//! Test guest: one action per outcome the cloud must get an answer for.
//!
//! - `echo(text)` returns its argument; `double(number)` returns twice it;
//! - `fail` returns an error; `trap` panics; `hang` never returns;
//! - desired `mode` is accepted unless it is "refuse", and reported back
//!   as it is applied; "slow" takes a second to apply (logged as
//!   `applying slow` when it starts).

use wasmgate_guest::{App, Config, Fields, Value, info};

struct ActionBehaviours;

impl App for ActionBehaviours {
    fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        info!("action-behaviours started");
        Ok(ActionBehaviours)
    }

    fn on_desired(&mut self, device: String, changes: Fields) -> Result<(), String> {
        for (name, value) in &changes {
            if matches!(value, Value::Text(t) if t == "refuse") {
                return Err(format!("{name} = refuse is not allowed"));
            }
            if matches!(value, Value::Text(t) if t == "slow") {
                info!("applying slow");
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_secs(1) {
                    std::hint::spin_loop();
                }
            }
        }
        info!(
            "desired on {device}: {} change(s) applied: {changes:?}",
            changes.len()
        );
        wasmgate_guest::this_device()
            .report(&changes)
            .map_err(|e| format!("report: {}", e.message()))
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        info!("action {name} with {argument:?}");
        match name.as_str() {
            "echo" => Ok(argument),
            "double" => Ok(argument
                .and_then(|a| a.as_f64())
                .map(|x| Value::Number(x * 2.0))),
            "fail" => Err("failed as asked".to_string()),
            "trap" => panic!("trapped as asked"),
            "hang" => loop {
                std::hint::black_box(());
            },
            other => Err(format!("no such action {other}")),
        }
    }
}

wasmgate_guest::app!(ActionBehaviours);
