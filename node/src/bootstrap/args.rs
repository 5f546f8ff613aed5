//! The bootstrap manager's command-line flags, shared by `dht-node worker` and
//! `dht-node bootstrap` (flattened into both), with the seed's defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::discovery::DiscoveryConfig;
use super::endpoint::{EndpointList, HostPort};
use super::load::LoadTracker;
use super::manager::ManagerConfig;
use super::selection::SelectionStrategy;

#[derive(Clone, Debug, Args)]
pub struct BootstrapArgs {
    /// Bootstrap nodes, HOST:PORT, comma-separated or repeated; host names are resolved again
    /// every health interval.
    #[arg(long = "bootstrap", env = "BOOTSTRAP_NODES", value_name = "HOST:PORT,...")]
    pub bootstrap: Vec<EndpointList>,

    /// A DNS name whose every A/AAAA record is a bootstrap node (a headless Service),
    /// re-resolved every health interval; repeatable, or comma-separated in the variable.
    #[arg(long = "bootstrap-dns", env = "DHT_BOOTSTRAP_DNS", value_name = "NAME:PORT")]
    pub bootstrap_dns: Vec<EndpointList>,

    /// A file of bootstrap nodes, one HOST:PORT a line, `#` comments; re-read when it changes.
    #[arg(long = "bootstrap-file", value_name = "PATH")]
    pub bootstrap_file: Option<PathBuf>,

    /// How join seeds are chosen: round_robin, least_loaded, priority or random.
    #[arg(long, default_value = "round_robin", value_name = "STRATEGY")]
    pub selection_strategy: SelectionStrategy,

    /// Bootstrap nodes selected and pinged per join attempt.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub bootstrap_count: u16,

    /// Seconds between health checks (a real ping of every bootstrap node) and re-discovery.
    #[arg(long, default_value = "30", value_parser = parse_seconds, value_name = "SECS")]
    pub health_check_interval: Duration,

    /// Consecutive failures after which a bootstrap node is skipped until it answers again.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub failure_threshold: u32,

    /// Seconds a ping or load query may take (fractions allowed).
    #[arg(long, default_value = "5.0", value_parser = parse_seconds, value_name = "SECS")]
    pub connection_timeout: Duration,

    /// Seconds before the first retry of a failed join; doubled on each retry.
    #[arg(long, default_value = "2.0", value_parser = parse_seconds, value_name = "SECS")]
    pub retry_delay: Duration,

    /// Retries with a doubling delay before retrying at a steady interval (at most 60 s).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_retries: u32,

    /// Ping only the selected bootstrap nodes in a join attempt, not the others when none of
    /// them answers.
    #[arg(long)]
    pub no_fallback: bool,

    /// Seconds between load queries (kadscale_load), and the window of the join limit.
    #[arg(long, default_value = "60", value_parser = parse_seconds, value_name = "SECS")]
    pub load_balance_interval: Duration,

    /// Joins per load interval above which a bootstrap node reports itself overloaded.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_connections_per_node: u64,

    /// Do not query bootstrap nodes for their load; least_loaded counts own joins only.
    #[arg(long)]
    pub no_load_balancing: bool,
}

/// The longest interval or timeout a flag accepts: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// Seconds as a positive decimal number, at most a day.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 =
        text.trim().parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!("{text:?}: seconds must be above 0 and at most {MAX_SECONDS}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn flatten(lists: &[EndpointList]) -> Vec<HostPort> {
    lists.iter().flat_map(|list| list.0.iter().cloned()).collect()
}

impl BootstrapArgs {
    pub fn discovery_config(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            static_entries: flatten(&self.bootstrap),
            dns_names: flatten(&self.bootstrap_dns),
            file: self.bootstrap_file.clone(),
        }
    }

    pub fn manager_config(&self) -> ManagerConfig {
        ManagerConfig {
            strategy: self.selection_strategy,
            seeds_per_join: usize::from(self.bootstrap_count),
            health_check_interval: self.health_check_interval,
            failure_threshold: self.failure_threshold,
            connection_timeout: self.connection_timeout,
            backoff: Backoff { retry_delay: self.retry_delay, max_retries: self.max_retries },
            fallback: !self.no_fallback,
            load_balancing: !self.no_load_balancing,
            load_balance_interval: self.load_balance_interval,
        }
    }

    /// The counter a bootstrap node answers `kadscale_load` from.
    pub fn load_tracker(&self, now: Instant) -> LoadTracker {
        LoadTracker::new(self.load_balance_interval, self.max_connections_per_node, now)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    }

    fn parse(args: &[&str]) -> Result<BootstrapArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("dht-node").chain(args.iter().copied()))
            .map(|cli| cli.bootstrap)
    }

    #[test]
    fn defaults_are_the_seeds() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.manager_config(), ManagerConfig::default());
        assert_eq!(args.max_connections_per_node, 50);
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let args = parse(&[
            "--bootstrap",
            "10.0.0.1:5678,10.0.0.2:5679",
            "--bootstrap",
            "kad-bootstrap-2:5678",
            "--bootstrap-dns",
            "kad-bootstrap.ns.svc:5678",
            "--bootstrap-dns",
            "other.ns.svc:5678",
            "--bootstrap-file",
            "/etc/kadscale/bootstrap.txt",
            "--selection-strategy",
            "least_loaded",
            "--bootstrap-count",
            "2",
            "--health-check-interval",
            "10",
            "--failure-threshold",
            "5",
            "--connection-timeout",
            "0.25",
            "--retry-delay",
            "0.5",
            "--max-retries",
            "6",
            "--no-fallback",
            "--load-balance-interval",
            "15",
            "--max-connections-per-node",
            "80",
            "--no-load-balancing",
        ])
        .unwrap();
        let discovery = args.discovery_config();
        let named = |list: &[HostPort]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            named(&discovery.static_entries),
            ["10.0.0.1:5678", "10.0.0.2:5679", "kad-bootstrap-2:5678"]
        );
        assert_eq!(named(&discovery.dns_names), ["kad-bootstrap.ns.svc:5678", "other.ns.svc:5678"]);
        assert_eq!(discovery.file, Some(PathBuf::from("/etc/kadscale/bootstrap.txt")));
        let expected = ManagerConfig {
            strategy: SelectionStrategy::LeastLoaded,
            seeds_per_join: 2,
            health_check_interval: Duration::from_secs(10),
            failure_threshold: 5,
            connection_timeout: Duration::from_millis(250),
            backoff: Backoff { retry_delay: Duration::from_millis(500), max_retries: 6 },
            fallback: false,
            load_balancing: false,
            load_balance_interval: Duration::from_secs(15),
        };
        assert_eq!(args.manager_config(), expected);
        assert_eq!(args.max_connections_per_node, 80);
    }

    #[test]
    fn bad_values_are_refused_naming_them() {
        let cases = [
            (&["--bootstrap", "10.0.0.1:5678,host:port"][..], "\"host:port\""),
            (&["--selection-strategy", "fastest"], "\"fastest\""),
            (&["--connection-timeout", "0"], "\"0\""),
            (&["--health-check-interval", "soon"], "\"soon\""),
            (&["--retry-delay", "NaN"], "\"NaN\""),
            (&["--failure-threshold", "0"], "--failure-threshold"),
            (&["--bootstrap-count", "0"], "--bootstrap-count"),
        ];
        for (args, named) in cases {
            let error = parse(args).err().unwrap().to_string();
            assert!(error.contains(named), "{args:?}: {error}");
        }
    }
}
