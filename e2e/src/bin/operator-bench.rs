//! `operator-bench`: the operator benchmark (see `kadscale_e2e::bench`) against the cluster in
//! KUBECONFIG; writes its figures as JSON and the tier plot as SVG. `just bench-operator` runs
//! it on a cluster of its own (bench/operator.sh) and turns the JSON into BENCHMARKS.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use kadscale_e2e::bench::{self, Sizes};
use kadscale_e2e::plot::{tier_plot_svg, PlotFrame};
use kadscale_e2e::scenario::Scenario;
use kadscale_node::tier::{Tier, TierPolicy};

/// Times the operator on a real API server: scale to StatefulSet latency, a tier sweep, an
/// xlarge cluster to Ready, many DhtClusters at once, and the operator's CPU and memory.
#[derive(Parser, Debug)]
struct Cli {
    /// Where the figures go (JSON).
    #[arg(long)]
    json: PathBuf,
    /// Where the plot of bootstrap replicas and ratio against workers goes (SVG).
    #[arg(long)]
    svg: PathBuf,
    /// A line under the plot's title (e.g. the date and the machine).
    #[arg(long, default_value = "")]
    subtitle: String,
    /// The e2e suite's tiny sizes instead of the full ones.
    #[arg(long)]
    tiny: bool,
    /// Timed scale changes.
    #[arg(long)]
    scale_changes: Option<usize>,
    /// Workers of the cluster timed to Ready (0 skips it).
    #[arg(long)]
    xlarge_workers: Option<u32>,
    /// DhtClusters created at once.
    #[arg(long)]
    clusters: Option<usize>,
    /// Workers of each of them.
    #[arg(long)]
    workers_per_cluster: Option<u32>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // On SIGINT or SIGTERM the run is dropped, which stops the operator process it started.
    let outcome = tokio::select! {
        result = run(Cli::parse()) => result,
        signal = interrupted() => Err(anyhow!("stopped by {signal}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("operator-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The first of SIGINT and SIGTERM.
async fn interrupted() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = terminate => "SIGTERM",
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut sizes = if cli.tiny { Sizes::tiny() } else { Sizes::full() };
    if let Some(changes) = cli.scale_changes {
        sizes.scale_changes = changes;
    }
    if let Some(workers) = cli.xlarge_workers {
        sizes.xlarge_workers = Some(workers).filter(|w| *w > 0);
    }
    if let Some(clusters) = cli.clusters {
        sizes.clusters = clusters;
    }
    if let Some(workers) = cli.workers_per_cluster {
        sizes.workers_per_cluster = workers;
    }
    let scenario =
        Scenario::start("bench").await?.context("no cluster is reachable through KUBECONFIG")?;
    let report = bench::run(&scenario, &sizes).await?;
    std::fs::write(&cli.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", cli.json.display()))?;

    let policy = TierPolicy::default();
    let tiers: Vec<(Option<u32>, &str)> =
        Tier::ALL.iter().map(|tier| (policy.table.row(*tier).max_workers, tier.name())).collect();
    let frame = PlotFrame {
        tiers: &tiers,
        ratio_limit: f64::from(policy.max_workers_per_bootstrap),
        subtitle: &cli.subtitle,
    };
    std::fs::write(&cli.svg, tier_plot_svg(&report.sweep, &frame))
        .with_context(|| format!("writing {}", cli.svg.display()))?;
    eprintln!("operator-bench: wrote {} and {}", cli.json.display(), cli.svg.display());
    Ok(())
}
