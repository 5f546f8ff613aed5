//! The operator benchmark. `operator-bench` (`just bench-operator`) runs it at full size on a
//! cluster of its own; the e2e suite runs it at a tiny size (tests/bench_smoke.rs) so that it
//! cannot rot. One `dht-operator run` process (the chart's ServiceAccount, log level info)
//! watches one namespace, in which the benchmark measures:
//! 1. scale latency: from the PATCH of a DhtCluster's scale subresource (the request
//!    `kubectl scale` sends) to the watch event of the bootstrap StatefulSet showing the new
//!    spec.replicas, over changes that each move the tier;
//! 2. a sweep of worker counts up and then down: the StatefulSet's replicas at each (the plot);
//! 3. a new xlarge DhtCluster until it is Ready with every worker pod Ready;
//! 4. many DhtClusters created at once: until every one is reconciled, then Ready, then all
//!    rescaled at once until every one is reconciled again;
//!
//! and the operator process's CPU seconds and resident memory (/proc) after each phase.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kadscale_node::tier::{Tier, TierPolicy};
use kadscale_operator::crd::{DhtCluster, DhtClusterStatus};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::dht::Dht;
use crate::operator::{OperatorProcess, OperatorSettings};
use crate::plot::{Direction, SweepPoint};
use crate::process::{self, Usage};
use crate::scenario::Scenario;
use crate::wait::{until, Check};

/// How big each phase is.
#[derive(Clone, Debug, Serialize)]
pub struct Sizes {
    /// Worker counts the latency phase cycles through, starting from the last one; every step
    /// must move the tier, so that the StatefulSet changes.
    pub scale_cycle: Vec<u32>,
    /// Scale changes timed on a settled cluster (every pod Ready before each).
    pub scale_changes: usize,
    /// Scale changes timed back to back (each as soon as the previous one is reconciled).
    pub busy_scale_changes: usize,
    /// The sweep goes from 0 to this many workers and back.
    pub sweep_max_workers: u32,
    /// Sweep step (the tier boundaries are visited too).
    pub sweep_step: u32,
    /// Workers of the xlarge cluster timed to Ready; `None` skips that phase.
    pub xlarge_workers: Option<u32>,
    /// DhtClusters created at once.
    pub clusters: usize,
    /// Workers of each of them.
    pub workers_per_cluster: u32,
    /// Longest wait for pods to turn Ready.
    pub ready_timeout: Duration,
    /// How long the many clusters sit Ready before the operator's memory is read.
    pub settle: Duration,
}

impl Sizes {
    /// What `just bench-operator` runs: 60 tier changes, a sweep to 400 workers, 1,000 workers,
    /// 100 clusters of 100 workers (10,400 pods with their bootstrap pods).
    pub fn full() -> Sizes {
        Sizes {
            scale_cycle: vec![16, 51, 201, 51, 16, 15],
            scale_changes: 60,
            busy_scale_changes: 30,
            sweep_max_workers: 400,
            sweep_step: 10,
            xlarge_workers: Some(1000),
            clusters: 100,
            workers_per_cluster: 100,
            ready_timeout: Duration::from_secs(900),
            settle: Duration::from_secs(10),
        }
    }

    /// What the e2e suite runs: every phase but the 1,000 workers, a few pods each.
    pub fn tiny() -> Sizes {
        Sizes {
            scale_cycle: vec![16, 15],
            scale_changes: 5,
            busy_scale_changes: 2,
            sweep_max_workers: 60,
            sweep_step: 20,
            xlarge_workers: None,
            clusters: 2,
            workers_per_cluster: 3,
            ready_timeout: Duration::from_secs(180),
            settle: Duration::from_secs(1),
        }
    }
}

/// Everything measured, as `operator-bench` writes it to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub sizes: Sizes,
    /// Fake (kwok) nodes and the pods they can hold.
    pub nodes: usize,
    pub pod_capacity: u64,
    /// Each change on a settled cluster.
    pub scale: ScaleLatency,
    /// Each change right after the previous one was reconciled, pods still moving.
    pub busy_scale: ScaleLatency,
    pub sweep: Vec<SweepPoint>,
    /// Sweep points whose StatefulSet replicas differ from the tier policy's.
    pub sweep_mismatches: usize,
    pub xlarge: Option<XlargeRun>,
    pub clusters: ClustersRun,
    pub operator: OperatorFigures,
}

