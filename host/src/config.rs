//! `gateway.toml`: the gateway's identity, its data directory and its apps.
//!
//! Unknown keys are refused, and every error names the file and the key (and
//! the line, where TOML can tell). Relative paths are resolved against the
//! directory of the config file, so a config works from any working directory.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::check_name;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    gateway: GatewaySection,
    #[serde(default, rename = "app")]
    apps: Vec<AppSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    id: String,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_flush_interval_ms")]
    flush_interval_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppSection {
    name: String,
    component: PathBuf,
    model: PathBuf,
    #[serde(default)]
    device: Option<String>,
    #[serde(default = "default_tick_interval_ms")]
    tick_interval_ms: u64,
    #[serde(default = "default_call_timeout_ms")]
    call_timeout_ms: u64,
    #[serde(default = "default_memory_limit_mib")]
    memory_limit_mib: u64,
    #[serde(default = "default_storage_quota_kib")]
    storage_quota_kib: u64,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    restart: RestartPolicy,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_flush_interval_ms() -> u64 {
    50
}
fn default_tick_interval_ms() -> u64 {
    1000
}
fn default_call_timeout_ms() -> u64 {
    1000
}
fn default_memory_limit_mib() -> u64 {
    64
}
fn default_storage_quota_kib() -> u64 {
    10 * 1024
}

/// What happens when an app crashes (traps, overruns its call deadline, hits
/// its memory limit, or fails `init`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubled after each crash.
    pub backoff_initial_ms: u64,
    /// The longest wait between restarts.
    pub backoff_max_ms: u64,
    /// This many crashes within `window_s` quarantines the app.
    pub max_crashes: u32,
    pub window_s: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            max_crashes: 5,
            window_s: 300,
        }
    }
}

/// A gateway's configuration, checked and with paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub gateway_id: String,
    pub data_dir: PathBuf,
    /// How long recorded points may wait in memory before they are committed.
    pub flush_interval: Duration,
    pub apps: Vec<AppConfig>,
}

