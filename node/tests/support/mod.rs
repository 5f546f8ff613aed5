//! `dht-node` processes on 127.0.0.1 for process-level tests: started from the binary cargo
//! built for the test, each logging JSON lines to a file of its own (how a test learns the
//! ports a node bound with port 0, and when it joined or saw a peer change health), killed
//! with SIGKILL and started again with the same command line, or stopped with a signal.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kadscale_node::config::NodeConfig;
use kadscale_node::metrics::Metrics;
use kadscale_node::node::Node;
use rand::Rng;
use serde_json::{Map, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The log message a node writes once its UDP socket is bound (field `addr`).
pub const LISTENING: &str = "node listening";
/// The log message of the admin server (field `addr`, the bound address).
pub const ADMIN_LISTENING: &str = "admin server listening";
/// The bootstrap manager's message when a join succeeded.
pub const JOINED: &str = "joined the DHT";
/// The bootstrap manager's messages when an endpoint's health changes (field `endpoint`).
pub const ENDPOINT_UNHEALTHY: &str = "bootstrap endpoint unhealthy";
pub const ENDPOINT_RECOVERED: &str = "bootstrap endpoint healthy again";

/// A directory for the logs of one test: removed when the test passes, kept and named on
/// stderr when it fails, so that the nodes' side of a failure can be read.
pub struct LogDir {
    path: PathBuf,
}

impl LogDir {
    pub fn new(test: &str) -> LogDir {
        let path = std::env::temp_dir().join(format!("kadscale-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("creating the log directory");
        LogDir { path }
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One JSON log line of a node.
#[derive(Clone, Debug)]
pub struct LogLine(Map<String, Json>);

impl LogLine {
    pub fn message(&self) -> &str {
        self.field("message").unwrap_or_default()
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Json::as_str)
    }

    pub fn count(&self, name: &str) -> Option<u64> {
        self.0.get(name).and_then(Json::as_u64)
    }

    /// When the line was written, in seconds since the Unix epoch.
    pub fn timestamp(&self) -> f64 {
        let text = self.field("timestamp").expect("every log line has a timestamp");
        rfc3339_seconds(text).unwrap_or_else(|| panic!("unreadable timestamp {text:?}"))
    }

    pub fn addr(&self) -> SocketAddr {
        let addr = self.field("addr").unwrap_or_else(|| panic!("no addr in {:?}", self.0));
        addr.parse().unwrap_or_else(|error| panic!("addr {addr:?}: {error}"))
    }
}

/// `2026-11-25T21:34:51.665974Z` (what tracing-subscriber writes) in seconds since the epoch.
fn rfc3339_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let mut hms = time.splitn(3, ':');
    let hours: f64 = hms.next()?.parse().ok()?;
    let minutes: f64 = hms.next()?.parse().ok()?;
    let seconds: f64 = hms.next()?.parse().ok()?;
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days as f64 * 86_400.0 + hours * 3600.0 + minutes * 60.0 + seconds)
}

/// A `dht-node` child process. Dropping it kills it.
pub struct DhtProcess {
    pub name: String,
    args: Vec<String>,
    log_dir: PathBuf,
    /// How many times it was started; each start logs to a file of its own.
    starts: u32,
    child: Child,
    log: PathBuf,
}

impl DhtProcess {
    /// Starts `dht-node ARGS --log-format json`, stdout discarded, stderr into a log file.
    pub fn spawn(name: impl Into<String>, args: Vec<String>, logs: &LogDir) -> DhtProcess {
        let name = name.into();
        let (child, log) = start(&name, &args, &logs.path, 1);
        DhtProcess { name, args, log_dir: logs.path.clone(), starts: 1, child, log }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` and waits up to `limit` for the process to end; panics if it runs on.
    pub fn stop(&mut self, signal: libc::c_int, limit: Duration) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill only sends a signal, to the child this owns (not yet waited for).
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signalling {}", self.name);
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("waiting for the child") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = self.describe();
        panic!("{} still running {limit:?} after signal {signal}\n{state}", self.name);
    }

    /// Kills the process if it runs, and starts it again with the same command line.
    pub fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        (self.child, self.log) = start(&self.name, &self.args, &self.log_dir, self.starts);
    }

    /// The log lines of the current run (a line still being written is left out).
    pub fn log(&self) -> Vec<LogLine> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Map<String, Json>>(line).ok())
            .map(LogLine)
            .collect()
    }

    /// The first line of the current run with `message`.
    pub fn first(&self, message: &str) -> Option<LogLine> {
        self.log().into_iter().find(|line| line.message() == message)
    }

    /// The UDP and admin addresses, once the current run logged both.
    pub fn listening(&self) -> Option<(SocketAddr, SocketAddr)> {
        let log = self.log();
        let find = |message| log.iter().find(|line| line.message() == message).map(LogLine::addr);
        Some((find(LISTENING)?, find(ADMIN_LISTENING)?))
    }

    /// The end of the current run's log and whether the process still runs, for failure
    /// messages.
    pub fn describe(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(None) => "running".to_owned(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(error) => format!("unknown: {error}"),
        };
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("--- {} ({state}), {}:\n{tail}", self.name, self.log.display())
    }
}

impl Drop for DhtProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start(name: &str, args: &[String], log_dir: &Path, run: u32) -> (Child, PathBuf) {
    let log = log_dir.join(format!("{name}.{run}.log"));
    let stderr = std::fs::File::create(&log).expect("creating a node's log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_dht-node"));
    command
        .args(args)
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // A test killed before its drops run (SIGKILL, a harness timeout) must not leave hundreds
    // of nodes behind: the kernel kills each child when the thread that started it ends, and
    // tests start them from their own thread, which lives as long as the test.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let child = command.spawn().unwrap_or_else(|error| panic!("starting dht-node {name}: {error}"));
    (child, log)
}

/// Polls `check` every 100 ms until it returns `Ok`; past `limit`, panics with the last
/// reason it gave for not being there yet.
pub async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(done) => return done,
            Err(reason) if started.elapsed() > limit => {
                panic!("{what}: not within {limit:?}: {reason}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `count` UDP ports of 127.0.0.1 below the kernel's ephemeral range that are free now: the
/// kernel never hands them to a socket bound to port 0, so a node killed and restarted on one
/// gets it back.
pub fn fixed_udp_ports(count: usize) -> Vec<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut rng = rand::rng();
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < count {
        let port = rng.random_range(10_000..ephemeral_low);
        if !ports.contains(&port) && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// The body of `GET /metrics` from an admin server.
pub async fn scrape(admin: SocketAddr) -> io::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("scraping {admin}")))??;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_owned())
        }
        _ => Err(io::Error::other(format!("{admin}/metrics answered {response:?}"))),
    }
}

/// The value of the series `name_and_labels` (as `name{label="v"}`) in Prometheus text.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of the series of `name` whose labels contain `labels` (`""`: every series).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|line| line.rsplit_once(' ').is_some_and(|(series, _)| series.contains(labels)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Client nodes of a test, each made by [`Clients::through`]: running until the test ends
/// ([`Clients::staying`]), or each leaving once [`Clients::done`] with it, as a `dht-node get`
/// process does ([`Clients::leaving`]).
///
/// Each client enters the routing tables of the nodes it asks, and a node removes a contact
/// only when a call of its own to it fails: a client that left stays in the tables of nodes
/// that never call it, and they hand it out in their answers. 300 clients leaving one after
/// the other (one per worker) made a few workers answer with nothing but gone contacts, and
/// 2 to 42 of 6,000 reads missed in most runs (`tests/faults.rs`, the ignored client-churn
/// test).
pub struct Clients {
    running: std::sync::Mutex<Vec<Node>>,
    leave_when_done: bool,
}

impl Clients {
    pub fn staying() -> Clients {
        Clients { running: std::sync::Mutex::default(), leave_when_done: false }
    }

    pub fn leaving() -> Clients {
        Clients { running: std::sync::Mutex::default(), leave_when_done: true }
    }

    /// A fresh node that knows only `through`: what `dht-node get|put --bootstrap THROUGH`
    /// runs. It keeps no values itself (room for none), so a value it finds came over the
    /// network.
    pub async fn through(&self, through: SocketAddr) -> Node {
        let client = client_through(through).await;
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(client.clone());
        client
    }

    /// The test is done with `client`: a leaving client shuts down now.
    pub fn done(&self, client: &Node) {
        if self.leave_when_done {
            client.shutdown();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for client in running.drain(..) {
            client.shutdown();
        }
    }
}

async fn client_through(through: SocketAddr) -> Node {
    let config = NodeConfig {
        rpc_timeout: Duration::from_secs(2),
        max_stored_values: 0,
        ..NodeConfig::default()
    };
    let client = Node::start("127.0.0.1:0".parse().unwrap(), config, Metrics::unregistered())
        .await
        .expect("a client node binds 127.0.0.1:0");
    let seeds = client.ping_all(&[through]).await;
    assert!(!seeds.is_empty(), "{through} did not answer the client's ping");
    for seed in seeds {
        client.add_contact(seed);
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_are_read_as_unix_seconds() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339_seconds("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
        let seconds = rfc3339_seconds("2026-11-25T21:34:51.665974Z").unwrap();
        assert!((seconds - 1_795_642_491.665_974).abs() < 1e-5, "{seconds}");
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }

    #[test]
    fn metrics_are_read_by_series_and_summed_by_name() {
        let text = "a_total{x=\"1\"} 2\na_total{x=\"2\"} 3\na_total_more 7\nb 1.5\n";
        assert_eq!(metric(text, "a_total{x=\"2\"}"), Some(3.0));
        assert_eq!(metric(text, "b"), Some(1.5));
        assert_eq!(metric(text, "c"), None);
        assert_eq!(metric_sum(text, "a_total", ""), 5.0);
        assert_eq!(metric_sum(text, "a_total", "x=\"2\""), 3.0);
    }
}
