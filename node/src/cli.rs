//! The `dht-node` command line: `bootstrap` and `worker` run a node; `put`, `get` and `ping`
//! talk to a running DHT from a shell.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;
use tracing_subscriber::filter::LevelFilter;

use crate::admin::{self, AdminState};
use crate::bootstrap::args::BootstrapArgs;
use crate::bootstrap::endpoint::{EndpointList, HostPort};
use crate::bootstrap::node_prober::{manage_node, NodeManager};
use crate::codec::Value;
use crate::config::NodeConfig;
use crate::id::{key_digest, NodeId};
use crate::logging::{self, LogFormat};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::shutdown::{block_shutdown_signals, shutdown_signal};

/// A Kademlia DHT node that speaks the wire protocol of the Python `kademlia` package.
#[derive(Debug, Parser)]
#[command(name = "dht-node", version)]
pub struct Cli {
    /// Log line format on stderr; RUST_LOG sets the level (default info for nodes, error for
    /// cluster, warn for tools).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The runtime the command runs on, [`node_runtime`]. The nodes, which run until SIGTERM
    /// or SIGINT, block both first, for [`shutdown_signal`]; the tools leave Ctrl-C as it is.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.command {
            Command::Bootstrap(_) | Command::Worker(_) => block_shutdown_signals()?,
            Command::Put(_) | Command::Get(_) | Command::Ping(_) | Command::Cluster(_) => {}
        }
        node_runtime()
    }
}

/// The runtime a node runs on. A node is one UDP socket whose requests are served in
/// microseconds: one thread answers over 100,000 a second, and more threads would only add
/// cross-thread wake-ups and memory to every pod. It polls a few sockets: 64 readiness events a
/// poll rather than 1,024 keep 11 KiB less.
pub fn node_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().max_io_events_per_tick(64).enable_all().build()
}

// Deferred: parsing builds only the chosen subcommand's flags (a bootstrap process kept 64 KiB
// of heap from building all of them).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run a bootstrap node: others join through it; it joins its --bootstrap peers.
    Bootstrap(BootstrapCommand),
    /// Run a worker node that joins the DHT through the --bootstrap nodes.
    Worker(WorkerCommand),
    /// Store a value under a string key; exit 0 when at least one node stored it.
    Put(PutCommand),
    /// Print the value under a string key; exit 1 when it is not found.
    Get(GetCommand),
    /// Ping a node: print its id and the round-trip time; exit 1 when it does not answer.
    Ping(PingCommand),
    /// A whole DHT in this process: [`crate::cluster::SUMMARY`].
    #[command(about = crate::cluster::SUMMARY)]
    Cluster(ClusterCommand),
}

/// The binary `dht-node cluster` runs, installed next to dht-node. Its code (the simulation,
/// scenarios, reports, a runtime for every core) was 196 KiB of dht-node's, resident in every
/// pod's node though no pod runs it.
pub const CLUSTER_BINARY: &str = "dht-node-cluster";

// `dht-node cluster FLAGS`: the flags, --help included, are CLUSTER_BINARY's to read.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct ClusterCommand {
    /// The flags of `dht-node cluster` (`dht-node cluster --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "FLAGS")]
    pub flags: Vec<std::ffi::OsString>,
}

impl ClusterCommand {
    /// Becomes [`CLUSTER_BINARY`], found next to this executable, with these flags; returns
    /// only if it cannot.
    fn exec(&self, log_format: LogFormat) -> anyhow::Result<ExitCode> {
        use std::os::unix::process::CommandExt;
        let own = std::env::current_exe().context("finding dht-node's own path")?;
        let binary = own.with_file_name(CLUSTER_BINARY);
        let mut command = std::process::Command::new(&binary);
        command.arg0("dht-node cluster");
        // Only when given: clap's usage line in an error names the flags given.
        if let Some(format) =
            log_format.to_possible_value().filter(|_| log_format != LogFormat::Text)
        {
            command.args(["--log-format", format.get_name()]);
        }
        let error = command.args(&self.flags).exec();
        Err(error).with_context(|| {
            format!(
                "starting {} (`dht-node cluster` runs the binary installed next to dht-node)",
                binary.display()
            )
        })
    }
}

