//! Prometheus metrics of one node, registered under the `dht` prefix.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::lock;
use crate::lookup::{LookupKind, LookupOutcome};

/// How an outgoing call ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Timeout,
    Error,
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than 22 bytes.
    TooShort,
    /// Type byte neither request nor response.
    UnknownType,
    /// Not valid msgpack, or not the shape the procedure takes.
    Malformed,
    /// A response nobody waits for, or from another address than the call went to.
    Unmatched,
    /// Dropped on purpose by a fault test's `datagram_loss`.
    InjectedLoss,
    /// A request beyond its source's budget (`max_requests_per_source`, answer bytes).
    RateLimited,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Timeout, Outcome::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

impl DropReason {
    const ALL: [DropReason; 6] = [
        DropReason::TooShort,
        DropReason::UnknownType,
        DropReason::Malformed,
        DropReason::Unmatched,
        DropReason::InjectedLoss,
        DropReason::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::UnknownType => "unknown_type",
            DropReason::Malformed => "malformed",
            DropReason::Unmatched => "unmatched",
            DropReason::InjectedLoss => "injected_loss",
            DropReason::RateLimited => "rate_limited",
        }
    }
}

/// Every metric a node updates, in one allocation that its clones share: prometheus-client's
/// `Family` keeps each metric's series in a hash map behind an `Arc`'d lock and each counter in
/// an `Arc` of its own: 2.6 KiB of the 21 KiB of heap a worker node keeps.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Arc<NodeMetrics>);

#[derive(Debug, Default)]
struct NodeMetrics {
    /// The protocol's procedures, in [`PROCEDURES`] order: counted without a lock or a lookup.
    protocol: [ProcedureMetrics; PROCEDURES.len()],
    /// Procedures outside the protocol (kadscale's extensions), in the order first counted.
    /// Only calls made and requests served count, so the names are the node's own.
    extensions: Mutex<Vec<(String, ProcedureMetrics)>>,
    /// By [`DropReason`].
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// By [`LookupKind`] and [`LOOKUP_RESULTS`].
    lookups: [[AtomicU64; LOOKUP_RESULTS.len()]; 2],
    routing_table_contacts: AtomicI64,
    stored_values: AtomicI64,
}

/// The series of one procedure.
#[derive(Debug, Default)]
struct ProcedureMetrics {
    /// Outgoing calls, by [`Outcome`].
    calls: [AtomicU64; Outcome::ALL.len()],
    /// Latency of the answered calls, made on the first answer.
    latency: OnceLock<BucketHistogram>,
    /// Requests served (answered, or notices taken).
    served: AtomicU64,
}

/// `rpc_call_duration_seconds`: 100 µs to ~6.5 s, loopback answers to the 5 s timeout.
static RPC_LATENCY_BOUNDS: LazyLock<Box<[f64]>> =
    LazyLock::new(|| upper_bounds(exponential_buckets(0.0001, 2.0, 17)));

/// The procedures of the Python protocol.
pub(crate) const PROCEDURES: [&str; 5] = ["stun", "ping", "store", "find_node", "find_value"];

/// How a lookup ended, as the `outcome` label says it.
const LOOKUP_RESULTS: [&str; 3] = ["nodes", "empty", "value"];

/// A procedure as the metrics label it: one of the protocol's, by its place in
/// [`PROCEDURES`] (counting it takes no lock), or another name, owned (kadscale's extensions,
/// and names a peer made up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Procedure {
    Protocol(usize),
    Other(String),
}

