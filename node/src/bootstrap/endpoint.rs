//! What the user named as a bootstrap node, and what the bootstrap manager knows about it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::health::Health;
use super::load::LoadReport;
use super::selection::Candidate;

/// The port of a bootstrap node when a `host` is given without one (the Python workers' default).
pub const DEFAULT_BOOTSTRAP_PORT: u16 = 5678;

/// A `host:port` as the user wrote it: an IP address or a DNS name, not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// Why a `host:port` entry was refused; the message quotes the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("empty bootstrap entry")]
    Empty,
    #[error("bootstrap entry {entry:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort { entry: String, port: String },
    #[error("bootstrap entry {entry:?}: host {host:?} is not an IP address or a DNS name")]
    BadHost { entry: String, host: String },
}

impl FromStr for HostPort {
    type Err = HostPortError;

    /// Accepts `host:port`, `[ipv6]:port`, a bare IPv6 address, or a bare host (port 5678).
    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(HostPortError::Empty);
        }
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            return Ok(HostPort { host: addr.ip().to_string(), port: addr.port() });
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(HostPort { host: ip.to_string(), port: DEFAULT_BOOTSTRAP_PORT });
        }
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port)) => (host, parse_port(entry, port)?),
            None => (entry, DEFAULT_BOOTSTRAP_PORT),
        };
        if !is_dns_name(host) {
            return Err(HostPortError::BadHost {
                entry: entry.to_string(),
                host: host.to_string(),
            });
        }
        Ok(HostPort { host: host.to_ascii_lowercase(), port })
    }
}

/// A comma-separated list of `host:port` entries, as `--bootstrap` and `BOOTSTRAP_NODES` take;
/// blank items (a trailing comma, an empty variable) are skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointList(pub Vec<HostPort>);

impl FromStr for EndpointList {
    type Err = HostPortError;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        list.split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(EndpointList)
    }
}

fn parse_port(entry: &str, port: &str) -> Result<u16, HostPortError> {
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(HostPortError::BadPort { entry: entry.to_string(), port: port.to_string() }),
    }
}

/// Letters, digits, `-`, `_` and dots, in labels of 1 to 63 characters (RFC 1123, plus `_`).
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostPort {
    /// The StatefulSet ordinal of a pod name like `NAME-bootstrap-3` (the first DNS label's
    /// digits after its last `-`), so that `priority` follows the pods' order.
    pub fn pod_ordinal(&self) -> Option<u32> {
        if self.host.parse::<IpAddr>().is_ok() {
            return None;
        }
        pod_ordinal(&self.host)
    }
}

/// The StatefulSet ordinal in a pod's host name: the digits after the last `-` of its first
/// DNS label (`kad-bootstrap-3.kad-bootstrap.ns.svc` → 3).
pub fn pod_ordinal(host: &str) -> Option<u32> {
    let first_label = host.split('.').next()?;
    let (_, digits) = first_label.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where an endpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointSource {
    /// `--bootstrap` / `BOOTSTRAP_NODES`.
    Static,
    /// `--bootstrap-dns`: every A/AAAA record of the name.
    Dns,
    /// `--bootstrap-file`.
    File,
}

impl EndpointSource {
    pub fn name(self) -> &'static str {
        match self {
            EndpointSource::Static => "static",
            EndpointSource::Dns => "dns",
            EndpointSource::File => "file",
        }
    }
}

impl fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One resolved bootstrap endpoint: one address of one named entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapEndpoint {
    /// The entry the user named (a DNS name stands for all of its records).
    pub name: HostPort,
    pub source: EndpointSource,
    /// What is pinged and joined through; the endpoint's identity in the pool.
    pub addr: SocketAddr,
    /// Lower is preferred by the `priority` strategy: the pod ordinal of the name when it has
    /// one, else the entry's position in its list.
    pub priority: u32,
}

impl BootstrapEndpoint {
    /// The endpoint for `addr`, one of the addresses that `name`, entry `position` of its list,
    /// resolved to.
    pub fn new(name: HostPort, source: EndpointSource, addr: SocketAddr, position: usize) -> Self {
        let priority =
            name.pod_ordinal().unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        BootstrapEndpoint { name, source, addr, priority }
    }
}

/// Load as the worker sees it for one endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointLoad {
    /// The last `kadscale_load` answer, `None` for peers that never answered (Python nodes).
    pub reported: Option<LoadReport>,
    /// This worker's selections of the endpoint since `reported` arrived (all of them when it
    /// never did), so that its own joins count before the next load refresh.
    pub own_selections: u64,
}

impl EndpointLoad {
    /// The number least_loaded ranks by: reported joins plus own selections since the report,
    /// or own selections alone for peers that do not report.
    pub fn rank(&self) -> u64 {
        let reported = self.reported.as_ref().map_or(0, |report| report.joins_last_minute);
        reported.saturating_add(self.own_selections)
    }

    pub fn overloaded(&self) -> bool {
        self.reported.as_ref().is_some_and(|report| report.overloaded)
    }

    /// A fresh report replaces the worker's own counting.
    pub fn record_report(&mut self, report: LoadReport) {
        self.reported = Some(report);
        self.own_selections = 0;
    }
}

