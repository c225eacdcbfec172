//! The recent log of each app, kept in memory so that `wasmgate logs APP`
//! can show it from the running gateway: a tracing layer that keeps the
//! last lines of every event that carries an `app` field.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines kept per app.
pub const LINES: usize = 1000;

static BOOK: OnceLock<Mutex<HashMap<String, VecDeque<String>>>> = OnceLock::new();

fn book() -> &'static Mutex<HashMap<String, VecDeque<String>>> {
    BOOK.get_or_init(Default::default)
}

/// The layer to install next to the log's formatter.
pub fn layer() -> LogBook {
    LogBook
}

/// The last `n` lines of `app`, oldest first.
pub fn lines(app: &str, n: usize) -> Vec<String> {
    let book = book().lock().unwrap_or_else(|e| e.into_inner());
    book.get(app)
        .map(|lines| {
            lines
                .iter()
                .skip(lines.len().saturating_sub(n))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

pub struct LogBook;

#[derive(Default)]
struct Fields {
    app: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "app" => self.app = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "app" => self.app = Some(format!("{value:?}").trim_matches('"').to_string()),
            "message" => self.message = format!("{value:?}"),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for LogBook {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(app) = fields.app else { return };
        let line = format!(
            "{} {:>5} {}{}",
            crate::value::now_ns() / 1_000_000,
            event.metadata().level(),
            fields.message,
            fields.rest
        );
        let mut book = book().lock().unwrap_or_else(|e| e.into_inner());
        let lines = book.entry(app).or_default();
        if lines.len() == LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}
