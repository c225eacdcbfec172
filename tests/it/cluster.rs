//! Broker failover against a real multi-node cluster (three RabbitMQ nodes
//! with the MQTT plugin): the node a gateway is on is killed while it
//! streams, the gateway moves to another node of `[cloud] urls`, and
//! `serve`, on a third node, stores every point the gateway recorded,
//! once each.

use crate::common::rabbitmq::RabbitCluster;
use crate::common::serve::Serve;
use crate::common::{Gateway, guest, last_counter, model};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

const COUNTS: &str = "/gateways/test-gw/devices/counter/series/count?limit=1000000";

/// How many times serve stores each counter value.
fn stored_counts(serve: &Serve) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for point in serve.get(COUNTS)["points"].as_array().expect("points") {
        *counts
            .entry(point["values"]["n"].as_i64().expect("n"))
            .or_default() += 1;
    }
    counts
}

#[test]
fn when_its_cluster_node_is_killed_the_gateway_moves_to_another_and_serve_stores_every_point_once()
{
    let mut cluster = RabbitCluster::start(3);
    let (first, second, third) = (cluster.url(0), cluster.url(1), cluster.url(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}/serve.db", dir.path().display());
    let serve = Serve::start(&third, &database, &["--client-id", "serve-a"]);
    let gw = Gateway::new()
        .section(&format!(
            "[cloud]\nurls = [\"{first}\", \"{second}\", \"{third}\"]\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n"
        ))
        .app(
            "counter",
            &guest("storage-roundtrip"),
            &model("counter"),
            "tick_interval_ms = 20",
        );
    let mut run = gw.start();
    run.wait_link(T, "on the first node", |l| {
        l["connected"] == true && l["broker"] == first.as_str()
    });
    // What the gateway publishes on the first node reaches serve on the
    // third: the nodes are one cluster.
    serve.wait_get(
        "/gateways/test-gw",
        T,
        "the gateway on the first node",
        |g| g["online"] == true && g["broker"] == first.as_str(),
    );
    serve.wait_get("/stats", T, "points through the cluster", |s| {
        s["stored_points"].as_i64() > Some(50)
    });

    // The gateway's node dies while the gateway streams (50 points a
    // second): whatever it had not acknowledged is in the outbox still.
    cluster.kill9(0);
    let link = run.wait_link(T, "on the second node", |l| {
        l["connected"] == true && l["broker"] == second.as_str()
    });
    assert!(
        link["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&first)),
        "{link}"
    );
    serve.wait_get(
        "/gateways/test-gw",
        T,
        "the gateway on the second node",
        |g| g["online"] == true && g["broker"] == second.as_str(),
    );
    let moved = last_counter(&run.lines()).expect("counter");
    run.wait_for(&format!("counter={} roundtrip=true", moved + 50), T);
    assert!(run.stop().success());
    let recorded = last_counter(&run.lines()).expect("counter");

    // Started again, the gateway skips the dead node and sends what its
    // outbox still held.
    let mut run = gw.start();
    run.wait_link(T, "on a live node", |l| {
        l["connected"] == true && l["broker"] != first.as_str()
    });
    let deadline = Instant::now() + T;
    let counts = loop {
        let counts = stored_counts(&serve);
        if (1..=recorded).all(|n| counts.contains_key(&n)) || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let missing: Vec<i64> = (1..=recorded).filter(|n| !counts.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "lost points {missing:?} of 1..={recorded}"
    );
    let twice: Vec<(&i64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert!(
        counts.keys().any(|&n| n > moved),
        "points recorded after the move were stored"
    );
    let stats = serve.get("/stats");
    assert_eq!(stats["refused"], 0, "{stats}");
    // What the failover cost: batches sent again (and not stored twice).
    eprintln!("recorded 1..={recorded}, moved at {moved}; serve: {stats}");
    assert!(run.stop().success());
}
