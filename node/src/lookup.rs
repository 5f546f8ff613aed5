//! The iterative lookup ("spider crawl") as a pure state machine, after the Python package:
//! 1. query the `alpha` closest uncontacted nodes among the `k` closest known;
//! 2. merge answers as they come; nodes that fail are dropped;
//! 3. when a round of queries did not change the `k` closest, query all uncontacted of them;
//! 4. stop when the `k` closest have all answered, or, for `find_value`, when a value came.
//!
//! Unlike Python, which waits for a whole round (so one dead node costs every round its 5 s
//! timeout), a slot freed by an answer is refilled at once: `alpha` queries stay in flight.
//! When no answer comes for a while the driver calls [`Lookup::on_stall`]: the silent calls
//! become *slow*, the lookup asks past them, and it ends without them once `k` others have
//! answered (with fewer, it waits for them: they may hold the only copy of a value). A
//! `find_value` also waits for slow nodes closer than the `k`-th answer, for the same reason.
//!
//! [`crate::node`] drives it with the transport; tests drive it with made-up answers.

use std::collections::HashSet;

use crate::codec::{Contact, PeerAddr, Value};
use crate::id::{Distance, NodeId};

/// How many candidates beyond `k` a lookup remembers: failed nodes make farther ones visible,
/// as in Python's heap, but a peer that answers with endless made-up ids cannot grow memory.
const CANDIDATE_SLACK_FACTOR: usize = 8;

/// Which procedure the lookup sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupKind {
    FindNode,
    FindValue,
}

impl LookupKind {
    pub fn method(self) -> &'static str {
        match self {
            LookupKind::FindNode => "find_node",
            LookupKind::FindValue => "find_value",
        }
    }
}

/// How a lookup ended.
#[derive(Clone, Debug, PartialEq)]
pub enum LookupOutcome {
    /// The `k` closest nodes that answered, closest first (for `find_value`: none had it).
    Nodes(Vec<Contact>),
    /// A value was found. `store_at` is the closest node that answered without it, which
    /// should be given the value (Python's `nearest_without_value`).
    Value { value: Value, store_at: Option<Contact> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight,
    /// In flight for so long that the lookup goes on without it; a late answer still counts.
    Slow,
    Answered,
}

/// A contact by its distance to the target, which gives back its id (`distance ^ target`):
/// 40 bytes rather than 60 with the id beside it, and a lookup keeps up to 8k waiting ones.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    distance: Distance,
    addr: PeerAddr,
    state: State,
}

impl Candidate {
    fn waiting(contact: Contact, target: &NodeId) -> Candidate {
        Candidate {
            distance: contact.id.distance(target),
            addr: contact.addr,
            state: State::Waiting,
        }
    }

    fn contact(&self, target: &NodeId) -> Contact {
        Contact { id: self.distance.id_from(target), addr: self.addr }
    }
}

/// One lookup in progress.
#[derive(Clone, Debug)]
pub struct Lookup {
    target: NodeId,
    kind: LookupKind,
    k: usize,
    alpha: usize,
    own_id: NodeId,
    /// Sorted by distance to the target, closest first.
    candidates: Vec<Candidate>,
    /// Nodes that failed to answer: dropped and never re-added.
    failed: HashSet<NodeId>,
    /// Distances of the `k` closest when queries were last sent.
    previous_closest: Vec<Distance>,
    values: Vec<Value>,
    nearest_without_value: Option<(Distance, Contact)>,
}

impl Lookup {
    /// A lookup of `target` seeded with `seeds`; `own_id` is never queried.
    pub fn new(
        target: NodeId,
        kind: LookupKind,
        seeds: impl IntoIterator<Item = Contact>,
        k: usize,
        alpha: usize,
        own_id: NodeId,
    ) -> Lookup {
        let mut lookup = Lookup {
            target,
            kind,
            k: k.max(1),
            alpha: alpha.max(1),
            own_id,
            candidates: Vec::new(),
            failed: HashSet::new(),
            previous_closest: Vec::new(),
            values: Vec::new(),
            nearest_without_value: None,
        };
        lookup.merge(seeds.into_iter().collect());
        lookup
    }

    pub fn target(&self) -> NodeId {
        self.target
    }

    pub fn kind(&self) -> LookupKind {
        self.kind
    }

    /// The `k` closest candidates that are not slow: the ones the lookup is about.
    fn visible(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.iter().filter(|candidate| candidate.state != State::Slow).take(self.k)
    }

