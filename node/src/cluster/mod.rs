//! `dht-node cluster`: a whole DHT in one process on 127.0.0.1, the embedded default.
//!
//! Every node is a real [`ManagedNode`] (the same start as `dht-node bootstrap` and
//! `dht-node worker`): its own UDP socket, the real wire protocol, the real bootstrap manager.
//! The bootstrap tier is sized by [`TierPolicy::plan`], the operator's own code, scale-down
//! stabilization included. Workers join through a static list of the bootstrap nodes running
//! when they start (what a headless Service would answer); bootstrap nodes find each other
//! through the same manager, each given the list of every bootstrap node of the tier.
//!
//! [`Cluster`] is the library face (tests drive it directly); [`run`] is the command, taking
//! [`scenario`] commands from a file or stdin and printing [`report`] tables.

pub mod report;
pub mod scenario;

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

use crate::admin::{self, AdminState};
use crate::bootstrap::args::{parse_seconds, BootstrapArgs};
use crate::bootstrap::endpoint::{EndpointList, HostPort};
use crate::bootstrap::load::JOINED_PROCEDURE;
use crate::bootstrap::manager::ManagerConfig;
use crate::bootstrap::selection::SelectionStrategy;
use crate::cli::{ManagedNode, Role};
use crate::codec::Value;
use crate::config::NodeConfig;
use crate::id::key_digest;
use crate::shutdown::shutdown_signal;
use crate::tier::{TierPlan, TierPolicy, TierStrategy};
use report::{percentile, BootstrapRow, ClusterReport, ScaleUp};
use scenario::{parse_line, parse_scenario, ClusterCommand, ScenarioStep, MAX_WORKERS};

/// What `dht-node cluster` does, in `dht-node --help` and in its own.
pub const SUMMARY: &str = "Run a whole DHT in this process on 127.0.0.1: a policy-sized \
    bootstrap tier and workers joining through it; commands on stdin or from a scenario file";

// Flags of `dht-node cluster` (not a doc comment: clap would print it as the summary of the
// command that flattens this).
#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// Workers to start with.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_WORKERS)), value_name = "N")]
    pub workers: u32,

    /// How the bootstrap tier is sized: adaptive, small, medium, large, xlarge or proportional.
    #[arg(long, default_value = "adaptive", value_name = "STRATEGY")]
    pub strategy: TierStrategy,

    /// How workers choose their join seeds: round_robin, least_loaded, priority or random.
    #[arg(long, default_value = "round_robin", value_name = "STRATEGY")]
    pub selection_strategy: SelectionStrategy,

    /// Run the commands of this file (one a line: workers N, kill-bootstrap I,
    /// start-bootstrap I, put KEY VALUE, get KEY, wait SECS, status, quit), then exit.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,

    /// Read commands from stdin even when it is a terminal (they are read anyway when it is
    /// not); without either, the cluster runs until SIGINT or SIGTERM.
    #[arg(long, conflicts_with = "scenario")]
    pub interactive: bool,

    /// UDP port of bootstrap node 0 on 127.0.0.1; node I listens on P+I. 0 picks free ports.
    /// Workers always take free ports.
    #[arg(long, default_value_t = 0, value_name = "P")]
    pub base_port: u16,

    /// Serve /healthz, /readyz (200 when every worker is joined) and /metrics (the cluster's
    /// gauges) over HTTP on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_addr: Option<SocketAddr>,

    /// Seconds a lower bootstrap count must stay right before the tier shrinks (the operator's
    /// scaleDownStabilizationSeconds, short here for demos).
    #[arg(long, default_value = "5", value_parser = parse_seconds, value_name = "SECS")]
    pub scale_down_stabilization: Duration,

    /// Workers per bootstrap node above which the ratio status is Warning; proportional sizes
    /// the tier to stay below it.
    #[arg(long, default_value_t = TierPolicy::default().max_workers_per_bootstrap, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_workers_per_bootstrap: u32,

    /// Most bootstrap nodes, whatever the strategy (at least 6, the xlarge tier).
    #[arg(long, default_value_t = TierPolicy::default().max_bootstrap_nodes, value_name = "N")]
    pub max_bootstrap_nodes: u32,

    /// Seconds between the nodes' health checks of their bootstrap nodes.
    #[arg(long, default_value = "2", value_parser = parse_seconds, value_name = "SECS")]
    pub health_check_interval: Duration,

    /// Seconds a ping of a bootstrap node may take.
    #[arg(long, default_value = "1", value_parser = parse_seconds, value_name = "SECS")]
    pub connection_timeout: Duration,

    /// Seconds before a failed join's first retry; doubled on each retry.
    #[arg(long, default_value = "0.2", value_parser = parse_seconds, value_name = "SECS")]
    pub retry_delay: Duration,

    /// Joins per load interval above which a bootstrap node reports itself overloaded.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_connections_per_node: u64,

    /// Most workers joining at once; further ones start as others finish (0: no limit). A
    /// storm of simultaneous joins overflows the bootstrap nodes' socket buffers, and every
    /// datagram lost costs a timeout.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_joining: usize,

    /// Seconds to wait for the workers of a scale-up to join before going on without them.
    #[arg(long, default_value = "60", value_parser = parse_seconds, value_name = "SECS")]
    pub join_timeout: Duration,

    /// Bucket size, and how many closest nodes store each value.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    pub k: u16,

    /// Queries in flight per lookup round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub alpha: u16,

    /// Milliseconds a call waits for its answer.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rpc_timeout_ms: u64,
}