/// One timed scale change.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ScaleChange {
    pub from_workers: u32,
    pub to_workers: u32,
    pub from_bootstraps: u32,
    pub to_bootstraps: u32,
    /// From sending the scale PATCH to the StatefulSet watch event with the new replicas.
    pub latency_ms: f64,
    /// The scale PATCH's own round trip.
    pub request_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleLatency {
    pub changes: Vec<ScaleChange>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub request_p50_ms: f64,
}

/// Seconds from creating the xlarge DhtCluster to each milestone.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct XlargeRun {
    pub workers: u32,
    pub bootstraps: u32,
    /// The operator's first status (its first reconcile done).
    pub reconciled_s: f64,
    /// Every bootstrap pod Ready.
    pub bootstrap_ready_s: f64,
    /// The worker Deployment given all workers (the bootstrap-first gate open).
    pub workers_applied_s: f64,
    /// Ready condition True, every worker Ready.
    pub ready_s: f64,
}

/// Many DhtClusters at once.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClustersRun {
    pub clusters: usize,
    pub workers_per_cluster: u32,
    /// Creating them (8 requests in flight).
    pub create_s: f64,
    /// From the first create until every one had a status for its generation.
    pub reconciled_s: f64,
    pub reconciled_per_second: f64,
    /// From the first create until every one was Ready with all its pods; `None` when they
    /// were not within `Sizes::ready_timeout`.
    pub ready_s: Option<f64>,
    /// Ready pods (workers and bootstraps) of all of them then (or at the timeout).
    pub pods_ready: u64,
    /// Pods they call for.
    pub pods_wanted: u64,
    /// The operator's resident memory `Sizes::settle` after they were all Ready.
    pub settled_rss_bytes: u64,
    /// Every cluster scaled by one worker at once: until every one was reconciled again.
    pub rescaled_s: f64,
    pub rescaled_per_second: f64,
}

/// The operator process over the run.
#[derive(Clone, Debug, Serialize)]
pub struct OperatorFigures {
    pub phases: Vec<PhaseUsage>,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    /// From its /metrics at the end.
    pub reconciles: f64,
    pub reconcile_errors: f64,
    pub mean_reconcile_ms: f64,
}

/// The operator's resource use during one phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseUsage {
    pub phase: String,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// At the end of the phase.
    pub rss_bytes: u64,
    /// Since the operator started.
    pub peak_rss_bytes: u64,
}

/// Reads the operator's /proc entries at the end of each phase.
struct Meter {
    pid: u32,
    ticks_per_second: u64,
    last: Usage,
    phase_started: Instant,
    phases: Vec<PhaseUsage>,
}

impl Meter {
    fn start(pid: u32) -> Result<Meter> {
        let ticks_per_second = process::clock_ticks_per_second();
        let last = process::usage(pid, ticks_per_second)?;
        Ok(Meter { pid, ticks_per_second, last, phase_started: Instant::now(), phases: vec![] })
    }

    fn now(&self) -> Result<Usage> {
        process::usage(self.pid, self.ticks_per_second)
    }

    fn end_phase(&mut self, phase: &str) -> Result<()> {
        let now = self.now()?;
        let usage = PhaseUsage {
            phase: phase.to_string(),
            seconds: self.phase_started.elapsed().as_secs_f64(),
            cpu_seconds: now.cpu_seconds - self.last.cpu_seconds,
            rss_bytes: now.rss_bytes,
            peak_rss_bytes: now.peak_rss_bytes,
        };
        eprintln!(
            "operator-bench: {phase}: {:.1} s, operator {:.2} CPU s, RSS {:.1} MB (peak {:.1} MB)",
            usage.seconds,
            usage.cpu_seconds,
            megabytes(usage.rss_bytes),
            megabytes(usage.peak_rss_bytes)
        );
        self.phases.push(usage);
        self.last = now;
        self.phase_started = Instant::now();
        Ok(())
    }
}

pub fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Leader-election identity of the benchmarked operator.
const OPERATOR_IDENTITY: &str = "bench-operator";
/// Longest wait for one scale change to reach the StatefulSet, or to be reconciled.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two timed scale changes, after the previous one's status is written.
const CHANGE_PAUSE: Duration = Duration::from_millis(300);
/// How often the Ready waits look at the clusters.
const READY_POLL: Duration = Duration::from_millis(250);

