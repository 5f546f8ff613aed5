//! A running DHT node: the protocol of the Python `kademlia` package on top of the
//! [`Transport`], the [`RoutingTable`], [`Lookup`]s and [`Storage`].
//!
//! Incoming requests are answered inline on the receive loop (they only read and update local
//! state); anything that needs the network (pushing values to a new contact, pinging the
//! least recently seen contact of a full bucket) is spawned.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::{join_all, BoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use rmpv::Value as Msgpack;
use tokio_util::sync::CancellationToken;

use crate::codec::{
    decode_msgpack, encode_request, find_node_answer, find_value_answer, ping_answer, store_answer,
    stun_answer, Contact, DecodeError, FindValueAnswer, PeerAddr, Request, Response, Value,
    MAX_REQUEST_BODY, MESSAGE_ID_LEN,
};
use crate::config::{ConfigError, NodeConfig};
use crate::id::NodeId;
use crate::lock;
use crate::lookup::{Lookup, LookupKind, LookupOutcome};
use crate::metrics::Metrics;
use crate::routing::{Insert, RoutingTable};
use crate::storage::{Storage, StoreError};
use crate::transport::{Handled, Reader, RequestHandler, RpcError, Transport};

/// Answers a kadscale-only procedure: called with the caller's address and the arguments;
/// `None` sends no answer: the request was a notice. Runs on the receive loop, so it must be
/// quick.
pub type ExtensionHandler = Arc<dyn Fn(SocketAddr, Vec<Msgpack>) -> Option<Msgpack> + Send + Sync>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("binding UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Why a value was not stored in the network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("no known peers to store on; join the network first")]
    NoPeers,
    #[error("none of the {tried} closest nodes stored the value")]
    NotStored { tried: usize },
    #[error(transparent)]
    Refused(#[from] StoreError),
    #[error("a store request for this value has a {size}-byte body; Python peers and this node send at most {MAX_REQUEST_BODY}")]
    TooLargeToSend { size: usize },
}

/// Where a value went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetReport {
    /// Remote nodes that answered `store` with true.
    pub stored_remotely: usize,
    /// Whether this node keeps a copy (it is closer than the farthest of the k closest).
    pub stored_locally: bool,
}

/// A running node; clones share it. Stops with [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    config: NodeConfig,
    local_addr: SocketAddr,
    transport: Transport,
    table: Mutex<RoutingTable>,
    storage: Mutex<Storage>,
    extensions: RwLock<HashMap<String, ExtensionHandler>>,
    /// Contacts being pinged because their bucket is full: at most one ping each.
    pinging: Mutex<HashSet<NodeId>>,
    hand_overs: Mutex<HandOvers>,
    /// The slowest answer of the last lookup that had one: where the next lookup's stall
    /// timer starts.
    last_slowest_answer: Mutex<Option<Duration>>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

/// An address gets at most one hand-over (and one verification ping) per this interval, however
/// many ids it claims and however often it writes while it waits outside the buckets.
const HAND_OVER_INTERVAL: Duration = Duration::from_secs(60);

/// Most values stored at one newcomer per hand-over.
const MAX_HAND_OVER_STORES: usize = 256;

/// Most verification pings awaiting an answer at once; newcomers beyond wait for their next
/// request.
const MAX_VERIFICATIONS_IN_FLIGHT: usize = 64;

/// Most addresses remembered for [`HAND_OVER_INTERVAL`]; when all are recent, no hand-over
/// starts until some expire.
const MAX_TRACKED_NEWCOMERS: usize = 16_384;

/// How a contact's address is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Address {
    /// It answered a call this node sent there: a spoofed source cannot.
    Verified,
    /// Only the source address of a request: anyone can forge it.
    Claimed,
}

/// Which addresses were lately handed values (or checked for them), and how many verification
/// pings are out: the bounds that keep the hand-over from being an amplifier.
#[derive(Default)]
struct HandOvers {
    started: HashMap<PeerAddr, Instant>,
    verifying: usize,
}

