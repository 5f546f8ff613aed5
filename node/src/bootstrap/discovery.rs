//! Where bootstrap endpoints come from, and how a fresh discovery updates the pool.
//!
//! Three sources, all re-read on every health interval so that endpoints join and leave the
//! pool without a restart: the static list (`--bootstrap`, `BOOTSTRAP_NODES`; host names are
//! resolved again each time), DNS names (`--bootstrap-dns`; every A/AAAA record, which is every
//! pod behind a headless Service), and a file (`--bootstrap-file`; re-parsed when its
//! modification time or size changes).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::endpoint::{BootstrapEndpoint, EndpointSource, EndpointState, HostPort, HostPortError};

/// What the user configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub static_entries: Vec<HostPort>,
    pub dns_names: Vec<HostPort>,
    pub file: Option<PathBuf>,
}

impl DiscoveryConfig {
    pub fn is_empty(&self) -> bool {
        self.static_entries.is_empty() && self.dns_names.is_empty() && self.file.is_none()
    }
}

/// Turns a name into addresses; the system resolver in production, a table in tests.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, name: &HostPort) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// getaddrinfo through tokio: every A and AAAA record of the name.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    async fn resolve(&self, name: &HostPort) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((name.host.as_str(), name.port)).await?.collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("bootstrap file {path}: line {line}: {error}")]
    FileLine { path: PathBuf, line: usize, error: HostPortError },
    #[error("bootstrap file {path}: {error}")]
    FileRead { path: PathBuf, error: io::Error },
    #[error("resolving {origin} bootstrap entry {name}: {error}")]
    Resolve { name: HostPort, origin: EndpointSource, error: io::Error },
}

/// Parses a bootstrap file: one `host:port` a line; `#` starts a comment; blank lines are
/// skipped. The error carries the 1-based line number.
pub fn parse_endpoint_file(content: &str) -> Result<Vec<HostPort>, (usize, HostPortError)> {
    content
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let entry = line.split('#').next().unwrap_or_default().trim();
            (!entry.is_empty()).then_some((index + 1, entry))
        })
        .map(|(line, entry)| entry.parse().map_err(|error| (line, error)))
        .collect()
}

/// The bootstrap file as last read.
#[derive(Debug)]
struct WatchedFile {
    path: PathBuf,
    /// Modification time and length at the last read: a change in either triggers a re-read.
    stamp: Option<(SystemTime, u64)>,
    entries: Vec<HostPort>,
}

impl WatchedFile {
    /// Re-reads the file if it changed. On error the previous entries stay in use: a file
    /// being rewritten or briefly missing must not empty the pool.
    fn refresh(&mut self) -> Result<(), DiscoveryError> {
        // The file is a few lines: reading it inline costs less than a blocking-pool hop.
        let read_error = |error| DiscoveryError::FileRead { path: self.path.clone(), error };
        let metadata = std::fs::metadata(&self.path).map_err(read_error)?;
        let stamp = metadata.modified().ok().map(|modified| (modified, metadata.len()));
        if stamp.is_some() && stamp == self.stamp {
            return Ok(());
        }
        self.entries = read_endpoint_file(&self.path)?;
        self.stamp = stamp;
        Ok(())
    }
}

fn read_endpoint_file(path: &Path) -> Result<Vec<HostPort>, DiscoveryError> {
    let content = std::fs::read_to_string(path)
        .map_err(|error| DiscoveryError::FileRead { path: path.to_path_buf(), error })?;
    parse_endpoint_file(&content).map_err(|(line, error)| DiscoveryError::FileLine {
        path: path.to_path_buf(),
        line,
        error,
    })
}

/// One round of discovery.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Every endpoint found, static entries first, then DNS, then the file.
    pub endpoints: Vec<BootstrapEndpoint>,
    /// What went wrong; the affected entries keep their previous addresses.
    pub problems: Vec<DiscoveryError>,
}

/// Resolves the configured sources, remembering the last good answer of each name.
pub struct Discovery<R> {
    config: DiscoveryConfig,
    resolver: R,
    file: Option<WatchedFile>,
    last_resolved: HashMap<(EndpointSource, HostPort), Vec<SocketAddr>>,
}

