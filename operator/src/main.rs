//! `dht-operator`: prints the CRD, answers what the tier policy would do, and runs the
//! controller.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kadscale_node::admin::{self, AdminState};
use kadscale_node::tier::{format_ratio, TierPlan, TierPolicy, TierStrategy};
use kadscale_operator::controller::{self, Config};
use kadscale_operator::crd::{crd_yaml, DEFAULT_IMAGE};
use kadscale_operator::lease::{LeaderElector, Timing};
use kadscale_operator::metrics::Metrics;
use kube::Client;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The kadscale operator: keeps a Kademlia DHT's bootstrap tier sized to its worker count.
#[derive(Parser, Debug)]
#[command(name = "dht-operator", version)]
struct Cli {
    /// Log format: text for people, json for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KADSCALE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the DhtCluster CustomResourceDefinition as YAML (what crds/dhtcluster.yaml holds).
    Crd,
    /// Show what the tier policy gives for worker counts: tier, bootstrap nodes, ratio and
    /// ratio status (the seed's ratio analysis).
    Plan(PlanArgs),
    /// Run the controller against the cluster in KUBECONFIG (or the in-cluster service account).
    Run(RunArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("counts").required(true).args(["workers", "from"])))]
struct PlanArgs {
    /// Worker counts to plan, comma-separated (e.g. 15,30,100,200,500).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<u32>,
    /// First worker count of a range (with --to).
    #[arg(long, requires = "to")]
    from: Option<u32>,
    /// Last worker count of a range (inclusive).
    #[arg(long, requires = "from")]
    to: Option<u32>,
    /// Step of the range.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    step: u32,
    /// adaptive, small, medium, large, xlarge or proportional.
    #[arg(long, default_value = "adaptive")]
    strategy: TierStrategy,
    /// Above this many workers per bootstrap node the ratio status is Warning.
    #[arg(long, default_value_t = 50)]
    max_workers_per_bootstrap: u32,
    /// Upper bound on bootstrap nodes.
    #[arg(long, default_value_t = 20)]
    max_bootstrap_nodes: u32,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Watch DhtClusters in this namespace only; unset: every namespace.
    #[arg(long, env = "KADSCALE_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "0.0.0.0:8080", env = "KADSCALE_ADMIN_ADDR")]
    admin_addr: SocketAddr,
    /// Image of DHT pods whose DhtCluster names none.
    #[arg(long, default_value = DEFAULT_IMAGE, env = "KADSCALE_IMAGE")]
    image: String,
    /// Name of the coordination.k8s.io Lease that elects the active replica.
    #[arg(long, default_value = "kadscale-operator")]
    lease_name: String,
    /// Namespace of the Lease; unset: --namespace, else the kubeconfig's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's name in the Lease and in events; unset: $HOSTNAME and the process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconcile without a Lease (a single replica, e.g. during development).
    #[arg(long)]
    no_leader_election: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Crd => crd_yaml().context("rendering the CRD").and_then(|yaml| emit(&yaml)),
        Command::Plan(args) => plan(&args),
        Command::Run(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|runtime| runtime.block_on(run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dht-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let policy = TierPolicy {
        strategy: args.strategy,
        max_workers_per_bootstrap: args.max_workers_per_bootstrap,
        max_bootstrap_nodes: args.max_bootstrap_nodes,
        ..TierPolicy::default()
    };
    policy.validate()?;
    let counts: Vec<u32> = match (args.from, args.to) {
        (Some(from), Some(to)) => (from..=to).step_by(args.step as usize).collect(),
        _ => args.workers.clone(),
    };
    let plans: Vec<TierPlan> =
        counts.into_iter().map(|w| policy.plan(w, None, SystemTime::now())).collect();
    match args.output {
        Output::Table => emit(&plan_table(&plans)),
        Output::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&plan_json(&plans))?)),
    }
}

/// Writes `text` to stdout; a closed pipe (`dht-operator plan ... | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

fn plan_table(plans: &[TierPlan]) -> String {
    let mut out = format!(
        "{:>8}  {:<7}  {:>9}  {:>8}  {}\n",
        "WORKERS", "TIER", "BOOTSTRAP", "RATIO", "STATUS"
    );
    for plan in plans {
        out.push_str(&format!(
            "{:>8}  {:<7}  {:>9}  {:>8}  {}\n",
            plan.workers,
            plan.tier.name(),
            plan.bootstrap_replicas,
            format_ratio(plan.ratio),
            plan.ratio_status
        ));
    }
    out
}