impl HandOvers {
    /// Claims a hand-over to `addr` (verifying it first when `address` is only claimed); false
    /// when one started within the interval or the bounds are reached.
    fn claim(&mut self, addr: PeerAddr, address: Address, now: Instant) -> bool {
        if address == Address::Claimed && self.verifying >= MAX_VERIFICATIONS_IN_FLIGHT {
            return false;
        }
        let recent = |at: &Instant| now.duration_since(*at) < HAND_OVER_INTERVAL;
        if self.started.get(&addr).is_some_and(recent) {
            return false;
        }
        if self.started.len() >= MAX_TRACKED_NEWCOMERS {
            self.started.retain(|_, at| recent(at));
            if self.started.len() >= MAX_TRACKED_NEWCOMERS {
                return false;
            }
        }
        self.started.insert(addr, now);
        if address == Address::Claimed {
            self.verifying += 1;
        }
        true
    }
}

/// A lookup stops waiting for silent peers after this many times its slowest answer so far.
const STALL_PER_ANSWER_TIME: u32 = 4;

/// ... but never sooner than this: scheduling noise is not a dead peer, and a peer asked past
/// may hold the only copy nearby (tests/scale.rs failed about 1 run in 11 with 50 or 100 ms
/// on a loaded 2-core machine, none in 10 with 200 ms).
const MIN_LOOKUP_STALL: Duration = Duration::from_millis(200);

/// How long a lookup waits for an answer before asking past the calls in flight. A table full
/// of dead contacts (right after many nodes left) otherwise costs the configured stall (1 s)
/// for every round of dead peers; peers that answer in milliseconds set a shorter one. A
/// lookup starts from the previous lookup's slowest answer, or the configured stall.
struct StallTimer {
    configured: Duration,
    slowest_answer: Option<Duration>,
}

impl StallTimer {
    fn answered_after(&mut self, took: Duration) {
        self.slowest_answer = Some(self.slowest_answer.map_or(took, |slowest| slowest.max(took)));
    }

    fn wait(&self) -> Duration {
        match self.slowest_answer {
            None => self.configured,
            Some(slowest) => {
                // Not `clamp`: a configured stall below the floor wins, without a panic.
                (slowest * STALL_PER_ANSWER_TIME).max(MIN_LOOKUP_STALL).min(self.configured)
            }
        }
    }
}

/// A `find_node` answer as a lookup takes it.
fn nodes_answer(body: &[u8]) -> Result<FindValueAnswer, DecodeError> {
    find_node_answer(body).map(FindValueAnswer::Nodes)
}