#[derive(Debug, Args)]
pub struct BootstrapCommand {
    /// UDP port to listen on.
    #[arg(long, env = "DHT_PORT", default_value_t = 5678)]
    pub port: u16,

    /// Where to find peer bootstrap nodes (often the DNS name all of them are behind).
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,

    #[command(flatten)]
    pub node: NodeOptions,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("bootstrap_source")
        .required(true)
        .multiple(true)
        .args(["bootstrap", "bootstrap_dns", "bootstrap_file"])
))]
pub struct WorkerCommand {
    /// UDP port to listen on.
    #[arg(long, env = "DHT_PORT", default_value_t = 7000)]
    pub port: u16,

    /// The bootstrap nodes to join through: at least one of --bootstrap, --bootstrap-dns,
    /// --bootstrap-file.
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,

    #[command(flatten)]
    pub node: NodeOptions,
}

// Flags of a long-running node. Not a doc comment: clap, building a deferred subcommand,
// would print it as the subcommand's summary in place of the variant's.
#[derive(Debug, Args)]
pub struct NodeOptions {
    /// Address to listen on (UDP).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// The node id, 40 hex digits; random when left out.
    #[arg(long, value_name = "HEX40")]
    pub node_id: Option<NodeId>,

    /// Serve /healthz, /readyz and /metrics over HTTP on this address (none when left out).
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_addr: Option<SocketAddr>,

    /// Bucket size, and how many closest nodes store each value.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    pub k: u16,

    /// Queries in flight per lookup round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub alpha: u16,

    /// Milliseconds a call waits for its answer.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rpc_timeout_ms: u64,

    /// Seconds a stored value lives (default one week, as Python).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub storage_ttl_secs: u64,

    /// Most values stored at once; the oldest is dropped to make room.
    #[arg(long, default_value_t = 100_000)]
    pub max_values: usize,

    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_value_size: usize,

    /// Most routing-table contacts of one IP address per k-bucket (per IP and port on
    /// loopback), so that one host cannot fill this node's view of the network.
    #[arg(long, default_value_t = crate::routing::DEFAULT_MAX_CONTACTS_PER_IP,
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u16).range(1..), usize::from))]
    pub max_contacts_per_ip: usize,

    /// Requests per second answered from one source (IP; IP and port on loopback), with a
    /// burst of one second's worth; more are dropped unanswered. 0: no limit.
    #[arg(long, env = "DHT_MAX_REQUESTS_PER_SOURCE", default_value_t = 2000)]
    pub max_requests_per_source: u32,

    /// Answer bytes per second sent to one source, which bounds what requests with a forged
    /// source address can aim at their victim. 0: no limit.
    #[arg(long, env = "DHT_MAX_ANSWER_BYTES_PER_SOURCE", default_value_t = 1024 * 1024)]
    pub max_answer_bytes_per_source: u32,

    /// Seconds between bucket refreshes and republishing (default one hour, as Python).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub refresh_secs: u64,

    /// For fault tests only: the fraction (0 to 1) of received datagrams dropped at random.
    #[arg(long, env = "DHT_TEST_DATAGRAM_LOSS", default_value_t = 0.0, value_name = "FRACTION",
          value_parser = parse_fraction)]
    pub test_datagram_loss: f64,
}