fn plan_json(plans: &[TierPlan]) -> serde_json::Value {
    plans
        .iter()
        .map(|plan| {
            serde_json::json!({
                "workers": plan.workers,
                "tier": plan.tier.name(),
                "bootstrapNodes": plan.bootstrap_replicas,
                "ratio": format_ratio(plan.ratio),
                "ratioValue": plan.ratio,
                "ratioStatus": plan.ratio_status.name(),
            })
        })
        .collect()
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("configuring the Kubernetes client")?;
    let version = client.apiserver_version().await.context("reaching the API server")?;
    tracing::info!(version = %version.git_version, "connected to the API server");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_addr))?;
    let admin_state = AdminState {
        registry: Arc::new(registry),
        ready: {
            let ready = ready.clone();
            Arc::new(move || ready.load(Ordering::Relaxed))
        },
    };
    let admin =
        tokio::spawn(admin::serve(listener, admin_state, shutdown.clone().cancelled_owned()));
    tracing::info!(addr = %args.admin_addr, "admin server listening");

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "dht-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let config = Config {
        namespace: args.namespace.clone(),
        default_image: args.image.clone(),
        instance: identity.clone(),
    };
    // Ready means: configured and connected; a standby replica is ready too.
    ready.store(true, Ordering::Relaxed);
    if args.no_leader_election {
        controller::run(client, config, metrics, shutdown.clone().cancelled_owned()).await;
    } else {
        let lease_namespace = args
            .lease_namespace
            .clone()
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let mut elector = LeaderElector::new(
            client.clone(),
            &lease_namespace,
            &args.lease_name,
            &identity,
            Timing::default(),
        );
        lead_while_elected(&mut elector, client, config, metrics, &shutdown).await;
    }
    shutdown.cancel();
    admin.await.context("admin server task")?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs the controller whenever this replica holds the Lease, until shutdown; a lost Lease
/// stops the controller and this replica goes back to waiting for it.
async fn lead_while_elected(
    elector: &mut LeaderElector,
    client: Client,
    config: Config,
    metrics: Metrics,
    shutdown: &CancellationToken,
) {
    tracing::info!(identity = elector.identity(), "waiting for the lease");
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown.cancelled() => return,
        }
        let stop = shutdown.child_token();
        let controller = controller::run(
            client.clone(),
            config.clone(),
            metrics.clone(),
            stop.clone().cancelled_owned(),
        );
        tokio::pin!(controller);
        tokio::select! {
            () = &mut controller => {}
            () = elector.keep_renewing() => {
                stop.cancel();
                controller.await;
            }
        }
        if shutdown.is_cancelled() {
            // Bounded: an unreachable API server must not keep a stopping pod alive.
            match tokio::time::timeout(Duration::from_secs(5), elector.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "releasing the lease"),
                Err(_) => tracing::warn!("releasing the lease timed out"),
            }
            return;
        }
    }
}

/// Cancels `token` on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM: shutting down"),
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => tracing::info!("SIGINT: shutting down"),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        },
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans(workers: &[u32], strategy: &str) -> Vec<TierPlan> {
        let policy = TierPolicy { strategy: strategy.parse().unwrap(), ..TierPolicy::default() };
        workers.iter().map(|w| policy.plan(*w, None, SystemTime::UNIX_EPOCH)).collect()
    }

    #[test]
    fn table_is_the_seed_ratio_analysis() {
        let table = plan_table(&plans(&[15, 30, 100, 200, 500], "adaptive"));
        let expected = [
            " WORKERS  TIER     BOOTSTRAP     RATIO  STATUS",
            "      15  small            2     7.5:1  OK",
            "      30  medium           3    10.0:1  OK",
            "     100  large            4    25.0:1  OK",
            "     200  large            4    50.0:1  OK",
            "     500  xlarge           6    83.3:1  Warning",
            "",
        ]
        .join("\n");
        assert_eq!(table, expected);
    }

    #[test]
    fn json_has_one_object_per_count() {
        let json = plan_json(&plans(&[500], "proportional"));
        assert_eq!(
            json,
            serde_json::json!([{
                "workers": 500, "tier": "xlarge", "bootstrapNodes": 10,
                "ratio": "50.0:1", "ratioValue": 50.0, "ratioStatus": "OK"
            }])
        );
    }

    #[test]
    fn cli_parses_every_subcommand() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "dht-operator",
            "plan",
            "--from",
            "10",
            "--to",
            "60",
            "--step",
            "25",
        ])
        .unwrap();
        let Command::Plan(args) = cli.command else { panic!("not plan") };
        assert_eq!((args.from, args.to, args.step), (Some(10), Some(60), 25));
        assert!(Cli::try_parse_from(["dht-operator", "plan"]).is_err(), "a count is required");
        let cli = Cli::try_parse_from([
            "dht-operator",
            "run",
            "--namespace",
            "dht",
            "--no-leader-election",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.namespace.as_deref(), Some("dht"));
        assert_eq!(args.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.image, DEFAULT_IMAGE);
    }
}
