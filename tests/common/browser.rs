//! A headless Chromium (Debian's) driven through tests/browser/driver.mjs
//! (playwright-core): the test says what a person would do at the page and
//! waits on what the page shows. `cargo xtask setup` installs chromium and
//! the driver's npm packages.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

pub struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Browser {
    pub fn start() -> Browser {
        let dir = super::root().join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "tests/browser/node_modules is missing: run `cargo xtask setup` (npm ci there)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs tests/browser/driver.mjs");
        let commands = child.stdin.take().expect("stdin");
        let answers = BufReader::new(child.stdout.take().expect("stdout"));
        Browser {
            child,
            commands,
            answers,
        }
    }

    /// Send one command; its value, or a panic with what the page showed.
    fn run(&mut self, command: Value) -> Value {
        writeln!(self.commands, "{command}").expect("the driver takes a command");
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .expect("the driver answers");
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the driver's answer {line:?} to {command}: {e}"));
        if answer["ok"] != true {
            panic!(
                "browser: {command} failed: {}",
                answer["error"].as_str().unwrap_or("(no reason)")
            );
        }
        answer["value"].clone()
    }

    pub fn goto(&mut self, url: &str) {
        self.run(json!({"op": "goto", "url": url}));
    }

    /// Wait until an element matching `selector` contains `text`.
    pub fn wait_text(&mut self, selector: &str, text: &str, timeout: Duration) {
        self.run(json!({
            "op": "wait_text",
            "selector": selector,
            "text": text,
            "timeout_ms": timeout.as_millis() as u64,
        }));
    }

    pub fn text(&mut self, selector: &str) -> String {
        self.run(json!({"op": "text", "selector": selector}))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn fill(&mut self, selector: &str, value: &str) {
        self.run(json!({"op": "fill", "selector": selector, "value": value}));
    }

    pub fn click(&mut self, selector: &str) {
        self.run(json!({"op": "click", "selector": selector}));
    }

    /// Run `function` (JavaScript, `() => ...`) in the page; its result.
    pub fn eval(&mut self, function: &str) -> Value {
        self.run(json!({"op": "eval", "js": function}))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closed by the driver so that Chromium goes with it; killed if
        // it does not answer.
        let _ = writeln!(self.commands, "{}", json!({"op": "close"}));
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