impl NodeOptions {
    fn config(&self) -> NodeConfig {
        let refresh = Duration::from_secs(self.refresh_secs);
        NodeConfig {
            node_id: self.node_id,
            k: usize::from(self.k),
            alpha: usize::from(self.alpha),
            rpc_timeout: Duration::from_millis(self.rpc_timeout_ms),
            storage_ttl: Duration::from_secs(self.storage_ttl_secs),
            max_stored_values: self.max_values,
            max_value_size: self.max_value_size,
            max_contacts_per_ip: self.max_contacts_per_ip,
            max_requests_per_source: self.max_requests_per_source,
            max_answer_bytes_per_source: self.max_answer_bytes_per_source,
            refresh_interval: refresh,
            bucket_stale_after: refresh,
            republish_after: refresh,
            datagram_loss: self.test_datagram_loss,
            ..NodeConfig::default()
        }
    }
}

/// A number from 0 to 1.
fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(fraction) if (0.0..=1.0).contains(&fraction) => Ok(fraction),
        _ => Err(format!("{text:?} is not a fraction from 0 to 1")),
    }
}

// Flags of the one-shot tools (not a doc comment: see NodeOptions).
#[derive(Debug, Args)]
pub struct ToolOptions {
    /// Nodes of the DHT to join through, HOST:PORT comma-separated (port 5678 when left out).
    #[arg(long, env = "BOOTSTRAP_NODES", value_name = "HOST:PORT,...", required = true)]
    pub bootstrap: Vec<EndpointList>,

    /// Milliseconds each call waits for its answer.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct PutCommand {
    #[command(flatten)]
    pub tool: ToolOptions,

    /// How VALUE is read.
    #[arg(long = "type", value_enum, default_value_t = ValueType::Str)]
    pub value_type: ValueType,

    /// The key, a string: the DHT key is sha1(utf8(KEY)), as Python's digest(str(key)).
    pub key: String,

    /// The value; bytes are given as hex, bools as true/false. A negative number is a value,
    /// not an option.
    #[arg(allow_negative_numbers = true)]
    pub value: String,
}

#[derive(Debug, Args)]
pub struct GetCommand {
    #[command(flatten)]
    pub tool: ToolOptions,

    /// How the value is printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// The key, a string: the DHT key is sha1(utf8(KEY)).
    pub key: String,
}

#[derive(Debug, Args)]
pub struct PingCommand {
    /// The node to ping, HOST:PORT (port 5678 when left out).
    pub target: HostPort,

    /// Milliseconds to wait for the answer.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

/// The type of a value given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValueType {
    Str,
    Bytes,
    Int,
    Float,
    Bool,
}

/// How `get` prints a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// str raw, bytes hex, int decimal, float shortest round-trip, bool true/false.
    Text,
    /// {"type": "...", "value": ...}, bytes as a hex string.
    Json,
}

/// Reads VALUE as `value_type`; the error names what was wrong.
pub fn parse_value(value_type: ValueType, text: &str) -> anyhow::Result<Value> {
    Ok(match value_type {
        ValueType::Str => Value::Str(text.to_owned()),
        ValueType::Bytes => Value::Bytes(
            hex::decode(text).with_context(|| format!("bytes VALUE {text:?} is not hex"))?,
        ),
        ValueType::Int => match (text.parse::<i64>(), text.parse::<u64>()) {
            (Ok(n), _) => Value::Int(n),
            (Err(_), Ok(n)) => Value::UInt(n),
            (Err(error), Err(_)) => {
                bail!("int VALUE {text:?} is not an integer from -2^63 to 2^64-1: {error}")
            }
        },
        ValueType::Float => Value::Float(
            text.parse().with_context(|| format!("float VALUE {text:?} is not a number"))?,
        ),
        ValueType::Bool => match text.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => bail!("bool VALUE {text:?} is neither true nor false"),
        },
    })
}

/// A float as Python's `repr` writes it: shortest round-trip, always with a fraction or an
/// exponent.
fn float_text(value: f64) -> String {
    if value.is_nan() {
        "nan".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        format!("{value:?}")
    }
}