/// Runs every phase in `scenario`'s namespace with an operator of its own.
pub async fn run(scenario: &Scenario, sizes: &Sizes) -> Result<Report> {
    let client = &scenario.client;
    let (nodes, pod_capacity) = capacity(client).await?;
    eprintln!("operator-bench: {nodes} nodes with room for {pod_capacity} pods");
    let mut operator = OperatorProcess::start_with_log_filter(
        scenario.release,
        OperatorSettings {
            identity: OPERATOR_IDENTITY,
            lease_name: &scenario.lease_name,
            watch_namespace: scenario.namespace(),
        },
        "info",
    )
    .await?;
    let mut meter = Meter::start(operator.pid())?;
    scenario.wait_for_lease_holder(&[OPERATOR_IDENTITY], Duration::from_secs(60)).await?;
    meter.end_phase("start and take the lease")?;

    let policy = TierPolicy::default();
    let ns = scenario.namespace();
    let cycle = &sizes.scale_cycle;
    let mut timed =
        TimedCluster::create(client, ns, *cycle.last().context("the scale cycle is empty")?)
            .await?;
    let scale = timed.time_changes(cycle, sizes.scale_changes, true, &policy).await?;
    meter.end_phase("scale latency, settled")?;
    let busy_scale = timed.time_changes(cycle, sizes.busy_scale_changes, false, &policy).await?;
    meter.end_phase("scale latency, back to back")?;
    operator.ensure_running()?;
    let scaled = timed.dht;

    let sweep = sweep(&scaled, sizes, &policy).await?;
    let sweep_mismatches =
        sweep.iter().filter(|p| p.bootstrap_replicas != p.expected_bootstrap_replicas).count();
    meter.end_phase("tier sweep")?;
    delete_and_wait(&scaled, sizes.ready_timeout).await?;
    meter.end_phase("delete the swept cluster")?;

    let xlarge = match sizes.xlarge_workers {
        Some(workers) => {
            let (dht, run) = xlarge(client, ns, workers, &policy, sizes.ready_timeout).await?;
            meter.end_phase("xlarge to Ready")?;
            delete_and_wait(&dht, sizes.ready_timeout).await?;
            meter.end_phase("delete the xlarge cluster")?;
            Some(run)
        }
        None => None,
    };
    operator.ensure_running()?;

    let clusters = many_clusters(client, ns, sizes, &policy, &mut meter).await?;
    operator.ensure_running()?;

    let (code, metrics) = operator.admin_get("/metrics").await?;
    ensure!(code == 200, "the operator's /metrics answered {code}");
    let reconcile_count =
        metric_sum(&metrics, "kadscale_operator_reconcile_duration_seconds_count");
    let reconcile_seconds =
        metric_sum(&metrics, "kadscale_operator_reconcile_duration_seconds_sum");
    let end = meter.now()?;
    Ok(Report {
        sizes: sizes.clone(),
        nodes,
        pod_capacity,
        scale,
        busy_scale,
        sweep,
        sweep_mismatches,
        xlarge,
        clusters,
        operator: OperatorFigures {
            phases: meter.phases,
            cpu_seconds: end.cpu_seconds,
            peak_rss_bytes: end.peak_rss_bytes,
            reconciles: metric_sum(&metrics, "kadscale_operator_reconciles_total"),
            reconcile_errors: metric_sum(&metrics, "kadscale_operator_reconcile_errors_total"),
            mean_reconcile_ms: if reconcile_count > 0.0 {
                reconcile_seconds / reconcile_count * 1000.0
            } else {
                0.0
            },
        },
    })
}

/// Nodes and the pods they can hold (status.allocatable.pods).
async fn capacity(client: &Client) -> Result<(usize, u64)> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?;
    let pods = nodes
        .items
        .iter()
        .filter_map(|node| node.status.as_ref()?.allocatable.as_ref()?.get("pods"))
        .filter_map(|quantity| pod_count(&quantity.0))
        .sum();
    Ok((nodes.items.len(), pods))
}