impl Node {
    /// Binds `listen`, starts answering requests and refreshing buckets.
    pub async fn start(
        listen: SocketAddr,
        config: NodeConfig,
        metrics: Metrics,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        let transport = Transport::bind(listen, &config, metrics.clone())
            .await
            .map_err(|source| NodeError::Bind { addr: listen, source })?;
        let local_addr =
            transport.local_addr().map_err(|source| NodeError::Bind { addr: listen, source })?;
        let id = config.node_id.unwrap_or_else(NodeId::random);
        let node = Node {
            inner: Arc::new(Inner {
                id,
                local_addr,
                transport,
                table: Mutex::new(
                    RoutingTable::new(id, config.k)
                        .with_max_contacts_per_ip(config.max_contacts_per_ip),
                ),
                storage: Mutex::new(Storage::new(
                    config.storage_ttl,
                    config.max_stored_values,
                    config.max_value_size,
                )),
                extensions: RwLock::new(HashMap::new()),
                pinging: Mutex::new(HashSet::new()),
                hand_overs: Mutex::new(HandOvers::default()),
                last_slowest_answer: Mutex::new(None),
                metrics,
                shutdown: CancellationToken::new(),
                config,
            }),
        };
        let server = node.clone();
        tokio::spawn(async move {
            let shutdown = server.inner.shutdown.clone();
            server.inner.transport.serve(&server, shutdown).await;
        });
        let refresher = node.clone();
        tokio::spawn(async move { refresher.refresh_loop().await });
        tracing::info!(id = %id, addr = %local_addr, "node listening");
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Contacts in the routing table's buckets.
    pub fn routing_table_len(&self) -> usize {
        lock(&self.inner.table).len()
    }

    /// Every contact in the routing table.
    pub fn contacts(&self) -> Vec<Contact> {
        lock(&self.inner.table).contacts()
    }

    /// Values held locally.
    pub fn stored_len(&self) -> usize {
        lock(&self.inner.storage).len()
    }

    /// Stops answering and refreshing; pending calls fail with [`RpcError::Closed`].
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Answers calls of the kadscale-only procedure `name` with `handler`.
    pub fn register_extension(&self, name: impl Into<String>, handler: ExtensionHandler) {
        let mut extensions =
            self.inner.extensions.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        extensions.insert(name.into(), handler);
    }

    fn with_table<R>(&self, change: impl FnOnce(&mut RoutingTable) -> R) -> R {
        let mut table = lock(&self.inner.table);
        let result = change(&mut table);
        self.inner.metrics.set_routing_table_contacts(table.len());
        result
    }

    fn with_storage<R>(&self, change: impl FnOnce(&mut Storage) -> R) -> R {
        let mut storage = lock(&self.inner.storage);
        let result = change(&mut storage);
        self.inner.metrics.set_stored_values(storage.len());
        result
    }

    // ---- calls --------------------------------------------------------------------------

    /// Pings `addr`; the answer is the peer's id. Leaves the routing table alone, as Python's
    /// bootstrap ping does (the peer enters it when it answers a lookup).
    pub async fn ping(&self, addr: SocketAddr, timeout: Duration) -> Result<NodeId, RpcError> {
        let ping = Request::Ping { sender: self.id() };
        self.inner.transport.call(addr, &ping, timeout, ping_answer).await
    }

    /// Asks `addr` which address this node's datagrams come from.
    pub async fn stun(&self, addr: SocketAddr, timeout: Duration) -> Result<SocketAddr, RpcError> {
        self.inner.transport.call(addr, &Request::Stun, timeout, stun_answer).await
    }

    /// Calls a kadscale-only procedure. Peers without it (Python nodes) never answer, which
    /// ends in [`RpcError::Timeout`] and, unlike other calls, does not evict the peer.
    pub async fn call_extension(
        &self,
        addr: SocketAddr,
        name: &str,
        args: Vec<Msgpack>,
        timeout: Duration,
    ) -> Result<Msgpack, RpcError> {
        let request = Request::Extension { name: name.to_owned(), args };
        self.inner.transport.call(addr, &request, timeout, decode_msgpack).await
    }

    /// Sends a kadscale-only notice: an extension request whose handler does not answer.
    pub async fn notify_extension(
        &self,
        addr: SocketAddr,
        name: &str,
        args: Vec<Msgpack>,
    ) -> Result<(), RpcError> {
        let request = Request::Extension { name: name.to_owned(), args };
        self.inner.transport.notify(addr, &request).await
    }

    /// Calls a known contact; an answer welcomes it, a failure evicts it from the routing
    /// table (Python's `handle_call_response`). An `async` block for the reason
    /// [`Transport::call`] gives.
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps copies of its arguments")]
    fn call_contact<T: 'static>(
        &self,
        contact: Contact,
        request: Request,
        read: Reader<T>,
    ) -> impl Future<Output = Result<T, RpcError>> + '_ {
        async move {
            let timeout = self.inner.config.rpc_timeout;
            let result = self
                .inner
                .transport
                .call(contact.addr.socket_addr(), &request, timeout, read)
                .await;
            match &result {
                Ok(_) => self.welcome_if_new(contact, Address::Verified),
                // Local conditions say nothing about the peer.
                Err(
                    RpcError::TooManyCalls { .. } | RpcError::TooLarge { .. } | RpcError::Closed,
                ) => {}
                Err(error) => {
                    let peer = contact.addr.socket_addr();
                    tracing::debug!(%peer, %error, "evicting an unresponsive contact");
                    self.with_table(|table| table.remove(&contact.id));
                }
            }
            result
        }
    }

    async fn store_on(&self, contact: Contact, key: NodeId, value: Value) -> bool {
        let request = Request::Store { sender: self.id(), key, value };
        matches!(self.call_contact(contact, request, store_answer).await, Ok(true))
    }

    /// Not an `async fn`: its future would keep its own copy of the contact and target under
    /// the call's (72 bytes more for each of a lookup's calls in flight).
    fn find_on(
        &self,
        contact: Contact,
        target: NodeId,
        kind: LookupKind,
    ) -> impl Future<Output = Result<FindValueAnswer, RpcError>> + '_ {
        let sender = self.id();
        let (request, read): (_, Reader<_>) = match kind {
            LookupKind::FindNode => (Request::FindNode { sender, key: target }, nodes_answer),
            LookupKind::FindValue => {
                (Request::FindValue { sender, key: target }, find_value_answer)
            }
        };
        self.call_contact(contact, request, read)
    }

    // ---- lookups ------------------------------------------------------------------------

    /// An iterative lookup of `target` that ends when the `k` closest nodes found answered.
    async fn run_lookup(
        &self,
        target: NodeId,
        kind: LookupKind,
        seeds: Vec<Contact>,
        k: usize,
    ) -> LookupOutcome {
        let config = &self.inner.config;
        self.with_table(|table| table.touch(&target));
        let mut lookup = Lookup::new(target, kind, seeds, k, config.alpha, self.id());
        // Boxed: unboxed, the set's stub task takes a whole call future's room (~1 KiB).
        let mut in_flight: FuturesUnordered<BoxFuture<'static, _>> = FuturesUnordered::new();
        let last_slowest = *lock(&self.inner.last_slowest_answer);
        let mut stall =
            StallTimer { configured: config.lookup_stall, slowest_answer: last_slowest };
        loop {
            for contact in lookup.next_batch() {
                let node = self.clone();
                in_flight.push(Box::pin(async move {
                    let sent = Instant::now();
                    let answer = node.find_on(contact, target, kind).await;
                    (contact.id, answer, sent.elapsed())
                }));
            }
            if lookup.is_done() {
                break;
            }
            let next = tokio::time::timeout(stall.wait(), in_flight.next()).await;
            let Ok(next) = next else {
                lookup.on_stall();
                continue;
            };
            let Some((id, answer, took)) = next else {
                break;
            };
            if answer.is_ok() {
                stall.answered_after(took);
            }
            match answer {
                Ok(FindValueAnswer::Nodes(contacts)) => lookup.on_nodes(&id, contacts),
                Ok(FindValueAnswer::Value(value)) => lookup.on_value(&id, value),
                Err(_) => lookup.on_failure(&id),
            }
        }
        if stall.slowest_answer.is_some() {
            *lock(&self.inner.last_slowest_answer) = stall.slowest_answer;
        }
        if !in_flight.is_empty() {
            // Calls the lookup stopped waiting for still run to their end (each within the
            // call timeout), so that a dead node gets evicted and a slow one welcomed.
            tokio::spawn(in_flight.for_each(|_| async {}));
        }
        let outcome = lookup.outcome();
        self.inner.metrics.lookup_finished(kind, &outcome);
        outcome
    }

    fn closest_known(&self, target: &NodeId, count: usize) -> Vec<Contact> {
        lock(&self.inner.table).closest(target, count, None)
    }

    /// Joins through `seeds` (contacts that answered a ping): an iterative `find_node` of
    /// the own id. Returns the closest nodes found; the node is joined when its routing table
    /// is not empty afterwards. This is the seam the bootstrap manager joins through.
    ///
    /// The lookup of the own id meets only nodes near it; every other bucket then gets a few
    /// contacts from a short lookup in its range, in the background and after
    /// `far_refresh_delay` (the paper's join, with lookups that end once `alpha` nodes
    /// answered rather than `k`). Without it, nodes that joined together through seeds in
    /// their own half of the id space can know no node of the other half once the seeds time
    /// out, and then never find a value stored there. Run at once, these lookups were a
    /// quarter of the CPU a storm of 100 joining workers cost; seeds dead by the time they run
    /// do not stop them (see [`Node::refresh_buckets`]).
    pub async fn join(&self, seeds: Vec<Contact>) -> Vec<Contact> {
        let nodes = match self
            .run_lookup(self.id(), LookupKind::FindNode, seeds, self.inner.config.k)
            .await
        {
            LookupOutcome::Nodes(nodes) => nodes,
            LookupOutcome::Value { .. } => Vec::new(),
        };
        if !nodes.is_empty() {
            let delay = self.inner.config.far_refresh_delay.mul_f64(1.0 + rand::random::<f64>());
            let (node, alpha) = (self.clone(), self.inner.config.alpha);
            tokio::spawn(async move {
                // A node shut down meanwhile is let go at once: this task holds its socket.
                tokio::select! {
                    _ = node.inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                let far = lock(&node.inner.table).far_buckets();
                node.refresh_buckets(far, alpha).await;
            });
        }
        nodes
    }

    /// Python's `bootstrap(addrs)`: pings every address, then joins through those that
    /// answered. Returns the closest nodes found.
    pub async fn bootstrap(&self, addrs: &[SocketAddr]) -> Vec<Contact> {
        let seeds = self.ping_all(addrs).await;
        tracing::info!(answered = seeds.len(), asked = addrs.len(), "bootstrapping");
        self.join(seeds).await
    }

    /// Pings every address at once; the nodes that answered (other than this one).
    pub async fn ping_all(&self, addrs: &[SocketAddr]) -> Vec<Contact> {
        let timeout = self.inner.config.rpc_timeout;
        let pings = join_all(addrs.iter().map(|addr| async move {
            match self.ping(*addr, timeout).await {
                Ok(id) => Some(Contact { id, addr: (*addr).into() }),
                Err(error) => {
                    tracing::warn!(%addr, %error, "bootstrap node did not answer");
                    None
                }
            }
        }))
        .await;
        pings.into_iter().flatten().filter(|contact| contact.id != self.id()).collect()
    }

    /// Adds a contact known to be alive to the routing table (and hands it the values it
    /// should hold), as an answer from it would.
    pub fn add_contact(&self, contact: Contact) {
        self.welcome_if_new(contact, Address::Verified);
    }

    /// Stores `value` under the digest `key` on the k closest nodes (and here when this node
    /// is closer than the farthest of them). Succeeds when one remote store did.
    pub async fn set(&self, key: NodeId, value: Value) -> Result<SetReport, SetError> {
        let limit = self.inner.config.max_value_size;
        if value.payload_len() > limit {
            return Err(StoreError::TooLarge { size: value.payload_len(), limit }.into());
        }
        let store = Request::Store { sender: self.id(), key, value: value.clone() };
        let size = encode_request(&[0; MESSAGE_ID_LEN], &store).len() - 1 - MESSAGE_ID_LEN;
        if size > MAX_REQUEST_BODY {
            return Err(SetError::TooLargeToSend { size });
        }
        let seeds = self.closest_known(&key, self.inner.config.k);
        if seeds.is_empty() {
            return Err(SetError::NoPeers);
        }
        let nodes =
            match self.run_lookup(key, LookupKind::FindNode, seeds, self.inner.config.k).await {
                LookupOutcome::Nodes(nodes) => nodes,
                LookupOutcome::Value { .. } => Vec::new(),
            };
        let Some(farthest) = nodes.iter().map(|node| node.id.distance(&key)).max() else {
            return Err(SetError::NoPeers);
        };
        let stored_locally = self.id().distance(&key) < farthest
            && self.with_storage(|storage| storage.put(key, value.clone(), Instant::now())).is_ok();
        let stores = nodes.iter().map(|node| self.store_on(*node, key, value.clone()));
        let stored_remotely = join_all(stores).await.into_iter().filter(|stored| *stored).count();
        if stored_remotely == 0 {
            return Err(SetError::NotStored { tried: nodes.len() });
        }
        Ok(SetReport { stored_remotely, stored_locally })
    }

    /// The value under the digest `key`: local storage first, then an iterative
    /// `find_value`. A found value is also stored at the closest node that lacked it.
    pub async fn get(&self, key: NodeId) -> Option<Value> {
        if let Some(value) = self.with_storage(|storage| storage.get(&key, Instant::now())) {
            return Some(value);
        }
        let seeds = self.closest_known(&key, self.inner.config.k);
        if seeds.is_empty() {
            return None;
        }
        match self.run_lookup(key, LookupKind::FindValue, seeds, self.inner.config.k).await {
            LookupOutcome::Value { value, store_at } => {
                if let Some(contact) = store_at {
                    self.store_on(contact, key, value.clone()).await;
                }
                Some(value)
            }
            LookupOutcome::Nodes(_) => None,
        }
    }

    // ---- the routing table's upkeep -----------------------------------------------------

    /// Python's `welcome_if_new`: a contact not in the routing table gets the stored values it
    /// is now among the closest holders of, and joins the table. Unlike Python, values go only
    /// to an address that answered a call from this node (a claimed one is pinged first), at
    /// most once per address per [`HAND_OVER_INTERVAL`], so that requests with forged source
    /// addresses or made-up ids cannot turn this node into an amplifier.
    fn welcome_if_new(&self, contact: Contact, address: Address) {
        // Cheapest test first: a node without values has nothing to hand over, and skips the
        // scan of a bucket on every request.
        if contact.id != self.id()
            && !lock(&self.inner.storage).is_empty()
            && lock(&self.inner.table).is_new(&contact.id)
            && lock(&self.inner.hand_overs).claim(contact.addr, address, Instant::now())
        {
            // Decided before the contact enters the table, as in Python: newcomers that arrive
            // together must not hide each other (each closer than this node stops the others).
            let values = self.values_for(&contact);
            if values.is_empty() {
                if address == Address::Claimed {
                    lock(&self.inner.hand_overs).verifying -= 1;
                }
            } else {
                let node = self.clone();
                tokio::spawn(async move { node.hand_over_values(contact, address, values).await });
            }
        }
        match self.with_table(|table| table.add(contact)) {
            Insert::BucketFull { least_recent } => self.check_least_recent(least_recent),
            Insert::Added | Insert::Refreshed | Insert::OwnId => {}
        }
    }

    /// Stores at a newcomer every value for which it is closer than the farthest of this node's
    /// k closest contacts while this node is closer than the closest of them (section 2.5 of
    /// the paper), after checking with a ping that a claimed address is the newcomer's.
    async fn hand_over_values(
        &self,
        newcomer: Contact,
        address: Address,
        values: Vec<(NodeId, Value)>,
    ) {
        if address == Address::Claimed {
            let timeout = self.inner.config.rpc_timeout;
            let answer = self.ping(newcomer.addr.socket_addr(), timeout).await.ok();
            lock(&self.inner.hand_overs).verifying -= 1;
            if answer != Some(newcomer.id) {
                return;
            }
        }
        for (key, value) in values {
            if !self.store_on(newcomer, key, value).await {
                // It is gone or refuses: the rest would fail alike.
                return;
            }
        }
    }

    /// Stores a value this node just received at its one contact closer to the key, if any.
    /// Hand-overs alone lose values when many nodes join at once: a holder stops handing over
    /// once it knows a closer node, though that node may have joined before the holder got the
    /// value. Passing each new value one step closer walks it to the closest node, which then
    /// hands it to later newcomers; one store out per value in keeps this from amplifying.
    fn pass_on_closer(&self, key: NodeId, value: Value, from: PeerAddr) {
        let Some(closest) = lock(&self.inner.table).closest(&key, 1, Some(from)).pop() else {
            return;
        };
        if closest.id.distance(&key) < self.id().distance(&key) {
            let node = self.clone();
            tokio::spawn(async move { node.store_on(closest, key, value).await });
        }
    }

    /// The stored values `newcomer` should hold too, at most [`MAX_HAND_OVER_STORES`].
    fn values_for(&self, newcomer: &Contact) -> Vec<(NodeId, Value)> {
        let entries = lock(&self.inner.storage).entries();
        let k = self.inner.config.k;
        let table = lock(&self.inner.table);
        entries
            .into_iter()
            .filter(|(key, _)| {
                let neighbors = table.closest(key, k, Some(newcomer.addr));
                match (neighbors.first(), neighbors.last()) {
                    (Some(closest), Some(farthest)) => {
                        newcomer.id.distance(key) < farthest.id.distance(key)
                            && self.id().distance(key) < closest.id.distance(key)
                    }
                    _ => true,
                }
            })
            .take(MAX_HAND_OVER_STORES)
            .collect()
    }

    /// A full bucket's least recently seen contact is pinged; if it is gone, the newest
    /// replacement takes its place (`call_contact` evicts it).
    fn check_least_recent(&self, contact: Contact) {
        if !lock(&self.inner.pinging).insert(contact.id) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let request = Request::Ping { sender: node.id() };
            let _ = node.call_contact(contact, request, ping_answer).await;
            lock(&node.inner.pinging).remove(&contact.id);
        });
    }

    async fn refresh_loop(&self) {
        let interval = self.inner.config.refresh_interval;
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            // Boxed: between refreshes (an hour) the loop holds only its timer.
            Box::pin(self.refresh()).await;
        }
    }

    /// Refreshes buckets nobody looked into lately with a lookup of a random id in their
    /// range, then republishes values stored long enough ago (Python's `_refresh_table`).
    pub async fn refresh(&self) {
        let config = &self.inner.config;
        let stale =
            lock(&self.inner.table).stale_buckets(Instant::now(), config.bucket_stale_after);
        self.refresh_buckets(stale, config.k).await;
        let old = lock(&self.inner.storage).older_than(config.republish_after, Instant::now());
        for (key, value) in old {
            if let Err(error) = self.set(key, value).await {
                tracing::debug!(key = %key, %error, "republishing failed");
            }
        }
    }

    /// A lookup of a random id in each bucket range `(low, high)`, one after another, each
    /// ending when the `k` closest nodes it found answered. Each starts from the configured `k`
    /// closest contacts and `alpha` more, not just the `alpha` it asks first: when those are
    /// dead (the seeds a node joined through, say), the lookup goes on through the others.
    /// Not all at once, as Python does: every worker of a storm ran a lookup for each of its far
    /// buckets together a second after its join, and the bursts cost each bootstrap node 90 KiB
    /// of resident memory at 1,000 workers; one at a time, each also starts from what the ones
    /// before it found.
    async fn refresh_buckets(&self, ranges: Vec<(NodeId, NodeId)>, k: usize) {
        let known = self.inner.config.k + self.inner.config.alpha;
        for (low, high) in ranges {
            let target = NodeId::random_in_range(&low, &high);
            let seeds = self.closest_known(&target, known);
            self.run_lookup(target, LookupKind::FindNode, seeds, k).await;
        }
    }

    /// The k contacts closest to `key`, closest first as Python sends them, that a
    /// `find_node` (or a `find_value` without the value) from `from` is answered with.
    fn answer_nodes(&self, key: &NodeId, from: PeerAddr) -> Vec<Contact> {
        lock(&self.inner.table).closest(key, self.inner.config.k, Some(from))
    }
}