    /// True when the lookup has its answer: a value came, or the `k` closest nodes that are
    /// not slow have all answered, and either they are `k` or no slow node is left to hear
    /// from (in a small network, a slow node may be the only one holding the value).
    pub fn is_done(&self) -> bool {
        if !self.values.is_empty() {
            return true;
        }
        let mut answered = 0;
        let mut farthest = None;
        for candidate in self.visible() {
            if candidate.state != State::Answered {
                return false;
            }
            answered += 1;
            farthest = Some(candidate.distance);
        }
        let slow_closer_than = |limit: Option<Distance>| {
            self.candidates.iter().any(|candidate| {
                candidate.state == State::Slow
                    && limit.is_none_or(|limit| candidate.distance < limit)
            })
        };
        match self.kind {
            LookupKind::FindNode => answered >= self.k || !slow_closer_than(None),
            // A slow node among the k closest may hold the value (right after a burst of joins
            // it is busy, not dead): wait for it; its call ends within the call timeout.
            LookupKind::FindValue => {
                !slow_closer_than(if answered >= self.k { farthest } else { None })
            }
        }
    }

    /// Gives up waiting for the calls in flight: the lookup goes on as if they had failed,
    /// which lets the next batch ask the nodes behind them. The driver calls this when no
    /// answer came for a while (a dead node otherwise holds up the lookup for its timeout).
    pub fn on_stall(&mut self) {
        for candidate in &mut self.candidates {
            if candidate.state == State::InFlight {
                candidate.state = State::Slow;
            }
        }
    }

    /// The nodes to query now: enough to have `alpha` in flight, or, when the last round
    /// brought nothing closer, every uncontacted one of the `k` closest. Empty when the lookup
    /// is done or enough queries are in flight. Every node returned must be answered with
    /// [`Lookup::on_nodes`], [`Lookup::on_value`] or [`Lookup::on_failure`].
    pub fn next_batch(&mut self) -> Vec<Contact> {
        if self.is_done() {
            return Vec::new();
        }
        let in_flight =
            self.candidates.iter().filter(|candidate| candidate.state == State::InFlight).count();
        let stalled = in_flight == 0
            && self.visible().map(|candidate| &candidate.distance).eq(&self.previous_closest);
        let count = if stalled { self.k } else { self.alpha.saturating_sub(in_flight) };
        let mut batch = Vec::with_capacity(count.min(self.k));
        let target = self.target;
        for candidate in self
            .candidates
            .iter_mut()
            .filter(|candidate| candidate.state != State::Slow)
            .take(self.k)
        {
            if batch.len() == count {
                break;
            }
            if candidate.state == State::Waiting {
                candidate.state = State::InFlight;
                batch.push(candidate.contact(&target));
            }
        }
        if !batch.is_empty() {
            // Refilled in place: taking the ids anew would allocate on every answer.
            let mut closest = std::mem::take(&mut self.previous_closest);
            closest.clear();
            // Room for the k closest once, not a doubling past them (32 where 25 fit).
            closest.reserve_exact(self.k);
            closest.extend(self.visible().map(|candidate| candidate.distance));
            self.previous_closest = closest;
        }
        batch
    }

    /// Where `id` is among the candidates: a binary search by distance, since ids at the same
    /// distance from the target are the same id.
    fn position(&self, id: &NodeId) -> Option<usize> {
        let distance = id.distance(&self.target);
        self.candidates.binary_search_by(|candidate| candidate.distance.cmp(&distance)).ok()
    }

    fn mark_answered(&mut self, from: &NodeId) -> Option<Contact> {
        let index = self.position(from)?;
        let candidate = &mut self.candidates[index];
        if !matches!(candidate.state, State::InFlight | State::Slow) {
            return None;
        }
        candidate.state = State::Answered;
        Some(candidate.contact(&self.target))
    }

    /// `from` answered with contacts (a `find_node` answer, or `find_value` without the value).
    pub fn on_nodes(&mut self, from: &NodeId, mut contacts: Vec<Contact>) {
        let Some(answered) = self.mark_answered(from) else {
            return;
        };
        if self.kind == LookupKind::FindValue {
            let distance = answered.id.distance(&self.target);
            if self.nearest_without_value.is_none_or(|(nearest, _)| distance < nearest) {
                self.nearest_without_value = Some((distance, answered));
            }
        }
        // An honest peer sends at most k; more is ignored rather than trusted.
        contacts.truncate(self.k);
        self.merge(contacts);
    }

