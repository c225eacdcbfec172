//! Benchmark guest: every export returns at once and calls nothing, so a
//! benchmark times only how the host gets an event to the guest and back.

use wasmgate_guest::{App, Config, Fields, Timestamp, Value};

struct Noop {
    ticks: u64,
}

impl App for Noop {
    fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        Ok(Noop { ticks: 0 })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        self.ticks += 1;
    }

    fn on_desired(&mut self, _device: String, _changes: Fields) -> Result<(), String> {
        Ok(())
    }

    fn on_action(
        &mut self,
        _device: String,
        _name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        Ok(argument)
    }
}

wasmgate_guest::app!(Noop);
