//! A real multi-node broker cluster for the failover tests: Debian's
//! `rabbitmq-server` with its MQTT plugin, several nodes on loopback, each
//! with its own directory, ports and node name, joined into one cluster
//! through a private `epmd` (so nothing is shared with another run or a
//! system RabbitMQ). MQTT sessions live in quorum queues, replicated on
//! every node, so a session outlives the node it was opened on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the server's start script (the `/usr/sbin` wrapper
/// would switch to the `rabbitmq` user and its system directories).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// How long a node may take to boot (Erlang and RabbitMQ are slow to start
/// on a loaded two-core machine).
const BOOT: Duration = Duration::from_secs(120);

/// One node: its MQTT port and its process group.
struct Node {
    name: String,
    dir: PathBuf,
    mqtt_port: u16,
    amqp_port: u16,
    dist_port: u16,
    /// The start script, leader of the node's process group (the Erlang VM
    /// and its helpers).
    child: Option<Child>,
}

/// A RabbitMQ cluster whose nodes speak MQTT on loopback.
pub struct RabbitCluster {
    dir: tempfile::TempDir,
    epmd_port: u16,
    nodes: Vec<Node>,
}

impl RabbitCluster {
    /// Start `size` nodes and join them: the first alone, then the others,
    /// which find it through `classic_config` peer discovery. Returns when
    /// every node takes MQTT connections (a node opens its listeners only
    /// after it has joined).
    pub fn start(size: usize) -> RabbitCluster {
        assert!(
            Path::new(SERVER).exists(),
            "no {SERVER}: the failover tests need a RabbitMQ cluster (`apt-get install rabbitmq-server`; `cargo xtask setup` installs it)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // The nodes authenticate to each other with a shared cookie, read
        // from $HOME; the file must be private.
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, "WASMGATETESTCLUSTERCOOKIE").expect("cookie");
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .expect("chmod cookie");
        let ports = free_ports(1 + 3 * size);
        let mut cluster = RabbitCluster {
            epmd_port: ports[0],
            nodes: (0..size)
                .map(|i| Node {
                    name: format!("rabbit{}@localhost", i + 1),
                    dir: dir.path().join(format!("node{}", i + 1)),
                    mqtt_port: ports[1 + 3 * i],
                    amqp_port: ports[2 + 3 * i],
                    dist_port: ports[3 + 3 * i],
                    child: None,
                })
                .collect(),
            dir,
        };
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes {
            node.configure(&first);
        }
        cluster.spawn(0);
        cluster.wait_listening(0);
        for i in 1..size {
            cluster.spawn(i);
        }
        for i in 1..size {
            cluster.wait_listening(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        use std::os::unix::process::CommandExt as _;
        let home = self.dir.path().join("home");
        let node = &mut self.nodes[i];
        let env_file = |name: &str| node.dir.join(name);
        let output = std::fs::File::create(node.dir.join("console.log")).expect("console log");
        let child = Command::new(SERVER)
            .env("HOME", &home)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            // Node-to-node traffic on loopback only.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", env_file("mnesia"))
            .env("RABBITMQ_LOG_BASE", env_file("log"))
            .env("RABBITMQ_CONFIG_FILE", env_file("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", env_file("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", env_file("pid"))
            // Files that do not exist, so that nothing of a system
            // installation's /etc/rabbitmq is read.
            .env("RABBITMQ_CONF_ENV_FILE", env_file("none.env"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", env_file("none.config"))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("console log"))
            .stderr(output)
            // Its own process group, so the whole node (the VM and its port
            // helpers) can be killed at once.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SERVER} ({e})"));
        node.child = Some(child);
    }

    fn wait_listening(&mut self, i: usize) {
        let deadline = Instant::now() + BOOT;
        let port = self.nodes[i].mqtt_port;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "RabbitMQ node {} did not take MQTT connections on {port} ({}):\n{}",
                self.nodes[i].name,
                exited.map_or("timed out".to_string(), |s| format!("exited: {s}")),
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `mqtt://127.0.0.1:PORT` of node `i` (from 0).
    pub fn url(&self, i: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.nodes[i].mqtt_port)
    }

    /// Kill node `i` outright (SIGKILL to its whole process group): no
    /// clean shutdown, no handover, its connections cut.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal_group(&child, "KILL");
            let _ = child.wait();
        }
    }

    /// What node `i` logged, and what its start script printed.
    pub fn log(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}\n{}",
            read(node.dir.join("console.log")),
            read(node.dir.join("log").join(format!("{}.log", node.name)))
        )
    }
}

impl Node {
    /// The node's rabbitmq.conf and plugins file. MQTT sessions go into
    /// quorum queues (replicated; the default classic queues live on one
    /// node and die with it), anonymous MQTT clients log in as `guest`.
    fn configure(&self, first: &str) {
        std::fs::create_dir_all(&self.dir).expect("node dir");
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             mqtt.listeners.tcp.default = 127.0.0.1:{mqtt}\n\
             mqtt.allow_anonymous = true\n\
             mqtt.default_user = guest\n\
             mqtt.default_pass = guest\n\
             loopback_users = none\n\
             mqtt.vhost = /\n\
             mqtt.exchange = amq.topic\n\
             mqtt.durable_queue_type = quorum\n\
             cluster_formation.peer_discovery_backend = classic_config\n\
             cluster_formation.classic_config.nodes.1 = {first}\n",
            amqp = self.amqp_port,
            mqtt = self.mqtt_port,
        );
        std::fs::write(self.dir.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        std::fs::write(self.dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n")
            .expect("enabled_plugins");
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        // SIGTERM: each node stops cleanly; then the private epmd.
        for node in &mut self.nodes {
            if let Some(child) = &node.child {
                signal_group(child, "TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                signal_group(&child, "KILL");
                let _ = child.wait();
            }
        }
        let _ = Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Send `signal` to the process group `child` leads.
fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

/// `n` distinct free loopback ports (all held while choosing, so none is
/// given twice).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("address").port())
        .collect()
}