    /// `from` answered a `find_value` with the value.
    pub fn on_value(&mut self, from: &NodeId, value: Value) {
        if self.mark_answered(from).is_some() {
            self.values.push(value);
        }
    }

    /// `from` did not answer (or answered nonsense): it is dropped from the lookup.
    pub fn on_failure(&mut self, from: &NodeId) {
        if let Some(index) = self.position(from) {
            if matches!(self.candidates[index].state, State::InFlight | State::Slow) {
                self.candidates.remove(index);
                self.failed.insert(*from);
            }
        }
    }

    /// Adds the contacts not yet known (nor failed, nor this node) as candidates, in passes
    /// over the sorted lists: a binary search and an insert per contact (each insert moving
    /// the list's tail) were 5% to 9% of a joining node's CPU.
    fn merge(&mut self, mut contacts: Vec<Contact>) {
        let target = self.target;
        // Honest peers answer closest first: then the sort is skipped, and so is computing
        // each distance twice for it.
        let mut previous = None;
        let sorted = contacts.iter().all(|contact| {
            let distance = contact.id.distance(&target);
            previous.replace(distance).is_none_or(|previous| previous <= distance)
        });
        if !sorted {
            contacts.sort_unstable_by_key(|contact| contact.id.distance(&target));
        }
        contacts.dedup_by_key(|contact| contact.id);
        // Known ones are found by walking the candidates alongside, both sorted.
        let mut known = self.candidates.iter().map(|candidate| candidate.distance).peekable();
        contacts.retain(|contact| {
            let distance = contact.id.distance(&target);
            while known.next_if(|known| *known < distance).is_some() {}
            known.peek() != Some(&distance)
                && contact.id != self.own_id
                && !self.failed.contains(&contact.id)
        });
        // Grown by the new candidates first (as placeholders), then filled from the back.
        let mut old = self.candidates.len();
        // Exactly: doubling left many lookups of a join storm holding room for 112 candidates
        // (6 KiB) when 60 were known, and each node of a process joins at once.
        self.candidates.reserve_exact(contacts.len());
        self.candidates
            .extend(contacts.iter().map(|&contact| Candidate::waiting(contact, &target)));
        let mut write = self.candidates.len();
        for contact in contacts.into_iter().rev() {
            let candidate = Candidate::waiting(contact, &target);
            while old > 0 && self.candidates[old - 1].distance > candidate.distance {
                old -= 1;
                write -= 1;
                self.candidates[write] = self.candidates[old];
            }
            write -= 1;
            self.candidates[write] = candidate;
        }
        self.forget_far_waiting();
    }

    /// Never-queried candidates far down the list are forgotten; queried ones are kept so
    /// that they are not queried again.
    fn forget_far_waiting(&mut self) {
        let limit = self.k * CANDIDATE_SLACK_FACTOR;
        let mut index = 0;
        self.candidates.retain(|candidate| {
            index += 1;
            index <= limit || candidate.state != State::Waiting
        });
    }

    /// The result, once [`Lookup::is_done`] (or earlier, with what is known so far).
    pub fn outcome(&self) -> LookupOutcome {
        if let Some(value) = most_common(&self.values) {
            return LookupOutcome::Value {
                value,
                store_at: self.nearest_without_value.map(|(_, contact)| contact),
            };
        }
        LookupOutcome::Nodes(
            self.candidates
                .iter()
                .filter(|candidate| candidate.state == State::Answered)
                .take(self.k)
                .map(|candidate| candidate.contact(&self.target))
                .collect(),
        )
    }
}