impl RequestHandler for Node {
    fn handle(&self, from: SocketAddr, request: Request) -> Handled {
        // The sender as the routing table holds it, made once for the uses below.
        let peer = PeerAddr::from(from);
        if let Some(sender) = request.sender() {
            self.welcome_if_new(Contact { id: sender, addr: peer }, Address::Claimed);
        }
        match request {
            Request::Stun => Handled::Answer(Response::Stun(from)),
            Request::Ping { .. } => Handled::Answer(Response::Ping(self.id())),
            Request::Store { key, value, .. } => {
                let now = Instant::now();
                let (was_new, stored) = self.with_storage(|storage| {
                    let was_new = storage.get(&key, now).as_ref() != Some(&value);
                    (was_new, storage.put(key, value.clone(), now))
                });
                match &stored {
                    Err(error) => tracing::debug!(%from, %error, "refused a value"),
                    Ok(()) if was_new => self.pass_on_closer(key, value, peer),
                    Ok(()) => {}
                }
                Handled::Answer(Response::Stored(stored.is_ok()))
            }
            Request::FindNode { key, .. } => {
                Handled::Answer(Response::Nodes(self.answer_nodes(&key, peer)))
            }
            Request::FindValue { key, .. } => Handled::Answer(
                match self.with_storage(|storage| storage.get(&key, Instant::now())) {
                    Some(value) => Response::FoundValue(value),
                    None => Response::Nodes(self.answer_nodes(&key, peer)),
                },
            ),
            Request::Extension { name, args } => {
                let handler = self
                    .inner
                    .extensions
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get(&name)
                    .cloned();
                match handler.map(|handler| handler(from, args)) {
                    Some(Some(answer)) => Handled::Answer(Response::Extension(answer)),
                    Some(None) => Handled::Silently,
                    None => Handled::Unknown,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_follows_the_slowest_answer_within_the_floor_and_the_configured_stall() {
        let configured = Duration::from_secs(1);
        let mut stall = StallTimer { configured, slowest_answer: None };
        assert_eq!(stall.wait(), configured, "no answer yet: the configured stall");
        stall.answered_after(Duration::from_millis(60));
        stall.answered_after(Duration::from_millis(5));
        assert_eq!(stall.wait(), Duration::from_millis(240), "four times the slowest answer");
        stall.answered_after(Duration::from_millis(1));
        let quick = StallTimer { configured, slowest_answer: Some(Duration::from_millis(1)) };
        assert_eq!(quick.wait(), MIN_LOOKUP_STALL);
        stall.answered_after(Duration::from_millis(900));
        assert_eq!(stall.wait(), configured, "never longer than configured");
        let tiny = StallTimer {
            configured: Duration::from_millis(10),
            slowest_answer: Some(Duration::from_millis(1)),
        };
        assert_eq!(tiny.wait(), Duration::from_millis(10), "a configured stall below the floor");
    }

    #[test]
    fn an_address_gets_one_hand_over_per_interval_and_verifications_are_bounded() {
        let now = Instant::now();
        let addr = PeerAddr::from(SocketAddr::from(([127, 0, 0, 1], 4000)));
        let mut hand_overs = HandOvers::default();
        assert!(hand_overs.claim(addr, Address::Claimed, now));
        assert!(!hand_overs.claim(addr, Address::Verified, now + Duration::from_secs(1)));
        assert!(hand_overs.claim(addr, Address::Verified, now + HAND_OVER_INTERVAL));
        let mut busy = HandOvers { verifying: MAX_VERIFICATIONS_IN_FLIGHT, ..HandOvers::default() };
        assert!(!busy.claim(addr, Address::Claimed, now), "too many pings out");
        assert!(busy.claim(addr, Address::Verified, now), "a verified address needs no ping");
    }
}