/// One app as the gateway runs it.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub component: PathBuf,
    pub model: PathBuf,
    /// The device the app speaks for by default.
    pub device: String,
    pub tick_interval: Duration,
    pub call_timeout: Duration,
    pub memory_limit_bytes: usize,
    pub storage_quota_bytes: u64,
    /// Key/values passed to the app's `init`.
    pub config: Vec<(String, String)>,
    pub restart: RestartPolicy,
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Check config text as if it were read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        // Absolute, so logs and `status` show where things really are.
        let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        check_name(&file.gateway.id).map_err(|m| invalid("gateway.id".into(), m))?;
        if file.gateway.flush_interval_ms == 0 || file.gateway.flush_interval_ms > 10_000 {
            return Err(invalid(
                "gateway.flush_interval_ms".into(),
                format!(
                    "{} is not between 1 and 10000",
                    file.gateway.flush_interval_ms
                ),
            ));
        }

        let mut names = HashSet::new();
        let mut devices = HashSet::new();
        let mut apps = Vec::with_capacity(file.apps.len());
        for (i, app) in file.apps.into_iter().enumerate() {
            let key = |field: &str| format!("app[{i}].{field}");
            check_name(&app.name).map_err(|m| invalid(key("name"), m))?;
            if !names.insert(app.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("app {:?} is defined twice", app.name),
                ));
            }
            let device = app.device.clone().unwrap_or_else(|| app.name.clone());
            check_name(&device).map_err(|m| invalid(key("device"), m))?;
            if device == file.gateway.id {
                return Err(invalid(
                    key("device"),
                    format!("{device:?} is the gateway's own device id"),
                ));
            }
            if !devices.insert(device.clone()) {
                return Err(invalid(
                    key("device"),
                    format!("device {device:?} belongs to two apps"),
                ));
            }
            let between = |field: &str, v: u64, min: u64, max: u64| {
                if (min..=max).contains(&v) {
                    Ok(v)
                } else {
                    Err(invalid(
                        key(field),
                        format!("{v} is not between {min} and {max}"),
                    ))
                }
            };
            let tick = between("tick_interval_ms", app.tick_interval_ms, 1, 86_400_000)?;
            let timeout = between("call_timeout_ms", app.call_timeout_ms, 1, 600_000)?;
            let memory = between("memory_limit_mib", app.memory_limit_mib, 1, 4096)?;
            let quota = between(
                "storage_quota_kib",
                app.storage_quota_kib,
                1,
                16 * 1024 * 1024,
            )?;
            let r = &app.restart;
            if r.max_crashes == 0
                || r.backoff_initial_ms == 0
                || r.backoff_max_ms < r.backoff_initial_ms
            {
                return Err(invalid(
                    key("restart"),
                    "max_crashes and backoff_initial_ms must be positive and backoff_max_ms at least backoff_initial_ms".into(),
                ));
            }
            let mut config = Vec::with_capacity(app.config.len());
            for (k, v) in app.config {
                let text = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(invalid(
                            key(&format!("config.{k}")),
                            format!(
                                "expected a string, number or boolean, got a {}",
                                other.type_str()
                            ),
                        ));
                    }
                };
                config.push((k, text));
            }
            apps.push(AppConfig {
                component: resolve(&app.component),
                model: resolve(&app.model),
                device,
                tick_interval: Duration::from_millis(tick),
                call_timeout: Duration::from_millis(timeout),
                memory_limit_bytes: usize::try_from(memory << 20).unwrap_or(usize::MAX),
                storage_quota_bytes: quota << 10,
                config,
                restart: app.restart,
                name: app.name,
            });
        }
        Ok(Config {
            path: path.to_path_buf(),
            gateway_id: file.gateway.id,
            data_dir: resolve(&file.gateway.data_dir),
            flush_interval: Duration::from_millis(file.gateway.flush_interval_ms),
            apps,
        })
    }

    /// The SQLite database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("wasmgate.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/wg/gateway.toml"), text)
    }

    #[test]
    fn a_full_config_resolves_paths_and_defaults() {
        let config = parse(
            r#"
            [gateway]
            id = "gw-1"

            [[app]]
            name = "thermo"
            component = "apps/thermo.wasm"
            model = "/models/thermo.json"
            tick_interval_ms = 250
            config = { seed = 42, room = "hall", debug = true }
            "#,
        )
        .expect("valid");
        assert_eq!(config.data_dir, Path::new("/etc/wg/data"));
        let app = &config.apps[0];
        assert_eq!(app.component, Path::new("/etc/wg/apps/thermo.wasm"));
        assert_eq!(app.model, Path::new("/models/thermo.json"));
        assert_eq!(app.device, "thermo");
        assert_eq!(app.tick_interval, Duration::from_millis(250));
        assert_eq!(app.memory_limit_bytes, 64 << 20);
        assert_eq!(app.restart, RestartPolicy::default());
        assert_eq!(
            app.config,
            vec![
                ("debug".to_string(), "true".to_string()),
                ("room".to_string(), "hall".to_string()),
                ("seed".to_string(), "42".to_string())
            ]
        );
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_line() {
        let err = parse("[gateway]\nid = \"gw\"\ncolour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/wg/gateway.toml: "), "{err}");
        assert!(
            err.contains("line 3") && err.contains("unknown field `colour`"),
            "{err}"
        );

        let err = parse("[gateway]\nid = \"gw\"\n[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `model`"), "{err}");

        let twice = r#"
            [gateway]
            id = "gw"
            [[app]]
            name = "a"
            component = "a.wasm"
            model = "a.json"
            [[app]]
            name = "a"
            component = "b.wasm"
            model = "b.json"
        "#;
        assert_eq!(
            parse(twice).unwrap_err().to_string(),
            "/etc/wg/gateway.toml: app[1].name: app \"a\" is defined twice"
        );

        let slow = "[gateway]\nid = \"gw\"\n[[app]]\nname = \"a\"\ncomponent = \"a\"\nmodel = \"m\"\ntick_interval_ms = 0\n";
        assert_eq!(
            parse(slow).unwrap_err().to_string(),
            "/etc/wg/gateway.toml: app[0].tick_interval_ms: 0 is not between 1 and 86400000"
        );
        let nested = "[gateway]\nid = \"gw\"\n[[app]]\nname = \"a\"\ncomponent = \"a\"\nmodel = \"m\"\nconfig = { x = [1] }\n";
        assert_eq!(
            parse(nested).unwrap_err().to_string(),
            "/etc/wg/gateway.toml: app[0].config.x: expected a string, number or boolean, got a array"
        );
        assert!(
            parse("[gateway]\nid = \"a/b\"\n")
                .unwrap_err()
                .to_string()
                .contains("gateway.id")
        );
    }
}