impl ClusterArgs {
    fn policy(&self) -> anyhow::Result<TierPolicy> {
        let policy = TierPolicy {
            strategy: self.strategy,
            max_workers_per_bootstrap: self.max_workers_per_bootstrap,
            max_bootstrap_nodes: self.max_bootstrap_nodes,
            scale_down_stabilization: self.scale_down_stabilization,
            ..TierPolicy::default()
        };
        policy.validate().context("tier policy")?;
        Ok(policy)
    }

    fn node_config(&self) -> NodeConfig {
        NodeConfig {
            k: usize::from(self.k),
            alpha: usize::from(self.alpha),
            rpc_timeout: Duration::from_millis(self.rpc_timeout_ms),
            ..NodeConfig::default()
        }
    }

    /// The manager flags of one node, joining through `bootstraps`; the rest as the seed's.
    fn bootstrap_args(&self, bootstraps: &[SocketAddr]) -> BootstrapArgs {
        let defaults = ManagerConfig::default();
        let endpoints = bootstraps
            .iter()
            .map(|addr| HostPort { host: addr.ip().to_string(), port: addr.port() })
            .collect();
        BootstrapArgs {
            bootstrap: vec![EndpointList(endpoints)],
            bootstrap_dns: Vec::new(),
            bootstrap_file: None,
            selection_strategy: self.selection_strategy,
            bootstrap_count: u16::try_from(defaults.seeds_per_join).unwrap_or(u16::MAX),
            health_check_interval: self.health_check_interval,
            failure_threshold: defaults.failure_threshold,
            connection_timeout: self.connection_timeout,
            retry_delay: self.retry_delay,
            max_retries: defaults.backoff.max_retries,
            no_fallback: !defaults.fallback,
            load_balance_interval: defaults.load_balance_interval,
            max_connections_per_node: self.max_connections_per_node,
            no_load_balancing: !defaults.load_balancing,
            node_id_seed: None,
            ordinal: None,
        }
    }
}

/// A bootstrap node's place in the tier: its address stays when it is stopped and started.
struct BootstrapSlot {
    addr: SocketAddr,
    node: Option<ManagedNode>,
}

struct Worker {
    managed: ManagedNode,
    started: Instant,
    /// When the manager first reported the node joined; set by `watcher`.
    joined_at: Arc<OnceLock<Instant>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn join_time(&self) -> Option<Duration> {
        self.joined_at.get().map(|at| at.duration_since(self.started))
    }

    fn stop(&self) {
        self.watcher.abort();
        self.managed.shutdown();
    }
}

/// The cluster's own gauges, served on `--admin-addr`.
#[derive(Clone, Default)]
struct ClusterGauges {
    workers: Gauge,
    workers_joined: Gauge,
    bootstrap_running: Gauge,
    bootstrap_planned: Gauge,
}