impl Procedure {
    pub fn of(method: &str) -> Procedure {
        match PROCEDURES.iter().position(|known| *known == method) {
            Some(index) => Procedure::Protocol(index),
            None => Procedure::Other(method.to_owned()),
        }
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under `dht_`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        // One collector rather than a registration per metric: a registration keeps its own
        // copies of the name and help text, about 5 KiB a node with the bootstrap manager's.
        // Its names carry the `dht_` prefix, so that it needs no sub-registry (0.2 KiB each).
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Metrics registered nowhere, for nodes whose numbers nobody reads.
    pub fn unregistered() -> Metrics {
        Metrics::default()
    }

    pub fn dropped(&self, reason: DropReason) {
        count(&self.0.dropped[reason as usize]);
    }

    /// Datagrams dropped for `reason` so far.
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.0.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Datagrams dropped for any reason but [`DropReason::Unmatched`]: the malformed count.
    pub fn malformed_total(&self) -> u64 {
        [DropReason::TooShort, DropReason::UnknownType, DropReason::Malformed]
            .into_iter()
            .map(|reason| self.dropped_total(reason))
            .sum()
    }

    /// Runs `update` on the series of `procedure`, made on its first use.
    fn with_procedure<T>(
        &self,
        procedure: &Procedure,
        update: impl FnOnce(&ProcedureMetrics) -> T,
    ) -> T {
        match procedure {
            Procedure::Protocol(index) => update(&self.0.protocol[*index]),
            Procedure::Other(method) => {
                let mut extensions = lock(&self.0.extensions);
                let index = match extensions.iter().position(|(known, _)| known == method) {
                    Some(index) => index,
                    None => {
                        extensions.push((method.clone(), ProcedureMetrics::default()));
                        extensions.len() - 1
                    }
                };
                update(&extensions[index].1)
            }
        }
    }

    pub fn call_finished(&self, method: &str, outcome: Outcome, seconds: Option<f64>) {
        self.with_procedure(&Procedure::of(method), |procedure| {
            if let Some(seconds) = seconds {
                let latency = || BucketHistogram::new(&RPC_LATENCY_BOUNDS);
                procedure.latency.get_or_init(latency).observe(seconds);
            }
            count(&procedure.calls[outcome as usize]);
        });
    }

    /// Counts a request served for `procedure` (answered, or a notice taken).
    pub fn served(&self, procedure: Procedure) {
        self.with_procedure(&procedure, |procedure| count(&procedure.served));
    }

    /// Requests served for `method` so far.
    pub fn served_total(&self, method: &str) -> u64 {
        let served = |procedure: &ProcedureMetrics| procedure.served.load(Ordering::Relaxed);
        match Procedure::of(method) {
            Procedure::Protocol(index) => served(&self.0.protocol[index]),
            Procedure::Other(method) => {
                let extensions = lock(&self.0.extensions);
                extensions.iter().find(|(known, _)| *known == method).map_or(0, |(_, p)| served(p))
            }
        }
    }

    pub fn lookup_finished(&self, kind: LookupKind, outcome: &LookupOutcome) {
        let result = match outcome {
            LookupOutcome::Nodes(nodes) if !nodes.is_empty() => 0,
            LookupOutcome::Nodes(_) => 1,
            LookupOutcome::Value { .. } => 2,
        };
        count(&self.0.lookups[kind as usize][result]);
    }

    /// Lookups of `kind` finished so far, whatever their outcome.
    pub fn lookups_total(&self, kind: LookupKind) -> u64 {
        self.0.lookups[kind as usize].iter().map(|lookups| lookups.load(Ordering::Relaxed)).sum()
    }

    pub fn set_routing_table_contacts(&self, contacts: usize) {
        self.0.routing_table_contacts.store(gauge_value(contacts), Ordering::Relaxed);
    }

    pub fn routing_table_contacts(&self) -> usize {
        usize::try_from(self.0.routing_table_contacts.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub fn set_stored_values(&self, values: usize) {
        self.0.stored_values.store(gauge_value(values), Ordering::Relaxed);
    }
}

/// A count as a gauge holds it.
fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let metrics = &*self.0;
        let extensions = lock(&metrics.extensions);
        let procedures: Vec<(&str, &ProcedureMetrics)> = PROCEDURES
            .iter()
            .copied()
            .zip(&metrics.protocol)
            .chain(extensions.iter().map(|(method, procedure)| (method.as_str(), procedure)))
            .collect();
        let calls = procedures.iter().flat_map(|&(method, procedure)| {
            let labels =
                Outcome::ALL.map(|outcome| [("method", method), ("outcome", outcome.as_str())]);
            counted(labels, &procedure.calls)
        });
        encode_series(
            &mut encoder,
            "dht_rpc_calls",
            "Outgoing RPC calls by procedure and outcome.",
            None,
            calls,
        )?;
        let latency = procedures.iter().filter_map(|&(method, procedure)| {
            procedure
                .latency
                .get()
                .map(|latency| ([("method", method)], Sample::Histogram(latency)))
        });
        encode_series(
            &mut encoder,
            "dht_rpc_call_duration_seconds",
            "Time until an outgoing RPC call was answered, by procedure.",
            None,
            latency,
        )?;
        // The protocol's procedures always, the others once served.
        let served = procedures.iter().enumerate().filter_map(|(index, &(method, procedure))| {
            let served = Sample::counted(&procedure.served);
            (index < PROCEDURES.len() || !served.is_zero())
                .then_some(([("method", method)], served))
        });
        encode_series(
            &mut encoder,
            "dht_requests_served",
            "Incoming RPC requests served (answered, or notices taken), by procedure.",
            None,
            served,
        )?;
        encode_series(
            &mut encoder,
            "dht_routing_table_contacts",
            "Contacts in the routing table's buckets.",
            None,
            [(NO_LABELS, Sample::Gauge(metrics.routing_table_contacts.load(Ordering::Relaxed)))],
        )?;
        encode_series(
            &mut encoder,
            "dht_stored_values",
            "Values held in local storage.",
            None,
            [(NO_LABELS, Sample::Gauge(metrics.stored_values.load(Ordering::Relaxed)))],
        )?;
        encode_series(
            &mut encoder,
            "dht_datagrams_dropped",
            "Datagrams dropped unprocessed, by reason (malformed, unmatched, ...).",
            None,
            counted(DropReason::ALL.map(|reason| [("reason", reason.as_str())]), &metrics.dropped),
        )?;
        let lookups = [LookupKind::FindNode, LookupKind::FindValue].into_iter().flat_map(|kind| {
            let labels =
                LOOKUP_RESULTS.map(|outcome| [("kind", kind.method()), ("outcome", outcome)]);
            counted(labels, &metrics.lookups[kind as usize])
        });
        encode_series(
            &mut encoder,
            "dht_lookups",
            "Iterative lookups by kind and outcome.",
            None,
            lookups,
        )
    }
}

/// The labels of a metric without any.
pub(crate) const NO_LABELS: [(&str, &str); 0] = [];

/// A series' value as a collector encodes it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sample<'a> {
    Counter(u64),
    Gauge(i64),
    FloatGauge(f64),
    Histogram(&'a BucketHistogram),
}

impl Sample<'_> {
    pub(crate) fn counted(counter: &AtomicU64) -> Sample<'static> {
        Sample::Counter(counter.load(Ordering::Relaxed))
    }

    pub(crate) fn is_zero(&self) -> bool {
        matches!(self, Sample::Counter(0))
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Sample::Counter(_) => MetricType::Counter,
            Sample::Gauge(_) | Sample::FloatGauge(_) => MetricType::Gauge,
            Sample::Histogram(_) => MetricType::Histogram,
        }
    }

    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        match self {
            Sample::Counter(count) => encoder.encode_counter::<NoLabelSet, _, u64>(count, None),
            Sample::Gauge(level) => encoder.encode_gauge(level),
            Sample::FloatGauge(level) => encoder.encode_gauge(level),
            Sample::Histogram(histogram) => histogram.encode(encoder),
        }
    }
}

