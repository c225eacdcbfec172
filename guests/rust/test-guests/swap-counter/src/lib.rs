//! Test guest for deployments: numbers every event it handles (`n`) and
//! records it in the `events` series with what the event carried: an
//! action's argument (`i`) or a desired `level` (`d`). `save` hands the next
//! number to the next version, so across a hot swap the numbers go on
//! without a gap or a repeat if no event is lost or handled twice.
//!
//! Config: `generation` (a label it logs and returns), `fail_init = true`
//! (init refuses), `trap_after = N` (the Nth tick after init traps).

use wasmgate_guest::{App, Config, Fields, Timestamp, Value, field, info, storage, this_device};

struct SwapCounter {
    generation: String,
    next: i64,
    ticks: i64,
    trap_after: i64,
}

impl SwapCounter {
    fn event(&mut self, values: &[(String, Value)]) -> i64 {
        let n = self.next;
        self.next += 1;
        let _ = storage::set("next", &self.next.to_le_bytes());
        let mut point = vec![field("n", n)];
        point.extend(values.iter().cloned());
        let _ = this_device().record("events", None, &point);
        n
    }
}

impl App for SwapCounter {
    fn init(config: Config, previous: Option<Vec<u8>>) -> Result<Self, String> {
        let generation = config.get("generation").unwrap_or("1").to_string();
        if config.get("fail_init") == Some("true") {
            return Err(format!(
                "generation {generation} refuses to start, as asked"
            ));
        }
        let handed = previous
            .as_deref()
            .and_then(|p| <[u8; 8]>::try_from(p).ok());
        let stored = storage::get("next")
            .ok()
            .flatten()
            .and_then(|p| <[u8; 8]>::try_from(p.as_slice()).ok());
        let next = handed.or(stored).map(i64::from_le_bytes).unwrap_or(1);
        info!(
            "swap-counter generation {generation} started, handed over {}, next {next}",
            handed.is_some()
        );
        Ok(SwapCounter {
            generation,
            next,
            ticks: 0,
            trap_after: config.parse_or("trap_after", 0)?,
        })
    }

    fn save(&mut self) -> Option<Vec<u8>> {
        info!("generation {} saves next {}", self.generation, self.next);
        Some(self.next.to_le_bytes().to_vec())
    }

    fn on_tick(&mut self, _now: Timestamp) {
        self.ticks += 1;
        if self.trap_after > 0 && self.ticks >= self.trap_after {
            panic!(
                "generation {} traps after {} ticks, as asked",
                self.generation, self.ticks
            );
        }
    }

    fn on_desired(&mut self, _device: String, changes: Fields) -> Result<(), String> {
        for (name, value) in changes {
            if let (true, Value::Integer(level)) = (name == "level", &value) {
                self.event(&[field("d", *level)]);
            }
        }
        Ok(())
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        match (name.as_str(), argument) {
            ("seq", Some(Value::Integer(i))) => {
                let n = self.event(&[field("i", i)]);
                Ok(Some(Value::Text(format!("{}:{n}", self.generation))))
            }
            (other, _) => Err(format!("no action {other}")),
        }
    }
}

wasmgate_guest::app!(SwapCounter);