/// The value most peers returned (Python's `Counter.most_common`), first seen on a tie.
fn most_common(values: &[Value]) -> Option<Value> {
    let mut best: Option<(&Value, usize)> = None;
    for value in values {
        let count = values.iter().filter(|other| *other == value).count();
        if best.is_none_or(|(_, best_count)| count > best_count) {
            best = Some((value, count));
        }
    }
    best.map(|(value, _)| value.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::routing::RoutingTable;

    fn contact(id: NodeId, port: u16) -> Contact {
        Contact { id, addr: PeerAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port) }
    }

    #[test]
    fn a_candidate_is_40_bytes() {
        // Distance 20, address 18, state 1 and a byte of padding: 56 with a `SocketAddr`.
        assert_eq!(std::mem::size_of::<Candidate>(), 40);
    }

    /// A simulated network: every node has a routing table of some others.
    struct Network {
        nodes: Vec<Contact>,
        tables: HashMap<NodeId, RoutingTable>,
        values: HashMap<NodeId, Value>,
        dead: HashSet<NodeId>,
    }

    impl Network {
        fn new(size: u16, k: usize) -> Network {
            let nodes: Vec<Contact> = (0..size).map(|i| contact(NodeId::random(), i + 1)).collect();
            let mut tables = HashMap::new();
            for (i, node) in nodes.iter().enumerate() {
                let mut table = RoutingTable::new(node.id, k);
                // Every node has heard of every other; its buckets keep what Kademlia keeps.
                for (j, other) in nodes.iter().enumerate() {
                    if i != j {
                        table.add(*other);
                    }
                }
                tables.insert(node.id, table);
            }
            Network { nodes, tables, values: HashMap::new(), dead: HashSet::new() }
        }

        fn run(&self, lookup: &mut Lookup) -> (LookupOutcome, usize) {
            let mut queried = 0;
            loop {
                let batch = lookup.next_batch();
                if batch.is_empty() {
                    assert!(lookup.is_done());
                    return (lookup.outcome(), queried);
                }
                for peer in batch {
                    queried += 1;
                    if self.dead.contains(&peer.id) {
                        lookup.on_failure(&peer.id);
                    } else if let (LookupKind::FindValue, Some(value)) =
                        (lookup.kind(), self.values.get(&peer.id))
                    {
                        lookup.on_value(&peer.id, value.clone());
                    } else {
                        let answer = self.tables[&peer.id].closest(&lookup.target(), 20, None);
                        lookup.on_nodes(&peer.id, answer);
                    }
                }
            }
        }

        fn true_closest(&self, target: &NodeId, count: usize) -> Vec<Contact> {
            let mut all: Vec<Contact> =
                self.nodes.iter().filter(|c| !self.dead.contains(&c.id)).copied().collect();
            all.sort_by_key(|c| c.id.distance(target));
            all.truncate(count);
            all
        }
    }

    #[test]
    fn find_node_converges_on_the_true_closest() {
        let network = Network::new(300, 20);
        let own = NodeId::random();
        for _ in 0..10 {
            let target = NodeId::random();
            let seeds = vec![network.nodes[0]];
            let mut lookup = Lookup::new(target, LookupKind::FindNode, seeds, 20, 3, own);
            let (outcome, queried) = network.run(&mut lookup);
            assert_eq!(outcome, LookupOutcome::Nodes(network.true_closest(&target, 20)));
            assert!(queried < 300, "a lookup should not crawl the whole network");
        }
    }

    #[test]
    fn first_round_queries_alpha_and_stalled_round_queries_all_k() {
        let target = NodeId::random();
        let seeds: Vec<Contact> = (0..10).map(|i| contact(NodeId::random(), i + 1)).collect();
        let mut lookup =
            Lookup::new(target, LookupKind::FindNode, seeds.clone(), 20, 3, NodeId::ZERO);
        let first = lookup.next_batch();
        assert_eq!(first.len(), 3);
        assert!(lookup.next_batch().is_empty(), "alpha queries are in flight already");
        // One answer frees one slot, refilled at once.
        lookup.on_nodes(&first[0].id, vec![]);
        let refill = lookup.next_batch();
        assert_eq!(refill.len(), 1);
        for peer in first[1..].iter().chain(&refill) {
            lookup.on_nodes(&peer.id, vec![]);
        }
        // Nothing new was learnt: the next round asks every remaining uncontacted one.
        let second = lookup.next_batch();
        assert_eq!(second.len(), 6);
        for peer in &second {
            lookup.on_failure(&peer.id);
        }
        assert!(lookup.is_done());
        match lookup.outcome() {
            LookupOutcome::Nodes(nodes) => assert_eq!(nodes.len(), 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failed_nodes_are_dropped_and_not_re_added() {
        let mut network = Network::new(200, 20);
        let target = NodeId::random();
        let victims: Vec<NodeId> = network.true_closest(&target, 5).iter().map(|c| c.id).collect();
        network.dead.extend(victims.iter().copied());
        let seed = *network.nodes.iter().find(|node| !victims.contains(&node.id)).unwrap();
        let mut lookup = Lookup::new(target, LookupKind::FindNode, vec![seed], 20, 3, NodeId::ZERO);
        let (outcome, _) = network.run(&mut lookup);
        let LookupOutcome::Nodes(nodes) = outcome else { panic!("no value lookup") };
        assert!(nodes.iter().all(|c| !victims.contains(&c.id)));
        // Answers hold 20 contacts of which 5 are the dead ones, so the alive nodes ranked
        // beyond what answers reveal stay unknown, exactly as with Python's crawl.
        let truth = network.true_closest(&target, 20);
        assert!(nodes.len() >= 15, "only {} nodes found", nodes.len());
        assert_eq!(nodes[..15], truth[..15]);
        assert!(nodes
            .windows(2)
            .all(|pair| pair[0].id.distance(&target) < pair[1].id.distance(&target)));
    }

    #[test]
    fn find_value_short_circuits_and_names_the_nearest_without_it() {
        let mut network = Network::new(200, 20);
        let target = NodeId::random();
        let holders = network.true_closest(&target, 3);
        for holder in &holders {
            network.values.insert(holder.id, Value::Str("v".into()));
        }
        let mut lookup =
            Lookup::new(target, LookupKind::FindValue, vec![network.nodes[9]], 20, 3, NodeId::ZERO);
        let (outcome, _) = network.run(&mut lookup);
        match outcome {
            LookupOutcome::Value { value, store_at } => {
                assert_eq!(value, Value::Str("v".into()));
                let store_at = store_at.expect("someone answered without the value");
                assert!(!holders.iter().any(|holder| holder.id == store_at.id));
            }
            other => panic!("expected the value, got {other:?}"),
        }
    }

    #[test]
    fn find_value_without_holders_ends_with_nodes() {
        let network = Network::new(100, 20);
        let target = NodeId::random();
        let mut lookup =
            Lookup::new(target, LookupKind::FindValue, vec![network.nodes[1]], 20, 3, NodeId::ZERO);
        let (outcome, _) = network.run(&mut lookup);
        assert_eq!(outcome, LookupOutcome::Nodes(network.true_closest(&target, 20)));
    }

    #[test]
    fn own_id_unknown_and_duplicate_answers_are_ignored() {
        let own = NodeId::random();
        let peer = contact(NodeId::random(), 1);
        let mut lookup = Lookup::new(
            NodeId::random(),
            LookupKind::FindNode,
            vec![peer, contact(own, 2)],
            20,
            3,
            own,
        );
        let batch = lookup.next_batch();
        assert_eq!(batch, vec![peer]);
        lookup.on_nodes(&NodeId::random(), vec![contact(NodeId::random(), 3)]);
        lookup.on_nodes(&peer.id, vec![peer, contact(own, 2)]);
        lookup.on_nodes(&peer.id, vec![contact(NodeId::random(), 4)]);
        assert!(lookup.is_done());
        assert_eq!(lookup.outcome(), LookupOutcome::Nodes(vec![peer]));
    }

    #[test]
    fn endless_made_up_contacts_stay_bounded() {
        let target = NodeId::random();
        let liar = contact(NodeId::random(), 1);
        let mut lookup = Lookup::new(target, LookupKind::FindNode, vec![liar], 4, 1, NodeId::ZERO);
        for _ in 0..50 {
            for peer in lookup.next_batch() {
                let made_up = (0..100).map(|i| contact(NodeId::random(), i)).collect();
                lookup.on_nodes(&peer.id, made_up);
            }
            let waiting = lookup.candidates.iter().filter(|c| c.state == State::Waiting).count();
            assert!(waiting <= 4 * CANDIDATE_SLACK_FACTOR, "{waiting} candidates kept");
        }
    }

    #[test]
    fn the_candidates_hold_no_more_room_than_they_ever_needed() {
        let seeds: Vec<Contact> = (0..3).map(|port| contact(NodeId::random(), port)).collect();
        let mut lookup =
            Lookup::new(NodeId::random(), LookupKind::FindNode, seeds, 20, 3, NodeId::ZERO);
        let mut longest = lookup.candidates.len();
        for round in 0..2u16 {
            for peer in lookup.next_batch() {
                // Each answer names 20 nodes nobody named before, as early in a join.
                let fresh = (0..20).map(|i| contact(NodeId::random(), 100 * round + i)).collect();
                lookup.on_nodes(&peer.id, fresh);
                longest = longest.max(lookup.candidates.len());
            }
        }
        assert!(longest > 100, "the lookup met {longest} candidates, too few to tell");
        // Doubling would have room for 184.
        assert_eq!(lookup.candidates.capacity(), longest);
    }

    #[test]
    fn answers_in_any_order_keep_the_candidates_sorted_and_distinct() {
        let own = NodeId::random();
        let first = contact(NodeId::random(), 1);
        let mut lookup = Lookup::new(NodeId::random(), LookupKind::FindNode, [first], 20, 1, own);
        let mut expected = vec![first.id];
        for round in 0..6u16 {
            let asked = lookup.next_batch();
            let mut answer: Vec<Contact> =
                (0..16).map(|i| contact(NodeId::random(), 100 * round + i)).collect();
            expected.extend(answer.iter().map(|contact| contact.id));
            // Repeats within the answer and of known candidates, and this node itself: k in all.
            answer.extend([answer[3], answer[0], first, contact(own, 9)]);
            answer.reverse();
            lookup.on_nodes(&asked[0].id, answer);
        }
        let distances: Vec<Distance> = lookup.candidates.iter().map(|c| c.distance).collect();
        assert!(distances.windows(2).all(|pair| pair[0] < pair[1]), "not sorted, or repeated");
        let mut kept: Vec<NodeId> =
            lookup.candidates.iter().map(|c| c.contact(&lookup.target).id).collect();
        kept.sort();
        expected.sort();
        assert_eq!(kept, expected);
    }

    /// A contact whose id starts with `byte`: near `NodeId::ZERO` in that order.
    fn near(byte: u8, port: u16) -> Contact {
        let mut id = [0u8; 20];
        id[0] = byte;
        contact(NodeId(id), port)
    }

    #[test]
    fn slow_nodes_beyond_the_k_closest_answered_are_not_waited_for() {
        let target = NodeId::ZERO;
        let (a, b, c) = (near(1, 1), near(2, 2), near(3, 3));
        let mut lookup =
            Lookup::new(target, LookupKind::FindNode, vec![c, b, a], 2, 3, NodeId::MAX);
        assert_eq!(lookup.next_batch(), vec![a, b]);
        lookup.on_nodes(&a.id, vec![]);
        assert!(!lookup.is_done(), "b, one of the 2 closest, is still in flight");
        lookup.on_nodes(&b.id, vec![]);
        assert!(lookup.is_done());
        assert_eq!(lookup.outcome(), LookupOutcome::Nodes(vec![a, b]));

        let mut lookup =
            Lookup::new(target, LookupKind::FindValue, vec![c, b, a], 2, 3, NodeId::MAX);
        let batch = lookup.next_batch();
        assert_eq!(batch, vec![a, b]);
        lookup.on_value(&b.id, Value::Int(5));
        assert!(lookup.is_done(), "a value ends a find_value without waiting for a");
    }

    #[test]
    fn a_stalled_lookup_asks_past_silent_nodes_and_still_takes_late_answers() {
        let target = NodeId::ZERO;
        let (a, b, c) = (near(1, 1), near(2, 2), near(3, 3));
        let mut lookup =
            Lookup::new(target, LookupKind::FindNode, vec![a, b, c], 2, 1, NodeId::MAX);
        assert_eq!(lookup.next_batch(), vec![a]);
        lookup.on_stall();
        assert_eq!(lookup.next_batch(), vec![b], "a is slow: the next closest is asked");
        lookup.on_nodes(&b.id, vec![]);
        assert_eq!(lookup.next_batch(), vec![c]);
        lookup.on_nodes(&c.id, vec![]);
        assert!(lookup.is_done(), "the 2 closest that are not slow answered");
        lookup.on_nodes(&a.id, vec![]);
        assert_eq!(lookup.outcome(), LookupOutcome::Nodes(vec![a, b]), "a's late answer counts");
    }

    #[test]
    fn without_k_answers_a_lookup_waits_for_its_slow_nodes() {
        let (slow, quick) = (contact(NodeId([1; 20]), 1), contact(NodeId([2; 20]), 2));
        let mut lookup =
            Lookup::new(NodeId::ZERO, LookupKind::FindValue, vec![slow, quick], 20, 3, NodeId::MAX);
        assert_eq!(lookup.next_batch(), vec![slow, quick]);
        lookup.on_nodes(&quick.id, vec![]);
        lookup.on_stall();
        assert!(lookup.next_batch().is_empty());
        assert!(!lookup.is_done(), "the slow node may hold the value");
        lookup.on_value(&slow.id, Value::Bool(true));
        assert!(lookup.is_done());
        assert!(matches!(lookup.outcome(), LookupOutcome::Value { value: Value::Bool(true), .. }));
    }

    #[test]
    fn most_common_value_wins() {
        let values = [Value::Int(1), Value::Int(2), Value::Int(2)];
        assert_eq!(most_common(&values), Some(Value::Int(2)));
        assert_eq!(most_common(&[]), None);
    }
}