impl ClusterGauges {
    fn register(registry: &mut Registry) -> Self {
        let gauges = ClusterGauges::default();
        let registry = registry.sub_registry_with_prefix("kadscale_cluster");
        registry.register("workers", "Worker nodes running", gauges.workers.clone());
        registry.register(
            "workers_joined",
            "Worker nodes whose bootstrap manager reports them joined",
            gauges.workers_joined.clone(),
        );
        registry.register(
            "bootstrap_nodes_running",
            "Bootstrap nodes running",
            gauges.bootstrap_running.clone(),
        );
        registry.register(
            "bootstrap_nodes_planned",
            "Bootstrap nodes the tier policy plans",
            gauges.bootstrap_planned.clone(),
        );
        gauges
    }
}

/// What a command did, printable for a person.
#[derive(Debug)]
pub enum Outcome {
    Report(Box<ClusterReport>),
    BootstrapStopped { index: usize, addr: SocketAddr },
    BootstrapStarted { index: usize, addr: SocketAddr },
    Stored { key: String, nodes: usize, via: SocketAddr },
    Got { key: String, value: Option<Value>, via: SocketAddr },
    Waited(Duration),
    Quit,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Report(report) => write!(f, "{report}"),
            Outcome::BootstrapStopped { index, addr } => {
                writeln!(f, "bootstrap node {index} ({addr}) stopped")
            }
            Outcome::BootstrapStarted { index, addr } => {
                writeln!(f, "bootstrap node {index} started again on {addr}")
            }
            Outcome::Stored { key, nodes, via } => {
                writeln!(f, "put {key}: stored on {nodes} node(s) (through {via})")
            }
            Outcome::Got { key, value: Some(value), via } => writeln!(
                f,
                "get {key}: {} (through {via})",
                crate::cli::format_value(value, crate::cli::OutputFormat::Text)
            ),
            Outcome::Got { key, value: None, via } => {
                writeln!(f, "get {key}: not found (through {via})")
            }
            Outcome::Waited(duration) => {
                writeln!(f, "waited {:.1} s", duration.as_secs_f64())
            }
            Outcome::Quit => writeln!(f, "quit"),
        }
    }
}

/// A whole DHT in this process.
pub struct Cluster {
    args: ClusterArgs,
    policy: TierPolicy,
    plan: TierPlan,
    bootstraps: Vec<BootstrapSlot>,
    workers: Vec<Worker>,
    last_scale_up: Option<ScaleUp>,
    gauges: ClusterGauges,
    /// Whether progress lines go to stderr while workers join.
    show_progress: bool,
}

/// Binds and releases a UDP port on 127.0.0.1: a free port for a bootstrap node whose address
/// the others must know before it starts.
fn free_port() -> anyhow::Result<u16> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .context("finding a free UDP port on 127.0.0.1")?;
    Ok(socket.local_addr()?.port())
}

/// How long a restarted bootstrap node retries binding its old address, which the stopped
/// node's socket holds until its last task lets go of it.
const REBIND_PATIENCE: Duration = Duration::from_secs(5);

impl Cluster {
    /// Starts the tier for `args.workers` and the workers, and waits for them to join.
    pub async fn start(args: ClusterArgs) -> anyhow::Result<Cluster> {
        Cluster::start_with(args, ClusterGauges::default(), false).await
    }

    async fn start_with(
        args: ClusterArgs,
        gauges: ClusterGauges,
        show_progress: bool,
    ) -> anyhow::Result<Cluster> {
        let policy = args.policy()?;
        let plan = policy.plan(0, None, SystemTime::now());
        let mut cluster = Cluster {
            policy,
            plan,
            bootstraps: Vec::new(),
            workers: Vec::new(),
            last_scale_up: None,
            gauges,
            show_progress,
            args,
        };
        cluster.scale(cluster.args.workers).await?;
        Ok(cluster)
    }

