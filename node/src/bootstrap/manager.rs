//! The bootstrap manager: discovery, health checks, load refresh, and joining with fallback,
//! retrying for as long as the process lives.
//!
//! It talks to the network only through a [`Prober`], so the same logic drives a real node and
//! the fake one of the tests (which run on tokio's paused clock, without sockets).

use std::collections::HashSet;
use std::fmt::{self, Write};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::{Registry, Unit};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::lock;
use crate::metrics::{counted, encode_series, upper_bounds, BucketHistogram, Sample, NO_LABELS};

use super::backoff::Backoff;
use super::discovery::{merge, Discovery, PoolChange, Resolve};
use super::endpoint::EndpointState;
use super::health::{HealthTransition, DEFAULT_FAILURE_THRESHOLD};
use super::load::LoadReport;
use super::selection::{Candidate, SelectionStrategy, Selector};

/// Why a probe of an endpoint failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
    /// The endpoint answered with this node's own id: a bootstrap node found itself behind
    /// its DNS name.
    #[error("the endpoint is this node itself")]
    IsSelf,
}

/// What the manager needs from a node.
pub trait Prober: Send + Sync + 'static {
    /// Pings `addr`; the round-trip time when it answered within `timeout`.
    fn ping(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = Result<Duration, ProbeError>> + Send;

    /// Asks `addr` for its `kadscale_load`; `None` when it does not answer it (Python nodes)
    /// or not within `timeout`.
    fn load(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = Option<LoadReport>> + Send;

    /// Looks up the node's own id seeded by `seeds` (endpoints that just answered a ping);
    /// true when the routing table then holds peers.
    fn join(&self, seeds: Vec<SocketAddr>) -> impl Future<Output = bool> + Send;

    fn routing_table_len(&self) -> usize;
}

/// The manager's settings; defaults are the seed's.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagerConfig {
    pub strategy: SelectionStrategy,
    /// How many endpoints a join attempt selects and pings.
    pub seeds_per_join: usize,
    pub health_check_interval: Duration,
    pub failure_threshold: u32,
    /// The limit on every ping and load query.
    pub connection_timeout: Duration,
    pub backoff: Backoff,
    /// When none of the selected endpoints answers, ping all the others in the same attempt.
    pub fallback: bool,
    /// Ask endpoints for their `kadscale_load` every `load_balance_interval`.
    pub load_balancing: bool,
    pub load_balance_interval: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            strategy: SelectionStrategy::RoundRobin,
            seeds_per_join: 3,
            health_check_interval: Duration::from_secs(30),
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            connection_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
            fallback: true,
            load_balancing: true,
            load_balance_interval: Duration::from_secs(60),
        }
    }
}

/// The longest a starting node waits for load reports before its first least_loaded join.
pub const STARTUP_LOAD_WAIT: Duration = Duration::from_secs(1);

/// How often a joined node checks that its routing table still holds peers.
pub const REJOIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The result of one join attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The lookup seeded by these endpoints left peers in the routing table.
    Joined { seeds: Vec<SocketAddr> },
    /// Nothing to try: the pool is empty or holds only this node.
    NoEndpoints,
    /// None of the pinged endpoints answered.
    NoAnswer,
    /// Seeds answered, but the routing table was still empty after the lookup.
    NoPeers { seeds: Vec<SocketAddr> },
}

impl JoinOutcome {
    /// Every outcome's name, as logged and labelled in the metrics, in [`JoinOutcome::index`]
    /// order.
    const NAMES: [&'static str; 4] = ["joined", "no_endpoints", "no_answer", "no_peers"];

    /// The outcome's place in [`JoinOutcome::NAMES`] (and in the metrics' counters).
    fn index(&self) -> usize {
        match self {
            JoinOutcome::Joined { .. } => 0,
            JoinOutcome::NoEndpoints => 1,
            JoinOutcome::NoAnswer => 2,
            JoinOutcome::NoPeers { .. } => 3,
        }
    }

    pub fn name(&self) -> &'static str {
        JoinOutcome::NAMES[self.index()]
    }
}

/// One join attempt: its outcome and what each pinged endpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinAttempt {
    pub outcome: JoinOutcome,
    pub pings: Vec<(SocketAddr, Result<Duration, ProbeError>)>,
}

/// An endpoint's address as a label value: written out when scraped, not at every update.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct EndpointAddr(SocketAddr);

