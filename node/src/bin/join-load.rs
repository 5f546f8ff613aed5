//! join-load: the dht-node side of the side-by-side join benchmarks (bench/storm.py and
//! bench/capacity.py drive it; the Python side is bench/pystorm.py and interop/pyworker.py).
//!
//! - `workers`: COUNT dht-node workers in this process, each a real [`ManagedNode`] (what
//!   `dht-node worker` runs: its own UDP socket, the bootstrap manager with the same flags).
//!   Every worker listens before it prints `{"ready": true, ...}`, as the Python workers do;
//!   on a `go` line on stdin every worker's manager starts its join at once, and it prints
//!   one JSON line with each worker's join start and end (CLOCK_MONOTONIC seconds, the clock
//!   the driver and the Python workers read too) once all are joined or the deadline passed.
//!   The workers keep serving until stdin closes, so that later joins elsewhere still reach
//!   them.
//! - `capacity`: open-loop join arrivals against one bootstrap node at a fixed rate. A join
//!   is what a new worker sends the bootstrap node: a ping, then the first round of the
//!   iterative lookup of its own id (a `find_node` of its id). The later rounds go to the
//!   contacts that answer names, not to the bootstrap node, so they are left out and the
//!   generator stays far lighter than the node it loads. Each joiner has its own socket and
//!   node id, answers the node's pings (full-bucket checks) and lingers a while after its join.
//! - `plan`: the tier the policy (`kadscale_node::tier`, the operator's code) gives N workers.
//!
//! Only 127.0.0.0/8 targets are accepted.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use kadscale_node::bootstrap::args::BootstrapArgs;
use kadscale_node::cli::{ManagedNode, Role};
use kadscale_node::codec::{
    decode_datagram, encode_request, encode_response, find_node_answer, ping_answer, stun_answer,
    Datagram, MessageId, Request, Response,
};
use kadscale_node::config::NodeConfig;
use kadscale_node::id::NodeId;
use kadscale_node::tier::TierPolicy;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "dht-node side of the join benchmarks (127.0.0.0/8 only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// COUNT dht-node workers in this process, joining at once on a `go` line on stdin.
    Workers(WorkersArgs),
    /// Open-loop joins (ping + find_node of the joiner's id) against one bootstrap node.
    Capacity(CapacityArgs),
    /// The tier and bootstrap node count the default policy gives each worker count (JSON lines).
    Plan {
        /// Worker counts, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        workers: Vec<u32>,
    },
}

#[derive(Args)]
struct WorkersArgs {
    /// Worker nodes in this process.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Bucket size, as `dht-node worker --k`.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    k: u16,
    /// Queries in flight per lookup round, as `dht-node worker --alpha`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    alpha: u16,
    /// Seconds after `go` when a worker not yet joined counts as failed.
    #[arg(long, default_value_t = 60.0)]
    deadline_secs: f64,
    /// The bootstrap manager's flags, exactly those of `dht-node worker`.
    #[command(flatten)]
    bootstrap: BootstrapArgs,
}

#[derive(Args)]
struct CapacityArgs {
    /// The bootstrap node, host:port on 127.0.0.0/8.
    #[arg(long)]
    target: SocketAddr,
    /// Joins started per second (open loop: on schedule, whatever the answers do).
    #[arg(long)]
    rate: f64,
    /// Seconds of arrivals.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// A join not answered within this many milliseconds counts as failed.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Milliseconds a joiner keeps its socket, answering the node's pings, after its join.
    #[arg(long, default_value_t = 250)]
    linger_ms: u64,
    /// Seconds to wait for the node's first ping answer.
    #[arg(long, default_value_t = 10.0)]
    ready_timeout_secs: f64,
}

// The allocator dht-node runs with.
#[global_allocator]
static ALLOCATOR: kadscale_node::allocator::NodeAllocator = kadscale_node::allocator::NodeAllocator;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The runtime `dht-node worker` runs its node on.
    let runtime = || kadscale_node::cli::node_runtime().context("starting the runtime");
    let result = match cli.command {
        Command::Workers(args) => runtime().and_then(|runtime| runtime.block_on(run_workers(args))),
        Command::Capacity(args) => {
            runtime().and_then(|runtime| runtime.block_on(run_capacity(args)))
        }
        Command::Plan { workers } => print_plans(&workers),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("join-load: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// CLOCK_MONOTONIC in seconds: Python's `time.monotonic()` reads the same clock, so times
/// taken in different processes compare.
fn monotonic_secs() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the struct passed by reference.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

fn print_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value).context("writing stdout")?;
    writeln!(stdout).context("writing stdout")?;
    stdout.flush().context("writing stdout")
}

