//! A real Mosquitto broker for the tests (started on a free loopback port
//! with a config file written here), a consumer that records everything it
//! receives, and test certificates made with rcgen.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Packet, QoS};
use wasmgate::config::BrokerSettings;

/// A Mosquitto process and its directory (config, persistence, log).
pub struct Mosquitto {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Start a broker; `extra` is more mosquitto.conf for its listener
    /// (TLS files, an ACL file).
    pub fn start(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             user root\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 100000\n\
             message_size_limit 0\n\
             set_tcp_nodelay true\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             {extra}\n",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut broker = Mosquitto {
            dir,
            port,
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start mosquitto ({e}): install it with `apt-get install mosquitto`")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (mosquitto saves its sessions) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Settings for a client of this broker.
    pub fn settings(&self, client_id: &str) -> BrokerSettings {
        BrokerSettings::from_url(&self.url(), client_id).expect("url")
    }

    /// Stop answering (SIGSTOP): connections stay open, nothing is
    /// acknowledged.
    pub fn pause(&self) {
        super::peers::signal(self.child.as_ref().expect("running"), "-STOP");
    }

    /// Answer again (SIGCONT).
    pub fn resume(&self) {
        super::peers::signal(self.child.as_ref().expect("running"), "-CONT");
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the broker logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message a consumer received.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// An MQTT client that records every message on its subscriptions. It uses
/// a persistent session, so messages sent while it reconnects are kept.
pub struct Consumer {
    client: Client,
    messages: Arc<Mutex<Vec<Message>>>,
    /// Set when the consumer is dropped: its thread then ends at the
    /// connection's next error rather than reconnecting for the rest of the
    /// test binary (rumqttc reconnects on every poll while anyone holds a
    /// client, and the thread holds one to subscribe).
    dropped: Arc<AtomicBool>,
}

impl Consumer {
    pub fn connect(settings: &BrokerSettings, filters: &[&str]) -> Consumer {
        let options = wasmgate::cloud::mqtt_options(settings, false).expect("options");
        let (client, mut connection) = Client::new(options, 256);
        wasmgate::cloud::no_delay(&mut connection.eventloop);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let dropped = Arc::new(AtomicBool::new(false));
        {
            let (client, messages, subscribed, dropped) = (
                client.clone(),
                messages.clone(),
                subscribed.clone(),
                dropped.clone(),
            );
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                            for f in &filters {
                                let _ = client.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            *subscribed.lock().expect("lock") = true
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            messages.lock().expect("lock").push(Message {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            })
                        }
                        Ok(_) => {}
                        Err(rumqttc::ConnectionError::RequestsDone) => return,
                        Err(_) if dropped.load(Ordering::Relaxed) => return,
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !*subscribed.lock().expect("lock") {
            assert!(
                Instant::now() < deadline,
                "the test consumer could not subscribe"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Consumer {
            client,
            messages,
            dropped,
        }
    }

    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().expect("lock").clone()
    }

    /// Messages on exactly `topic`.
    pub fn on(&self, topic: &str) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Wait for a message on `topic` whose JSON satisfies `check`.
    pub fn wait_json(
        &self,
        topic: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.on(topic).iter().map(Message::json).find(|j| check(j)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no matching message on {topic} within {timeout:?}; got: {:?}",
                self.on(topic)
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Call `action` on the device whose topics start with `base`
    /// (`wg/v1/{gateway}/{device}`) and wait up to 30 s for the answer.
    pub fn call(
        &self,
        base: &str,
        action: &str,
        id: &str,
        argument: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = serde_json::json!({ "id": id });
        if let Some(argument) = argument {
            request["argument"] = argument;
        }
        self.publish(
            &format!("{base}/action/{action}/req"),
            request.to_string(),
            false,
        );
        self.wait_json(
            &format!("{base}/action/{action}/res"),
            Duration::from_secs(30),
            |r| r["id"] == id,
        )
    }

    /// Send a desired change to the device at `base` and wait up to 30 s
    /// for its ack.
    pub fn set_desired(
        &self,
        base: &str,
        version: u64,
        attributes: serde_json::Value,
    ) -> serde_json::Value {
        self.publish(
            &format!("{base}/twin/desired"),
            serde_json::json!({ "version": version, "attributes": attributes }).to_string(),
            false,
        );
        self.wait_json(&format!("{base}/twin/ack"), Duration::from_secs(30), |a| {
            a["version"] == version
        })
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .expect("publish");
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect();
    }
}

/// PEM files for TLS tests: a CA, a server certificate for 127.0.0.1, and
/// client certificates, written into a directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A CA ("name"-ca.pem) that signs a server cert (server.pem/.key) and a
    /// client cert (client.pem/.key), all in `dir`, plus a second, unrelated
    /// CA that signs rogue.pem/.key and is itself in other-ca.pem.
    pub fn create(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        // Keys owner-only, as the gateway demands of its TLS key.
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pem");
            if name.ends_with(".key") {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the key");
            }
        };
        let make_ca = |cn: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.self_signed(&key).expect("self-signed CA");
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>, names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (ca_pem, ca) = make_ca("wasmgate test CA");
        write("ca.pem", ca_pem);
        // The CA's key too: `serve` signs gateways' certificates with it
        // when it provisions them (it is the fleet CA).
        write("ca.key", ca.key().serialize_pem());
        let (cert, key) = leaf(&ca, vec!["127.0.0.1".into(), "localhost".into()], "broker");
        write("server.pem", cert);
        write("server.key", key);
        let (cert, key) = leaf(&ca, vec![], "test-gw");
        write("client.pem", cert);
        write("client.key", key);
        let (other_pem, other) = make_ca("some other CA");
        write("other-ca.pem", other_pem);
        let (cert, key) = leaf(&other, vec![], "rogue");
        write("rogue.pem", cert);
        write("rogue.key", key);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Another client certificate from the CA, for common name `name`:
    /// `name.pem` and `name.key` (with `use_identity_as_username`, the
    /// broker user `name`).
    pub fn client(&self, name: &str) -> &Pki {
        use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
        let read = |file: &str| std::fs::read_to_string(self.path(file)).expect("read the CA");
        let ca_key = KeyPair::from_pem(&read("ca.key")).expect("the CA's key");
        let ca = Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("the CA");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write pem");
        let key_path = self.path(&format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        self
    }
}

/// Mosquitto's own MQTT 5 client, `mosquitto_sub -V 5 -F %j`: every message
/// on its filters with its MQTT 5 properties, as Mosquitto's JSON
/// (`topic`, `payload`, `properties` with `content-type`,
/// `message-expiry-interval`, `correlation-data`, `response-topic`).
pub struct Mqtt5Watcher {
    child: Child,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Mqtt5Watcher {
    /// Subscribed once a probe it publishes itself comes back.
    pub fn start(broker: &Mosquitto, filters: &[&str]) -> Mqtt5Watcher {
        use std::io::BufRead as _;
        let probe = format!("probe/{}", super::free_port());
        let mut command = Command::new("mosquitto_sub");
        command.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()]);
        command.args(["-V", "5", "-q", "1", "-F", "%j", "-t", &probe]);
        for filter in filters {
            command.args(["-t", filter]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto_sub runs (apt-get install mosquitto-clients)");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) {
                    sink.lock().expect("the log").push(message);
                }
            }
        });
        let watcher = Mqtt5Watcher { child, seen };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !watcher.messages().iter().any(|m| m["topic"] == probe) {
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
            mosquitto_pub(broker, &probe, "probe", &[]);
            std::thread::sleep(Duration::from_millis(100));
        }
        watcher
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.seen.lock().expect("the log").clone()
    }

    /// Wait for a message on `topic` that `check` accepts.
    pub fn wait(
        &self,
        topic: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self
                .messages()
                .into_iter()
                .find(|m| m["topic"] == topic && check(m))
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for a message on {topic}; saw {:?}",
                self.messages()
                    .iter()
                    .map(|m| m["topic"].clone())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mqtt5Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish with Mosquitto's own client over MQTT 5 at QoS 1; `properties`
/// are `-D publish NAME VALUE` pairs (`response-topic`, `correlation-data`).
pub fn mosquitto_pub(broker: &Mosquitto, topic: &str, payload: &str, properties: &[(&str, &str)]) {
    let mut command = Command::new("mosquitto_pub");
    command.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()]);
    command.args(["-V", "5", "-q", "1", "-t", topic, "-m", payload]);
    for (name, value) in properties {
        command.args(["-D", "publish", name, value]);
    }
    let out = command
        .output()
        .expect("mosquitto_pub runs (apt-get install mosquitto-clients)");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
