//! The bootstrap manager's command-line flags, shared by `dht-node worker` and
//! `dht-node bootstrap` (flattened into both), with the seed's defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::discovery::DiscoveryConfig;
use super::endpoint::{pod_ordinal, EndpointList, HostPort};
use super::load::LoadTracker;
use super::manager::ManagerConfig;
use super::selection::SelectionStrategy;
use crate::id::{key_digest, NodeId};

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

    /// Derive a stable node id, sha1(SEED + "/" + ORDINAL), for StatefulSet pods (the
    /// operator passes the DhtCluster's uid); --node-id, when given, wins.
    #[arg(long, env = "DHT_NODE_ID_SEED", value_name = "SEED")]
    pub node_id_seed: Option<String>,

    /// The ORDINAL for --node-id-seed; by default the digits after the last '-' of the host
    /// name ($HOSTNAME, as a StatefulSet pod's NAME-bootstrap-3).
    #[arg(long, value_name = "N", requires = "node_id_seed")]
    pub ordinal: Option<u32>,
}

/// Why no stable node id could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--node-id-seed needs --ordinal or a host name ending in -N, as a StatefulSet pod's; host name is {hostname:?}"
)]
pub struct NoOrdinal {
    pub hostname: String,
}

/// The id of the pod with `ordinal` in the set named by `seed`: sha1(utf8(SEED/ORDINAL)).
pub fn stable_node_id(seed: &str, ordinal: u32) -> NodeId {
    key_digest(format!("{seed}/{ordinal}").as_bytes())
}

/// The host name as a pod sees it: `$HOSTNAME`, else the kernel's.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

/// The longest interval or timeout a flag accepts: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// Seconds as a positive decimal number, at most a day.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
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

    /// The node id from `--node-id-seed`, `None` without it.
    pub fn node_id(&self) -> Result<Option<NodeId>, NoOrdinal> {
        self.node_id_for_host(&hostname())
    }

    fn node_id_for_host(&self, hostname: &str) -> Result<Option<NodeId>, NoOrdinal> {
        let Some(seed) = &self.node_id_seed else { return Ok(None) };
        let ordinal = self
            .ordinal
            .or_else(|| pod_ordinal(hostname))
            .ok_or_else(|| NoOrdinal { hostname: hostname.to_string() })?;
        Ok(Some(stable_node_id(seed, ordinal)))
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
    fn stable_node_ids_from_the_seed_and_the_pod_ordinal() {
        let args = parse(&["--node-id-seed", "0b7e-uid"]).unwrap();
        let expected = key_digest(b"0b7e-uid/3");
        assert_eq!(args.node_id_for_host("kad-bootstrap-3"), Ok(Some(expected)));
        assert_eq!(
            args.node_id_for_host("kad-bootstrap-3.kad-bootstrap.ns.svc"),
            Ok(Some(expected))
        );
        assert_ne!(args.node_id_for_host("kad-bootstrap-4"), Ok(Some(expected)));
        let error = args.node_id_for_host("laptop").unwrap_err();
        assert!(error.to_string().contains("\"laptop\""), "{error}");
        let given = parse(&["--node-id-seed", "0b7e-uid", "--ordinal", "3"]).unwrap();
        assert_eq!(given.node_id_for_host("laptop"), Ok(Some(expected)));
        assert_eq!(parse(&[]).unwrap().node_id_for_host("kad-bootstrap-3"), Ok(None));
        assert!(parse(&["--ordinal", "3"]).is_err(), "--ordinal needs --node-id-seed");
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