/// Every worker's join, the line the driver reads after `go`.
#[derive(serde::Serialize)]
struct JoinReport {
    nodes: Vec<JoinRecord>,
}

/// One worker's join.
#[derive(serde::Serialize)]
struct JoinRecord {
    start: f64,
    end: f64,
    ok: bool,
    routing_table: usize,
}

fn print_plans(workers: &[u32]) -> anyhow::Result<()> {
    let policy = TierPolicy::default();
    for &count in workers {
        let plan = policy.plan(count, None, SystemTime::now());
        print_line(&json!({
            "workers": count,
            "tier": plan.tier.name(),
            "bootstrap_nodes": plan.bootstrap_replicas,
            "ratio": plan.ratio,
        }))?;
    }
    Ok(())
}

async fn run_workers(args: WorkersArgs) -> anyhow::Result<()> {
    let config = NodeConfig {
        k: usize::from(args.k),
        alpha: usize::from(args.alpha),
        ..NodeConfig::default()
    };
    // Every node listens before `go`, as the Python workers do (`listen`, then `bootstrap`):
    // what is timed is the join.
    let mut workers = Vec::new();
    for _ in 0..args.count {
        // Kept while the node runs, as `dht-node worker` keeps it for /metrics: the metrics'
        // names and help texts are part of what a node costs.
        let mut registry = Registry::default();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let managed =
            ManagedNode::bind(Role::Worker, listen, config.clone(), &args.bootstrap, &mut registry)
                .await
                .context("starting a worker")?;
        workers.push((managed, registry));
    }
    let mut stdin = tokio::io::BufReader::new(stdin()?).lines();
    print_line(&json!({"ready": true, "nodes": args.count, "pid": std::process::id()}))?;
    match stdin.next_line().await.context("reading stdin")? {
        Some(line) if line.trim() == "go" => {}
        other => bail!("expected a `go` line on stdin, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.deadline_secs);
    let mut joins = Vec::new();
    for (managed, _) in &mut workers {
        let start = monotonic_secs();
        let mut joined = managed.manager.subscribe_joined();
        managed.start_manager();
        joins.push(tokio::spawn(async move {
            let waited = tokio::time::timeout_at(deadline, joined.wait_for(|joined| *joined)).await;
            (start, monotonic_secs(), matches!(waited, Ok(Ok(_))))
        }));
    }
    // Records, not JSON values: a value's map took 632 bytes a worker, in the nodes' heap.
    let mut nodes = Vec::with_capacity(joins.len());
    for (join, (managed, _)) in joins.into_iter().zip(&workers) {
        let (start, end, ok) = join.await.context("join watcher")?;
        nodes.push(JoinRecord { start, end, ok, routing_table: managed.node.routing_table_len() });
    }
    print_line(&JoinReport { nodes })?;
    // Serve until the driver closes stdin: other workers' lookups may still reach these.
    while stdin.next_line().await.context("reading stdin")?.is_some() {}
    for (managed, _) in &workers {
        managed.shutdown();
    }
    Ok(())
}

/// stdin: the driver's pipe, read on the runtime's thread as Python's asyncio reads it, not
/// through tokio's blocking thread (which `dht-node worker` does not have, and which costs a
/// worker process context switches in the storm); anything but a pipe, through that thread.
fn stdin() -> anyhow::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().context("duplicating stdin")?;
    match tokio::net::unix::pipe::Receiver::from_file(std::fs::File::from(fd)) {
        Ok(pipe) => Ok(Box::new(pipe)),
        Err(_) => Ok(Box::new(tokio::io::stdin())),
    }
}

/// What happened to one join.
enum JoinResult {
    /// Latency from the scheduled arrival to the find_node answer.
    Joined(Duration),
    /// No valid answer within the timeout.
    Failed,
    /// The generator could not open the joiner's socket (its limit, not the node's).
    NoSocket,
}

async fn run_capacity(args: CapacityArgs) -> anyhow::Result<()> {
    if !args.target.ip().is_loopback() {
        bail!("--target {} is not on 127.0.0.0/8", args.target);
    }
    if !(args.rate > 0.0 && args.secs > 0.0) {
        bail!("--rate and --secs must be positive (got {} and {})", args.rate, args.secs);
    }
    wait_until_answering(args.target, Duration::from_secs_f64(args.ready_timeout_secs)).await?;
    let total = (args.rate * args.secs).round().max(1.0) as usize;
    let results = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let stop = CancellationToken::new();
    let timeout = Duration::from_millis(args.timeout_ms);
    let linger = Duration::from_millis(args.linger_ms);
    let mut joiners = tokio::task::JoinSet::new();
    let first = Instant::now() + Duration::from_millis(10);
    let mut most_late = Duration::ZERO;
    for index in 0..total {
        let scheduled = first + Duration::from_secs_f64(index as f64 / args.rate);
        tokio::time::sleep_until(scheduled).await;
        most_late = most_late.max(scheduled.elapsed());
        let (results, stop) = (results.clone(), stop.clone());
        joiners.spawn(async move {
            let result = join_once(args.target, scheduled, timeout, linger, &stop).await;
            results.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(result);
        });
    }
    let arrivals_took = first.elapsed();
    while joiners.join_next().await.is_some() {}
    stop.cancel();

    let results = results.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut latencies: Vec<f64> = results
        .iter()
        .filter_map(|result| match result {
            JoinResult::Joined(latency) => Some(latency.as_secs_f64() * 1e3),
            _ => None,
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let count_of = |wanted: fn(&JoinResult) -> bool| results.iter().filter(|r| wanted(r)).count();
    let percentile = |fraction: f64| -> Option<f64> {
        let last = latencies.len().checked_sub(1)?;
        Some(latencies[((last as f64) * fraction).round() as usize])
    };
    print_line(&json!({
        "target": args.target.to_string(),
        "rate": args.rate,
        "secs": args.secs,
        "joins": total,
        "joined": latencies.len(),
        "failed": count_of(|r| matches!(r, JoinResult::Failed)),
        "generator_socket_errors": count_of(|r| matches!(r, JoinResult::NoSocket)),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": latencies.last(),
        "arrivals_took_secs": arrivals_took.as_secs_f64(),
        "most_late_arrival_ms": most_late.as_secs_f64() * 1e3,
    }))
}

/// Asks `target` for `stun` every 200 ms until it answers. Not a ping: the node would add the
/// prober to its routing table, and hand it to joiners as a contact once it is gone.
async fn wait_until_answering(target: SocketAddr, patience: Duration) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding a socket")?;
    let id = NodeId::random();
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let answer = call(&socket, id, target, &Request::Stun, Duration::from_millis(200)).await;
        if answer.is_some_and(|body| stun_answer(&body).is_ok()) {
            return Ok(());
        }
    }
    bail!("{target} answered no stun request within {} s", patience.as_secs_f64())
}

/// One joiner: its own socket and id, a ping and a find_node of its id to `target`; then it
/// answers the node's pings for `linger` (or until `stop`).
async fn join_once(
    target: SocketAddr,
    scheduled: Instant,
    timeout: Duration,
    linger: Duration,
    stop: &CancellationToken,
) -> JoinResult {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await else {
        return JoinResult::NoSocket;
    };
    let id = NodeId::random();
    let deadline = scheduled + timeout;
    let joined = async {
        let ping = call(&socket, id, target, &Request::Ping { sender: id }, timeout).await?;
        ping_answer(&ping).ok()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let find = Request::FindNode { sender: id, key: id };
        let contacts = call(&socket, id, target, &find, left).await?;
        find_node_answer(&contacts).ok()
    }
    .await;
    let result = match joined {
        Some(_) if Instant::now() <= deadline => JoinResult::Joined(scheduled.elapsed()),
        _ => JoinResult::Failed,
    };
    tokio::select! {
        _ = answer_pings(&socket, id, None) => {}
        _ = tokio::time::sleep(linger) => {}
        _ = stop.cancelled() => {}
    }
    result
}

/// Sends `request` to `target` and waits up to `timeout` for the answer's body, answering the
/// node's pings meanwhile.
async fn call(
    socket: &UdpSocket,
    id: NodeId,
    target: SocketAddr,
    request: &Request,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let message: MessageId = rand::random();
    socket.send_to(&encode_request(&message, request), target).await.ok()?;
    tokio::time::timeout(timeout, answer_pings(socket, id, Some((message, target)))).await.ok()?
}

/// Answers pings on `socket` as node `id`; returns the body of the response to `awaited`
/// (message id and sender) when it comes, or never when there is none to wait for.
async fn answer_pings(
    socket: &UdpSocket,
    id: NodeId,
    awaited: Option<(MessageId, SocketAddr)>,
) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 4096];
    loop {
        let (len, from) = socket.recv_from(&mut buffer).await.ok()?;
        match decode_datagram(&buffer[..len]) {
            Ok(Datagram::Request { id: message, request: Request::Ping { .. } }) => {
                let answer = encode_response(&message, &Response::Ping(id));
                let _ = socket.send_to(&answer, from).await;
            }
            Ok(Datagram::Response { id: message, body }) if Some((message, from)) == awaited => {
                return Some(body.to_vec());
            }
            _ => {}
        }
    }
}