impl<R: Resolve> Discovery<R> {
    /// Reads the bootstrap file once, so that a bad file stops the process at start-up with
    /// the line named, instead of leaving it without bootstrap nodes.
    pub fn new(config: DiscoveryConfig, resolver: R) -> Result<Self, DiscoveryError> {
        let file = match &config.file {
            Some(path) => {
                let mut file = WatchedFile { path: path.clone(), stamp: None, entries: Vec::new() };
                file.refresh()?;
                Some(file)
            }
            None => None,
        };
        Ok(Discovery { config, resolver, file, last_resolved: HashMap::new() })
    }

    /// Resolves every source once.
    pub async fn discover(&mut self) -> Discovered {
        let mut discovered = Discovered::default();
        if let Some(file) = &mut self.file {
            if let Err(problem) = file.refresh() {
                discovered.problems.push(problem);
            }
        }
        let file_entries = self.file.as_ref().map(|file| file.entries.clone()).unwrap_or_default();
        let sources = [
            (EndpointSource::Static, self.config.static_entries.clone()),
            (EndpointSource::Dns, self.config.dns_names.clone()),
            (EndpointSource::File, file_entries),
        ];
        let mut still_named = HashSet::new();
        for (source, entries) in sources {
            for (position, name) in entries.into_iter().enumerate() {
                let addrs = self.resolve(source, &name, &mut discovered.problems).await;
                discovered.endpoints.extend(
                    addrs
                        .into_iter()
                        .map(|addr| BootstrapEndpoint::new(name.clone(), source, addr, position)),
                );
                still_named.insert((source, name));
            }
        }
        self.last_resolved.retain(|key, _| still_named.contains(key));
        discovered
    }

    async fn resolve(
        &mut self,
        source: EndpointSource,
        name: &HostPort,
        problems: &mut Vec<DiscoveryError>,
    ) -> Vec<SocketAddr> {
        if let Ok(ip) = name.host.parse::<IpAddr>() {
            return vec![SocketAddr::new(ip, name.port)];
        }
        let key = (source, name.clone());
        match self.resolver.resolve(name).await {
            Ok(mut addrs) => {
                // Resolvers rotate their answers; a sorted list keeps the pool's order stable.
                addrs.sort();
                addrs.dedup();
                self.last_resolved.insert(key, addrs.clone());
                addrs
            }
            Err(error) => {
                problems.push(DiscoveryError::Resolve {
                    name: name.clone(),
                    origin: source,
                    error,
                });
                self.last_resolved.get(&key).cloned().unwrap_or_default()
            }
        }
    }
}

/// How a discovery round changed the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolChange {
    pub added: Vec<BootstrapEndpoint>,
    pub removed: Vec<BootstrapEndpoint>,
    pub kept: usize,
}