    /// Runs one command.
    pub async fn apply(&mut self, command: &ClusterCommand) -> anyhow::Result<Outcome> {
        let outcome = match command {
            ClusterCommand::Workers(count) => {
                self.scale(*count).await?;
                Outcome::Report(Box::new(self.report()))
            }
            ClusterCommand::KillBootstrap(index) => {
                let slot = self.slot(*index)?;
                let Some(node) = slot.node.take() else {
                    bail!("bootstrap node {index} is already stopped");
                };
                node.shutdown();
                Outcome::BootstrapStopped { index: *index, addr: slot.addr }
            }
            ClusterCommand::StartBootstrap(index) => {
                if self.slot(*index)?.node.is_some() {
                    bail!("bootstrap node {index} is already running");
                }
                self.start_bootstrap(*index).await?;
                Outcome::BootstrapStarted { index: *index, addr: self.bootstraps[*index].addr }
            }
            ClusterCommand::Put { key, value } => {
                let via = self.any_node()?;
                let report = via
                    .set(key_digest(key.as_bytes()), Value::Str(value.clone()))
                    .await
                    .with_context(|| format!("put {key}"))?;
                Outcome::Stored {
                    key: key.clone(),
                    nodes: report.stored_remotely,
                    via: via.local_addr(),
                }
            }
            ClusterCommand::Get { key } => {
                let via = self.any_node()?;
                let value = via.get(key_digest(key.as_bytes())).await;
                Outcome::Got { key: key.clone(), value, via: via.local_addr() }
            }
            ClusterCommand::Wait(duration) => {
                let until = Instant::now() + *duration;
                while Instant::now() < until {
                    let step = until.saturating_duration_since(Instant::now());
                    tokio::time::sleep(step.min(Duration::from_secs(1))).await;
                    self.tick().await?;
                }
                Outcome::Waited(*duration)
            }
            ClusterCommand::Status => {
                self.tick().await?;
                Outcome::Report(Box::new(self.report()))
            }
            ClusterCommand::Quit => Outcome::Quit,
        };
        self.update_gauges();
        Ok(outcome)
    }

    fn slot(&mut self, index: usize) -> anyhow::Result<&mut BootstrapSlot> {
        let count = self.bootstraps.len();
        self.bootstraps.get_mut(index).with_context(|| {
            format!(
                "no bootstrap node {index}: the tier has {count} (0 to {})",
                count.saturating_sub(1)
            )
        })
    }

    /// A random worker, or a bootstrap node when there is no worker: where a client's call
    /// enters the DHT.
    fn any_node(&self) -> anyhow::Result<crate::node::Node> {
        let mut rng = rand::rng();
        let joined: Vec<&Worker> =
            self.workers.iter().filter(|worker| worker.managed.manager.is_joined()).collect();
        if !joined.is_empty() {
            return Ok(joined[rng.random_range(0..joined.len())].managed.node.clone());
        }
        let running: Vec<&ManagedNode> =
            self.bootstraps.iter().filter_map(|slot| slot.node.as_ref()).collect();
        if running.is_empty() {
            bail!("no node is running");
        }
        Ok(running[rng.random_range(0..running.len())].node.clone())
    }

    /// Re-plans for the current worker count: a scale-down that waited out the stabilization
    /// window takes effect here.
    pub async fn tick(&mut self) -> anyhow::Result<()> {
        let workers = u32::try_from(self.workers.len()).unwrap_or(u32::MAX);
        self.plan = self.policy.plan(workers, Some(&self.plan), SystemTime::now());
        self.resize_bootstrap_tier().await?;
        self.update_gauges();
        Ok(())
    }

    /// Scales to `count` workers: the tier grows first, then workers start and the call waits
    /// for them to join; shrinking stops workers, and bootstrap nodes once the window passed.
    async fn scale(&mut self, count: u32) -> anyhow::Result<()> {
        self.plan = self.policy.plan(count, Some(&self.plan), SystemTime::now());
        self.resize_bootstrap_tier().await?;
        let target = count as usize;
        while self.workers.len() > target {
            if let Some(worker) = self.workers.pop() {
                worker.stop();
            }
        }
        if self.workers.len() < target {
            self.add_workers(target - self.workers.len()).await?;
        }
        self.update_gauges();
        Ok(())
    }