/// A pod count quantity as the API server writes it: "300", "1k", "2M".
fn pod_count(quantity: &str) -> Option<u64> {
    let (digits, multiplier) = match quantity.strip_suffix('k') {
        Some(digits) => (digits, 1_000),
        None => match quantity.strip_suffix('M') {
            Some(digits) => (digits, 1_000_000),
            None => (quantity, 1),
        },
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// Bootstrap replicas the default policy calls for at `workers` (no stabilization).
fn bootstraps_for(policy: &TierPolicy, workers: u32) -> u32 {
    policy.target(workers).1
}

/// The cluster's spec for the latency and sweep phases: no scale-down window, so that every
/// change reaches the StatefulSet at once (the window is timed by the policy's unit tests).
fn immediate_spec(workers: u32) -> serde_json::Value {
    json!({"workers": {"replicas": workers}, "bootstrap": {"scaleDownStabilizationSeconds": 0}})
}

/// The cluster whose scale changes are timed, and the watch of its bootstrap StatefulSet.
struct TimedCluster {
    dht: Dht,
    /// (when the watch delivered it, spec.replicas) of every StatefulSet event.
    events: mpsc::UnboundedReceiver<(Instant, i32)>,
    _watch: AbortOnDrop,
    workers: u32,
    bootstraps: u32,
    /// Changes made so far: the next one is the cycle's entry after them.
    steps: usize,
}

impl TimedCluster {
    /// Creates DhtCluster `scale` at the cycle's last count and starts watching its
    /// StatefulSet.
    async fn create(client: &Client, ns: &str, workers: u32) -> Result<TimedCluster> {
        let dht = Dht::create(client, ns, "scale", immediate_spec(workers)).await?;
        let (sender, events) = mpsc::unbounded_channel();
        let watch = watcher(
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={}", dht.bootstrap_name())),
        )
        .default_backoff()
        .applied_objects();
        // Stamped as the watch delivers it, in its own task, so the timing does not wait for
        // the loop that scales.
        let task = tokio::spawn(async move {
            let mut watch = std::pin::pin!(watch);
            while let Some(event) = watch.next().await {
                let Ok(statefulset) = event else { continue };
                let replicas = statefulset.spec.and_then(|spec| spec.replicas).unwrap_or(0);
                if sender.send((Instant::now(), replicas)).is_err() {
                    return;
                }
            }
        });
        let bootstraps = wait_reconciled(&dht, workers).await?;
        Ok(TimedCluster { dht, events, _watch: AbortOnDrop(task), workers, bootstraps, steps: 0 })
    }

    /// Times `changes` scale changes through `cycle`. `settled`: each one waits until the
    /// cluster is Ready with all its pods (the operator idle, as when a person or an HPA scales);
    /// else each one follows the previous one as soon as that is reconciled, while pods are
    /// still being created or deleted (the operator busy with its children's status changes).
    async fn time_changes(
        &mut self,
        cycle: &[u32],
        changes: usize,
        settled: bool,
        policy: &TierPolicy,
    ) -> Result<ScaleLatency> {
        let mut timed = Vec::with_capacity(changes);
        for _ in 0..changes {
            if settled {
                wait_ready(&self.dht, self.workers).await?;
            }
            let next = cycle[self.steps % cycle.len()];
            self.steps += 1;
            let expected = bootstraps_for(policy, next);
            ensure!(
                expected != self.bootstraps,
                "scale step {} → {next} workers does not move the tier ({} bootstrap replicas)",
                self.workers,
                self.bootstraps
            );
            while self.events.try_recv().is_ok() {}
            let sent = Instant::now();
            scale(&self.dht, next).await?;
            let request = sent.elapsed();
            let events = &mut self.events;
            let seen = tokio::time::timeout(CHANGE_TIMEOUT, async {
                while let Some((at, replicas)) = events.recv().await {
                    if u32::try_from(replicas).ok() == Some(expected) {
                        return Some(at);
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
            .with_context(|| {
                format!(
                    "the StatefulSet did not show {expected} replicas within {CHANGE_TIMEOUT:?} \
                     of scaling {} → {next} workers",
                    self.workers
                )
            })?;
            timed.push(ScaleChange {
                from_workers: self.workers,
                to_workers: next,
                from_bootstraps: self.bootstraps,
                to_bootstraps: expected,
                latency_ms: millis(seen.saturating_duration_since(sent)),
                request_ms: millis(request),
            });
            self.workers = next;
            self.bootstraps = wait_reconciled(&self.dht, next).await?;
            tokio::time::sleep(CHANGE_PAUSE).await;
        }
        let summary = ScaleLatency::of(timed);
        eprintln!(
            "operator-bench: {} scale changes ({}): p50 {:.1} ms, p99 {:.1} ms",
            summary.changes.len(),
            if settled { "settled" } else { "back to back" },
            summary.p50_ms,
            summary.p99_ms
        );
        Ok(summary)
    }
}

impl ScaleLatency {
    fn of(changes: Vec<ScaleChange>) -> ScaleLatency {
        let latencies: Vec<f64> = changes.iter().map(|c| c.latency_ms).collect();
        let requests: Vec<f64> = changes.iter().map(|c| c.request_ms).collect();
        ScaleLatency {
            p50_ms: percentile(&latencies, 50.0),
            p99_ms: percentile(&latencies, 99.0),
            mean_ms: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
            max_ms: latencies.iter().copied().fold(0.0, f64::max),
            request_p50_ms: percentile(&requests, 50.0),
            changes,
        }
    }
}

/// Waits until the cluster is Ready at `workers` workers: every bootstrap and worker pod Ready.
async fn wait_ready(dht: &Dht, workers: u32) -> Result<()> {
    let what = format!("dhtc/{} Ready at {workers} workers", dht.name);
    until(&what, CHANGE_TIMEOUT, || async {
        let cluster = dht.api.get(&dht.name).await?;
        Ok(match cluster.status.as_ref() {
            Some(status) if reconciled(&cluster, status, workers) && is_ready(status) => {
                Check::Done(())
            }
            other => Check::NotYet(format!(
                "{:?} of {workers} workers Ready",
                other.map(|s| s.workers.ready)
            )),
        })
    })
    .await
}

/// Aborts a background task when dropped (also on an early return with `?`).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `kubectl scale dhtc/NAME --replicas=N` sends: a PATCH of the scale subresource.
async fn scale(dht: &Dht, workers: u32) -> Result<()> {
    dht.api
        .patch_scale(
            &dht.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": workers}})),
        )
        .await
        .with_context(|| format!("scaling dhtc/{} to {workers}", dht.name))?;
    Ok(())
}

/// Waits until the operator has written the status of the cluster's current generation for
/// `workers` workers; returns the StatefulSet's replicas then (applied before the status).
async fn wait_reconciled(dht: &Dht, workers: u32) -> Result<u32> {
    let what = format!("dhtc/{} reconciled at {workers} workers", dht.name);
    until(&what, CHANGE_TIMEOUT, || async {
        let cluster = dht.api.get(&dht.name).await?;
        Ok(match cluster.status.as_ref() {
            Some(status) if reconciled(&cluster, status, workers) => Check::Done(()),
            other => Check::NotYet(format!(
                "generation {:?}, status observedGeneration {:?}, workers.desired {:?}",
                cluster.metadata.generation,
                other.and_then(|s| s.observed_generation),
                other.map(|s| s.workers.desired)
            )),
        })
    })
    .await?;
    let statefulsets = Api::<StatefulSet>::namespaced(dht.client.clone(), &dht.namespace);
    let statefulset = statefulsets.get(&dht.bootstrap_name()).await?;
    let replicas = statefulset.spec.and_then(|spec| spec.replicas).unwrap_or(0);
    u32::try_from(replicas).with_context(|| format!("StatefulSet replicas {replicas}"))
}

fn reconciled(cluster: &DhtCluster, status: &DhtClusterStatus, workers: u32) -> bool {
    status.observed_generation.is_some()
        && status.observed_generation == cluster.metadata.generation
        && u32::try_from(status.workers.desired).ok() == Some(workers)
}

/// The worker counts of a sweep: 0 to `max` by `step` and every tier boundary on the way,
/// then back down.
pub fn sweep_counts(max: u32, step: u32, policy: &TierPolicy) -> Vec<(Direction, u32)> {
    let mut up: BTreeSet<u32> = (0..=max).step_by(step.max(1) as usize).collect();
    up.insert(max);
    for tier in Tier::ALL {
        if let Some(edge) = policy.table.row(tier).max_workers {
            up.extend([edge, edge + 1].into_iter().filter(|count| *count <= max));
        }
    }
    // Where the ratio crosses its limit in the largest tier.
    let largest = policy.table.largest_bootstrap_nodes() * policy.max_workers_per_bootstrap;
    up.extend([largest, largest + 1].into_iter().filter(|count| *count <= max));
    let down: Vec<u32> = up.iter().rev().skip(1).copied().collect();
    up.into_iter()
        .map(|count| (Direction::Up, count))
        .chain(down.into_iter().map(|count| (Direction::Down, count)))
        .collect()
}

async fn sweep(dht: &Dht, sizes: &Sizes, policy: &TierPolicy) -> Result<Vec<SweepPoint>> {
    let mut points = Vec::new();
    for (direction, workers) in sweep_counts(sizes.sweep_max_workers, sizes.sweep_step, policy) {
        scale(dht, workers).await?;
        let bootstrap_replicas = wait_reconciled(dht, workers).await?;
        points.push(SweepPoint {
            direction,
            workers,
            bootstrap_replicas,
            expected_bootstrap_replicas: bootstraps_for(policy, workers),
        });
    }
    Ok(points)
}

/// Deletes the DhtCluster and waits until its pods are gone (the garbage collector deletes its
/// children), so that the next phase starts with the nodes empty.
async fn delete_and_wait(dht: &Dht, timeout: Duration) -> Result<()> {
    dht.api.delete(&dht.name, &DeleteParams::background()).await?;
    let pods = Api::<Pod>::namespaced(dht.client.clone(), &dht.namespace);
    let selector = format!("app.kubernetes.io/instance={}", dht.name);
    until(&format!("the pods of dhtc/{} to be deleted", dht.name), timeout, || async {
        let left = pods.list_metadata(&ListParams::default().labels(&selector)).await?;
        Ok(if left.items.is_empty() {
            Check::Done(())
        } else {
            Check::NotYet(format!("{} pods left", left.items.len()))
        })
    })
    .await
}

async fn xlarge(
    client: &Client,
    ns: &str,
    workers: u32,
    policy: &TierPolicy,
    timeout: Duration,
) -> Result<(Dht, XlargeRun)> {
    let bootstraps = bootstraps_for(policy, workers);
    let started = Instant::now();
    let dht = Dht::create(client, ns, "xlarge", json!({"workers": {"replicas": workers}})).await?;
    let (mut reconciled_at, mut bootstrap_ready_at, mut applied_at) = (None, None, None);
    let deadline = started + timeout;
    let ready_at = loop {
        let cluster = dht.api.get(&dht.name).await?;
        if let Some(status) = cluster.status.as_ref() {
            let now = started.elapsed();
            reconciled_at.get_or_insert(now);
            if u32::try_from(status.bootstrap.ready).ok() >= Some(bootstraps) {
                bootstrap_ready_at.get_or_insert(now);
            }
            if u32::try_from(status.workers.applied).ok() == Some(workers) {
                applied_at.get_or_insert(now);
            }
            if is_ready(status) && u32::try_from(status.workers.ready).ok() == Some(workers) {
                break now;
            }
            if Instant::now() > deadline {
                bail!(
                    "dhtc/xlarge not Ready after {timeout:?}: {} of {bootstraps} bootstrap and {} of {workers} worker pods Ready",
                    status.bootstrap.ready,
                    status.workers.ready
                );
            }
        } else if Instant::now() > deadline {
            bail!("dhtc/xlarge has no status after {timeout:?}");
        }
        tokio::time::sleep(READY_POLL).await;
    };
    let seconds = |at: Option<Duration>| at.unwrap_or(ready_at).as_secs_f64();
    let run = XlargeRun {
        workers,
        bootstraps,
        reconciled_s: seconds(reconciled_at),
        bootstrap_ready_s: seconds(bootstrap_ready_at),
        workers_applied_s: seconds(applied_at),
        ready_s: ready_at.as_secs_f64(),
    };
    eprintln!("operator-bench: {workers} workers Ready after {:.1} s", run.ready_s);
    Ok((dht, run))
}

fn is_ready(status: &DhtClusterStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The latest state of a set of DhtClusters, from a watch, so that each wait ends at the event
/// that completes it (and the benchmark adds no polling load to the API server).
struct ClusterWatch {
    events: mpsc::UnboundedReceiver<(Instant, DhtCluster)>,
    latest: BTreeMap<String, DhtCluster>,
    _task: AbortOnDrop,
}

impl ClusterWatch {
    fn start(api: Api<DhtCluster>) -> ClusterWatch {
        let (sender, events) = mpsc::unbounded_channel();
        let watch = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
        let task = tokio::spawn(async move {
            let mut watch = std::pin::pin!(watch);
            while let Some(event) = watch.next().await {
                let Ok(cluster) = event else { continue };
                if sender.send((Instant::now(), cluster)).is_err() {
                    return;
                }
            }
        });
        ClusterWatch { events, latest: BTreeMap::new(), _task: AbortOnDrop(task) }
    }

    /// Waits until every cluster in `names` satisfies `done`; returns when the watch delivered
    /// the event that completed it, or `None` (and says how far it got) after `timeout`.
    async fn wait_all(
        &mut self,
        names: &BTreeSet<String>,
        what: &str,
        timeout: Duration,
        done: impl Fn(&DhtCluster) -> bool,
    ) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        let count = |latest: &BTreeMap<String, DhtCluster>| {
            names.iter().filter(|name| latest.get(*name).is_some_and(&done)).count()
        };
        if count(&self.latest) == names.len() {
            return Some(Instant::now());
        }
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv()).await;
            let Ok(Some((at, cluster))) = event else {
                eprintln!(
                    "operator-bench: after {timeout:?}, {} of {} clusters {what}; {} pods Ready",
                    count(&self.latest),
                    names.len(),
                    self.pods_ready(names)
                );
                return None;
            };
            self.latest.insert(cluster.name_any(), cluster);
            if count(&self.latest) == names.len() {
                return Some(at);
            }
        }
    }

    /// Ready worker and bootstrap pods of `names`, as their statuses last said.
    fn pods_ready(&self, names: &BTreeSet<String>) -> u64 {
        names
            .iter()
            .filter_map(|name| self.latest.get(name)?.status.as_ref())
            .map(|status| i64::from(status.workers.ready) + i64::from(status.bootstrap.ready))
            .map(|pods| u64::try_from(pods).unwrap_or(0))
            .sum()
    }
}

/// Whether the operator has written the status of this generation for `workers` workers.
fn reconciled_at(cluster: &DhtCluster, workers: u32) -> bool {
    cluster.status.as_ref().is_some_and(|status| reconciled(cluster, status, workers))
}

async fn many_clusters(
    client: &Client,
    ns: &str,
    sizes: &Sizes,
    policy: &TierPolicy,
    meter: &mut Meter,
) -> Result<ClustersRun> {
    let workers = sizes.workers_per_cluster;
    let names: BTreeSet<String> = (0..sizes.clusters).map(|i| format!("c{i:03}")).collect();
    let api = Api::<DhtCluster>::namespaced(client.clone(), ns);
    let mut watch = ClusterWatch::start(api.clone());
    let started = Instant::now();
    let spec = json!({"workers": {"replicas": workers}});
    futures::stream::iter(names.iter())
        .map(|name| Dht::create(client, ns, name, spec.clone()))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let create_s = started.elapsed().as_secs_f64();
    let timeout = sizes.ready_timeout;
    let reconciled = watch
        .wait_all(&names, "reconciled", timeout, |cluster| reconciled_at(cluster, workers))
        .await
        .context("the operator did not reconcile every new cluster")?;
    let reconciled_s = seconds_since(started, reconciled);
    eprintln!(
        "operator-bench: {} clusters reconciled {reconciled_s:.2} s after the first create",
        names.len()
    );
    meter.end_phase("many clusters: create until all reconciled")?;
    let ready = |cluster: &DhtCluster| {
        reconciled_at(cluster, workers) && cluster.status.as_ref().is_some_and(is_ready)
    };
    // kwok turns pods Ready at a rate the machine allows; when it cannot make all of them Ready
    // in time, the figures below are for the pods that are.
    let ready_s =
        watch.wait_all(&names, "Ready", timeout, ready).await.map(|at| seconds_since(started, at));
    let pods_ready = watch.pods_ready(&names);
    eprintln!(
        "operator-bench: {} clusters, {pods_ready} pods Ready, all Ready after {ready_s:?} s",
        names.len()
    );
    meter.end_phase("many clusters: until all Ready")?;
    tokio::time::sleep(sizes.settle).await;
    let settled_rss_bytes = meter.now()?.rss_bytes;
    meter.end_phase("many clusters: settled")?;

    // One worker fewer keeps each in its tier: the change is the operator's alone.
    let rescaled_workers = workers.saturating_sub(1);
    ensure!(
        bootstraps_for(policy, rescaled_workers) == bootstraps_for(policy, workers),
        "{workers} → {rescaled_workers} workers changes the tier"
    );
    let dhts: Vec<Dht> = names
        .iter()
        .map(|name| Dht {
            client: client.clone(),
            namespace: ns.to_string(),
            name: name.clone(),
            api: api.clone(),
        })
        .collect();
    let rescale_started = Instant::now();
    futures::stream::iter(dhts.iter())
        .map(|dht| scale(dht, rescaled_workers))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let rescaled = watch
        .wait_all(&names, "reconciled after the rescale", timeout, |cluster| {
            reconciled_at(cluster, rescaled_workers)
        })
        .await
        .context("the operator did not reconcile every rescaled cluster")?;
    let rescaled_s = seconds_since(rescale_started, rescaled);
    meter.end_phase("many clusters: all rescaled until reconciled")?;
    let count = names.len() as f64;
    Ok(ClustersRun {
        clusters: names.len(),
        workers_per_cluster: workers,
        create_s,
        reconciled_s,
        reconciled_per_second: count / reconciled_s.max(f64::EPSILON),
        ready_s,
        pods_ready,
        pods_wanted: count as u64 * u64::from(workers + bootstraps_for(policy, workers)),
        settled_rss_bytes,
        rescaled_s,
        rescaled_per_second: count / rescaled_s.max(f64::EPSILON),
    })
}

/// The sum of every sample of metric `name` (all label sets) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        // Not `sum()`: that starts at -0.0, which prints as "-0" for a metric never incremented.
        .fold(0.0, |total, value| total + value)
}

/// Nearest-rank percentile of `values` (0 for none).
pub fn percentile(values: &[f64], percent: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn seconds_since(start: Instant, end: Instant) -> f64 {
    end.saturating_duration_since(start).as_secs_f64()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_counts_read_the_api_servers_suffixes() {
        assert_eq!(pod_count("300"), Some(300));
        assert_eq!(pod_count("1k"), Some(1000));
        assert_eq!(pod_count("2M"), Some(2_000_000));
        assert_eq!(pod_count("1Ki"), None);
        assert_eq!(pod_count("k"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn sweep_visits_every_tier_edge_up_and_back() {
        let counts = sweep_counts(400, 100, &TierPolicy::default());
        let up: Vec<u32> =
            counts.iter().filter(|(d, _)| *d == Direction::Up).map(|(_, c)| *c).collect();
        assert_eq!(up, [0, 15, 16, 50, 51, 100, 200, 201, 300, 301, 400]);
        let down: Vec<u32> =
            counts.iter().filter(|(d, _)| *d == Direction::Down).map(|(_, c)| *c).collect();
        assert_eq!(down, [301, 300, 201, 200, 100, 51, 50, 16, 15, 0]);
        let tiny = sweep_counts(60, 20, &TierPolicy::default());
        assert_eq!(tiny.len(), 8 + 7, "{tiny:?}");
    }

    #[test]
    fn every_step_of_the_full_cycle_moves_the_tier() {
        let policy = TierPolicy::default();
        for sizes in [Sizes::full(), Sizes::tiny()] {
            let cycle = &sizes.scale_cycle;
            for (i, workers) in cycle.iter().enumerate() {
                let previous = cycle[(i + cycle.len() - 1) % cycle.len()];
                assert_ne!(
                    bootstraps_for(&policy, previous),
                    bootstraps_for(&policy, *workers),
                    "{previous} → {workers}"
                );
            }
            assert!(sizes.scale_changes >= cycle.len());
        }
        assert!(Sizes::full().scale_changes >= 50);
    }

    #[test]
    fn metric_sums_cover_every_label_set_and_skip_comments() {
        let text = "# HELP kadscale_operator_reconciles Reconciles by result\n\
                    kadscale_operator_reconciles_total{result=\"ok\"} 40\n\
                    kadscale_operator_reconciles_total{result=\"error\"} 2\n\
                    kadscale_operator_reconciles_total_other 99\n";
        assert_eq!(metric_sum(text, "kadscale_operator_reconciles_total"), 42.0);
        let missing = metric_sum(text, "missing");
        assert!(missing == 0.0 && missing.is_sign_positive(), "0, not -0: {missing}");
    }
}
