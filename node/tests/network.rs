//! Real nodes on 127.0.0.1, in this process: joining, and set/get from every node.

use std::net::SocketAddr;
use std::time::Duration;

use kadscale_node::codec::{Contact, Value};
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
    // Python peers refuse to send request bodies over 8192 bytes; so does a set, up front.
    let too_big = node.set(key_digest(b"k"), Value::Bytes(vec![0; 8192])).await;
    assert_eq!(too_big, Err(SetError::TooLargeToSend { size: 8192 + 55 }));
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

async fn start_with(config: NodeConfig) -> Node {
    Node::start(LOOPBACK.parse().unwrap(), config, Metrics::unregistered()).await.unwrap()
}

/// Waits until `check` holds, for at most 5 s.
async fn eventually(check: impl Fn() -> bool) -> bool {
    for _ in 0..250 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test]
async fn a_newcomer_closest_to_a_key_is_handed_the_value() {
    let key = key_digest(b"handed over");
    let a = start().await;
    let b = start().await;
    b.bootstrap(&[a.local_addr()]).await;
    a.set(key, Value::Str("v".into())).await.unwrap();
    // The newcomer's id is the key itself: closer than anyone, so whichever of a and b is
    // closest to the key pushes the value to it when it first hears from it.
    let newcomer = start_with(NodeConfig { node_id: Some(key), ..config() }).await;
    assert_eq!(newcomer.stored_len(), 0);
    newcomer.bootstrap(&[a.local_addr(), b.local_addr()]).await;
    assert!(eventually(|| newcomer.stored_len() == 1).await, "the value was not handed over");
    for node in [&a, &b, &newcomer] {
        node.shutdown();
    }
}

/// An id whose first byte is `first`, the rest zero.
fn id_starting(first: u8) -> kadscale_node::id::NodeId {
    let mut id = [0; 20];
    id[0] = first;
    kadscale_node::id::NodeId(id)
}

const FAR_REFRESH_DELAY: Duration = Duration::from_millis(300);

/// Nodes for the far-refresh tests: ids starting with the given bytes, k = 2 (every answer
/// holds the two closest contacts) and a 300 ms `far_refresh_delay`.
struct Halves {
    alpha: usize,
}

impl Halves {
    async fn node(&self, first: u8) -> Node {
        start_with(NodeConfig {
            node_id: Some(id_starting(first)),
            k: 2,
            alpha: self.alpha,
            far_refresh_delay: FAR_REFRESH_DELAY,
            ..config()
        })
        .await
    }

    /// `far` (0x90..) in the upper half, and four nodes of the lower half that know each
    /// other and `far`.
    async fn far_and_near(&self) -> (Node, Vec<Node>) {
        let far = self.node(0x90).await;
        let mut near = Vec::new();
        for first in [0x10, 0x20, 0x30, 0x38] {
            near.push(self.node(first).await);
        }
        for node in &near {
            for other in near.iter().chain([&far]) {
                node.add_contact(contact_of(other));
            }
        }
        (far, near)
    }
}

fn contact_of(node: &Node) -> Contact {
    Contact { id: node.id(), addr: node.local_addr().into() }
}

fn knows(node: &Node, other: &Node) -> bool {
    node.contacts().iter().any(|contact| contact.id == other.id())
}

/// Waits (5 s at most) for `x` to have `far` in its routing table, then stops every node.
async fn learns_of_far_then_stops(x: Node, far: Node, near: Vec<Node>) {
    assert!(
        eventually(|| knows(&x, &far)).await,
        "x never learned of the far half: {:?}",
        x.contacts()
    );
    for node in near.iter().chain([&far, &x]) {
        node.shutdown();
    }
}

#[tokio::test]
async fn a_joined_node_learns_the_far_half_of_the_id_space_that_its_own_lookup_never_meets() {
    // The lookup of x's own id (0x18..) meets only nodes of the lower half; only a lookup in
    // x's far bucket asks about the upper half, where `far` is.
    let halves = Halves { alpha: 3 };
    let (far, near) = halves.far_and_near().await;
    let x = halves.node(0x18).await;
    // More contacts than k: x's table splits, so the upper half is a bucket of its own.
    for node in &near[1..] {
        x.add_contact(contact_of(node));
    }
    x.bootstrap(&[near[0].local_addr()]).await;
    // A refresh at once would be done by now, on loopback.
    tokio::time::sleep(FAR_REFRESH_DELAY / 3).await;
    assert!(!knows(&x, &far), "the far buckets are refreshed only after far_refresh_delay");
    learns_of_far_then_stops(x, far, near).await;
}

