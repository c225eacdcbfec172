//! The admin endpoint: a Unix socket in the data directory, readable and
//! writable by the gateway's user only, through which `wasmgate deploy`,
//! `apps`, `rollback`, `stop`, `start` and `remove` reach a running gateway.
//!
//! One JSON request per connection, one JSON line back:
//! `{"op": "deploy", "app": "...", "component": "<base64>", "model": {...}, "config": [["k", "v"]]}`,
//! `{"op": "apps"}`, `{"op": "rollback" | "stop" | "start" | "remove", "app": "..."}`
//! → `{"ok": true, "message": "...", "apps": [...]}` or `{"ok": false, "error": "..."}`.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AppReport, DeployClient, DeployRequest, MAX_ARTIFACT_BYTES};
use crate::report::{LinkInfo, Reporter};
use crate::wire::protocol::OutboxInfo;

/// The socket's name in the data directory.
pub const SOCKET: &str = "admin.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Deploy {
        app: String,
        /// The component, base64.
        component: String,
        #[serde(default)]
        model: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<Vec<(String, String)>>,
    },
    Apps,
    Logs {
        app: String,
        #[serde(default = "default_lines")]
        lines: usize,
    },
    Rollback {
        app: String,
    },
    Stop {
        app: String,
    },
    Start {
        app: String,
    },
    Remove {
        app: String,
    },
}

fn default_lines() -> usize {
    100
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<AppReport>>,
    /// With `apps`: the cloud link now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkInfo>,
    /// With `apps`: the outbox now, as the writer sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
}

/// How long a request may take to arrive, once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Listen on the socket until `cancel`. A stale socket file from a killed
/// gateway is replaced (the data directory lock says no other gateway runs).
/// Requests in progress are answered before it returns (each connection is
/// tracked, and one that sends nothing is closed after `REQUEST_TIMEOUT`).
pub async fn serve(
    path: PathBuf,
    deploy: DeployClient,
    reporter: Reporter,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    tracing::info!(socket = %path.display(), "admin endpoint ready");
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let deploy = deploy.clone();
                    let reporter = reporter.clone();
                    connections.spawn(async move {
                        match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, deploy, reporter)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!("admin request failed: {e:#}"),
                            Err(_) => tracing::warn!("admin request: nothing complete arrived within {} s", REQUEST_TIMEOUT.as_secs()),
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin on it.
                    tracing::warn!("admin endpoint: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    connections.close();
    connections.wait().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn answer(
    stream: UnixStream,
    deploy: DeployClient,
    reporter: Reporter,
) -> anyhow::Result<()> {
    // The socket file is the owner's alone; this is the second lock: a peer
    // that got in anyway (a loosened mode, a shared directory) is refused
    // before its request is read.
    if let Err(refusal) = peer_allowed(stream.peer_cred().map(|c| c.uid())) {
        tracing::warn!("admin request refused: {refusal}");
        let response = Response {
            error: Some(refusal),
            ..Response::default()
        };
        let mut out = serde_json::to_vec(&response)?;
        out.push(b'\n');
        let (_, mut write) = stream.into_split();
        write.write_all(&out).await?;
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // Base64 of the largest component, and some room for the rest.
    let limit = (MAX_ARTIFACT_BYTES / 3 * 4 + (1 << 20)) as u64;
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, limit));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response {
            error: Some(format!("malformed request: {e}")),
            ..Response::default()
        },
        Ok(request) => handle(request, &deploy, &reporter).await,
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

async fn handle(request: Request, deploy: &DeployClient, reporter: &Reporter) -> Response {
    let result = match request {
        Request::Deploy {
            app,
            component,
            model,
            config,
        } => match BASE64.decode(component.as_bytes()) {
            Err(e) => {
                return Response {
                    error: Some(format!("the component is not valid base64: {e}")),
                    ..Response::default()
                };
            }
            Ok(component) => {
                deploy
                    .deploy(DeployRequest {
                        app,
                        component,
                        model,
                        config,
                        grants: None,
                        spec: None,
                        source: "cli".into(),
                    })
                    .await
            }
        },
        Request::Apps => {
            return match deploy.apps().await {
                Ok(apps) => Response {
                    ok: true,
                    apps: Some(apps),
                    link: Some(reporter.link()),
                    outbox: Some(reporter.outbox()),
                    ..Response::default()
                },
                Err(e) => Response {
                    error: Some(e.to_string()),
                    ..Response::default()
                },
            };
        }
        Request::Logs { app, lines } => {
            let known = deploy
                .apps()
                .await
                .map(|apps| apps.iter().any(|a| a.app.name == app))
                .unwrap_or(false);
            return if known {
                Response {
                    ok: true,
                    lines: Some(crate::logbook::lines(&app, lines)),
                    ..Response::default()
                }
            } else {
                Response {
                    error: Some(format!("no app named {app:?} on this gateway")),
                    ..Response::default()
                }
            };
        }
        Request::Rollback { app } => deploy.rollback(app).await,
        Request::Stop { app } => deploy.stop(app).await,
        Request::Start { app } => deploy.start(app).await,
        Request::Remove { app } => deploy.remove(app).await,
    };
    match result {
        Ok(message) => Response {
            ok: true,
            message: Some(message),
            ..Response::default()
        },
        Err(error) => Response {
            error: Some(error.to_string()),
            ..Response::default()
        },
    }
}

/// Only the gateway's own user, or root, may use the admin socket.
fn peer_allowed(peer: std::io::Result<u32>) -> Result<(), String> {
    let own = crate::permissions::uid();
    match peer {
        Ok(uid) if uid == own || uid == 0 => Ok(()),
        Ok(uid) => Err(format!(
            "uid {uid} may not use this gateway's admin socket: only its own user (uid {own}) or root may"
        )),
        Err(e) => Err(format!("cannot tell who is asking ({e}); refused")),
    }
}

/// How long the CLI waits for the gateway (compiling a large component
/// takes seconds).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Send one request to a running gateway (the CLI side).
pub async fn request(path: &Path, request: &Request) -> anyhow::Result<Response> {
    tokio::time::timeout(ANSWER_TIMEOUT, exchange(path, request))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the gateway did not answer within {} s",
                ANSWER_TIMEOUT.as_secs()
            )
        })?
}

async fn exchange(path: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the gateway's admin endpoint {} (is the gateway running?)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).await?;
    serde_json::from_str(&answer)
        .with_context(|| format!("unreadable answer from the gateway: {answer:?}"))
}

/// Base64 for a component file.
pub fn encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}
