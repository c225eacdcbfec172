//! A client of `serve`'s API, for the operator's commands that go through
//! `serve` (`wasmgate cloud rollout`): JSON in and out, with a bearer token
//! read from a file that must be its owner's alone.

use anyhow::Context as _;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// `server` is `serve`'s address (`http://127.0.0.1:8640`).
    pub fn new(server: &str, token_file: Option<&Path>) -> anyhow::Result<Client> {
        let token = token_file
            .map(|path| {
                crate::permissions::check_private(path, "the token file")
                    .map_err(anyhow::Error::msg)?;
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_string())
                    .with_context(|| format!("reading the token file {}", path.display()))
            })
            .transpose()?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .new_agent();
        Ok(Client {
            base: format!("{}/api/v1", server.trim_end_matches('/')),
            token,
            agent,
        })
    }

    /// `METHOD /api/v1{path}`: the status and the JSON answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "POST" => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(json) => r.send_json(json),
                    None => r.send_empty(),
                }
            }
            other => anyhow::bail!("{other} is not a method this client sends"),
        };
        let mut response =
            response.with_context(|| format!("{method} {url}: is serve running there?"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, json))
    }

    /// Like [`request`](Self::request), with an answer outside 2xx turned
    /// into the error `serve` gave.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, json) = self.request(method, path, body)?;
        if !(200..300).contains(&status) {
            let why = json["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            anyhow::bail!("serve answered {status}: {why}");
        }
        Ok(json)
    }
}
