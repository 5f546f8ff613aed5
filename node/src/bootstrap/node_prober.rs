//! The bootstrap manager over a real [`Node`], and the bootstrap side of `kadscale_load`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use rmpv::Value as Msgpack;
use tokio::time::Instant;

use super::args::BootstrapArgs;
use super::discovery::{Discovery, DiscoveryError, SystemResolver};
use super::load::{LoadReport, LoadTracker, JOINED_PROCEDURE, LOAD_PROCEDURE};
use super::manager::{BootstrapManager, BootstrapMetrics, ProbeError, Prober};
use crate::codec::Contact;
use crate::id::NodeId;
use crate::lock;
use crate::metrics::{Metrics, PROCEDURES};
use crate::node::Node;
use crate::transport::RpcError;

/// Probes bootstrap endpoints with a running node's own RPCs.
pub struct NodeProber {
    node: Node,
    /// The id each endpoint answered its last ping with: a join needs contacts, not addresses.
    peer_ids: Mutex<HashMap<SocketAddr, NodeId>>,
}

impl NodeProber {
    pub fn new(node: Node) -> Self {
        NodeProber { node, peer_ids: Mutex::new(HashMap::new()) }
    }

    fn own_id_arg(&self) -> Vec<Msgpack> {
        vec![Msgpack::Binary(self.node.id().as_bytes().to_vec())]
    }

    /// Tells each seed it served a join, in the background, with a notice that nobody
    /// answers: Python seeds would not, and the join has nothing to wait for.
    fn notify_seeds(&self, seeds: Vec<SocketAddr>) {
        let (node, args) = (self.node.clone(), self.own_id_arg());
        tokio::spawn(async move {
            for seed in seeds {
                if let Err(error) =
                    node.notify_extension(seed, JOINED_PROCEDURE, args.clone()).await
                {
                    tracing::debug!(%seed, %error, "kadscale_joined not sent");
                }
            }
        });
    }
}

impl Prober for NodeProber {
    async fn ping(&self, addr: SocketAddr, timeout: Duration) -> Result<Duration, ProbeError> {
        let started = Instant::now();
        match self.node.ping(addr, timeout).await {
            Ok(id) if id == self.node.id() => Err(ProbeError::IsSelf),
            Ok(id) => {
                lock(&self.peer_ids).insert(addr, id);
                Ok(started.elapsed())
            }
            Err(RpcError::Timeout { .. }) => Err(ProbeError::Timeout(timeout)),
            Err(error) => Err(ProbeError::Failed(error.to_string())),
        }
    }

    async fn load(&self, addr: SocketAddr, timeout: Duration) -> Option<LoadReport> {
        let answer = self
            .node
            .call_extension(addr, LOAD_PROCEDURE, self.own_id_arg(), timeout)
            .await
            .ok()?;
        LoadReport::from_value(&answer)
            .inspect_err(|error| tracing::warn!(%addr, %error, "ignoring a bad load report"))
            .ok()
    }

    async fn join(&self, seeds: Vec<SocketAddr>) -> bool {
        let contacts: Vec<Contact> = {
            let ids = lock(&self.peer_ids);
            seeds
                .iter()
                .filter_map(|addr| {
                    ids.get(addr).map(|id| Contact { id: *id, addr: (*addr).into() })
                })
                .collect()
        };
        self.node.join(contacts).await;
        let joined = self.node.routing_table_len() > 0;
        if joined {
            self.notify_seeds(seeds);
        }
        joined
    }

    fn routing_table_len(&self) -> usize {
        self.node.routing_table_len()
    }
}

/// Requests served of every procedure a kadscale node answers: the protocol's and its own,
/// for the request rate of its load report.
fn requests_total(metrics: &Metrics) -> u64 {
    PROCEDURES
        .iter()
        .chain(&[LOAD_PROCEDURE, JOINED_PROCEDURE])
        .map(|method| metrics.served_total(method))
        .sum()
}

