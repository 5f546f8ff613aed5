//! Floods against a running node on 127.0.0.1, and the bounds that must hold meanwhile: one
//! address sends `find_node` and `store` requests at five times its budget (each with a made-up
//! sender id), another sends garbage and forged sizes, and an honest peer pings and asks `find_node` at
//! a modest rate. The honest peer must keep being answered, the flooder's share of the routing
//! table and the storage must stay bounded, and (with the per-source rate limit) so must the
//! answers it draws.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kadscale_node::codec::{
    decode_msgpack, encode_request, ping_answer, store_answer, PeerAddr, Request, Value,
    MESSAGE_ID_LEN,
};
use kadscale_node::config::NodeConfig;
use kadscale_node::id::NodeId;
use kadscale_node::metrics::Metrics;
use kadscale_node::node::Node;
use kadscale_node::transport::{Handled, RequestHandler, RpcError, Transport};
use prometheus_client::registry::Registry;
use rand::{Rng, RngCore};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const FLOOD_FOR: Duration = Duration::from_secs(4);
/// Datagrams per second from each flooding socket: five times the default per-source request
/// budget, and more than a node handles when it answers every one (without the budget, the
/// honest peer got about 79% answers at a median of 120 to 310 ms on a loaded 2-core machine;
/// with it, 98 to 100% at 1 to 3 ms). Much faster, the flooders on the same 2 cores win a plain
/// race for CPU against the node's receive loop, and the kernel drops datagrams of every source
/// alike: no budget inside the node can help then.
const FLOOD_PER_SECOND: u64 = 10_000;
/// How long after the flood a flooding socket still counts answers: the node answers what
/// waited in its receive buffer.
const SETTLE: Duration = Duration::from_millis(500);
/// The honest peer's pace: one call every this long, a ping and a `find_node` in turn.
const HONEST_EVERY: Duration = Duration::from_millis(20);
/// How long the honest peer waits for each answer.
const HONEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Share of the honest peer's calls that must be answered within [`HONEST_TIMEOUT`]: 98 to 100%
/// came back on a 2-core machine at load average 45, once 87% (when the node's thread waits
/// that long for a core, its receive buffer overflows and the kernel drops datagrams of every
/// source); without the budget, 79%.
const HONEST_ANSWERED_AT_LEAST: f64 = 0.9;
/// The honest peer's median answer time at most: a node busy answering the flood queues it
/// behind the flood's requests.
const HONEST_MEDIAN_AT_MOST: Duration = Duration::from_millis(100);
const MAX_STORED_VALUES: usize = 100;
const MAX_VALUE_SIZE: usize = 512;
/// Peers the flooded node knows: with the honest peer and the flooder's share of a bucket, they
/// fill its one bucket of k = 20 without splitting it.
const KNOWN_PEERS: usize = 16;

/// An endpoint that asks and never answers.
struct Silent;

impl RequestHandler for Silent {
    fn handle(&self, _: SocketAddr, _: Request) -> Handled {
        Handled::Unknown
    }
}

/// What one flooding socket sent and drew.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    sent_bytes: u64,
    answers: u64,
    answer_bytes: u64,
}

/// The honest peer's view of the flood.
#[derive(Debug)]
struct Honest {
    calls: usize,
    /// Latencies of the calls answered within [`HONEST_TIMEOUT`].
    answered: Vec<Duration>,
}

impl Honest {
    fn answered_share(&self) -> f64 {
        self.answered.len() as f64 / self.calls as f64
    }