impl EncodeLabelValue for EndpointAddr {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

/// How an endpoint's ping during a join ended.
#[derive(Clone, Copy, Debug)]
enum JoinPing {
    Answered,
    NoAnswer,
    IsSelf,
}

/// [`JoinPing`]s as labelled in the metrics, in the enum's order.
const JOIN_PINGS: [&str; 3] = ["answered", "no_answer", "self"];

/// `join_duration`: 10 ms to about 82 s, a join is one round trip on loopback, minutes when
/// every bootstrap node is down.
static JOIN_DURATION_BOUNDS: LazyLock<Box<[f64]>> =
    LazyLock::new(|| upper_bounds(exponential_buckets(0.01, 2.0, 14)));

/// The bootstrap manager's metrics, all prefixed `kadscale_bootstrap_`, in one allocation that
/// its clones share (as the node's, [`crate::metrics::Metrics`], for the same reason).
#[derive(Clone, Debug)]
pub struct BootstrapMetrics(Arc<BootstrapFigures>);

#[derive(Debug)]
struct BootstrapFigures {
    endpoints: AtomicI64,
    /// What each endpoint in the pool last showed; an endpoint leaves with its series.
    by_endpoint: Mutex<Vec<EndpointFigures>>,
    /// By [`SelectionStrategy::ALL`].
    selections: [AtomicU64; SelectionStrategy::ALL.len()],
    join_attempts: AtomicU64,
    /// By [`JoinOutcome::index`].
    join_outcomes: [AtomicU64; JoinOutcome::NAMES.len()],
    join_duration: BucketHistogram,
}

/// A per-endpoint metric: name, help, unit, and its sample of an endpoint, if it has one.
type EndpointMetric = (
    &'static str,
    &'static str,
    Option<&'static Unit>,
    fn(&EndpointFigures) -> Option<Sample<'static>>,
);

/// One endpoint's series.
#[derive(Debug)]
struct EndpointFigures {
    addr: EndpointAddr,
    healthy: bool,
    consecutive_failures: u32,
    rtt: Option<Duration>,
    report: Option<LoadReport>,
    /// Join pings by [`JoinPing`].
    pings: [u64; JOIN_PINGS.len()],
}

impl BootstrapMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = BootstrapMetrics(Arc::new(BootstrapFigures {
            endpoints: AtomicI64::new(0),
            by_endpoint: Mutex::default(),
            selections: Default::default(),
            join_attempts: AtomicU64::new(0),
            join_outcomes: Default::default(),
            join_duration: BucketHistogram::new(&JOIN_DURATION_BOUNDS),
        }));
        // One collector, its names prefixed, as the node's metrics (`metrics::Metrics::new`
        // says why).
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Runs `update` on the series of the endpoint at `addr`, made on its first use.
    fn update_endpoint(&self, addr: SocketAddr, update: impl FnOnce(&mut EndpointFigures)) {
        let mut by_endpoint = lock(&self.0.by_endpoint);
        let addr = EndpointAddr(addr);
        let index = match by_endpoint.iter().position(|figures| figures.addr == addr) {
            Some(index) => index,
            None => {
                by_endpoint.push(EndpointFigures {
                    addr,
                    healthy: false,
                    consecutive_failures: 0,
                    rtt: None,
                    report: None,
                    pings: [0; JOIN_PINGS.len()],
                });
                by_endpoint.len() - 1
            }
        };
        update(&mut by_endpoint[index]);
    }

    fn publish_health(&self, state: &EndpointState) {
        let health = &state.health;
        self.update_endpoint(state.endpoint.addr, |figures| {
            figures.healthy = health.is_healthy();
            figures.consecutive_failures = health.consecutive_failures();
            figures.rtt = health.last_rtt().or(figures.rtt);
        });
    }

    fn publish_load(&self, state: &EndpointState, report: &LoadReport) {
        self.update_endpoint(state.endpoint.addr, |figures| figures.report = Some(report.clone()));
    }

    fn join_pinged(&self, addr: SocketAddr, ping: JoinPing) {
        self.update_endpoint(addr, |figures| figures.pings[ping as usize] += 1);
    }

    /// Drops the series of an endpoint that left the pool.
    fn forget(&self, addr: SocketAddr) {
        lock(&self.0.by_endpoint).retain(|figures| figures.addr != EndpointAddr(addr));
    }
}

impl Collector for BootstrapMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let metrics = &*self.0;
        let by_endpoint = lock(&metrics.by_endpoint);
        encode_series(
            &mut encoder,
            "kadscale_bootstrap_endpoints",
            "Bootstrap endpoints in the pool.",
            None,
            [(NO_LABELS, Sample::Gauge(metrics.endpoints.load(Ordering::Relaxed)))],
        )?;
        // A series of each endpoint of which `sample` says something.
        let per_endpoint = |sample: fn(&EndpointFigures) -> Option<Sample<'static>>| {
            by_endpoint.iter().filter_map(move |figures| {
                sample(figures).map(|sample| ([("endpoint", figures.addr)], sample))
            })
        };
        let described: [EndpointMetric; 7] = [
            (
                "kadscale_bootstrap_endpoint_healthy",
                "1 while the endpoint is healthy (fewer consecutive failures than the \
                 threshold).",
                None,
                |figures| flag(figures.healthy),
            ),
            (
                "kadscale_bootstrap_endpoint_consecutive_failures",
                "Pings and join pings the endpoint failed in a row.",
                None,
                |figures| gauge(figures.consecutive_failures.into()),
            ),
            (
                "kadscale_bootstrap_endpoint_rtt",
                "Round-trip time of the endpoint's last answered ping.",
                Some(&Unit::Seconds),
                |figures| figures.rtt.map(|rtt| Sample::FloatGauge(rtt.as_secs_f64())),
            ),
            (
                "kadscale_bootstrap_endpoint_reported_joins_last_minute",
                "Joins the endpoint reported serving in the last minute (kadscale_load).",
                None,
                |figures| {
                    figures.report.as_ref().and_then(|report| gauge(report.joins_last_minute))
                },
            ),
            (
                "kadscale_bootstrap_endpoint_reported_routing_table_size",
                "Routing-table size the endpoint reported (kadscale_load).",
                None,
                |figures| {
                    figures.report.as_ref().and_then(|report| gauge(report.routing_table_size))
                },
            ),
            (
                "kadscale_bootstrap_endpoint_reported_requests_per_second",
                "Requests per second the endpoint reported (kadscale_load).",
                None,
                |figures| {
                    figures
                        .report
                        .as_ref()
                        .map(|report| Sample::FloatGauge(report.requests_per_second))
                },
            ),
            (
                "kadscale_bootstrap_endpoint_reported_overloaded",
                "1 when the endpoint reported itself above its join limit (kadscale_load).",
                None,
                |figures| figures.report.as_ref().and_then(|report| flag(report.overloaded)),
            ),
        ];
        for (name, help, unit, sample) in described {
            encode_series(&mut encoder, name, help, unit, per_endpoint(sample))?;
        }
        let strategies = SelectionStrategy::ALL.map(|strategy| [("strategy", strategy.name())]);
        encode_series(
            &mut encoder,
            "kadscale_bootstrap_selections",
            "Endpoint selections for joins, by strategy.",
            None,
            counted(strategies, &metrics.selections),
        )?;
        encode_series(
            &mut encoder,
            "kadscale_bootstrap_join_attempts",
            "Join attempts.",
            None,
            [(NO_LABELS, Sample::counted(&metrics.join_attempts))],
        )?;
        encode_series(
            &mut encoder,
            "kadscale_bootstrap_join_outcomes",
            "Join attempts by outcome (joined, no_endpoints, no_answer, no_peers).",
            None,
            counted(
                JoinOutcome::NAMES.map(|outcome| [("outcome", outcome)]),
                &metrics.join_outcomes,
            ),
        )?;
        let pings = by_endpoint.iter().flat_map(|figures| {
            JOIN_PINGS.into_iter().zip(figures.pings).filter(|(_, count)| *count > 0).map(
                |(outcome, count)| {
                    (([("endpoint", figures.addr)], [("outcome", outcome)]), Sample::Counter(count))
                },
            )
        });
        encode_series(
            &mut encoder,
            "kadscale_bootstrap_join_pings",
            "Endpoint pings during join attempts, by endpoint and outcome.",
            None,
            pings,
        )?;
        encode_series(
            &mut encoder,
            "kadscale_bootstrap_join_duration",
            "Time from the first attempt of a join to the routing table holding peers.",
            Some(&Unit::Seconds),
            [(NO_LABELS, Sample::Histogram(&metrics.join_duration))],
        )
    }
}

