//! One `find_node` lookup's own work, without sockets: a node of a 200-node network where
//! every node holds every other in its buckets (k = 25, alpha = 3, as in bench-storm) looks
//! up a random id; each node queried answers with its 25 closest contacts. What is timed is
//! the lookup state machine: merging the answers and choosing whom to ask next.

use std::collections::HashMap;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kadscale_node::codec::Contact;
use kadscale_node::id::NodeId;
use kadscale_node::lookup::{Lookup, LookupKind};
use kadscale_node::routing::RoutingTable;

const NODES: usize = 200;
const K: usize = 25;
const ALPHA: usize = 3;

fn lookup(c: &mut Criterion) {
    let nodes: Vec<Contact> = (0..NODES)
        .map(|i| Contact {
            id: NodeId::random(),
            addr: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5678)).into(),
        })
        .collect();
    let tables: Vec<RoutingTable> = nodes
        .iter()
        .map(|node| {
            let mut table = RoutingTable::new(node.id, K);
            for other in &nodes {
                table.add(*other);
            }
            table
        })
        .collect();
    let index: HashMap<NodeId, usize> =
        nodes.iter().enumerate().map(|(i, node)| (node.id, i)).collect();
    let (own, seeds) = (nodes[0].id, tables[0].closest(&NodeId::random(), K + ALPHA, None));
    let mut answers_merged = 0;
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("find_node in {NODES} nodes, k {K}"), |b| {
        b.iter_batched(
            || {
                // Every node's answer for a fresh target, computed outside the timing.
                let target = NodeId::random();
                let answers: Vec<Vec<Contact>> =
                    tables.iter().map(|table| table.closest(&target, K, None)).collect();
                (target, answers)
            },
            |(target, answers)| {
                let mut lookup =
                    Lookup::new(target, LookupKind::FindNode, seeds.clone(), K, ALPHA, own);
                loop {
                    let batch = lookup.next_batch();
                    if batch.is_empty() {
                        break;
                    }
                    for peer in batch {
                        answers_merged += 1;
                        lookup.on_nodes(&peer.id, answers[index[&peer.id]].clone());
                    }
                }
                lookup.outcome()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert!(answers_merged > 0);
}

criterion_group!(benches, lookup);
criterion_main!(benches);