/// An endpoint in the manager's pool with what it has learned about it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointState {
    pub endpoint: BootstrapEndpoint,
    pub health: Health,
    pub load: EndpointLoad,
    /// The endpoint answered with this node's own id (a bootstrap node behind its own DNS
    /// name): never selected.
    pub is_self: bool,
}

impl EndpointState {
    pub fn new(endpoint: BootstrapEndpoint) -> Self {
        EndpointState {
            endpoint,
            health: Health::default(),
            load: EndpointLoad::default(),
            is_self: false,
        }
    }

    /// What the selection strategies see of this endpoint.
    pub fn candidate(&self) -> Candidate {
        Candidate {
            eligible: !self.is_self,
            healthy: self.health.is_healthy(),
            overloaded: self.load.overloaded(),
            load: self.load.rank(),
            priority: self.endpoint.priority,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_port(host: &str, port: u16) -> HostPort {
        HostPort { host: host.to_string(), port }
    }

    #[test]
    fn parses_the_entry_forms() {
        let cases = [
            ("10.0.0.1:5678", host_port("10.0.0.1", 5678)),
            (" bootstrap-primary:5679 ", host_port("bootstrap-primary", 5679)),
            ("Kad-Bootstrap.NS.svc:7000", host_port("kad-bootstrap.ns.svc", 7000)),
            ("[::1]:5680", host_port("::1", 5680)),
            ("::1", host_port("::1", DEFAULT_BOOTSTRAP_PORT)),
            ("10.0.0.2", host_port("10.0.0.2", DEFAULT_BOOTSTRAP_PORT)),
            ("bootstrap", host_port("bootstrap", DEFAULT_BOOTSTRAP_PORT)),
        ];
        for (entry, expected) in cases {
            assert_eq!(entry.parse::<HostPort>(), Ok(expected), "{entry}");
        }
    }

    #[test]
    fn refuses_bad_entries_naming_them() {
        assert_eq!("  ".parse::<HostPort>(), Err(HostPortError::Empty));
        let bad_port = "node:99999".parse::<HostPort>().unwrap_err();
        assert_eq!(
            bad_port.to_string(),
            "bootstrap entry \"node:99999\": port \"99999\" is not a number from 1 to 65535"
        );
        assert!(matches!("node:0".parse::<HostPort>(), Err(HostPortError::BadPort { .. })));
        assert!(matches!("node:".parse::<HostPort>(), Err(HostPortError::BadPort { .. })));
        let bad_host = "no de:1".parse::<HostPort>().unwrap_err();
        assert!(bad_host.to_string().contains("host \"no de\""), "{bad_host}");
        assert!(matches!("a..b:1".parse::<HostPort>(), Err(HostPortError::BadHost { .. })));
    }

    #[test]
    fn lists_split_on_commas_and_skip_blanks() {
        let list: EndpointList = "10.0.0.1:5678, bootstrap-secondary:5679,,".parse().unwrap();
        assert_eq!(
            list.0,
            vec![host_port("10.0.0.1", 5678), host_port("bootstrap-secondary", 5679)]
        );
        assert_eq!("".parse::<EndpointList>(), Ok(EndpointList::default()));
        let error = "10.0.0.1:5678,bad:port".parse::<EndpointList>().unwrap_err();
        assert!(error.to_string().contains("\"bad:port\""), "{error}");
    }

    #[test]
    fn displays_as_parsed() {
        for entry in ["10.0.0.1:5678", "[::1]:5680", "kad-bootstrap.ns.svc:5678"] {
            assert_eq!(entry.parse::<HostPort>().unwrap().to_string(), entry);
        }
    }

    #[test]
    fn pod_ordinal_of_statefulset_names() {
        let cases = [
            ("kad-bootstrap-3.kad-bootstrap.ns.svc", Some(3)),
            ("kad-bootstrap-12", Some(12)),
            ("bootstrap-primary", None),
            ("bootstrap", None),
            ("kad-bootstrap-", None),
            ("10.0.0.3", None),
        ];
        for (host, expected) in cases {
            assert_eq!(host_port(host, 5678).pod_ordinal(), expected, "{host}");
        }
    }

    #[test]
    fn priority_is_the_ordinal_or_the_position() {
        let addr: SocketAddr = "10.0.0.9:5678".parse().unwrap();
        let pod = BootstrapEndpoint::new(
            host_port("kad-bootstrap-4.kad-bootstrap", 5678),
            EndpointSource::Static,
            addr,
            0,
        );
        assert_eq!(pod.priority, 4);
        let listed =
            BootstrapEndpoint::new(host_port("10.0.0.9", 5678), EndpointSource::File, addr, 2);
        assert_eq!(listed.priority, 2);
    }

    #[test]
    fn load_rank_counts_own_selections_on_top_of_the_report() {
        let mut load = EndpointLoad { reported: None, own_selections: 4 };
        assert_eq!(load.rank(), 4);
        load.record_report(LoadReport {
            joins_last_minute: 10,
            routing_table_size: 3,
            requests_per_second: 1.5,
            overloaded: true,
        });
        assert_eq!(load.rank(), 10);
        assert!(load.overloaded());
        load.own_selections += 2;
        assert_eq!(load.rank(), 12);
    }
}
