//! Test guest: the local MQTT bus through the host's `bus` interface.
//!
//! - In `init` it subscribes to each filter of its config's `subscribe`
//!   (comma-separated) and reports how that went as `subscribed` (`ok`, or
//!   the first error).
//! - Each message counts; each tick reports the count as `received` and the
//!   last message as `last` (`TOPIC PAYLOAD`).
//! - With `slow_ms = N`, each message takes N ms of the guest's own time:
//!   an app that cannot keep up with what it subscribed to.
//! - With `echo_to = TOPIC`, each message is published again there.
//! - The action `call` runs `publish TOPIC TEXT`, `subscribe FILTER` or
//!   `unsubscribe FILTER`, answering `ok` or the error (`denied: ...`).

use wasmgate_guest::modbus::kind;
use wasmgate_guest::{App, Config, Timestamp, Value, bus, this_device};

struct Probe {
    received: i64,
    last: String,
    slow: std::time::Duration,
    echo_to: Option<String>,
    subscribed: String,
    reported: Option<i64>,
}

fn answer(outcome: Result<(), bus::IoError>) -> String {
    match outcome {
        Ok(()) => "ok".into(),
        Err(
            ref e @ (bus::IoError::Denied(ref m)
            | bus::IoError::Invalid(ref m)
            | bus::IoError::Limit(ref m)
            | bus::IoError::Timeout(ref m)
            | bus::IoError::Closed(ref m)),
        ) => format!("{}: {m}", kind(e)),
        Err(e) => format!("{e:?}"),
    }
}

impl App for Probe {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let subscribed = config
            .get("subscribe")
            .unwrap_or("")
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|filter| answer(bus::subscribe(filter)))
            .find(|outcome| outcome != "ok")
            .unwrap_or_else(|| "ok".into());
        Ok(Probe {
            received: 0,
            last: String::new(),
            slow: std::time::Duration::from_millis(
                config
                    .get("slow_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
            echo_to: config.get("echo_to").map(str::to_string),
            subscribed,
            reported: None,
        })
    }

    fn on_message(&mut self, topic: String, payload: Vec<u8>) {
        let started = std::time::Instant::now();
        self.received += 1;
        self.last = format!("{topic} {}", String::from_utf8_lossy(&payload));
        if let Some(to) = &self.echo_to {
            let _ = bus::publish(to, &payload, false);
        }
        while started.elapsed() < self.slow {
            std::hint::spin_loop();
        }
    }

    fn on_tick(&mut self, _now: Timestamp) {
        if self.reported == Some(self.received) {
            return;
        }
        self.reported = Some(self.received);
        let _ = this_device().report(&[
            ("received".to_string(), Value::Integer(self.received)),
            ("last".to_string(), Value::Text(self.last.clone())),
            (
                "subscribed".to_string(),
                Value::Text(self.subscribed.clone()),
            ),
        ]);
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        let Some(Value::Text(text)) = argument else {
            return Err(format!("no such action {name}"));
        };
        let (op, rest) = text.split_once(' ').unwrap_or((&text, ""));
        let outcome = match op {
            "publish" => {
                let (topic, message) = rest.split_once(' ').unwrap_or((rest, ""));
                bus::publish(topic, message.as_bytes(), false)
            }
            "subscribe" => bus::subscribe(rest),
            "unsubscribe" => bus::unsubscribe(rest),
            other => return Err(format!("no such op {other}")),
        };
        Ok(Some(Value::Text(answer(outcome))))
    }
}

wasmgate_guest::app!(Probe);