/// Replaces the pool's endpoints with `fresh`: endpoints found again keep their health and
/// load history (under their new name and priority), new ones start healthy, vanished ones
/// leave. An address found twice counts once, as the first source names it. The pool ends up
/// ordered by (priority, address), so round-robin turns do not depend on DNS answer order.
pub fn merge(pool: &mut Vec<EndpointState>, fresh: Vec<BootstrapEndpoint>) -> PoolChange {
    let mut previous: HashMap<SocketAddr, EndpointState> =
        pool.drain(..).map(|state| (state.endpoint.addr, state)).collect();
    let mut change = PoolChange::default();
    let mut seen = HashSet::new();
    // Room for what was found and no more: a first push would make room for 4 endpoints (144
    // bytes each), and every node keeps its pool for as long as it runs.
    pool.reserve_exact(fresh.len());
    for endpoint in fresh {
        if !seen.insert(endpoint.addr) {
            continue;
        }
        match previous.remove(&endpoint.addr) {
            Some(mut state) => {
                state.endpoint = endpoint;
                change.kept += 1;
                pool.push(state);
            }
            None => {
                change.added.push(endpoint.clone());
                pool.push(EndpointState::new(endpoint));
            }
        }
    }
    change.removed = previous.into_values().map(|state| state.endpoint).collect();
    change.removed.sort_by_key(|endpoint| endpoint.addr);
    pool.sort_by_key(|state| (state.endpoint.priority, state.endpoint.addr));
    change
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn endpoint(text: &str, position: usize) -> BootstrapEndpoint {
        let addr = addr(text);
        let name = HostPort { host: addr.ip().to_string(), port: addr.port() };
        BootstrapEndpoint::new(name, EndpointSource::Static, addr, position)
    }

    fn addrs(pool: &[EndpointState]) -> Vec<SocketAddr> {
        pool.iter().map(|state| state.endpoint.addr).collect()
    }

    #[test]
    fn merge_adds_removes_and_keeps_history() {
        let mut pool = Vec::new();
        let first =
            merge(&mut pool, vec![endpoint("10.0.0.1:5678", 0), endpoint("10.0.0.2:5678", 1)]);
        assert_eq!(first.added.len(), 2);
        assert_eq!((first.removed.len(), first.kept), (0, 0));
        pool[1].health.record_failure(3);
        pool[1].load.own_selections = 7;

        let second =
            merge(&mut pool, vec![endpoint("10.0.0.2:5678", 0), endpoint("10.0.0.3:5678", 1)]);
        assert_eq!(second.added, vec![endpoint("10.0.0.3:5678", 1)]);
        assert_eq!(second.removed, vec![endpoint("10.0.0.1:5678", 0)]);
        assert_eq!(second.kept, 1);
        assert_eq!(addrs(&pool), vec![addr("10.0.0.2:5678"), addr("10.0.0.3:5678")]);
        let kept = &pool[0];
        assert_eq!(kept.health.consecutive_failures(), 1, "health history survives");
        assert_eq!(kept.load.own_selections, 7, "load history survives");
        assert_eq!(kept.endpoint.priority, 0, "the new priority applies");
        assert_eq!(pool[1].health.consecutive_failures(), 0, "a new endpoint starts clean");
    }

    #[test]
    fn merge_to_nothing_and_back() {
        let mut pool = Vec::new();
        merge(&mut pool, vec![endpoint("10.0.0.1:5678", 0)]);
        let emptied = merge(&mut pool, Vec::new());
        assert_eq!(emptied.removed.len(), 1);
        assert!(pool.is_empty());
        let refilled = merge(&mut pool, vec![endpoint("10.0.0.1:5678", 0)]);
        assert_eq!(refilled.added.len(), 1);
    }

    #[test]
    fn merge_counts_an_address_once_and_orders_by_priority() {
        let mut pool = Vec::new();
        let mut dns_copy = endpoint("10.0.0.1:5678", 5);
        dns_copy.source = EndpointSource::Dns;
        let change = merge(
            &mut pool,
            vec![
                endpoint("10.0.0.9:5678", 1),
                endpoint("10.0.0.1:5678", 2),
                dns_copy,
                endpoint("10.0.0.5:5678", 0),
            ],
        );
        assert_eq!(change.added.len(), 3);
        assert_eq!(
            addrs(&pool),
            vec![addr("10.0.0.5:5678"), addr("10.0.0.9:5678"), addr("10.0.0.1:5678")]
        );
        assert_eq!(pool[2].endpoint.source, EndpointSource::Static, "the first source wins");
    }

    #[test]
    fn file_parsing_skips_comments_and_names_bad_lines() {
        let content = "# bootstrap nodes\n10.0.0.1:5678\n\n  kad-bootstrap-1.kad:5679  # second\n";
        let entries = parse_endpoint_file(content).unwrap();
        assert_eq!(
            entries.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.1:5678", "kad-bootstrap-1.kad:5679"]
        );
        let (line, error) = parse_endpoint_file("10.0.0.1:5678\n# fine\nhost:http\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(error.to_string().contains("\"host:http\""), "{error}");
    }

    /// A resolver answering from a table that the test changes between rounds.
    #[derive(Clone, Default)]
    pub(crate) struct TableResolver(Arc<Mutex<HashMap<String, io::Result<Vec<SocketAddr>>>>>);

    impl TableResolver {
        pub(crate) fn answer(&self, host: &str, answer: io::Result<Vec<&str>>) {
            let answer = answer.map(|list| list.into_iter().map(addr).collect());
            self.0.lock().unwrap().insert(host.to_string(), answer);
        }
    }

    impl Resolve for TableResolver {
        async fn resolve(&self, name: &HostPort) -> io::Result<Vec<SocketAddr>> {
            match self.0.lock().unwrap().get(&name.host) {
                Some(Ok(addrs)) => {
                    Ok(addrs.iter().map(|a| SocketAddr::new(a.ip(), name.port)).collect())
                }
                Some(Err(error)) => Err(io::Error::new(error.kind(), error.to_string())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            }
        }
    }

    fn sorted_addrs(discovered: &Discovered) -> Vec<String> {
        let mut list: Vec<String> =
            discovered.endpoints.iter().map(|e| e.addr.to_string()).collect();
        list.sort();
        list
    }

    #[tokio::test]
    async fn dns_names_give_every_record_and_follow_changes() {
        let resolver = TableResolver::default();
        resolver.answer("kad-bootstrap.ns.svc", Ok(vec!["10.0.0.2:0", "10.0.0.1:0"]));
        let config = DiscoveryConfig {
            static_entries: vec!["127.0.0.1:7000".parse().unwrap()],
            dns_names: vec!["kad-bootstrap.ns.svc:5678".parse().unwrap()],
            file: None,
        };
        let mut discovery = Discovery::new(config, resolver.clone()).unwrap();
        let first = discovery.discover().await;
        assert!(first.problems.is_empty());
        assert_eq!(sorted_addrs(&first), ["10.0.0.1:5678", "10.0.0.2:5678", "127.0.0.1:7000"]);
        assert!(first.endpoints.iter().any(|e| e.source == EndpointSource::Dns));

        resolver.answer("kad-bootstrap.ns.svc", Ok(vec!["10.0.0.2:0", "10.0.0.3:0", "10.0.0.4:0"]));
        let scaled = discovery.discover().await;
        assert_eq!(
            sorted_addrs(&scaled),
            ["10.0.0.2:5678", "10.0.0.3:5678", "10.0.0.4:5678", "127.0.0.1:7000"]
        );

        resolver.answer("kad-bootstrap.ns.svc", Err(io::Error::other("SERVFAIL")));
        let failed = discovery.discover().await;
        assert_eq!(
            sorted_addrs(&failed),
            sorted_addrs(&scaled),
            "a failed lookup keeps the last answer"
        );
        assert_eq!(failed.problems.len(), 1);
        assert!(
            failed.problems[0].to_string().contains("kad-bootstrap.ns.svc:5678"),
            "{}",
            failed.problems[0]
        );
    }

    #[tokio::test]
    async fn the_file_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("kadscale-discovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bootstrap.txt");
        std::fs::write(&path, "127.0.0.1:5001\n127.0.0.1:5002\n").unwrap();
        let config = DiscoveryConfig { file: Some(path.clone()), ..DiscoveryConfig::default() };
        let mut discovery = Discovery::new(config, TableResolver::default()).unwrap();
        assert_eq!(sorted_addrs(&discovery.discover().await), ["127.0.0.1:5001", "127.0.0.1:5002"]);

        // A different length is a change even within the file system's time granularity.
        std::fs::write(&path, "127.0.0.1:5002\n127.0.0.1:5003\n127.0.0.1:5004\n").unwrap();
        let changed = discovery.discover().await;
        assert_eq!(sorted_addrs(&changed), ["127.0.0.1:5002", "127.0.0.1:5003", "127.0.0.1:5004"]);
        assert_eq!(changed.endpoints[0].priority, 0);
        assert_eq!(changed.endpoints[0].source, EndpointSource::File);

        std::fs::write(&path, "127.0.0.1:5002\nnot a host\n").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let broken = discovery.discover().await;
        assert_eq!(
            sorted_addrs(&broken),
            sorted_addrs(&changed),
            "a bad file keeps the last entries"
        );
        assert!(broken.problems[0].to_string().contains("line 2"), "{}", broken.problems[0]);

        std::fs::remove_file(&path).unwrap();
        let missing = discovery.discover().await;
        assert_eq!(sorted_addrs(&missing), sorted_addrs(&changed));
        assert!(matches!(missing.problems[0], DiscoveryError::FileRead { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_the_line() {
        let dir =
            std::env::temp_dir().join(format!("kadscale-discovery-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bootstrap.txt");
        std::fs::write(&path, "127.0.0.1:5001\n127.0.0.1:70000\n").unwrap();
        let config = DiscoveryConfig { file: Some(path), ..DiscoveryConfig::default() };
        let error = Discovery::new(config, TableResolver::default()).err().unwrap();
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(error.to_string().contains("70000"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