/// The text `get` prints for `value` in `format`.
pub fn format_value(value: &Value, format: OutputFormat) -> String {
    match format {
        OutputFormat::Text => match value {
            Value::Str(text) => text.clone(),
            Value::Bytes(bytes) => hex::encode(bytes),
            Value::Int(n) => n.to_string(),
            Value::UInt(n) => n.to_string(),
            Value::Float(f) => float_text(*f),
            Value::Bool(b) => b.to_string(),
        },
        OutputFormat::Json => {
            let json_value = match value {
                Value::Str(text) => serde_json::Value::from(text.as_str()),
                Value::Bytes(bytes) => serde_json::Value::from(hex::encode(bytes)),
                Value::Int(n) => serde_json::Value::from(*n),
                Value::UInt(n) => serde_json::Value::from(*n),
                Value::Bool(b) => serde_json::Value::from(*b),
                // JSON has no NaN or infinities; Python's json module reads these tokens.
                Value::Float(f) if !f.is_finite() => {
                    let token = if f.is_nan() {
                        "NaN"
                    } else if *f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    };
                    return format!("{{\"type\":\"float\",\"value\":{token}}}");
                }
                Value::Float(f) => serde_json::Value::from(*f),
            };
            serde_json::json!({ "type": value.type_name(), "value": json_value }).to_string()
        }
    }
}

