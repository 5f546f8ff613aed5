//! Real nodes on 127.0.0.1, in this process, at the scale of the demo cluster: values stored
//! while the DHT is small must move to the nodes that join later, or lookups that converge on
//! the new closest nodes find nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kadscale_node::codec::Value;
use kadscale_node::config::NodeConfig;
use kadscale_node::id::key_digest;
use kadscale_node::metrics::Metrics;
use kadscale_node::node::Node;
use rand::seq::IndexedRandom;

const FIRST_WORKERS: usize = 10;
const LATER_WORKERS: usize = 250;
/// The cluster starts new workers in waves like this one.
const JOIN_BATCH: usize = 25;
const VALUES: usize = 20;
/// Old and new nodes each value is read through.
const READERS_PER_VALUE: usize = 3;

async fn start() -> Node {
    let config = NodeConfig { rpc_timeout: Duration::from_secs(2), ..NodeConfig::default() };
    Node::start("127.0.0.1:0".parse().unwrap(), config, Metrics::unregistered()).await.unwrap()
}

/// Starts `count` nodes at once, each joining through `bootstrap`.
async fn join_batch(count: usize, bootstrap: &[SocketAddr]) -> Vec<Node> {
    join_all((0..count).map(|_| async {
        let node = start().await;
        node.bootstrap(bootstrap).await;
        node
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_stored_in_a_small_dht_are_found_after_250_nodes_join() {
    let started = Instant::now();
    let first_bootstrap = start().await;
    let second_bootstrap = start().await;
    second_bootstrap.bootstrap(&[first_bootstrap.local_addr()]).await;
    let bootstrap = [first_bootstrap.local_addr(), second_bootstrap.local_addr()];
    let mut old = vec![first_bootstrap, second_bootstrap];
    old.extend(join_batch(FIRST_WORKERS, &bootstrap).await);
    assert!(old.iter().all(|node| node.routing_table_len() > 0), "a first worker did not join");

    let mut rng = rand::rng();
    let mut values = Vec::new();
    for i in 0..VALUES {
        let key = key_digest(format!("value-{i}").as_bytes());
        let value = Value::Str(format!("stored while small {i}"));
        let writer = old[2..].choose(&mut rng).unwrap();
        writer.set(key, value.clone()).await.unwrap();
        values.push((key, value));
    }

    let mut new = Vec::new();
    for _ in 0..LATER_WORKERS / JOIN_BATCH {
        new.extend(join_batch(JOIN_BATCH, &bootstrap).await);
    }
    assert!(new.iter().all(|node| node.routing_table_len() > 0), "a later worker did not join");
    // Hand-overs run in the background; give the last batch's a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut missing = Vec::new();
    for (key, value) in &values {
        let readers = old
            .choose_multiple(&mut rng, READERS_PER_VALUE)
            .chain(new.choose_multiple(&mut rng, READERS_PER_VALUE));
        for reader in readers {
            if reader.get(*key).await.as_ref() != Some(value) {
                missing.push(format!("{key} through {}", reader.local_addr()));
            }
        }
    }
    assert!(missing.is_empty(), "not found: {missing:?}");
    for node in old.iter().chain(&new) {
        node.shutdown();
    }
    eprintln!("262 nodes, {VALUES} values: {:.1} s", started.elapsed().as_secs_f64());
}
