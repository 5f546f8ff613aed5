//! Real nodes on 127.0.0.1, in this process: joining, and set/get from every node.

use std::net::SocketAddr;
use std::time::Duration;

use kadscale_node::codec::Value;
use kadscale_node::config::NodeConfig;
use kadscale_node::id::key_digest;
use kadscale_node::metrics::Metrics;
use kadscale_node::node::{Node, SetError};

const LOOPBACK: &str = "127.0.0.1:0";

fn config() -> NodeConfig {
    NodeConfig { rpc_timeout: Duration::from_secs(2), ..NodeConfig::default() }
}

async fn start() -> Node {
    Node::start(LOOPBACK.parse().unwrap(), config(), Metrics::unregistered()).await.unwrap()
}

/// `count` nodes: the first is the bootstrap node, every other bootstraps off it and off the
/// node started just before it.
async fn network(count: usize) -> Vec<Node> {
    let mut nodes = vec![start().await];
    for i in 1..count {
        let node = start().await;
        let mut seeds: Vec<SocketAddr> = vec![nodes[0].local_addr()];
        if i > 1 {
            seeds.push(nodes[i - 1].local_addr());
        }
        node.bootstrap(&seeds).await;
        assert!(node.routing_table_len() > 0, "node {i} did not join");
        nodes.push(node);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_nodes_join_and_every_node_finds_every_value() {
    let nodes = network(12).await;
    assert!(nodes[0].routing_table_len() >= 11, "the bootstrap node heard of everyone");
    let values = [
        Value::Str("hello".into()),
        Value::Bytes(vec![0, 159, 255]),
        Value::Int(-42),
        Value::UInt(u64::MAX),
        Value::Float(2.5),
        Value::Bool(true),
    ];
    let mut keys = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let key = key_digest(format!("key-{i}").as_bytes());
        let value = values[i % values.len()].clone();
        let report = node.set(key, value.clone()).await.unwrap();
        assert!(report.stored_remotely >= 1);
        keys.push((key, value));
    }
    for (i, node) in nodes.iter().enumerate() {
        for (key, value) in &keys {
            assert_eq!(node.get(*key).await.as_ref(), Some(value), "node {i}, key {key}");
        }
    }
    // A key nobody set is not found, and the lookup still ends.
    assert_eq!(nodes[3].get(key_digest(b"never set")).await, None);
    for node in &nodes {
        node.shutdown();
    }
}

#[tokio::test]
async fn a_lonely_node_cannot_set_and_bootstrap_through_silence_fails_cleanly() {
    let node = Node::start(
        LOOPBACK.parse().unwrap(),
        NodeConfig { rpc_timeout: Duration::from_millis(200), ..NodeConfig::default() },
        Metrics::unregistered(),
    )
    .await
    .unwrap();
    assert_eq!(node.set(key_digest(b"k"), Value::Int(1)).await, Err(SetError::NoPeers));
    // A bound socket that never answers.
    let silent = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
    let found = node.bootstrap(&[silent.local_addr().unwrap()]).await;
    assert!(found.is_empty());
    assert_eq!(node.routing_table_len(), 0);
    node.shutdown();
}

#[tokio::test]
async fn ping_stun_and_extensions() {
    let a = start().await;
    let b = start().await;
    assert_eq!(a.ping(b.local_addr(), Duration::from_secs(2)).await.unwrap(), b.id());
    assert_eq!(a.stun(b.local_addr(), Duration::from_secs(2)).await.unwrap(), a.local_addr());
    // b learnt of a from the ping.
    assert_eq!(b.contacts().iter().map(|c| c.id).collect::<Vec<_>>(), vec![a.id()]);

    let unanswered =
        a.call_extension(b.local_addr(), "kadscale_echo", vec![], Duration::from_millis(200)).await;
    assert!(matches!(unanswered, Err(kadscale_node::transport::RpcError::Timeout { .. })));
    b.register_extension(
        "kadscale_echo",
        std::sync::Arc::new(|_from, args| Some(rmpv::Value::Array(args))),
    );
    let echoed = a
        .call_extension(
            b.local_addr(),
            "kadscale_echo",
            vec![rmpv::Value::from(7)],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(echoed, rmpv::Value::Array(vec![rmpv::Value::from(7)]));
    a.shutdown();
    b.shutdown();
}