#[tokio::test]
async fn the_far_refresh_goes_around_the_seeds_that_died_since_the_join() {
    // x joins through two seeds of the upper half, its only contacts there, which die before
    // its far buckets are refreshed: the refresh must go on through the lower half. With
    // alpha = 2 the seeds are all the refresh would ask first.
    let halves = Halves { alpha: 2 };
    let (far, near) = halves.far_and_near().await;
    let mut seeds = Vec::new();
    for first in [0xa0, 0xb0] {
        let seed = halves.node(first).await;
        for other in &near {
            seed.add_contact(contact_of(other));
        }
        seeds.push(seed);
    }
    let x = halves.node(0x18).await;
    for node in &near[1..] {
        x.add_contact(contact_of(node));
    }
    let seed_addrs: Vec<_> = seeds.iter().map(Node::local_addr).collect();
    x.bootstrap(&seed_addrs).await;
    for seed in &seeds {
        assert!(x.contacts().contains(&contact_of(seed)), "x joined through every seed");
        seed.shutdown();
    }
    assert!(!knows(&x, &far), "x met the upper half before its refresh");
    learns_of_far_then_stops(x, far, near).await;
}

#[tokio::test]
async fn refresh_looks_up_stale_buckets_and_republishes_old_values() {
    let key = key_digest(b"republished");
    // Only holders republish: a's id is next to the key, so a keeps a copy of what it sets.
    // (Not the key itself: lookups leave out a contact whose id is the key.)
    let mut next_to_key = key.0;
    next_to_key[19] ^= 1;
    let republishing = NodeConfig {
        node_id: Some(kadscale_node::id::NodeId(next_to_key)),
        bucket_stale_after: Duration::ZERO,
        republish_after: Duration::ZERO,
        ..config()
    };
    let a = start_with(republishing).await;
    let b = start().await;
    a.bootstrap(&[b.local_addr()]).await;
    assert!(a.set(key, Value::Int(9)).await.unwrap().stored_locally);
    // The farthest possible id from the key: no welcome hand-over, only a republish reaches it.
    let mut far = key.0;
    far.iter_mut().for_each(|byte| *byte = !*byte);
    let late =
        start_with(NodeConfig { node_id: Some(kadscale_node::id::NodeId(far)), ..config() }).await;
    late.bootstrap(&[a.local_addr()]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(late.stored_len(), 0);
    let lookups_before = lookup_count(&a);
    a.refresh().await;
    assert!(lookup_count(&a) > lookups_before, "stale buckets were not refreshed");
    assert!(eventually(|| late.stored_len() == 1).await, "the value was not republished");
    for node in [&a, &b, &late] {
        node.shutdown();
    }
}

fn lookup_count(node: &Node) -> u64 {
    node.metrics().lookups_total(kadscale_node::lookup::LookupKind::FindNode)
}

#[tokio::test]
async fn calls_fail_fast_after_shutdown() {
    let node = start().await;
    let silent = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
    let pending = {
        let node = node.clone();
        let addr = silent.local_addr().unwrap();
        tokio::spawn(async move { node.ping(addr, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.shutdown();
    let started = std::time::Instant::now();
    let waiting = pending.await.unwrap();
    assert!(matches!(waiting, Err(kadscale_node::transport::RpcError::Closed)), "{waiting:?}");
    let later = node.ping(silent.local_addr().unwrap(), Duration::from_secs(30)).await;
    assert!(matches!(later, Err(kadscale_node::transport::RpcError::Closed)), "{later:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_contact_that_stops_answering_is_evicted() {
    let quick = NodeConfig {
        rpc_timeout: Duration::from_millis(200),
        lookup_stall: Duration::from_millis(50),
        ..NodeConfig::default()
    };
    let a = start_with(quick).await;
    let b = start().await;
    a.bootstrap(&[b.local_addr()]).await;
    assert_eq!(a.contacts().iter().map(|c| c.id).collect::<Vec<_>>(), vec![b.id()]);
    b.shutdown();
    assert_eq!(
        a.set(key_digest(b"k"), Value::Int(1)).await,
        Err(SetError::NoPeers),
        "the lookup found nobody alive"
    );
    // The lookup stopped waiting after 50 ms; the call itself times out after 200 ms and
    // evicts the contact then.
    assert!(eventually(|| a.routing_table_len() == 0).await, "the silent contact stayed");
    a.shutdown();
}

/// A raw UDP socket posing as a node: it claims an id in requests and answers pings with
/// another one, as a victim whose address was forged would.
struct Impostor {
    socket: tokio::net::UdpSocket,
}

impl Impostor {
    async fn bind() -> Impostor {
        Impostor { socket: tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap() }
    }

    async fn send(&self, to: SocketAddr, request: &kadscale_node::codec::Request) {
        let datagram = kadscale_node::codec::encode_request(&[7; 20], request);
        self.socket.send_to(&datagram, to).await.unwrap();
    }

    /// Every request that arrives within `window`, each ping answered with `ping_id`.
    async fn requests(
        &self,
        window: Duration,
        ping_id: kadscale_node::id::NodeId,
    ) -> Vec<kadscale_node::codec::Request> {
        use kadscale_node::codec::{decode_datagram, encode_response, Datagram, Request, Response};
        let mut received = Vec::new();
        let mut buffer = [0u8; 65536];
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Ok((len, from))) =
            tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buffer)).await
        {
            if let Ok(Datagram::Request { id, request }) = decode_datagram(&buffer[..len]) {
                if matches!(request, Request::Ping { .. }) {
                    let answer = encode_response(&id, &Response::Ping(ping_id));
                    self.socket.send_to(&answer, from).await.unwrap();
                }
                received.push(request);
            }
        }
        received
    }
}

/// A node holding `value` under `key`, with one peer; its id is next to the key, so that it
/// is the closest holder and hands the value to newcomers closer still.
async fn holder_of(key: kadscale_node::id::NodeId, value: Value) -> [Node; 2] {
    let mut next_to_key = key.0;
    next_to_key[19] ^= 2;
    let id = kadscale_node::id::NodeId(next_to_key);
    let holder = start_with(NodeConfig { node_id: Some(id), ..config() }).await;
    let peer = start().await;
    peer.bootstrap(&[holder.local_addr()]).await;
    holder.set(key, value).await.unwrap();
    [holder, peer]
}

#[tokio::test]
async fn values_go_to_newcomers_whose_address_answers_for_their_id_and_to_no_one_else() {
    use kadscale_node::codec::Request;
    let key = key_digest(b"guarded");
    let request = Request::FindNode { sender: key, key };

    // Claims the id of the key from an address that answers pings as someone else: one
    // verification ping however often it writes, never a store.
    let spoofed = holder_of(key, Value::Str("v".into())).await;
    let impostor = Impostor::bind().await;
    for _ in 0..3 {
        impostor.send(spoofed[0].local_addr(), &request).await;
    }
    let seen = impostor.requests(Duration::from_secs(1), key_digest(b"someone else")).await;
    let pings = seen.iter().filter(|request| matches!(request, Request::Ping { .. })).count();
    assert_eq!(pings, 1, "one verification ping per address: {seen:?}");
    assert!(
        !seen.iter().any(|request| matches!(request, Request::Store { .. })),
        "a value went to an address that did not answer for the id: {seen:?}"
    );

    // An address that answers for the id it claims is handed the value.
    let verified = holder_of(key, Value::Str("v".into())).await;
    let newcomer = Impostor::bind().await;
    newcomer.send(verified[0].local_addr(), &request).await;
    let seen = newcomer.requests(Duration::from_secs(1), key).await;
    let stores: Vec<_> =
        seen.iter().filter(|request| matches!(request, Request::Store { .. })).collect();
    assert_eq!(stores.len(), 1, "{seen:?}");
    assert!(matches!(stores[0], Request::Store { key: stored, .. } if *stored == key));
    for node in spoofed.iter().chain(&verified) {
        node.shutdown();
    }
}
