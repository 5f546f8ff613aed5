//! Hostile input against a running node: truncated, oversized, wrong-typed and random
//! datagrams. The node must drop them all, count them, and still answer pings.

use std::time::Duration;

use kadscale_node::codec::{encode_msgpack, encode_request, Request, MESSAGE_ID_LEN};
use kadscale_node::config::NodeConfig;
use kadscale_node::id::NodeId;
use kadscale_node::metrics::Metrics;
use kadscale_node::node::Node;
use rand::{Rng, RngCore};
use rmpv::Value as Msgpack;
use tokio::net::UdpSocket;

fn request_datagram(body: &Msgpack) -> Vec<u8> {
    let mut datagram = vec![0u8; 1 + MESSAGE_ID_LEN];
    datagram.extend_from_slice(&encode_msgpack(body));
    datagram
}

fn call(name: &str, args: Vec<Msgpack>) -> Msgpack {
    Msgpack::Array(vec![Msgpack::from(name), Msgpack::Array(args)])
}

/// Nothing comes back to `socket` within 300 ms: none of `what` it sent drew an answer.
async fn assert_unanswered(socket: &UdpSocket, what: &str) {
    let mut buffer = [0u8; 64];
    let silence =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buffer)).await;
    assert!(silence.is_err(), "the node answered {what}");
}

/// Datagrams that every decoder path must refuse.
fn malformed_datagrams() -> Vec<Vec<u8>> {
    let id20 = Msgpack::Binary(vec![1; 20]);
    let valid_ping =
        encode_request(&[9; MESSAGE_ID_LEN], &Request::Ping { sender: NodeId([1; 20]) });
    let mut oversized = vec![0u8; 1 + MESSAGE_ID_LEN];
    // bin32 announcing more than the datagram holds, padded to the largest UDP payload.
    oversized.extend_from_slice(&[0xc6, 0xff, 0xff, 0xff, 0xff]);
    oversized.resize(65_507, 0xab);
    let mut deep = vec![0u8; 1 + MESSAGE_ID_LEN];
    deep.extend(std::iter::repeat_n(0x91, 5000));
    vec![
        vec![],
        vec![0],
        vec![0; 21],
        valid_ping[..valid_ping.len() - 1].to_vec(),
        valid_ping[..25].to_vec(),
        oversized,
        deep,
        {
            let mut unknown_type = valid_ping.clone();
            unknown_type[0] = 0x02;
            unknown_type
        },
        request_datagram(&Msgpack::from(12)),
        request_datagram(&Msgpack::Map(vec![(Msgpack::from("ping"), Msgpack::Nil)])),
        request_datagram(&call("ping", vec![Msgpack::from("not an id")])),
        request_datagram(&call("ping", vec![Msgpack::Binary(vec![1; 19])])),
        request_datagram(&call("ping", vec![])),
        request_datagram(&call("find_node", vec![id20.clone(), Msgpack::from(5)])),
        request_datagram(&call("store", vec![id20.clone(), id20.clone(), Msgpack::Array(vec![])])),
        request_datagram(&Msgpack::Array(vec![Msgpack::from(1), Msgpack::Array(vec![])])),
        request_datagram(&Msgpack::Array(vec![Msgpack::from("ping"), Msgpack::Map(vec![])])),
        {
            let mut bad_utf8 = vec![0u8; 1 + MESSAGE_ID_LEN];
            bad_utf8.extend_from_slice(&[0x92, 0xa2, 0xff, 0xfe, 0x90]);
            bad_utf8
        },
        {
            let mut reserved = vec![0u8; 1 + MESSAGE_ID_LEN];
            reserved.push(0xc1);
            reserved
        },
    ]
}

#[tokio::test]
async fn hostile_datagrams_are_counted_and_dropped_and_the_node_still_answers() {
    let node = Node::start(
        "127.0.0.1:0".parse().unwrap(),
        NodeConfig { rpc_timeout: Duration::from_secs(2), ..NodeConfig::default() },
        Metrics::unregistered(),
    )
    .await
    .unwrap();
    let target = node.local_addr();
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let malformed = malformed_datagrams();
    for datagram in &malformed {
        attacker.send_to(datagram, target).await.unwrap();
    }
    let mut rng = rand::rng();
    let random_count = 2000;
    for _ in 0..random_count {
        let len = rng.random_range(0..600);
        let mut datagram = vec![0u8; len];
        rng.fill_bytes(&mut datagram);
        if len > 0 && rng.random_bool(0.5) {
            datagram[0] = rng.random_range(0..2);
        }
        attacker.send_to(&datagram, target).await.unwrap();
    }
    // Answers nobody asked for, including one with a plausible body.
    let mut stray_answer = vec![1u8; 1 + MESSAGE_ID_LEN];
    stray_answer.extend_from_slice(&encode_msgpack(&Msgpack::Boolean(true)));
    attacker.send_to(&stray_answer, target).await.unwrap();

    // Still alive and answering, through all of that.
    let pinger =
        Node::start("127.0.0.1:0".parse().unwrap(), NodeConfig::default(), Metrics::unregistered())
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dropped = node.metrics().malformed_total();
        if dropped >= malformed.len() as u64 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pinger.ping(target, Duration::from_secs(2)).await.unwrap(), node.id());
    let dropped = node.metrics().malformed_total();
    assert!(
        dropped >= malformed.len() as u64,
        "only {dropped} of {} malformed datagrams were counted",
        malformed.len()
    );
    assert_unanswered(&attacker, "a malformed datagram").await;
    node.shutdown();
    pinger.shutdown();
}

/// Procedures the node does not know are not answered, and their made-up names leave nothing
/// behind: a series per name would grow the metrics without bound.
#[tokio::test]
async fn made_up_procedures_are_not_answered_and_leave_no_series_behind() {
    let mut registry = prometheus_client::registry::Registry::default();
    let node = Node::start(
        "127.0.0.1:0".parse().unwrap(),
        NodeConfig::default(),
        Metrics::new(&mut registry),
    )
    .await
    .unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..200 {
        let datagram = request_datagram(&call(&format!("made_up_{i}"), vec![Msgpack::from(i)]));
        attacker.send_to(&datagram, node.local_addr()).await.unwrap();
    }
    // A ping sent after them is answered after they were all handled.
    let pinger =
        Node::start("127.0.0.1:0".parse().unwrap(), NodeConfig::default(), Metrics::unregistered())
            .await
            .unwrap();
    assert_eq!(pinger.ping(node.local_addr(), Duration::from_secs(2)).await.unwrap(), node.id());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains("made_up_"), "series for made-up procedures:\n{text}");
    assert_unanswered(&attacker, "a made-up procedure").await;
    node.shutdown();
    pinger.shutdown();
}
