//! Routing table at 10,000 contacts offered: inserting them, and the closest-k query that
//! every find_node answer runs, there and at 200 offered (the table bench-rpc's node holds).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kadscale_node::codec::Contact;
use kadscale_node::id::NodeId;
use kadscale_node::routing::RoutingTable;

const CONTACTS: usize = 10_000;
const K: usize = 20;

fn contacts() -> Vec<Contact> {
    (0..CONTACTS)
        .map(|i| Contact {
            id: NodeId::random(),
            addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5678)).into(),
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let own = NodeId::random();
    let offered = contacts();
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(CONTACTS as u64));
    group.bench_function("insert 10k contacts", |b| {
        b.iter_batched(
            || RoutingTable::new(own, K),
            |mut table| {
                for contact in &offered {
                    table.add(*contact);
                }
                table
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let targets: Vec<NodeId> = (0..1024).map(|_| NodeId::random()).collect();
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    for offered in [&offered[..200], &offered[..]] {
        let mut table = RoutingTable::new(own, K);
        for contact in offered {
            table.add(*contact);
        }
        let name = format!("closest-{K} of {} held ({} offered)", table.len(), offered.len());
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 1) % targets.len();
                table.closest(black_box(&targets[next]), K, None)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