/// The series of `counters` that have counted, each with its labels from `labels` (in the same
/// order): a counter that never counted has no series, as a family's series appear on first use.
pub(crate) fn counted<'c, L: 'c>(
    labels: impl IntoIterator<Item = L> + 'c,
    counters: &'c [AtomicU64],
) -> impl Iterator<Item = (L, Sample<'static>)> + 'c {
    labels
        .into_iter()
        .zip(counters)
        .map(|(labels, counter)| (labels, Sample::counted(counter)))
        .filter(|(_, sample)| !sample.is_zero())
}

/// Encodes the metric `name` with a series per (labels, value) of `series`, or nothing when
/// there is none, as a `Registry` leaves out a family without series. Each help text ends
/// with a period, which a `Registry` adds to the help texts registered in it.
pub(crate) fn encode_series<'v, L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, Sample<'v>)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram's upper bounds as `prometheus_client::metrics::histogram::Histogram::new`
/// takes them: the finite ones of `bounds`, then +Inf.
pub(crate) fn upper_bounds(bounds: impl IntoIterator<Item = f64>) -> Box<[f64]> {
    bounds.into_iter().filter(|bound| bound.is_finite()).chain([f64::INFINITY]).collect()
}

/// A histogram whose upper bounds, the same for every histogram of a metric, are shared: what
/// `prometheus_client`'s `Histogram` encodes in 200 bytes rather than 720 (that one copies the
/// bounds into every histogram, 18 of them into a vector grown to room for 32).
#[derive(Debug)]
pub struct BucketHistogram {
    /// Ascending; the last is +Inf.
    upper_bounds: &'static [f64],
    counts: Mutex<HistogramCounts>,
}

#[derive(Debug)]
struct HistogramCounts {
    sum: f64,
    count: u64,
    /// Observations per bucket (not cumulative), in the order of the upper bounds.
    buckets: Box<[u64]>,
}

impl BucketHistogram {
    /// `upper_bounds` as [`upper_bounds`] makes them.
    pub fn new(upper_bounds: &'static [f64]) -> Self {
        let counts =
            HistogramCounts { sum: 0.0, count: 0, buckets: vec![0; upper_bounds.len()].into() };
        BucketHistogram { upper_bounds, counts: Mutex::new(counts) }
    }

