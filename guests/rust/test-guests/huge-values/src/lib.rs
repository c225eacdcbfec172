//! Test guest: hands the host values of `size_mib` MiB (default 100): a log
//! line, a reported text, a recorded point, a storage value; and returns a
//! result that large from its `echo` action and from `save`. Logs what the
//! host answered.

use wasmgate_guest::{
    App, Config, Level, Timestamp, Value, field, info, log, storage, this_device,
};

struct HugeValues {
    size: usize,
    done: bool,
}

impl App for HugeValues {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        Ok(HugeValues {
            size: config.parse_or("size_mib", 100usize)? << 20,
            done: false,
        })
    }

    fn save(&mut self) -> Option<Vec<u8>> {
        Some(vec![1u8; self.size])
    }

    fn on_tick(&mut self, _now: Timestamp) {
        if self.done {
            return;
        }
        self.done = true;
        let big = "x".repeat(self.size);
        log(Level::Info, &big);
        let device = this_device();
        let report = device.report(&[field("label", big.as_str())]);
        let record = device.record(
            "blobs",
            None,
            &[field("blob", Value::Bytes(vec![7u8; self.size]))],
        );
        let set = storage::set("big", big.as_bytes());
        let key = storage::set(&big, b"v");
        drop(big);
        let show = |r: Result<(), wasmgate_guest::Error>| match r {
            Ok(()) => "accepted".to_string(),
            Err(e) => format!("{}: {}", e.kind(), e.message()),
        };
        info!(
            "huge: report {}; record {}; storage value {}; storage key {}",
            show(report),
            show(record),
            show(set),
            show(key)
        );
    }

    fn on_action(
        &mut self,
        _device: String,
        _name: String,
        _argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        Ok(Some(Value::Text("y".repeat(self.size))))
    }
}

wasmgate_guest::app!(HugeValues);