/// A count as a gauge's sample.
fn gauge(count: u64) -> Option<Sample<'static>> {
    Some(Sample::Gauge(i64::try_from(count).unwrap_or(i64::MAX)))
}

/// 1 for true, 0 for false.
fn flag(value: bool) -> Option<Sample<'static>> {
    Some(Sample::Gauge(i64::from(value)))
}

/// The endpoint pool and what selection needs, behind one lock that is never held across an
/// await.
struct Pool {
    entries: Vec<EndpointState>,
    /// `entries[i].candidate()`, kept in step with `entries`.
    candidates: Vec<Candidate>,
    selector: Selector,
    chosen: Vec<usize>,
    /// Jitter for the backoff.
    rng: SmallRng,
}

impl Pool {
    fn sync_candidates(&mut self) {
        self.candidates.clear();
        self.candidates.extend(self.entries.iter().map(EndpointState::candidate));
    }

    fn entry_mut(&mut self, addr: SocketAddr) -> Option<&mut EndpointState> {
        self.entries.iter_mut().find(|state| state.endpoint.addr == addr)
    }

    fn probe_targets(&self) -> Vec<SocketAddr> {
        self.entries.iter().filter(|s| !s.is_self).map(|s| s.endpoint.addr).collect()
    }
}

/// Finds bootstrap endpoints, watches them, and keeps the node joined.
pub struct BootstrapManager<P, R> {
    prober: Arc<P>,
    config: ManagerConfig,
    discovery: tokio::sync::Mutex<Discovery<R>>,
    pool: Mutex<Pool>,
    metrics: BootstrapMetrics,
    joined: watch::Sender<bool>,
    /// Woken when discovery adds endpoints, so that a node waiting out a backoff retries now.
    endpoints_added: Notify,
}

impl<P: Prober, R: Resolve> BootstrapManager<P, R> {
    pub fn new(
        prober: Arc<P>,
        discovery: Discovery<R>,
        config: ManagerConfig,
        metrics: BootstrapMetrics,
    ) -> Self {
        Self::with_rng(prober, discovery, config, metrics, SmallRng::from_os_rng())
    }

    /// Like [`BootstrapManager::new`] with a given random source (selection start, random
    /// strategy, jitter), for reproducible tests.
    pub fn with_rng(
        prober: Arc<P>,
        discovery: Discovery<R>,
        config: ManagerConfig,
        metrics: BootstrapMetrics,
        mut rng: SmallRng,
    ) -> Self {
        let selector = Selector::new(config.strategy, SmallRng::from_rng(&mut rng));
        let pool =
            Pool { entries: Vec::new(), candidates: Vec::new(), selector, chosen: Vec::new(), rng };
        BootstrapManager {
            prober,
            config,
            discovery: tokio::sync::Mutex::new(discovery),
            pool: Mutex::new(pool),
            metrics,
            joined: watch::Sender::new(false),
            endpoints_added: Notify::new(),
        }
    }

    /// Whether the last join succeeded and the routing table has not emptied since.
    pub fn is_joined(&self) -> bool {
        *self.joined.borrow()
    }

    /// Follows [`BootstrapManager::is_joined`].
    pub fn subscribe_joined(&self) -> watch::Receiver<bool> {
        self.joined.subscribe()
    }