    pub fn observe(&self, value: f64) {
        let mut counts = lock(&self.counts);
        counts.sum += value;
        counts.count += 1;
        // NaN lands in the last bucket, as in `prometheus_client`'s `Histogram`.
        let bucket = self.upper_bounds.iter().position(|upper| *upper >= value);
        if let Some(count) = counts.buckets.get_mut(bucket.unwrap_or(self.upper_bounds.len() - 1)) {
            *count += 1;
        }
    }
}

impl TypedMetric for BucketHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for BucketHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let counts = lock(&self.counts);
        let buckets: Vec<(f64, u64)> =
            self.upper_bounds.iter().copied().zip(counts.buckets.iter().copied()).collect();
        encoder.encode_histogram::<NoLabelSet>(counts.sum, counts.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;

    #[test]
    fn a_bucket_histogram_encodes_as_the_library_histogram_does() {
        let bounds = exponential_buckets(0.0001, 2.0, 17);
        let histogram = BucketHistogram::new(&RPC_LATENCY_BOUNDS);
        let library = Histogram::new(bounds);
        for value in [0.0, 0.00005, 0.0001, 0.0003, 0.02, 1.5, 6.6, 1e9, f64::NAN, -1.0] {
            histogram.observe(value);
            library.observe(value);
        }
        let (mut ours, mut theirs) = (Registry::default(), Registry::default());
        ours.register("latency", "Latency.", histogram);
        theirs.register("latency", "Latency.", library);
        let (ours, theirs) = (text(&ours), text(&theirs));
        assert!(ours.contains("latency_bucket{le=\"+Inf\"} 10"), "{ours}");
        assert_eq!(ours, theirs);
    }

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn exports_every_metric_with_its_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let unexported = text(&registry);
        metrics.dropped(DropReason::Malformed);
        metrics.dropped(DropReason::TooShort);
        metrics.dropped(DropReason::Unmatched);
        metrics.call_finished("ping", Outcome::Ok, Some(0.002));
        // A clone counts into the same series.
        metrics.clone().call_finished("ping", Outcome::Ok, Some(0.004));
        metrics.call_finished("ping", Outcome::Timeout, None);
        metrics.call_finished("kadscale_load", Outcome::Ok, Some(0.001));
        metrics.served(Procedure::of("find_node"));
        metrics.served(Procedure::of("kadscale_load"));
        metrics.served(Procedure::of("kadscale_load"));
        let found = LookupOutcome::Value { value: crate::codec::Value::Int(1), store_at: None };
        metrics.lookup_finished(LookupKind::FindValue, &found);
        metrics.lookup_finished(LookupKind::FindNode, &LookupOutcome::Nodes(Vec::new()));
        metrics.set_routing_table_contacts(12);
        assert_eq!(metrics.malformed_total(), 2);
        assert_eq!(metrics.dropped_total(DropReason::Unmatched), 1);
        assert_eq!(metrics.served_total("kadscale_load"), 2);
        assert_eq!(metrics.served_total("find_node"), 1);
        assert_eq!(metrics.served_total("kadscale_joined"), 0);
        assert_eq!(metrics.lookups_total(LookupKind::FindNode), 1);
        assert_eq!(metrics.routing_table_contacts(), 12);
        let text = text(&registry);
        for expected in [
            "dht_datagrams_dropped_total{reason=\"malformed\"} 1",
            "dht_rpc_calls_total{method=\"ping\",outcome=\"timeout\"} 1",
            "dht_rpc_calls_total{method=\"ping\",outcome=\"ok\"} 2",
            "dht_rpc_call_duration_seconds_count{method=\"ping\"} 2",
            "dht_rpc_calls_total{method=\"kadscale_load\",outcome=\"ok\"} 1",
            "dht_rpc_call_duration_seconds_count{method=\"kadscale_load\"} 1",
            "dht_requests_served_total{method=\"find_node\"} 1",
            "dht_requests_served_total{method=\"kadscale_load\"} 2",
            "dht_requests_served_total{method=\"store\"} 0",
            "dht_lookups_total{kind=\"find_value\",outcome=\"value\"} 1",
            "dht_lookups_total{kind=\"find_node\",outcome=\"empty\"} 1",
            "# TYPE dht_routing_table_contacts gauge\ndht_routing_table_contacts 12\n",
            "dht_stored_values 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        // Series nothing counted into, and families without series, are left out.
        for absent in ["outcome=\"error\"", "reason=\"rate_limited\"", "outcome=\"nodes\""] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        for absent in ["dht_rpc_calls", "dht_datagrams_dropped", "dht_lookups", "duration"] {
            assert!(!unexported.contains(absent), "{absent} before any count in\n{unexported}");
        }
    }
}