/// Parses the command line and runs it; the process exits with the returned code.
pub async fn run(cli: Cli) -> ExitCode {
    let default_level = match cli.command {
        Command::Bootstrap(_) | Command::Worker(_) => LevelFilter::INFO,
        Command::Put(_) | Command::Get(_) | Command::Ping(_) | Command::Cluster(_) => {
            LevelFilter::WARN
        }
    };
    logging::init(cli.log_format, default_level);
    let result = match cli.command {
        Command::Bootstrap(command) => {
            run_node(Role::Bootstrap, command.port, &command.bootstrap, &command.node).await
        }
        Command::Worker(command) => {
            run_node(Role::Worker, command.port, &command.bootstrap, &command.node).await
        }
        Command::Put(command) => put(command).await,
        Command::Get(command) => get(command).await,
        Command::Ping(command) => ping(command).await,
        Command::Cluster(command) => command.exec(cli.log_format),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("dht-node: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// What a node is for: a bootstrap node serves joins (and answers `kadscale_load`); a worker
/// joins through bootstrap nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Bootstrap,
    Worker,
}

/// A node whose bootstrap manager joins it in the background: what `bootstrap` and `worker`
/// run, and every node of `cluster`.
pub struct ManagedNode {
    pub node: Node,
    pub manager: Arc<NodeManager>,
    joiner: Joiner,
}

/// Where a [`ManagedNode`]'s manager loop stands.
enum Joiner {
    /// No peer to join through: a bootstrap node given none waits to be joined.
    NoPeers,
    /// Set up by [`ManagedNode::bind`], not started yet.
    Ready,
    Running(tokio::task::JoinHandle<()>),
}

impl ManagedNode {
    /// Binds `listen`, sets up the manager from `bootstrap` with its metrics and the node's in
    /// `registry`, and starts it.
    pub async fn start(
        role: Role,
        listen: SocketAddr,
        config: NodeConfig,
        bootstrap: &BootstrapArgs,
        registry: &mut Registry,
    ) -> anyhow::Result<ManagedNode> {
        let mut managed = Self::bind(role, listen, config, bootstrap, registry).await?;
        managed.start_manager();
        Ok(managed)
    }

    /// The node bound and serving, its manager set up but not yet running: for a harness that
    /// brings many nodes up first and lets them join at once.
    pub async fn bind(
        role: Role,
        listen: SocketAddr,
        config: NodeConfig,
        bootstrap: &BootstrapArgs,
        registry: &mut Registry,
    ) -> anyhow::Result<ManagedNode> {
        let metrics = Metrics::new(registry);
        let node = Node::start(listen, config, metrics).await?;
        match manage_node(&node, bootstrap, role == Role::Bootstrap, registry) {
            Ok(manager) => {
                let joiner = if bootstrap.discovery_config().is_empty() {
                    Joiner::NoPeers
                } else {
                    Joiner::Ready
                };
                Ok(ManagedNode { node, manager: Arc::new(manager), joiner })
            }
            Err(error) => {
                node.shutdown();
                Err(error.into())
            }
        }
    }

    /// Runs the manager in the background, unless it has no peer to join through or runs
    /// already.
    pub fn start_manager(&mut self) {
        if let Joiner::Ready = self.joiner {
            let manager = self.manager.clone();
            self.joiner = Joiner::Running(tokio::spawn(async move { manager.run().await }));
        }
    }

    /// Stops the node and its manager.
    pub fn shutdown(&self) {
        self.node.shutdown();
        if let Joiner::Running(joiner) = &self.joiner {
            joiner.abort();
        }
    }
}

/// Resolves every `host:port` (host names through the system resolver).
pub async fn resolve(endpoints: &[HostPort]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for endpoint in endpoints {
        let resolved = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .with_context(|| format!("resolving {endpoint}"))?;
        addrs.extend(resolved);
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

fn flatten(lists: &[EndpointList]) -> Vec<HostPort> {
    lists.iter().flat_map(|list| list.0.iter().cloned()).collect()
}

async fn run_node(
    role: Role,
    port: u16,
    bootstrap: &BootstrapArgs,
    options: &NodeOptions,
) -> anyhow::Result<ExitCode> {
    let mut registry = Registry::default();
    let listen = SocketAddr::new(options.host, port);
    let mut config = options.config();
    config.node_id = config.node_id.or(bootstrap.node_id()?);
    let managed = ManagedNode::start(role, listen, config, bootstrap, &mut registry).await?;
    let node = managed.node.clone();
    let stop = tokio_util::sync::CancellationToken::new();

    let admin = match options.admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin server to {addr}"))?;
            let ready_node = node.clone();
            let ready: Arc<dyn Fn() -> bool + Send + Sync> = match role {
                // A bootstrap node is ready once it listens: others need it to join at all.
                Role::Bootstrap => Arc::new(|| true),
                Role::Worker => Arc::new(move || ready_node.routing_table_len() > 0),
            };
            let state = AdminState { registry: Arc::new(registry), ready };
            let admin_stop = stop.clone();
            // The bound address: with port 0 (tests), the log is how callers learn the port.
            let addr = listener.local_addr().context("reading the admin server's address")?;
            tracing::info!(%addr, "admin server listening");
            Some(tokio::spawn(admin::serve(listener, state, async move {
                admin_stop.cancelled().await
            })))
        }
        None => None,
    };

    let signal = shutdown_signal().await.context("waiting for SIGTERM or SIGINT")?;
    tracing::info!(signal, "shutting down");
    stop.cancel();
    managed.shutdown();
    if let Some(admin) = admin {
        if let Err(error) = admin.await {
            tracing::warn!(%error, "admin server task failed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A short-lived node for one command, knowing the `tool.bootstrap` nodes that answered. It
/// does not join (no lookup of its own id): the command's own lookup crawls from them.
async fn tool_node(tool: &ToolOptions) -> anyhow::Result<Node> {
    let addrs = resolve(&flatten(&tool.bootstrap)).await?;
    let Some(first) = addrs.first() else {
        bail!("--bootstrap names no node");
    };
    let unspecified = match first {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let config =
        NodeConfig { rpc_timeout: Duration::from_millis(tool.timeout_ms), ..NodeConfig::default() };
    let node =
        Node::start(SocketAddr::new(unspecified, 0), config, Metrics::unregistered()).await?;
    for contact in node.ping_all(&addrs).await {
        node.add_contact(contact);
    }
    if node.routing_table_len() == 0 {
        node.shutdown();
        let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        bail!("no bootstrap node answered (tried {})", names.join(", "));
    }
    Ok(node)
}

async fn put(command: PutCommand) -> anyhow::Result<ExitCode> {
    let value = parse_value(command.value_type, &command.value)?;
    let node = tool_node(&command.tool).await?;
    let result = node.set(key_digest(command.key.as_bytes()), value).await;
    node.shutdown();
    match result {
        Ok(report) => {
            println!("stored on {} node(s)", report.stored_remotely);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("dht-node: put {:?}: {error}", command.key);
            Ok(ExitCode::from(1))
        }
    }
}

async fn get(command: GetCommand) -> anyhow::Result<ExitCode> {
    let node = tool_node(&command.tool).await?;
    let found = node.get(key_digest(command.key.as_bytes())).await;
    node.shutdown();
    match found {
        Some(value) => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", format_value(&value, command.output))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("dht-node: key {:?} not found", command.key);
            Ok(ExitCode::from(1))
        }
    }
}

async fn ping(command: PingCommand) -> anyhow::Result<ExitCode> {
    let addrs = resolve(std::slice::from_ref(&command.target)).await?;
    let Some(target) = addrs.first().copied() else {
        bail!("{} resolves to no address", command.target);
    };
    let unspecified = match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let node = Node::start(
        SocketAddr::new(unspecified, 0),
        NodeConfig::default(),
        Metrics::unregistered(),
    )
    .await?;
    let started = Instant::now();
    let answer = node.ping(target, Duration::from_millis(command.timeout_ms)).await;
    node.shutdown();
    match answer {
        Ok(id) => {
            println!("{id} {target} rtt={:.3}ms", started.elapsed().as_secs_f64() * 1000.0);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("dht-node: ping {target}: {error}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Builds `command` (deferred subcommands too, as parsing builds the chosen one) and checks
    /// that each of its flags and its subcommands' has help.
    fn assert_every_flag_documented(mut command: clap::Command) {
        command.build();
        for sub in std::iter::once(&command).chain(command.get_subcommands()) {
            for arg in sub.get_arguments() {
                let (command, flag) = (sub.get_name(), arg.get_id());
                assert!(arg.get_help().is_some(), "{command} --{flag} has no help");
            }
        }
    }

    #[test]
    fn every_flag_is_documented_and_the_parsers_are_consistent() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        cli.build();
        assert!(cli.find_subcommand("bootstrap").unwrap().get_arguments().count() > 0, "built");
        assert_every_flag_documented(Cli::command());
        // `dht-node cluster`'s own binary reads these.
        let cluster = crate::cluster::ClusterArgs::augment_args(clap::Command::new("cluster"));
        cluster.clone().debug_assert();
        assert_every_flag_documented(cluster);
    }

    #[test]
    fn a_subcommands_help_opens_with_its_summary_in_the_command_list() {
        let listed: Vec<_> = Cli::command()
            .get_subcommands()
            .map(|sub| (sub.get_name().to_owned(), sub.get_about().map(ToString::to_string)))
            .collect();
        let mut cli = Cli::command();
        cli.build();
        for (name, about) in listed {
            let built = cli.find_subcommand(&name).unwrap();
            assert_eq!(built.get_about().map(ToString::to_string), about, "dht-node {name} --help");
        }
    }

    #[test]
    fn node_flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "dht-node",
            "worker",
            "--bootstrap",
            "10.0.0.1:5678,boot.example:7000,10.0.0.2",
            "--k",
            "25",
            "--max-contacts-per-ip",
            "5",
            "--node-id",
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Worker(worker) = cli.command else { panic!("not a worker") };
        assert_eq!(worker.port, 7000);
        let endpoints = worker.bootstrap.discovery_config().static_entries;
        assert_eq!(endpoints.len(), 3);
        assert_eq!((endpoints[1].host.as_str(), endpoints[1].port), ("boot.example", 7000));
        assert_eq!(endpoints[2].port, 5678);
        let config = worker.node.config();
        assert_eq!((config.k, config.alpha, config.max_contacts_per_ip), (25, 3, 5));
        assert_eq!(config.node_id, Some(key_digest(b"hello")));
        assert!(Cli::try_parse_from(["dht-node", "worker"]).is_err(), "a worker needs --bootstrap");
        let dns_only = Cli::try_parse_from([
            "dht-node",
            "worker",
            "--bootstrap-dns",
            "kad-bootstrap.ns.svc:5678",
        ]);
        assert!(dns_only.is_ok(), "--bootstrap-dns alone is enough");
        let Command::Bootstrap(bootstrap) =
            Cli::try_parse_from(["dht-node", "bootstrap"]).unwrap().command
        else {
            panic!("not a bootstrap node")
        };
        assert_eq!(bootstrap.port, 5678);
        assert!(bootstrap.bootstrap.discovery_config().is_empty());
        assert_eq!(
            bootstrap.node.config().max_contacts_per_ip,
            crate::routing::DEFAULT_MAX_CONTACTS_PER_IP
        );
        assert!(
            Cli::try_parse_from(["dht-node", "bootstrap", "--max-contacts-per-ip", "0"]).is_err()
        );
        assert!(Cli::try_parse_from(["dht-node", "bootstrap", "--node-id", "xyz"]).is_err());
    }

    #[test]
    fn put_takes_negative_numbers_as_values() {
        for value in ["-5", "-0.25"] {
            let cli = Cli::try_parse_from(["dht-node", "put", "--bootstrap", "h:1", "k", value])
                .unwrap_or_else(|error| panic!("{value}: {error}"));
            let Command::Put(put) = cli.command else { panic!("not a put") };
            assert_eq!(put.value, value);
        }
    }

    #[test]
    fn values_parse_by_type_and_refuse_nonsense() {
        assert_eq!(parse_value(ValueType::Str, "héllo").unwrap(), Value::Str("héllo".into()));
        assert_eq!(parse_value(ValueType::Bytes, "00ff").unwrap(), Value::Bytes(vec![0, 255]));
        assert_eq!(parse_value(ValueType::Int, "-7").unwrap(), Value::Int(-7));
        assert_eq!(
            parse_value(ValueType::Int, "18446744073709551615").unwrap(),
            Value::UInt(u64::MAX)
        );
        assert_eq!(parse_value(ValueType::Float, "2.0").unwrap(), Value::Float(2.0));
        assert_eq!(parse_value(ValueType::Bool, "True").unwrap(), Value::Bool(true));
        assert!(parse_value(ValueType::Bytes, "0g").unwrap_err().to_string().contains("not hex"));
        assert!(parse_value(ValueType::Int, "1.5").is_err());
        assert!(parse_value(ValueType::Int, "18446744073709551616").is_err());
        assert!(parse_value(ValueType::Bool, "yes").is_err());
    }

    #[test]
    fn values_print_as_the_contract_says() {
        let text = |value: Value| format_value(&value, OutputFormat::Text);
        let json = |value: Value| format_value(&value, OutputFormat::Json);
        assert_eq!(text(Value::Str("a b".into())), "a b");
        assert_eq!(text(Value::Bytes(vec![1, 171])), "01ab");
        assert_eq!(text(Value::Float(2.0)), "2.0");
        assert_eq!(text(Value::Float(0.1)), "0.1");
        assert_eq!(text(Value::Bool(false)), "false");
        assert_eq!(json(Value::Bytes(vec![1, 171])), r#"{"type":"bytes","value":"01ab"}"#);
        assert_eq!(json(Value::UInt(u64::MAX)), r#"{"type":"int","value":18446744073709551615}"#);
        assert_eq!(json(Value::Float(2.0)), r#"{"type":"float","value":2.0}"#);
        assert_eq!(json(Value::Float(f64::NAN)), r#"{"type":"float","value":NaN}"#);
        assert_eq!(json(Value::Str("\"".into())), r#"{"type":"str","value":"\""}"#);
    }
}