    /// A copy of the pool: every endpoint with its health and load.
    pub fn endpoints(&self) -> Vec<EndpointState> {
        self.lock_pool().entries.clone()
    }

    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        lock(&self.pool)
    }

    /// Discovers endpoints once and merges them into the pool.
    pub async fn refresh_endpoints(&self) -> PoolChange {
        let discovered = self.discovery.lock().await.discover().await;
        for problem in &discovered.problems {
            tracing::warn!(%problem, "bootstrap discovery");
        }
        let change = {
            let mut pool = self.lock_pool();
            let change = merge(&mut pool.entries, discovered.endpoints);
            pool.sync_candidates();
            self.metrics.0.endpoints.store(pool.entries.len() as i64, Ordering::Relaxed);
            for state in &pool.entries {
                self.metrics.publish_health(state);
            }
            change
        };
        for endpoint in &change.added {
            tracing::info!(endpoint = %endpoint.addr, name = %endpoint.name, source = %endpoint.source, "bootstrap endpoint added");
        }
        for endpoint in &change.removed {
            tracing::info!(endpoint = %endpoint.addr, name = %endpoint.name, "bootstrap endpoint removed");
            self.metrics.forget(endpoint.addr);
        }
        if !change.added.is_empty() {
            // Only a join waiting out a backoff now; a stored permit would cut a later one short.
            self.endpoints_added.notify_waiters();
        }
        change
    }

    /// Pings every endpoint once and records the outcomes.
    pub async fn check_health(&self) {
        let targets = self.lock_pool().probe_targets();
        self.ping_all(&targets).await;
    }

    /// Asks every endpoint for its load once; peers that do not answer keep their last report.
    pub async fn refresh_load(&self) {
        self.refresh_load_within(self.config.connection_timeout).await;
    }

    /// [`BootstrapManager::refresh_load`], waiting at most `timeout` for the answers.
    async fn refresh_load_within(&self, timeout: Duration) {
        let targets = self.lock_pool().probe_targets();
        let answers = self
            .fan_out(&targets, timeout, move |prober, addr| async move {
                prober.load(addr, timeout).await
            })
            .await;
        let mut pool = self.lock_pool();
        for (addr, answer) in answers {
            let (Some(Some(report)), Some(state)) = (answer, pool.entry_mut(addr)) else {
                continue;
            };
            self.metrics.publish_load(state, &report);
            state.load.record_report(report);
        }
        pool.sync_candidates();
    }

    /// Runs `probe` on every address at once, each limited to `timeout`; the answers come
    /// back in the order of `addrs`, `None` where the timeout struck.
    async fn fan_out<T, F, Fut>(
        &self,
        addrs: &[SocketAddr],
        timeout: Duration,
        probe: F,
    ) -> Vec<(SocketAddr, Option<T>)>
    where
        F: Fn(Arc<P>, SocketAddr) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let mut tasks = JoinSet::new();
        for (index, &addr) in addrs.iter().enumerate() {
            let probe = tokio::time::timeout(timeout, probe(self.prober.clone(), addr));
            tasks.spawn(async move { (index, probe.await.ok()) });
        }
        let mut answers: Vec<Option<T>> = addrs.iter().map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            if let Ok((index, answer)) = done {
                answers[index] = answer;
            }
        }
        addrs.iter().copied().zip(answers).collect()
    }

    /// Pings `addrs` at once and records each outcome in the endpoint's health.
    async fn ping_all(
        &self,
        addrs: &[SocketAddr],
    ) -> Vec<(SocketAddr, Result<Duration, ProbeError>)> {
        let timeout = self.config.connection_timeout;
        let answers =
            self.fan_out(addrs, timeout, move |prober, addr| async move {
                prober.ping(addr, timeout).await
            })
            .await;
        let pings: Vec<_> = answers
            .into_iter()
            .map(|(addr, answer)| (addr, answer.unwrap_or(Err(ProbeError::Timeout(timeout)))))
            .collect();
        let mut pool = self.lock_pool();
        for (addr, result) in &pings {
            let Some(state) = pool.entry_mut(*addr) else { continue };
            let transition = match result {
                Ok(rtt) => state.health.record_success(*rtt),
                Err(ProbeError::IsSelf) => {
                    state.is_self = true;
                    HealthTransition::Unchanged
                }
                Err(_) => state.health.record_failure(self.config.failure_threshold),
            };
            match transition {
                HealthTransition::BecameUnhealthy => {
                    tracing::warn!(endpoint = %addr, failures = state.health.consecutive_failures(), "bootstrap endpoint unhealthy")
                }
                HealthTransition::Recovered => {
                    tracing::info!(endpoint = %addr, "bootstrap endpoint healthy again")
                }
                HealthTransition::Unchanged => {}
            }
            self.metrics.publish_health(state);
        }
        pool.sync_candidates();
        pings
    }

    /// Selects endpoints for a join, skipping `excluded` unless nothing else is left.
    fn select_for_join(&self, excluded: &HashSet<SocketAddr>) -> Vec<SocketAddr> {
        let mut guard = self.lock_pool();
        let pool = &mut *guard;
        let mut candidates = pool.candidates.clone();
        for (candidate, state) in candidates.iter_mut().zip(&pool.entries) {
            candidate.eligible &= !excluded.contains(&state.endpoint.addr);
        }
        if !candidates.iter().any(|c| c.eligible) {
            candidates.clone_from(&pool.candidates);
        }
        pool.selector.select(&candidates, self.config.seeds_per_join, &mut pool.chosen);
        let mut selected = Vec::with_capacity(pool.chosen.len());
        for &index in &pool.chosen {
            let state = &mut pool.entries[index];
            state.load.own_selections += 1;
            selected.push(state.endpoint.addr);
        }
        pool.sync_candidates();
        if !selected.is_empty() {
            let strategy = self.config.strategy as usize;
            self.metrics.0.selections[strategy].fetch_add(1, Ordering::Relaxed);
        }
        selected
    }

    /// One attempt: ping the selected endpoints (and, with fallback, every other one when none
    /// of them answers), then join through the ones that answered. Endpoints that did not
    /// answer go into `excluded`, so that the next attempt tries others.
    pub async fn join_once(&self, excluded: &mut HashSet<SocketAddr>) -> JoinAttempt {
        self.metrics.0.join_attempts.fetch_add(1, Ordering::Relaxed);
        let selected = self.select_for_join(excluded);
        let mut pings = self.ping_all(&selected).await;
        if self.config.fallback && !pings.iter().any(|(_, result)| result.is_ok()) {
            let others: Vec<SocketAddr> = {
                let pool = self.lock_pool();
                let targets = pool.probe_targets();
                targets
                    .into_iter()
                    .filter(|a| !selected.contains(a) && !excluded.contains(a))
                    .collect()
            };
            pings.extend(self.ping_all(&others).await);
        }
        let mut seeds = Vec::new();
        for (addr, result) in &pings {
            let ping = match result {
                Ok(_) => {
                    seeds.push(*addr);
                    JoinPing::Answered
                }
                Err(ProbeError::IsSelf) => JoinPing::IsSelf,
                Err(_) => {
                    excluded.insert(*addr);
                    JoinPing::NoAnswer
                }
            };
            self.metrics.join_pinged(*addr, ping);
        }
        let outcome = if pings.is_empty() {
            JoinOutcome::NoEndpoints
        } else if seeds.is_empty() {
            JoinOutcome::NoAnswer
        } else if self.prober.join(seeds.clone()).await {
            JoinOutcome::Joined { seeds }
        } else {
            JoinOutcome::NoPeers { seeds }
        };
        self.metrics.0.join_outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        JoinAttempt { outcome, pings }
    }

    /// Attempts joins until one succeeds, with exponential backoff and jitter between them;
    /// past `max_retries` it keeps going at the capped interval. Returns the time it took.
    pub async fn join(&self) -> Duration {
        let started = Instant::now();
        let mut excluded = HashSet::new();
        let mut attempt = 0u32;
        loop {
            let result = self.join_once(&mut excluded).await;
            if let JoinOutcome::Joined { seeds } = &result.outcome {
                let took = started.elapsed();
                self.metrics.0.join_duration.observe(took.as_secs_f64());
                tracing::info!(?seeds, attempts = attempt + 1, ?took, "joined the DHT");
                self.joined.send_replace(true);
                return took;
            }
            let backoff = self.config.backoff;
            let delay = backoff.delay(attempt, &mut self.lock_pool().rng);
            let outcome = result.outcome.name();
            // Loud for the fast retries and once when they run out; then quiet, because a
            // lone bootstrap node waiting for peers retries like this for as long as it runs.
            if !backoff.exhausted(attempt) {
                tracing::warn!(outcome, attempt, ?delay, "join attempt failed");
            } else if attempt == backoff.max_retries {
                let retry_every = backoff.base_delay(attempt);
                tracing::warn!(
                    outcome,
                    attempts = attempt + 1,
                    ?retry_every,
                    "join failed after every fast retry; retrying in the background while serving"
                );
            } else {
                tracing::debug!(outcome, attempt, ?delay, "join attempt failed");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.endpoints_added.notified() => {
                    tracing::info!("new bootstrap endpoints: retrying the join now");
                }
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// Runs the manager for as long as the process lives: discovery and health every health
    /// interval, load every load interval, and the join, again whenever the routing table
    /// empties.
    ///
    /// The work of each step is boxed while it runs: the loops wait most of the time, and
    /// meanwhile the task holds only their timers.
    pub async fn run(&self) {
        Box::pin(self.refresh_endpoints()).await;
        if self.config.load_balancing && self.config.strategy == SelectionStrategy::LeastLoaded {
            // A worker joins once: its first choice must already see the reported loads. Python
            // peers never answer, so the wait is short: kadscale peers answer in a round trip.
            let wait = self.config.connection_timeout.min(STARTUP_LOAD_WAIT);
            Box::pin(self.refresh_load_within(wait)).await;
        }
        tokio::join!(self.health_loop(), self.load_loop(), self.join_loop());
    }

    async fn health_loop(&self) {
        let mut ticks = every(self.config.health_check_interval);
        loop {
            ticks.tick().await;
            Box::pin(async {
                self.refresh_endpoints().await;
                self.check_health().await;
            })
            .await;
        }
    }

    async fn load_loop(&self) {
        if !self.config.load_balancing {
            return;
        }
        let mut ticks = every(self.config.load_balance_interval);
        loop {
            ticks.tick().await;
            Box::pin(self.refresh_load()).await;
        }
    }

    async fn join_loop(&self) {
        let mut ticks = every(REJOIN_CHECK_INTERVAL);
        loop {
            Box::pin(self.join()).await;
            while self.prober.routing_table_len() > 0 {
                ticks.tick().await;
            }
            self.joined.send_replace(false);
            tracing::warn!("routing table empty: joining again");
        }
    }
}

/// Ticks every `period`, the first tick one period from now; a late tick does not bunch up.
fn every(period: Duration) -> tokio::time::Interval {
    let period = period.max(Duration::from_millis(1));
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::bootstrap::discovery::tests::TableResolver;
    use crate::bootstrap::discovery::DiscoveryConfig;

    const RTT: Duration = Duration::from_millis(10);
    const TIMEOUT: Duration = Duration::from_secs(5);

    #[derive(Clone)]
    struct FakePeer {
        alive: bool,
        is_self: bool,
        load: Option<LoadReport>,
    }

    /// A network of fake bootstrap nodes answering after [`RTT`], or never.
    #[derive(Default)]
    struct FakeNet {
        peers: Mutex<HashMap<SocketAddr, FakePeer>>,
        routing_table: AtomicUsize,
        joins: Mutex<Vec<Vec<SocketAddr>>>,
        pings: Mutex<Vec<(Instant, SocketAddr)>>,
    }

    impl FakeNet {
        fn with_peers(addrs: &[&str]) -> Arc<Self> {
            let net = FakeNet::default();
            for text in addrs {
                let peer = FakePeer { alive: true, is_self: false, load: None };
                net.peers.lock().unwrap().insert(addr(text), peer);
            }
            Arc::new(net)
        }

        fn update(&self, text: &str, change: impl FnOnce(&mut FakePeer)) {
            change(self.peers.lock().unwrap().get_mut(&addr(text)).unwrap());
        }

        fn set_alive(&self, text: &str, alive: bool) {
            self.update(text, |peer| peer.alive = alive);
        }

        fn answering(&self, addr: SocketAddr) -> Option<FakePeer> {
            self.peers.lock().unwrap().get(&addr).filter(|peer| peer.alive).cloned()
        }

        fn joins(&self) -> Vec<Vec<SocketAddr>> {
            self.joins.lock().unwrap().clone()
        }
    }

    impl Prober for FakeNet {
        async fn ping(&self, addr: SocketAddr, timeout: Duration) -> Result<Duration, ProbeError> {
            self.pings.lock().unwrap().push((Instant::now(), addr));
            match self.answering(addr) {
                Some(peer) => {
                    tokio::time::sleep(RTT).await;
                    if peer.is_self {
                        Err(ProbeError::IsSelf)
                    } else {
                        Ok(RTT)
                    }
                }
                None => {
                    tokio::time::sleep(timeout).await;
                    Err(ProbeError::Timeout(timeout))
                }
            }
        }

        async fn load(&self, addr: SocketAddr, timeout: Duration) -> Option<LoadReport> {
            match self.answering(addr).and_then(|peer| peer.load) {
                Some(report) => {
                    tokio::time::sleep(RTT).await;
                    Some(report)
                }
                None => {
                    tokio::time::sleep(timeout).await;
                    None
                }
            }
        }

        async fn join(&self, seeds: Vec<SocketAddr>) -> bool {
            tokio::time::sleep(RTT).await;
            let peers = seeds.iter().filter(|addr| self.answering(**addr).is_some()).count();
            self.joins.lock().unwrap().push(seeds);
            self.routing_table.store(peers, Ordering::SeqCst);
            peers > 0
        }

        fn routing_table_len(&self) -> usize {
            self.routing_table.load(Ordering::SeqCst)
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn addrs(texts: &[&str]) -> Vec<SocketAddr> {
        texts.iter().map(|text| addr(text)).collect()
    }

    type Manager = BootstrapManager<FakeNet, TableResolver>;

    fn manager_with(
        net: &Arc<FakeNet>,
        discovery: DiscoveryConfig,
        resolver: TableResolver,
        config: ManagerConfig,
    ) -> (Arc<Manager>, Registry) {
        let discovery = Discovery::new(discovery, resolver).unwrap();
        let mut registry = Registry::default();
        let metrics = BootstrapMetrics::register(&mut registry);
        let rng = SmallRng::seed_from_u64(1);
        (
            Arc::new(BootstrapManager::with_rng(net.clone(), discovery, config, metrics, rng)),
            registry,
        )
    }

    fn manager(
        net: &Arc<FakeNet>,
        entries: &[&str],
        config: ManagerConfig,
    ) -> (Arc<Manager>, Registry) {
        let static_entries = entries.iter().map(|entry| entry.parse().unwrap()).collect();
        let discovery = DiscoveryConfig { static_entries, ..DiscoveryConfig::default() };
        manager_with(net, discovery, TableResolver::default(), config)
    }

    /// The manager's loop in a task of its own, as a node runs it.
    fn spawn_run(manager: &Arc<Manager>) -> tokio::task::JoinHandle<()> {
        let manager = Arc::clone(manager);
        tokio::spawn(async move { manager.run().await })
    }

    fn priority_config() -> ManagerConfig {
        ManagerConfig { strategy: SelectionStrategy::Priority, ..ManagerConfig::default() }
    }

    fn state(manager: &Manager, text: &str) -> EndpointState {
        manager.endpoints().into_iter().find(|s| s.endpoint.addr == addr(text)).unwrap()
    }

    fn metrics_text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    const SIX: [&str; 6] = [
        "127.0.0.1:5001",
        "127.0.0.1:5002",
        "127.0.0.1:5003",
        "127.0.0.1:5004",
        "127.0.0.1:5005",
        "127.0.0.1:5006",
    ];

    #[tokio::test(start_paused = true)]
    async fn joins_through_the_selected_endpoints() {
        let net = FakeNet::with_peers(&SIX[..4]);
        let (manager, registry) = manager(&net, &SIX[..4], priority_config());
        manager.refresh_endpoints().await;
        let attempt = manager.join_once(&mut HashSet::new()).await;
        assert_eq!(attempt.outcome, JoinOutcome::Joined { seeds: addrs(&SIX[..3]) });
        assert!(attempt.pings.iter().all(|(_, result)| *result == Ok(RTT)));
        assert_eq!(state(&manager, SIX[0]).health.last_rtt(), Some(RTT));
        assert_eq!(state(&manager, SIX[3]).health.last_rtt(), None, "not selected, not pinged");

        let text = metrics_text(&registry);
        for line in [
            "kadscale_bootstrap_endpoints 4",
            "kadscale_bootstrap_selections_total{strategy=\"priority\"} 1",
            "kadscale_bootstrap_join_attempts_total 1",
            "kadscale_bootstrap_join_outcomes_total{outcome=\"joined\"} 1",
            "kadscale_bootstrap_join_pings_total{endpoint=\"127.0.0.1:5001\",outcome=\"answered\"} 1",
            "kadscale_bootstrap_endpoint_healthy{endpoint=\"127.0.0.1:5004\"} 1",
            "kadscale_bootstrap_endpoint_rtt_seconds{endpoint=\"127.0.0.1:5002\"} 0.01",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_endpoints_that_answered_seed_the_join() {
        let net = FakeNet::with_peers(&SIX[..4]);
        net.set_alive(SIX[1], false);
        let (manager, registry) = manager(&net, &SIX[..4], priority_config());
        manager.refresh_endpoints().await;
        let started = Instant::now();
        let mut excluded = HashSet::new();
        let attempt = manager.join_once(&mut excluded).await;
        assert_eq!(attempt.outcome, JoinOutcome::Joined { seeds: addrs(&[SIX[0], SIX[2]]) });
        assert_eq!(attempt.pings[1], (addr(SIX[1]), Err(ProbeError::Timeout(TIMEOUT))));
        assert_eq!(started.elapsed(), TIMEOUT + RTT, "waits out the timeout of the silent one");
        assert_eq!(state(&manager, SIX[1]).health.consecutive_failures(), 1);
        assert_eq!(excluded, HashSet::from([addr(SIX[1])]));
        let text = metrics_text(&registry);
        let silent = format!(
            "kadscale_bootstrap_join_pings_total{{endpoint=\"{}\",outcome=\"no_answer\"}} 1",
            addr(SIX[1])
        );
        assert!(text.contains(&silent), "missing {silent:?} in\n{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_pings_the_others_when_no_selected_endpoint_answers() {
        let net = FakeNet::with_peers(&SIX);
        for dead in &SIX[..3] {
            net.set_alive(dead, false);
        }
        let (manager, _registry) = manager(&net, &SIX, priority_config());
        manager.refresh_endpoints().await;
        let started = Instant::now();
        let attempt = manager.join_once(&mut HashSet::new()).await;
        assert_eq!(attempt.outcome, JoinOutcome::Joined { seeds: addrs(&SIX[3..]) });
        assert_eq!(attempt.pings.len(), 6);
        assert_eq!(started.elapsed(), TIMEOUT + RTT + RTT, "one timeout, then the others at once");
    }

    #[tokio::test(start_paused = true)]
    async fn without_fallback_the_next_attempt_tries_others_after_a_backoff() {
        let net = FakeNet::with_peers(&SIX);
        for dead in &SIX[..3] {
            net.set_alive(dead, false);
        }
        let config = ManagerConfig { fallback: false, ..priority_config() };
        let (manager, _registry) = manager(&net, &SIX, config);
        manager.refresh_endpoints().await;
        let took = manager.join().await;
        assert_eq!(net.joins(), vec![addrs(&SIX[3..])]);
        let first_delay = took - TIMEOUT - RTT - RTT;
        assert!(first_delay <= Duration::from_secs(2), "{first_delay:?}");
        assert!(first_delay >= Duration::from_millis(1500), "{first_delay:?}");
        assert!(manager.is_joined());
    }

    #[tokio::test(start_paused = true)]
    async fn no_endpoints_is_an_outcome_not_a_panic() {
        let net = FakeNet::with_peers(&[]);
        let (manager, _registry) = manager(&net, &[], ManagerConfig::default());
        manager.refresh_endpoints().await;
        let attempt = manager.join_once(&mut HashSet::new()).await;
        assert_eq!(attempt.outcome, JoinOutcome::NoEndpoints);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_exponential_backoff_then_at_the_capped_interval_forever() {
        let net = FakeNet::with_peers(&SIX[..2]);
        net.set_alive(SIX[0], false);
        net.set_alive(SIX[1], false);
        let timeout = Duration::from_secs(1);
        let config = ManagerConfig {
            fallback: false,
            connection_timeout: timeout,
            ..ManagerConfig::default()
        };
        let (manager, _registry) = manager(&net, &SIX[..2], config);
        manager.refresh_endpoints().await;
        let joining = tokio::spawn({
            let manager = manager.clone();
            async move { manager.join().await }
        });
        tokio::time::sleep(Duration::from_secs(150)).await;
        assert!(!joining.is_finished());
        assert!(!manager.is_joined());

        // Every attempt pings both endpoints at once; its start is the time of those pings.
        let mut starts: Vec<Instant> =
            net.pings.lock().unwrap().iter().map(|(at, _)| *at).collect();
        starts.dedup();
        let backoff = Backoff::default();
        for (attempt, pair) in starts.windows(2).enumerate() {
            let delay = pair[1] - pair[0] - timeout;
            let base = backoff.base_delay(attempt as u32);
            assert!(
                delay <= base && delay >= base.mul_f64(0.75),
                "attempt {attempt}: {delay:?} vs {base:?}"
            );
        }
        assert!(starts.len() >= 9, "2, 4, 8, then every 16 s: {} attempts in 150 s", starts.len());

        net.set_alive(SIX[1], true);
        let took = joining.await.unwrap();
        assert!(
            took > Duration::from_secs(150) && took < Duration::from_secs(150 + 16 + 1),
            "{took:?}"
        );
        assert!(manager.is_joined());
    }

    #[tokio::test(start_paused = true)]
    async fn health_checks_mark_unhealthy_after_the_threshold_and_one_success_heals() {
        let net = FakeNet::with_peers(&SIX[..2]);
        let (manager, registry) = manager(&net, &SIX[..2], ManagerConfig::default());
        let running = spawn_run(&manager);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(manager.is_joined());
        net.set_alive(SIX[0], false);

        tokio::time::sleep(Duration::from_secs(69)).await;
        let down = state(&manager, SIX[0]);
        assert!(down.health.is_healthy(), "two failures are below the threshold");
        assert_eq!(down.health.consecutive_failures(), 2);

        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!state(&manager, SIX[0]).health.is_healthy(), "the third failure at 90 s");
        assert!(metrics_text(&registry)
            .contains("kadscale_bootstrap_endpoint_healthy{endpoint=\"127.0.0.1:5001\"} 0"));
        assert!(state(&manager, SIX[1]).health.is_healthy());

        net.set_alive(SIX[0], true);
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert!(state(&manager, SIX[0]).health.is_healthy(), "healthy again within one interval");
        assert!(metrics_text(&registry)
            .contains("kadscale_bootstrap_endpoint_healthy{endpoint=\"127.0.0.1:5001\"} 1"));
        running.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn joins_again_when_the_routing_table_empties() {
        let net = FakeNet::with_peers(&SIX[..2]);
        let (manager, _registry) = manager(&net, &SIX[..2], ManagerConfig::default());
        let running = spawn_run(&manager);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(net.joins().len(), 1);
        net.routing_table.store(0, Ordering::SeqCst);
        tokio::time::sleep(REJOIN_CHECK_INTERVAL + Duration::from_millis(100)).await;
        assert_eq!(net.joins().len(), 2);
        assert!(manager.is_joined());
        assert!(net.routing_table_len() > 0);
        running.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn dns_changes_add_and_remove_endpoints_without_a_restart() {
        let net = FakeNet::with_peers(&["127.0.0.1:5678", "127.0.0.2:5678", "127.0.0.3:5678"]);
        let resolver = TableResolver::default();
        resolver.answer("kad-bootstrap.test", Ok(vec!["127.0.0.1:0", "127.0.0.2:0"]));
        let discovery = DiscoveryConfig {
            dns_names: vec!["kad-bootstrap.test:5678".parse().unwrap()],
            ..DiscoveryConfig::default()
        };
        let (manager, registry) =
            manager_with(&net, discovery, resolver.clone(), ManagerConfig::default());
        let running = spawn_run(&manager);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pool: Vec<SocketAddr> = manager.endpoints().iter().map(|s| s.endpoint.addr).collect();
        assert_eq!(pool, addrs(&["127.0.0.1:5678", "127.0.0.2:5678"]));

        resolver.answer("kad-bootstrap.test", Ok(vec!["127.0.0.3:0", "127.0.0.2:0"]));
        tokio::time::sleep(Duration::from_secs(30)).await;
        let pool: Vec<SocketAddr> = manager.endpoints().iter().map(|s| s.endpoint.addr).collect();
        assert_eq!(pool, addrs(&["127.0.0.2:5678", "127.0.0.3:5678"]));
        assert_eq!(
            state(&manager, "127.0.0.3:5678").health.last_rtt(),
            Some(RTT),
            "pinged at once"
        );
        let text = metrics_text(&registry);
        assert!(
            !text.contains("127.0.0.1:5678"),
            "the removed endpoint's series are gone:\n{text}"
        );
        assert!(text.contains("kadscale_bootstrap_endpoints 2"));
        running.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_appearing_cut_a_backoff_short() {
        let net = FakeNet::with_peers(&["127.0.0.1:5678"]);
        let resolver = TableResolver::default();
        resolver.answer("kad-bootstrap.test", Ok(vec![]));
        let discovery = DiscoveryConfig {
            dns_names: vec!["kad-bootstrap.test:5678".parse().unwrap()],
            ..DiscoveryConfig::default()
        };
        let config = ManagerConfig {
            health_check_interval: Duration::from_secs(10),
            backoff: Backoff { retry_delay: Duration::from_secs(40), max_retries: 3 },
            ..ManagerConfig::default()
        };
        let (manager, _registry) = manager_with(&net, discovery, resolver.clone(), config);
        let running = spawn_run(&manager);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!manager.is_joined(), "no endpoint yet: waiting out a backoff of 30 to 40 s");
        resolver.answer("kad-bootstrap.test", Ok(vec!["127.0.0.1:0"]));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            manager.is_joined(),
            "the health interval at 10 s found the endpoint and woke the join"
        );
        running.abort();
    }

    fn report(joins_last_minute: u64, overloaded: bool) -> LoadReport {
        LoadReport {
            joins_last_minute,
            routing_table_size: 5,
            requests_per_second: 1.0,
            overloaded,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn least_loaded_follows_reports_and_counts_own_joins_for_silent_peers() {
        let net = FakeNet::with_peers(&SIX[..4]);
        net.update(SIX[0], |peer| peer.load = Some(report(30, false)));
        net.update(SIX[1], |peer| peer.load = Some(report(5, true)));
        net.update(SIX[2], |peer| peer.load = Some(report(10, false)));
        // SIX[3] is a Python node: it never answers kadscale_load.
        let config = ManagerConfig {
            strategy: SelectionStrategy::LeastLoaded,
            seeds_per_join: 1,
            ..ManagerConfig::default()
        };
        let (manager, registry) = manager(&net, &SIX[..4], config);
        manager.refresh_endpoints().await;
        manager.refresh_load().await;
        assert_eq!(state(&manager, SIX[0]).load.reported, Some(report(30, false)));
        assert_eq!(state(&manager, SIX[3]).load.reported, None);
        assert!(metrics_text(&registry).contains(
            "kadscale_bootstrap_endpoint_reported_overloaded{endpoint=\"127.0.0.1:5002\"} 1"
        ));

        let picks: Vec<SocketAddr> =
            (0..40).map(|_| manager.select_for_join(&HashSet::new())[0]).collect();
        assert!(
            picks[..10].iter().all(|pick| *pick == addr(SIX[3])),
            "the silent peer until its own count reaches 10"
        );
        let count = |text: &str| picks.iter().filter(|pick| **pick == addr(text)).count();
        assert_eq!(count(SIX[1]), 0, "overloaded: last while others have room");
        assert_eq!(count(SIX[0]), 0, "30 joins is more than the others reach in 40 picks");
        assert_eq!(count(SIX[2]) + count(SIX[3]), 40);
        assert!(
            count(SIX[2]) >= 14,
            "taking turns with the silent peer above 10: {}",
            count(SIX[2])
        );

        manager.refresh_load().await;
        assert_eq!(
            state(&manager, SIX[2]).load.own_selections,
            0,
            "a fresh report replaces own counting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_least_loaded_join_sees_the_loads_without_waiting_out_silent_peers() {
        let net = FakeNet::with_peers(&SIX[..3]);
        net.update(SIX[0], |peer| peer.load = Some(report(20, false)));
        net.update(SIX[1], |peer| peer.load = Some(report(5, false)));
        // SIX[2] is a Python node: it answers pings, never kadscale_load.
        let config = ManagerConfig {
            strategy: SelectionStrategy::LeastLoaded,
            seeds_per_join: 2,
            ..ManagerConfig::default()
        };
        let (manager, _registry) = manager(&net, &SIX[..3], config);
        let started = Instant::now();
        let running = spawn_run(&manager);
        let mut joined = manager.subscribe_joined();
        joined.wait_for(|joined| *joined).await.unwrap();
        assert!(
            started.elapsed() < STARTUP_LOAD_WAIT + Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        let mut seeds = net.joins()[0].clone();
        seeds.sort();
        assert_eq!(seeds, addrs(&[SIX[1], SIX[2]]), "the busiest reporter is left out");
        running.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_bootstrap_node_never_selects_itself() {
        let net = FakeNet::with_peers(&SIX[..2]);
        net.update(SIX[0], |peer| peer.is_self = true);
        let (manager, registry) = manager(&net, &SIX[..2], priority_config());
        manager.refresh_endpoints().await;
        let attempt = manager.join_once(&mut HashSet::new()).await;
        assert_eq!(attempt.outcome, JoinOutcome::Joined { seeds: addrs(&[SIX[1]]) });
        assert!(state(&manager, SIX[0]).is_self);
        assert!(state(&manager, SIX[0]).health.is_healthy(), "being itself is not a failure");
        assert_eq!(manager.select_for_join(&HashSet::new()), addrs(&[SIX[1]]));
        assert!(metrics_text(&registry).contains("outcome=\"self\"} 1"));
    }
}