    fn percentile(&self, percent: usize) -> Duration {
        let mut sorted = self.answered.clone();
        sorted.sort();
        sorted
            .get((sorted.len() * percent / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(HONEST_TIMEOUT)
    }
}

struct FloodReport {
    node: Node,
    registry: Registry,
    requests: Tally,
    garbage: Tally,
    honest: Honest,
    flooder_addr: SocketAddr,
}

fn request_datagram(request: &Request) -> Vec<u8> {
    let mut id = [0u8; MESSAGE_ID_LEN];
    rand::rng().fill_bytes(&mut id);
    encode_request(&id, request)
}

/// The flooder's requests in turn: `find_node` of a random key, a `store` of a value that fits,
/// one of a value over the limit; every one from a made-up sender id.
fn flood_request(sequence: u64) -> Vec<u8> {
    let (sender, key) = (NodeId::random(), NodeId::random());
    let request = match sequence % 3 {
        0 => Request::FindNode { sender, key },
        1 => Request::Store { sender, key, value: Value::Bytes(vec![7; MAX_VALUE_SIZE]) },
        _ => Request::Store { sender, key, value: Value::Bytes(vec![7; MAX_VALUE_SIZE + 1]) },
    };
    request_datagram(&request)
}

/// Garbage in turn: random bytes, a request whose bin32 announces 4 GiB, a truncated request.
fn garbage(sequence: u64) -> Vec<u8> {
    let mut rng = rand::rng();
    match sequence % 3 {
        0 => {
            let mut bytes = vec![0u8; rng.random_range(0..200)];
            rng.fill_bytes(&mut bytes);
            bytes
        }
        1 => {
            let mut forged = vec![0u8; 1 + MESSAGE_ID_LEN];
            forged.extend_from_slice(&[0x92, 0xa4, b'p', b'i', b'n', b'g', 0x91, 0xc6]);
            forged.extend_from_slice(&u32::MAX.to_be_bytes());
            forged.extend_from_slice(&[0xab; 40]);
            forged
        }
        _ => {
            let ping = request_datagram(&Request::Ping { sender: NodeId::random() });
            ping[..ping.len() - 3].to_vec()
        }
    }
}

/// Sends `make(0), make(1), ...` to `target` at [`FLOOD_PER_SECOND`] (or as fast as this
/// machine manages, if slower) until `until`,
/// while counting what comes back; returns the tally once the last answers had time to come.
async fn flood(
    target: SocketAddr,
    make: fn(u64) -> Vec<u8>,
    until: Instant,
) -> (SocketAddr, tokio::task::JoinHandle<Tally>) {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let receiving = tokio::spawn({
            let socket = socket.clone();
            async move {
                let mut buffer = vec![0u8; 65536];
                let mut tally = Tally::default();
                let settle = until + SETTLE;
                while let Ok(Ok(len)) =
                    tokio::time::timeout_at(settle.into(), socket.recv(&mut buffer)).await
                {
                    tally.answers += 1;
                    tally.answer_bytes += len as u64;
                }
                tally
            }
        });
        let (mut sent, mut sent_bytes) = (0u64, 0u64);
        let started = Instant::now();
        while Instant::now() < until {
            let due = (started.elapsed().as_secs_f64() * FLOOD_PER_SECOND as f64) as u64;
            while sent < due {
                let datagram = make(sent);
                // Loopback refuses nothing but a full buffer: skip a datagram then, as a flood
                // would.
                if socket.send_to(&datagram, target).await.is_ok() {
                    sent_bytes += datagram.len() as u64;
                }
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut tally = receiving.await.unwrap();
        tally.sent = sent;
        tally.sent_bytes = sent_bytes;
        tally
    });
    (addr, handle)
}

/// A transport that only calls (its serve loop takes the answers), stopped by `shutdown`.
async fn calling_transport(config: &NodeConfig, shutdown: &CancellationToken) -> Arc<Transport> {
    let any = "127.0.0.1:0".parse().unwrap();
    let transport = Arc::new(Transport::bind(any, config, Metrics::unregistered()).await.unwrap());
    tokio::spawn({
        let (transport, shutdown) = (transport.clone(), shutdown.clone());
        async move { transport.serve(&Silent, shutdown).await }
    });
    transport
}

/// Every [`HONEST_EVERY`] until `until`, calls `target` (a ping and a `find_node` in turn)
/// without waiting for earlier calls.
async fn honest_peer(target: SocketAddr, until: Instant) -> Honest {
    let shutdown = CancellationToken::new();
    let transport = calling_transport(&NodeConfig::default(), &shutdown).await;
    let sender = NodeId::random();
    let mut calls = tokio::task::JoinSet::new();
    let mut pace = tokio::time::interval(HONEST_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for sequence in 0.. {
        pace.tick().await;
        if Instant::now() >= until {
            break;
        }
        let request = if sequence % 2 == 0 {
            Request::Ping { sender }
        } else {
            Request::FindNode { sender, key: NodeId::random() }
        };
        let transport = transport.clone();
        calls.spawn(async move {
            let started = Instant::now();
            match transport.call(target, &request, HONEST_TIMEOUT, decode_msgpack).await {
                Ok(_) => Some(started.elapsed()),
                Err(RpcError::Timeout { .. }) => None,
                Err(error) => panic!("the honest peer's call failed locally: {error}"),
            }
        });
    }
    let results = calls.join_all().await;
    shutdown.cancel();
    Honest { calls: results.len(), answered: results.into_iter().flatten().collect() }
}

/// Starts a node that knows [`KNOWN_PEERS`] (so that `find_node` answers are long), floods it for
/// [`FLOOD_FOR`] from two sockets while an honest peer calls it, and reports.
async fn run_flood() -> FloodReport {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let config = NodeConfig {
        max_stored_values: MAX_STORED_VALUES,
        max_value_size: MAX_VALUE_SIZE,
        ..NodeConfig::default()
    };
    let node = Node::start("127.0.0.1:0".parse().unwrap(), config, metrics).await.unwrap();
    for port in (40_000..).take(KNOWN_PEERS) {
        // Nobody listens there; nothing pings them unless their bucket is full.
        node.add_contact(kadscale_node::codec::Contact {
            id: NodeId::random(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)).into(),
        });
    }
    let target = node.local_addr();
    let until = Instant::now() + FLOOD_FOR;
    let (flooder_addr, requests) = flood(target, flood_request, until).await;
    let (_, garbage) = flood(target, garbage, until).await;
    let honest = honest_peer(target, until).await;
    FloodReport {
        node,
        registry,
        requests: requests.await.unwrap(),
        garbage: garbage.await.unwrap(),
        honest,
        flooder_addr,
    }
}

fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// The value of one sample line of the metrics text, 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_from_one_address_takes_a_bounded_share_and_the_honest_peer_is_answered() {
    let report = run_flood().await;
    let honest = &report.honest;
    let flood_seconds = FLOOD_FOR.as_secs_f64();
    eprintln!(
        "flood: {:?} requests, {:?} garbage; honest: {} calls, {:.1}% answered, p50 {:?}, p99 {:?}",
        report.requests,
        report.garbage,
        honest.calls,
        100.0 * honest.answered_share(),
        honest.percentile(50),
        honest.percentile(99),
    );
    assert!(report.requests.sent > 10 * honest.calls as u64, "not a flood: {:?}", report.requests);
    assert!(
        honest.answered_share() >= HONEST_ANSWERED_AT_LEAST,
        "only {} of the honest peer's {} calls answered within {HONEST_TIMEOUT:?}",
        honest.answered.len(),
        honest.calls
    );
    assert!(
        honest.percentile(50) <= HONEST_MEDIAN_AT_MOST,
        "the honest peer's median answer took {:?}",
        honest.percentile(50)
    );
    let text = metrics_text(&report.registry);
    assert!(
        sample(&text, "dht_datagrams_dropped_total{reason=\"rate_limited\"}") > 0.0,
        "no datagram was dropped as rate-limited:\n{text}"
    );
    // Answers are counted for FLOOD_FOR and SETTLE; each budget holds one second's worth on top
    // of its rate, and the last answer may overdraw the answer bytes.
    let defaults = NodeConfig::default();
    let budget_seconds = flood_seconds + SETTLE.as_secs_f64() + 1.0;
    let most_answers = f64::from(defaults.max_requests_per_source) * budget_seconds;
    assert!(
        report.requests.answers as f64 <= most_answers,
        "the flooder drew {} answers in {flood_seconds} s, more than {most_answers}",
        report.requests.answers
    );
    let most_answer_bytes =
        f64::from(defaults.max_answer_bytes_per_source) * budget_seconds + 8192.0;
    assert!(
        report.requests.answer_bytes as f64 <= most_answer_bytes,
        "the flooder drew {} answer bytes in {flood_seconds} s, more than {most_answer_bytes}",
        report.requests.answer_bytes
    );
    assert!(
        report.requests.answer_bytes <= report.requests.sent_bytes,
        "the node amplified the flood: {:?}",
        report.requests
    );
    assert!(report.node.stored_len() <= MAX_STORED_VALUES, "{} values", report.node.stored_len());
    let flooder = PeerAddr::from(report.flooder_addr);
    let from_flooder = report.node.contacts().iter().filter(|c| c.addr == flooder).count();
    // The table has one bucket (see KNOWN_PEERS): the flooder holds the per-IP share of it,
    // whatever number of ids it made up.
    assert!(
        from_flooder <= NodeConfig::default().max_contacts_per_ip,
        "the flooder holds {from_flooder} routing-table entries"
    );
    assert_eq!(report.garbage.answers, 0, "garbage drew answers");
    assert!(report.node.metrics().malformed_total() > 0);
    report.node.shutdown();
}

async fn started_node(config: NodeConfig) -> Node {
    Node::start("127.0.0.1:0".parse().unwrap(), config, Metrics::unregistered()).await.unwrap()
}

#[tokio::test]
async fn stores_over_the_wire_keep_to_the_value_size_and_count_limits() {
    let config = NodeConfig { max_stored_values: 10, max_value_size: 64, ..NodeConfig::default() };
    let node = started_node(config).await;
    let shutdown = CancellationToken::new();
    let client = calling_transport(&NodeConfig::default(), &shutdown).await;
    let sender = NodeId::random();
    let store = |key: NodeId, size: usize| {
        let request = Request::Store { sender, key, value: Value::Bytes(vec![1; size]) };
        let client = client.clone();
        let target = node.local_addr();
        async move { client.call(target, &request, Duration::from_secs(2), store_answer).await.unwrap() }
    };
    assert!(!store(NodeId::random(), 65).await, "a value over max_value_size was stored");
    assert_eq!(node.stored_len(), 0);
    assert!(store(NodeId::random(), 64).await);
    for _ in 0..30 {
        assert!(store(NodeId::random(), 8).await, "a full storage makes room, it does not refuse");
    }
    assert_eq!(node.stored_len(), 10, "max_stored_values");
    shutdown.cancel();
    node.shutdown();
}

#[tokio::test]
async fn made_up_ids_from_one_address_get_its_share_of_the_routing_table() {
    let config = NodeConfig { max_contacts_per_ip: 2, ..NodeConfig::default() };
    let node = started_node(config).await;
    let shutdown = CancellationToken::new();
    let sybil = calling_transport(&NodeConfig::default(), &shutdown).await;
    for _ in 0..50 {
        let ping = Request::Ping { sender: NodeId::random() };
        sybil.call(node.local_addr(), &ping, Duration::from_secs(2), ping_answer).await.unwrap();
    }
    let honest = calling_transport(&NodeConfig::default(), &shutdown).await;
    honest
        .call(
            node.local_addr(),
            &Request::Ping { sender: NodeId::random() },
            Duration::from_secs(2),
            ping_answer,
        )
        .await
        .unwrap();
    let held = |addr: SocketAddr| {
        let addr = PeerAddr::from(addr);
        node.contacts().iter().filter(|c| c.addr == addr).count()
    };
    assert_eq!(held(sybil.local_addr().unwrap()), 2, "max_contacts_per_ip of 50 made-up ids");
    assert_eq!(held(honest.local_addr().unwrap()), 1, "another address still gets in");
    shutdown.cancel();
    node.shutdown();
}

#[tokio::test]
async fn calls_in_flight_are_capped_and_freed_when_they_end() {
    let config = NodeConfig { max_outstanding_calls: 2, ..NodeConfig::default() };
    let node = started_node(config).await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let waiting = Duration::from_millis(400);
    let first = tokio::spawn({
        let node = node.clone();
        async move { node.ping(silent_addr, waiting).await }
    });
    let second = tokio::spawn({
        let node = node.clone();
        async move { node.ping(silent_addr, waiting).await }
    });
    // Both calls are in flight once the silent socket received their requests.
    let mut buffer = [0u8; 1024];
    for _ in 0..2 {
        silent.recv_from(&mut buffer).await.unwrap();
    }
    let refused = node.ping(silent_addr, waiting).await;
    assert!(matches!(refused, Err(RpcError::TooManyCalls { max: 2 })), "{refused:?}");
    for call in [first, second] {
        assert!(matches!(call.await.unwrap(), Err(RpcError::Timeout { .. })));
    }
    let peer = started_node(NodeConfig::default()).await;
    assert_eq!(node.ping(peer.local_addr(), waiting).await.unwrap(), peer.id(), "slots freed");
    node.shutdown();
    peer.shutdown();
}