    /// Starts or stops bootstrap nodes until the tier has the planned count; stopped nodes
    /// still count (a crash is not a scale-down).
    async fn resize_bootstrap_tier(&mut self) -> anyhow::Result<()> {
        let planned = self.plan.bootstrap_replicas as usize;
        while self.bootstraps.len() > planned {
            if let Some(slot) = self.bootstraps.pop() {
                if let Some(node) = slot.node {
                    node.shutdown();
                }
            }
        }
        if self.bootstraps.len() >= planned {
            return Ok(());
        }
        let first_new = self.bootstraps.len();
        for index in first_new..planned {
            let port = if self.args.base_port == 0 {
                free_port()?
            } else {
                let port = usize::from(self.args.base_port) + index;
                u16::try_from(port).ok().with_context(|| {
                    format!("bootstrap node {index} would need port {port}: lower --base-port")
                })?
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            self.bootstraps.push(BootstrapSlot { addr, node: None });
        }
        for index in first_new..planned {
            self.start_bootstrap(index).await?;
        }
        self.wait_for_bootstraps(first_new..planned).await;
        Ok(())
    }

    /// Starts bootstrap node `index` on its address, its peers being every node of the tier.
    async fn start_bootstrap(&mut self, index: usize) -> anyhow::Result<()> {
        let addr = self.bootstraps[index].addr;
        let peers: Vec<SocketAddr> = self.bootstraps.iter().map(|slot| slot.addr).collect();
        let args = self.args.bootstrap_args(&peers);
        let deadline = Instant::now() + REBIND_PATIENCE;
        let managed = loop {
            let started = ManagedNode::start(
                Role::Bootstrap,
                addr,
                self.args.node_config(),
                &args,
                &mut Registry::default(),
            )
            .await;
            match started {
                Ok(managed) => break managed,
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!("starting bootstrap node {index}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.bootstraps[index].node = Some(managed);
        Ok(())
    }

    /// Waits until the bootstrap nodes `indices` know a peer. The first node of a new tier
    /// pings peers that are not listening yet, so its own join waits out a timeout; the
    /// others joining through it fill its routing table meanwhile, and that is enough.
    async fn wait_for_bootstraps(&self, indices: std::ops::Range<usize>) {
        if self.bootstraps.len() < 2 {
            return;
        }
        let deadline = Instant::now() + self.args.join_timeout;
        let connected = |cluster: &Cluster| {
            cluster.bootstraps[indices.clone()]
                .iter()
                .filter_map(|slot| slot.node.as_ref())
                .all(|managed| managed.node.routing_table_len() > 0)
        };
        while !connected(self) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn running_bootstrap_addrs(&self) -> Vec<SocketAddr> {
        self.bootstraps.iter().filter(|slot| slot.node.is_some()).map(|slot| slot.addr).collect()
    }

    /// Starts `count` workers joining through the running bootstrap nodes and waits until
    /// all are joined (or `--join-timeout`), showing progress.
    async fn add_workers(&mut self, count: usize) -> anyhow::Result<()> {
        let seeds = self.running_bootstrap_addrs();
        if seeds.is_empty() {
            bail!("no bootstrap node is running for the workers to join through");
        }
        let args = self.args.bootstrap_args(&seeds);
        let config = self.args.node_config();
        let scale_started = Instant::now();
        let first_new = self.workers.len();
        let joined_count = Arc::new(AtomicUsize::new(0));
        let deadline = scale_started + self.args.join_timeout;
        let mut next_progress = scale_started + Duration::from_secs(1);
        loop {
            let joined = joined_count.load(Ordering::Relaxed);
            let started = self.workers.len() - first_new;
            let now = Instant::now();
            if joined == count || now >= deadline {
                break;
            }
            if self.show_progress && now >= next_progress {
                eprintln!(
                    "  joining: {joined}/{count} new workers joined, {started} started ({:.0} s)",
                    now.duration_since(scale_started).as_secs_f64()
                );
                next_progress += Duration::from_secs(1);
            }
            let max_joining = self.args.max_joining;
            if started < count && (max_joining == 0 || started - joined < max_joining) {
                self.start_worker(&args, &config, &joined_count).await?;
            } else {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Past the deadline the rest start anyway: the worker count is what was asked for.
        while self.workers.len() - first_new < count {
            self.start_worker(&args, &config, &joined_count).await?;
        }
        let last_joined = self.workers[first_new..]
            .iter()
            .map(|worker| worker.joined_at.get().copied())
            .collect::<Option<Vec<Instant>>>()
            .and_then(|times| times.into_iter().max());
        self.last_scale_up = last_joined.map(|last| ScaleUp {
            added: count,
            all_joined_after: last.duration_since(scale_started),
        });
        if self.last_scale_up.is_none() && self.show_progress {
            eprintln!(
                "  not every worker joined within {:.0} s (--join-timeout)",
                self.args.join_timeout.as_secs_f64()
            );
        }
        Ok(())
    }

    /// Starts one worker and the task that records when it joined.
    async fn start_worker(
        &mut self,
        args: &BootstrapArgs,
        config: &NodeConfig,
        joined_count: &Arc<AtomicUsize>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let managed = ManagedNode::start(
            Role::Worker,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            config.clone(),
            args,
            &mut Registry::default(),
        )
        .await
        .context("starting a worker")?;
        let joined_at = Arc::new(OnceLock::new());
        let mut joined = managed.manager.subscribe_joined();
        let record = joined_at.clone();
        let joined_count = joined_count.clone();
        let watcher = tokio::spawn(async move {
            if joined.wait_for(|joined| *joined).await.is_ok() {
                let _ = record.set(Instant::now());
                joined_count.fetch_add(1, Ordering::Relaxed);
            }
        });
        self.workers.push(Worker { managed, started, joined_at, watcher });
        Ok(())
    }

    /// The figures of the table, now.
    pub fn report(&self) -> ClusterReport {
        let join_times: Vec<Duration> = self.workers.iter().filter_map(Worker::join_time).collect();
        let bootstraps = self
            .bootstraps
            .iter()
            .enumerate()
            .map(|(index, slot)| BootstrapRow {
                index,
                addr: slot.addr,
                running: slot.node.is_some(),
                joins_served: slot
                    .node
                    .as_ref()
                    .map_or(0, |managed| managed.node.metrics().served_total(JOINED_PROCEDURE)),
                routing_table: slot.node.as_ref().map_or(0, |m| m.node.routing_table_len()),
            })
            .collect();
        ClusterReport {
            plan: self.plan.clone(),
            max_workers_per_bootstrap: self.policy.max_workers_per_bootstrap,
            workers: self.workers.len(),
            workers_joined: self.workers.iter().filter(|w| w.managed.manager.is_joined()).count(),
            join_p50: percentile(&join_times, 0.50),
            join_p99: percentile(&join_times, 0.99),
            last_scale_up: self.last_scale_up,
            bootstraps,
        }
    }

    fn update_gauges(&self) {
        let gauges = &self.gauges;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauges.workers.set(count(self.workers.len()));
        gauges
            .workers_joined
            .set(count(self.workers.iter().filter(|w| w.managed.manager.is_joined()).count()));
        gauges.bootstrap_running.set(count(self.running_bootstrap_addrs().len()));
        gauges.bootstrap_planned.set(i64::from(self.plan.bootstrap_replicas));
    }

    /// Stops every node.
    pub fn shutdown(&mut self) {
        for worker in self.workers.drain(..) {
            worker.stop();
        }
        for slot in self.bootstraps.drain(..) {
            if let Some(node) = slot.node {
                node.shutdown();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Raises the soft limit of open files to the hard one: every node holds a socket.
fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// Where the commands come from.
enum Commands {
    Scenario(PathBuf),
    Stdin,
    /// Only SIGINT or SIGTERM ends the cluster.
    None,
}

/// Writes a line to stdout: an error once stdout is closed (`dht-node cluster ... | head`),
/// where `println!` panics.
fn print_line(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock(), "{line}").context("writing to stdout")
}

fn print(header: &str, outcome: &Outcome) -> anyhow::Result<()> {
    print_line(format_args!("== {header} ==\n{outcome}"))
}

/// Runs `command` and prints what it did under a header naming it (after `label`), when it
/// started and how long it took. True for `quit`, which prints nothing.
async fn apply_and_print(
    cluster: &mut Cluster,
    command: &ClusterCommand,
    label: &str,
    started: Instant,
) -> anyhow::Result<bool> {
    let at = started.elapsed();
    let outcome = cluster.apply(command).await?;
    if matches!(outcome, Outcome::Quit) {
        return Ok(true);
    }
    let took = started.elapsed() - at;
    let header = format!(
        "{label}{command} (at {:.1} s, took {:.2} s)",
        at.as_secs_f64(),
        took.as_secs_f64()
    );
    print(&header, &outcome)?;
    Ok(false)
}

/// `dht-node cluster`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let scenario = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the scenario {}", path.display()))?;
            Some(parse_scenario(&text).with_context(|| format!("scenario {}", path.display()))?)
        }
        None => None,
    };
    let commands = match &args.scenario {
        Some(path) => Commands::Scenario(path.clone()),
        None if args.interactive || !std::io::stdin().is_terminal() => Commands::Stdin,
        None => Commands::None,
    };
    let open_files = raise_open_files_limit().context("raising the open files limit")?;
    let needed = u64::from(args.workers) + u64::from(args.max_bootstrap_nodes) + 64;
    if open_files < needed {
        eprintln!("dht-node cluster: warning: {open_files} open files allowed, {needed} wanted");
    }

    let mut registry = Registry::default();
    let gauges = ClusterGauges::register(&mut registry);
    let stop_admin = tokio_util::sync::CancellationToken::new();
    let admin = match args.admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin server to {addr}"))?;
            let ready_gauges = gauges.clone();
            let state = AdminState {
                registry: Arc::new(registry),
                ready: Arc::new(move || {
                    ready_gauges.workers_joined.get() == ready_gauges.workers.get()
                }),
            };
            let stop = stop_admin.clone();
            eprintln!("admin server on http://{addr}");
            Some(tokio::spawn(admin::serve(listener, state, async move { stop.cancelled().await })))
        }
        None => None,
    };

    let started = Instant::now();
    eprintln!("starting {} workers and the {} tier on 127.0.0.1 ...", args.workers, args.strategy);
    let mut cluster = Cluster::start_with(args.clone(), gauges, true).await?;
    let header =
        format!("workers {} (start, took {:.2} s)", args.workers, started.elapsed().as_secs_f64());
    print(&header, &Outcome::Report(Box::new(cluster.report())))?;

    // SIGTERM or SIGINT ends any of the three ways of running, with the final report.
    let result = tokio::select! {
        result = run_commands(&mut cluster, commands, scenario, started) => result,
        signal = shutdown_signal() => signal.map(drop).context("waiting for SIGTERM or SIGINT"),
    };
    let result = async {
        result?;
        cluster.tick().await?;
        print("final", &Outcome::Report(Box::new(cluster.report())))
    }
    .await;
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dht-node cluster: {error:#}");
            ExitCode::from(1)
        }
    };
    cluster.shutdown();
    stop_admin.cancel();
    if let Some(admin) = admin {
        admin.await.context("admin server task")?;
    }
    Ok(code)
}

/// Runs the scenario's steps, or stdin's commands, or (neither) re-plans the tier every second
/// until the process is stopped.
async fn run_commands(
    cluster: &mut Cluster,
    commands: Commands,
    scenario: Option<Vec<ScenarioStep>>,
    started: Instant,
) -> anyhow::Result<()> {
    match (commands, scenario) {
        (Commands::Scenario(path), Some(steps)) => {
            for step in steps {
                for note in &step.notes {
                    print_line(format_args!("# {note}"))?;
                }
                let label = format!("{}:{} ", path.display(), step.line);
                let quit =
                    apply_and_print(cluster, &step.command, &label, started).await.with_context(
                        || format!("{} line {} ({})", path.display(), step.line, step.command),
                    )?;
                if quit {
                    break;
                }
            }
            Ok(())
        }
        (Commands::Stdin, _) => read_stdin(cluster, started).await,
        _ => {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticks.tick().await;
                cluster.tick().await?;
            }
        }
    }
}

/// Runs commands from stdin until EOF or `quit`; a bad line is reported and skipped, and the
/// tier is re-planned every second in between.
async fn read_stdin(cluster: &mut Cluster, started: Instant) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut line_number = 0;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line.context("reading stdin")?,
            _ = ticks.tick() => {
                cluster.tick().await?;
                continue;
            }
        };
        let Some(line) = line else { return Ok(()) };
        line_number += 1;
        let command = match parse_line(line_number, &line) {
            Ok(Some(command)) => command,
            Ok(None) => continue,
            Err(error) => {
                eprintln!("dht-node cluster: stdin {error}");
                continue;
            }
        };
        match apply_and_print(cluster, &command, "", started).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => eprintln!("dht-node cluster: {command}: {error:#}"),
        }
    }
}
