//! Action calls made through the API wait here for their responses, which
//! the ingest task hands over by request id.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

use crate::wire::protocol::ActionResponse;

/// A call: `(gateway, device, action, id)`.
type CallKey = (String, String, String, String);

type Waiting = HashMap<CallKey, oneshot::Sender<ActionResponse>>;

/// Calls waiting for their answer.
#[derive(Debug, Default)]
pub struct Answers {
    waiting: Mutex<Waiting>,
}

impl Answers {
    /// Wait for the response to request `id`; drop the receiver to stop.
    pub fn expect(
        &self,
        gateway: &str,
        device: &str,
        action: &str,
        id: &str,
    ) -> oneshot::Receiver<ActionResponse> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(key(gateway, device, action, id), tx);
        rx
    }

    /// Stop waiting for `id` (the caller gave up).
    pub fn forget(&self, gateway: &str, device: &str, action: &str, id: &str) {
        self.lock().remove(&key(gateway, device, action, id));
    }

    /// A response came: hand it to whoever waits for it (nobody may: it
    /// answers another instance's or the CLI's request).
    pub fn answer(&self, gateway: &str, device: &str, action: &str, response: ActionResponse) {
        let Some(id) = response.id.as_deref() else {
            return;
        };
        if let Some(waiter) = self.lock().remove(&key(gateway, device, action, id)) {
            let _ = waiter.send(response);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(gateway: &str, device: &str, action: &str, id: &str) -> CallKey {
    (
        gateway.to_string(),
        device.to_string(),
        action.to_string(),
        id.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_reaches_only_the_call_that_waits_for_its_id() {
        let answers = Answers::default();
        let mut mine = answers.expect("gw", "th", "reset", "a-1");
        answers.answer(
            "gw",
            "th",
            "reset",
            ActionResponse {
                id: Some("other".into()),
                result: None,
                error: None,
            },
        );
        assert!(mine.try_recv().is_err());
        answers.answer(
            "gw",
            "th",
            "reset",
            ActionResponse {
                id: Some("a-1".into()),
                result: Some(serde_json::json!(8)),
                error: None,
            },
        );
        assert_eq!(
            mine.try_recv().expect("answered").result,
            Some(serde_json::json!(8))
        );
    }
}
