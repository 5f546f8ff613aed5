//! Wire codec: encoding and decoding the datagrams a bootstrap node handles most (find_node
//! requests in, 20-contact answers out), and a value store.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kadscale_node::codec::{
    decode_datagram, encode_request, encode_response, find_node_answer, Contact, Datagram, Request,
    Response, Value,
};
use kadscale_node::id::NodeId;

fn contacts(count: u16) -> Vec<Contact> {
    (0..count)
        .map(|i| Contact {
            id: NodeId::random(),
            addr: SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 5678 + i)).into(),
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let id = [7u8; 20];
    let find_node = Request::FindNode { sender: NodeId::random(), key: NodeId::random() };
    let store = Request::Store {
        sender: NodeId::random(),
        key: NodeId::random(),
        value: Value::Str("a value of some sixty-four bytes, as a small record would be...".into()),
    };
    let answer = Response::Nodes(contacts(20));
    let find_node_bytes = encode_request(&id, &find_node);
    let answer_bytes = encode_response(&id, &answer);

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode find_node request", |b| {
        b.iter(|| encode_request(black_box(&id), black_box(&find_node)))
    });
    group.bench_function("decode find_node request", |b| {
        b.iter(|| decode_datagram(black_box(&find_node_bytes)))
    });
    group.bench_function("encode store request", |b| {
        b.iter(|| encode_request(black_box(&id), black_box(&store)))
    });
    group.bench_function("encode 20-contact answer", |b| {
        b.iter(|| encode_response(black_box(&id), black_box(&answer)))
    });
    // The framing, then the contacts read from the body, as a lookup reads an answer.
    group.bench_function("decode 20-contact answer", |b| {
        b.iter(|| match decode_datagram(black_box(&answer_bytes)) {
            Ok(Datagram::Response { body, .. }) => find_node_answer(body).map(|c| c.len()),
            _ => Ok(0),
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