/// Makes `node` answer `kadscale_load` from `tracker`, and count a join for every
/// `kadscale_joined` notice. The handlers hold the node's metrics, not the node, so that they
/// keep no node alive after its shutdown.
pub fn serve_load(node: &Node, tracker: LoadTracker) {
    let tracker = Arc::new(Mutex::new(tracker));
    let metrics = node.metrics().clone();
    let load_tracker = tracker.clone();
    node.register_extension(
        LOAD_PROCEDURE,
        Arc::new(move |_from, _args| {
            let now = Instant::now();
            let routing_table_size = metrics.routing_table_contacts();
            let mut tracker = lock(&load_tracker);
            tracker.observe_requests_total(now, requests_total(&metrics));
            Some(tracker.report(now, routing_table_size).to_value())
        }),
    );
    node.register_extension(
        JOINED_PROCEDURE,
        Arc::new(move |_from, _args| {
            lock(&tracker).record_join(Instant::now());
            None
        }),
    );
}

/// The bootstrap manager of a running `dht-node`.
pub type NodeManager = BootstrapManager<NodeProber, SystemResolver>;

/// Sets up the bootstrap manager of `node` from the command line, its metrics registered into
/// `registry`. A bootstrap node (`serves_joins`) also answers `kadscale_load` and counts the
/// `kadscale_joined` notices of the workers it served. Fails on a bad `--bootstrap-file`.
pub fn manage_node(
    node: &Node,
    args: &BootstrapArgs,
    serves_joins: bool,
    registry: &mut Registry,
) -> Result<NodeManager, DiscoveryError> {
    let discovery = Discovery::new(args.discovery_config(), SystemResolver)?;
    if serves_joins {
        serve_load(node, args.load_tracker(Instant::now()));
    }
    let config = args.manager_config();
    let prober = NodeProber::new(node.clone());
    Ok(BootstrapManager::new(
        Arc::new(prober),
        discovery,
        config,
        BootstrapMetrics::register(registry),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::bootstrap::backoff::Backoff;
    use crate::bootstrap::discovery::{Discovery, DiscoveryConfig, SystemResolver};
    use crate::bootstrap::endpoint::HostPort;
    use crate::bootstrap::manager::{
        BootstrapManager, BootstrapMetrics, JoinOutcome, ManagerConfig,
    };
    use crate::bootstrap::selection::SelectionStrategy;
    use crate::config::NodeConfig;
    use crate::metrics::DropReason;

    const TIMEOUT: Duration = Duration::from_millis(500);

    async fn start_node() -> Node {
        let config = NodeConfig { rpc_timeout: TIMEOUT, ..NodeConfig::default() };
        Node::start("127.0.0.1:0".parse().unwrap(), config, Metrics::unregistered()).await.unwrap()
    }

    async fn start_bootstrap(max_joins: u64) -> Node {
        let node = start_node().await;
        serve_load(&node, LoadTracker::new(Duration::from_secs(60), max_joins, Instant::now()));
        node
    }

    /// `N` bootstrap nodes (`max_joins` a minute each), the others joined through the first.
    async fn joined_bootstraps<const N: usize>(max_joins: u64) -> [Node; N] {
        let mut bootstraps = Vec::with_capacity(N);
        for _ in 0..N {
            bootstraps.push(start_bootstrap(max_joins).await);
        }
        for peer in &bootstraps[1..] {
            peer.bootstrap(&[bootstraps[0].local_addr()]).await;
        }
        bootstraps.try_into().unwrap_or_else(|_| unreachable!("{N} bootstrap nodes were started"))
    }

    fn manager_for(node: &Node, bootstraps: &[&Node], strategy: SelectionStrategy) -> NodeManager {
        let config =
            ManagerConfig { strategy, connection_timeout: TIMEOUT, ..ManagerConfig::default() };
        manager_with(node, bootstraps, config)
    }

    fn manager_with(node: &Node, bootstraps: &[&Node], config: ManagerConfig) -> NodeManager {
        let static_entries = bootstraps
            .iter()
            .map(|b| HostPort {
                host: b.local_addr().ip().to_string(),
                port: b.local_addr().port(),
            })
            .collect();
        let discovery = Discovery::new(
            DiscoveryConfig { static_entries, ..DiscoveryConfig::default() },
            SystemResolver,
        )
        .unwrap();
        let metrics = BootstrapMetrics::register(&mut Registry::default());
        let prober = NodeProber::new(node.clone());
        BootstrapManager::new(Arc::new(prober), discovery, config, metrics)
    }

    /// A worker node whose manager runs in the background.
    struct Worker {
        node: Node,
        running: tokio::task::JoinHandle<()>,
        /// Completes with the time from the manager's start to the node being joined.
        joined_after: tokio::task::JoinHandle<Duration>,
    }

    async fn spawn_worker(bootstraps: &[&Node], config: ManagerConfig) -> Worker {
        let node = start_node().await;
        let manager = Arc::new(manager_with(&node, bootstraps, config));
        let mut joined = manager.subscribe_joined();
        let started = Instant::now();
        let running = tokio::spawn(async move { manager.run().await });
        let joined_after = tokio::spawn(async move {
            // The sender lives as long as the manager runs, so this fails only if it stopped.
            joined.wait_for(|joined| *joined).await.expect("the manager runs");
            started.elapsed()
        });
        Worker { node, running, joined_after }
    }

    /// Waits for the worker to join, at most `within`, and stops its manager.
    async fn joined_within(worker: Worker, within: Duration) -> (Node, Duration) {
        let took = tokio::time::timeout(within, worker.joined_after)
            .await
            .expect("joined in time")
            .unwrap();
        worker.running.abort();
        (worker.node, took)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_workers_join_while_bootstrap_nodes_fail() {
        let bootstraps: [Node; 3] = joined_bootstraps(50).await;
        // One is down before the workers start, one goes down while they join.
        bootstraps[0].shutdown();
        let all: Vec<&Node> = bootstraps.iter().collect();
        let config = ManagerConfig {
            connection_timeout: TIMEOUT,
            backoff: Backoff { retry_delay: Duration::from_millis(100), max_retries: 3 },
            ..ManagerConfig::default()
        };
        let mut workers = Vec::new();
        for index in 0..100 {
            if index == 30 {
                bootstraps[1].shutdown();
            }
            workers.push(spawn_worker(&all, config.clone()).await);
        }
        // A join waits one timeout for the pings (the stopped nodes stay silent), then its
        // lookup may wait on the stopped nodes that other nodes still list, a timeout per
        // round; measured 0.7 to 1 s, bounded at 6 timeouts for a loaded machine.
        let bound = TIMEOUT * 6;
        for (index, worker) in workers.into_iter().enumerate() {
            let (node, took) = joined_within(worker, bound * 2).await;
            assert!(node.routing_table_len() > 0, "worker {index}");
            assert!(took <= bound, "worker {index} took {took:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_bootstrap_node_is_healthy_again_within_one_interval() {
        let stays = start_bootstrap(50).await;
        let restarts = start_bootstrap(50).await;
        let port_of_restarted = restarts.local_addr();
        let interval = Duration::from_millis(300);
        let config = ManagerConfig {
            health_check_interval: interval,
            failure_threshold: 2,
            connection_timeout: Duration::from_millis(100),
            ..ManagerConfig::default()
        };
        let worker = start_node().await;
        let manager = Arc::new(manager_with(&worker, &[&stays, &restarts], config));
        let running = tokio::spawn({
            let manager = manager.clone();
            async move { manager.run().await }
        });
        let healthy = |manager: &NodeManager| {
            let state =
                manager.endpoints().into_iter().find(|s| s.endpoint.addr == port_of_restarted);
            state.is_some_and(|s| s.health.is_healthy())
        };
        restarts.shutdown();
        drop(restarts);
        let deadline = Instant::now() + interval * 6;
        while healthy(&manager) {
            assert!(Instant::now() < deadline, "two failed checks make it unhealthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The stopped node's socket closes once its tasks have ended.
        let config = NodeConfig { rpc_timeout: TIMEOUT, ..NodeConfig::default() };
        let restarted = loop {
            match Node::start(port_of_restarted, config.clone(), Metrics::unregistered()).await {
                Ok(node) => break node,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let back_at = Instant::now();
        while !healthy(&manager) {
            let waited = back_at.elapsed();
            // One interval, plus a check already under way timing out, plus scheduling slack.
            let bound = interval + Duration::from_millis(100 + 200);
            assert!(waited < bound, "still unhealthy after {waited:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running.abort();
        restarted.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn least_loaded_spreads_joins_within_one_and_a_half_fair_shares() {
        let bootstraps: [Node; 3] = joined_bootstraps(50).await;
        let all: Vec<&Node> = bootstraps.iter().collect();
        let config = ManagerConfig {
            strategy: SelectionStrategy::LeastLoaded,
            seeds_per_join: 1,
            connection_timeout: TIMEOUT,
            ..ManagerConfig::default()
        };
        // Ten waves of ten workers starting together, as a Deployment scales up.
        for _ in 0..10 {
            let mut wave = Vec::new();
            for _ in 0..10 {
                wave.push(spawn_worker(&all, config.clone()).await);
            }
            for worker in wave {
                joined_within(worker, Duration::from_secs(5)).await;
            }
            // The kadscale_joined notices travel in the background.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let observer = NodeProber::new(start_node().await);
        let served = joins_served(&observer, &all, 100).await;
        let fair_share = 100.0 / 3.0;
        assert!(served.iter().all(|&n| n as f64 <= 1.5 * fair_share), "{served:?}");
    }

    /// The joins each of `bootstraps` reports, once they add up to `total`: the
    /// `kadscale_joined` notices travel in the background.
    async fn joins_served(observer: &NodeProber, bootstraps: &[&Node], total: u64) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut served = Vec::new();
            for bootstrap in bootstraps {
                served.push(load_of(observer, bootstrap).await.joins_last_minute);
            }
            if served.iter().sum::<u64>() == total || Instant::now() > deadline {
                assert_eq!(served.iter().sum::<u64>(), total, "{served:?}");
                return served;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn load_of(prober: &NodeProber, node: &Node) -> LoadReport {
        prober
            .load(node.local_addr(), TIMEOUT)
            .await
            .expect("a kadscale bootstrap node reports its load")
    }

    #[tokio::test]
    async fn workers_join_through_real_bootstrap_nodes_which_count_the_joins() {
        let [first, second] = joined_bootstraps(1).await;
        let observer = NodeProber::new(start_node().await);
        let before = load_of(&observer, &first).await;
        assert_eq!(before.joins_last_minute, 0);
        assert!(!before.overloaded);

        for _ in 0..2 {
            let worker = start_node().await;
            let manager = manager_for(&worker, &[&first, &second], SelectionStrategy::RoundRobin);
            manager.refresh_endpoints().await;
            let attempt = manager.join_once(&mut HashSet::new()).await;
            assert!(
                matches!(attempt.outcome, JoinOutcome::Joined { ref seeds } if seeds.len() == 2),
                "{attempt:?}"
            );
            assert!(worker.routing_table_len() >= 2);
            assert!(manager.endpoints().iter().all(|s| s.health.last_rtt().is_some()));
        }
        assert_eq!(joins_served(&observer, &[&first], 2).await, [2]);
        let after = load_of(&observer, &first).await;
        assert!(after.overloaded, "2 joins are above the limit of 1");
        assert!(after.routing_table_size >= 3, "{after:?}");
        assert!(after.requests_per_second > 0.0);
    }

    #[tokio::test]
    async fn least_loaded_reads_real_load_reports() {
        let [busy, idle] = joined_bootstraps(50).await;
        let announcer = NodeProber::new(start_node().await);
        announcer.notify_seeds(vec![busy.local_addr(); 3]);
        joins_served(&announcer, &[&busy], 3).await;
        // Notices are served without an answer: one would reach the announcer unawaited.
        assert_eq!(busy.metrics().served_total(JOINED_PROCEDURE), 3);
        assert_eq!(announcer.node.metrics().dropped_total(DropReason::Unmatched), 0);

        let worker = start_node().await;
        let manager = manager_for(&worker, &[&busy, &idle], SelectionStrategy::LeastLoaded);
        manager.refresh_endpoints().await;
        manager.refresh_load().await;
        let reported = |node: &Node| {
            let state =
                manager.endpoints().into_iter().find(|s| s.endpoint.addr == node.local_addr());
            state.and_then(|s| s.load.reported).map(|report| report.joins_last_minute)
        };
        assert_eq!((reported(&busy), reported(&idle)), (Some(3), Some(0)));
        let attempt = manager.join_once(&mut HashSet::new()).await;
        match attempt.outcome {
            JoinOutcome::Joined { seeds } => assert_eq!(seeds[0], idle.local_addr()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bootstrap_nodes_behind_one_list_join_each_other_through_the_manager() {
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bootstrap: BootstrapArgs,
        }

        let nodes = [start_node().await, start_node().await, start_node().await];
        let list: Vec<String> = nodes.iter().map(|node| node.local_addr().to_string()).collect();
        let list = list.join(",");
        let args = Cli::parse_from([
            "dht-node",
            "--bootstrap",
            &list,
            "--connection-timeout",
            "0.5",
            "--retry-delay",
            "0.1",
        ])
        .bootstrap;
        let mut registries = Vec::new();
        let mut runs = Vec::new();
        for node in &nodes {
            let mut registry = Registry::default();
            let manager = Arc::new(manage_node(node, &args, true, &mut registry).unwrap());
            registries.push(registry);
            runs.push(tokio::spawn({
                let manager = manager.clone();
                async move { manager.run().await }
            }));
            let mut joined = manager.subscribe_joined();
            tokio::time::timeout(Duration::from_secs(5), joined.wait_for(|joined| *joined))
                .await
                .unwrap()
                .unwrap();
            let own = manager
                .endpoints()
                .into_iter()
                .find(|s| s.endpoint.addr == node.local_addr())
                .unwrap();
            assert!(own.is_self, "each finds itself in the list and skips it");
        }
        for node in &nodes {
            assert_eq!(node.routing_table_len(), 2, "one connected core");
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registries[0]).unwrap();
        assert!(
            text.contains("kadscale_bootstrap_join_outcomes_total{outcome=\"joined\"} 1"),
            "{text}"
        );
        let observer = NodeProber::new(start_node().await);
        assert!(
            load_of(&observer, &nodes[0]).await.routing_table_size >= 2,
            "bootstrap nodes serve kadscale_load"
        );
        for run in runs {
            run.abort();
        }
    }

    #[tokio::test]
    async fn a_node_recognises_itself_and_silent_peers_report_nothing() {
        let node = start_node().await;
        let python_like = start_node().await;
        let prober = NodeProber::new(node.clone());
        assert_eq!(prober.ping(node.local_addr(), TIMEOUT).await, Err(ProbeError::IsSelf));
        assert!(prober.ping(python_like.local_addr(), TIMEOUT).await.is_ok());
        assert_eq!(prober.load(python_like.local_addr(), Duration::from_millis(100)).await, None);
        python_like
            .register_extension(LOAD_PROCEDURE, Arc::new(|_, _| Some(Msgpack::from("busy"))));
        assert_eq!(
            prober.load(python_like.local_addr(), TIMEOUT).await,
            None,
            "a bad report is ignored"
        );
        python_like.shutdown();
        let silent = prober.ping(python_like.local_addr(), Duration::from_millis(100)).await;
        assert!(
            matches!(silent, Err(ProbeError::Timeout(_)) | Err(ProbeError::Failed(_))),
            "{silent:?}"
        );
    }
}
