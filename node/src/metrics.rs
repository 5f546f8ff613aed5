//! Prometheus metrics of one node, registered under the `dht` prefix.

use std::borrow::Cow;
use std::fmt::{self, Write};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

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
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

impl DropReason {
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

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: Cow<'static, str>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: DropReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// Every metric a node updates; cheap to clone (handles to shared atomics).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Outgoing calls by procedure and outcome.
    pub rpc_calls: Family<CallLabels, Counter>,
    /// Latency of outgoing calls that were answered, by procedure.
    pub rpc_latency: Family<MethodLabels, BucketHistogram>,
    /// Incoming requests served (answered, or notices taken), by procedure.
    pub requests_served: Family<MethodLabels, Counter>,
    pub routing_table_contacts: Gauge,
    pub stored_values: Gauge,
    pub datagrams_dropped: Family<DropLabels, Counter>,
    pub lookups: Family<LookupLabels, Counter>,
    /// `requests_served` of the protocol's own procedures, looked up once: the receive path
    /// then counts without building a label and hashing it.
    served_by_procedure: [Counter; PROCEDURES.len()],
    /// `rpc_calls` and `rpc_call_duration_seconds` of the protocol's own procedures, each
    /// series looked up on its first use and kept (shared by the clones), for the same reason.
    calls_by_procedure: Arc<[ProcedureCalls; PROCEDURES.len()]>,
}

/// The call series of one procedure, in [`Outcome`] order, and its latency.
#[derive(Debug, Default)]
struct ProcedureCalls {
    by_outcome: [OnceLock<Counter>; 3],
    latency: OnceLock<BucketHistogram>,
}

/// `rpc_call_duration_seconds`: 100 µs to ~6.5 s, loopback answers to the 5 s timeout.
static RPC_LATENCY_BOUNDS: LazyLock<Box<[f64]>> =
    LazyLock::new(|| upper_bounds(exponential_buckets(0.0001, 2.0, 17)));

/// The procedures of the Python protocol.
pub(crate) const PROCEDURES: [&str; 5] = ["stun", "ping", "store", "find_node", "find_value"];

/// A procedure as the metrics label it: one of the protocol's, by its place in
/// [`PROCEDURES`] (its series are kept, so counting it hashes no label), or another name,
/// owned (kadscale's extensions, and names a peer made up).
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

impl Metrics {
    /// Creates the metrics and registers them in `registry` under `dht_`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let requests_served: Family<MethodLabels, Counter> = Family::default();
        let served_by_procedure = PROCEDURES.map(|method| {
            let labels = MethodLabels { method: Cow::Borrowed(method) };
            requests_served.get_or_create(&labels).clone()
        });
        let metrics = Metrics {
            rpc_calls: Family::default(),
            rpc_latency: Family::new_with_constructor(|| BucketHistogram::new(&RPC_LATENCY_BOUNDS)),
            requests_served,
            routing_table_contacts: Gauge::default(),
            stored_values: Gauge::default(),
            datagrams_dropped: Family::default(),
            lookups: Family::default(),
            served_by_procedure,
            calls_by_procedure: Arc::default(),
        };
        // One collector rather than a registration per metric: a registration keeps its own
        // copies of the name and help text, about 5 KiB a node with the bootstrap manager's.
        // Its names carry the `dht_` prefix, so that it needs no sub-registry (0.2 KiB each).
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Metrics registered nowhere, for nodes whose numbers nobody reads.
    pub fn unregistered() -> Metrics {
        Metrics::new(&mut Registry::default())
    }

    pub fn dropped(&self, reason: DropReason) {
        self.datagrams_dropped.get_or_create(&DropLabels { reason }).inc();
    }

    /// Datagrams dropped for any reason but [`DropReason::Unmatched`]: the malformed count.
    pub fn malformed_total(&self) -> u64 {
        [DropReason::TooShort, DropReason::UnknownType, DropReason::Malformed]
            .into_iter()
            .map(|reason| self.datagrams_dropped.get_or_create(&DropLabels { reason }).get())
            .sum()
    }

    pub fn call_finished(&self, method: &str, outcome: Outcome, seconds: Option<f64>) {
        let latency = |method| self.rpc_latency.get_or_create(&MethodLabels { method }).clone();
        let calls = |method| self.rpc_calls.get_or_create(&CallLabels { method, outcome }).clone();
        match Procedure::of(method) {
            Procedure::Protocol(index) => {
                let cached = &self.calls_by_procedure[index];
                let method = Cow::Borrowed(PROCEDURES[index]);
                if let Some(seconds) = seconds {
                    cached.latency.get_or_init(|| latency(method.clone())).observe(seconds);
                }
                cached.by_outcome[outcome as usize].get_or_init(|| calls(method)).inc();
            }
            // Not one of the protocol's procedures: its labels are owned, and not kept.
            Procedure::Other(method) => {
                let method: Cow<'static, str> = Cow::Owned(method);
                if let Some(seconds) = seconds {
                    latency(method.clone()).observe(seconds);
                }
                calls(method).inc();
            }
        }
    }

    /// Counts a request served for `procedure` (answered, or a notice taken).
    pub fn served(&self, procedure: Procedure) {
        match procedure {
            Procedure::Protocol(index) => self.served_by_procedure[index].inc(),
            Procedure::Other(method) => self
                .requests_served
                .get_or_create(&MethodLabels { method: Cow::Owned(method) })
                .inc(),
        };
    }

    pub fn lookup_finished(&self, kind: &'static str, outcome: &'static str) {
        self.lookups.get_or_create(&LookupLabels { kind, outcome }).inc();
    }
}

impl Collector for Metrics {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        encode_all(
            encoder,
            &[
                (
                    "dht_rpc_calls",
                    "Outgoing RPC calls by procedure and outcome.",
                    None,
                    &self.rpc_calls,
                ),
                (
                    "dht_rpc_call_duration_seconds",
                    "Time until an outgoing RPC call was answered, by procedure.",
                    None,
                    &self.rpc_latency,
                ),
                (
                    "dht_requests_served",
                    "Incoming RPC requests served (answered, or notices taken), by procedure.",
                    None,
                    &self.requests_served,
                ),
                (
                    "dht_routing_table_contacts",
                    "Contacts in the routing table's buckets.",
                    None,
                    &self.routing_table_contacts,
                ),
                ("dht_stored_values", "Values held in local storage.", None, &self.stored_values),
                (
                    "dht_datagrams_dropped",
                    "Datagrams dropped unprocessed, by reason (malformed, unmatched, ...).",
                    None,
                    &self.datagrams_dropped,
                ),
                ("dht_lookups", "Iterative lookups by kind and outcome.", None, &self.lookups),
            ],
        )
    }
}

/// A histogram's upper bounds as `prometheus_client::metrics::histogram::Histogram::new`
/// takes them: the finite ones of `bounds`, then +Inf.
pub(crate) fn upper_bounds(bounds: impl IntoIterator<Item = f64>) -> Box<[f64]> {
    bounds.into_iter().filter(|bound| bound.is_finite()).chain([f64::INFINITY]).collect()
}

/// A histogram whose upper bounds, the same for every histogram of a metric, are shared: what
/// `prometheus_client`'s `Histogram` encodes in 200 bytes rather than 720 (that one copies the
/// bounds into every histogram, 18 of them into a vector grown to room for 32). Clones share
/// the counts.
#[derive(Clone, Debug)]
pub struct BucketHistogram {
    /// Ascending; the last is +Inf.
    upper_bounds: &'static [f64],
    counts: Arc<Mutex<HistogramCounts>>,
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
        BucketHistogram { upper_bounds, counts: Arc::new(Mutex::new(counts)) }
    }

    pub fn observe(&self, value: f64) {
        let mut counts = self.lock();
        counts.sum += value;
        counts.count += 1;
        // NaN lands in the last bucket, as in `prometheus_client`'s `Histogram`.
        let bucket = self.upper_bounds.iter().position(|upper| *upper >= value);
        if let Some(count) = counts.buckets.get_mut(bucket.unwrap_or(self.upper_bounds.len() - 1)) {
            *count += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HistogramCounts> {
        // Every update leaves the counts consistent, so a poisoned lock is still usable.
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TypedMetric for BucketHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for BucketHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let counts = self.lock();
        let buckets: Vec<(f64, u64)> =
            self.upper_bounds.iter().copied().zip(counts.buckets.iter().copied()).collect();
        encoder.encode_histogram::<NoLabelSet>(counts.sum, counts.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A metric as a collector encodes it: name, help, unit and the metric.
pub(crate) type Described<'a> = (&'a str, &'a str, Option<&'a Unit>, &'a dyn EncodeMetric);

/// Encodes each metric, leaving out a family without series, as a `Registry` does. Each help
/// text ends with a period, which a `Registry` adds to the help texts registered in it.
pub(crate) fn encode_all(mut encoder: DescriptorEncoder, metrics: &[Described]) -> fmt::Result {
    for &(name, help, unit, metric) in metrics {
        if !metric.is_empty() {
            metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;

    #[test]
    fn a_bucket_histogram_encodes_as_the_library_histogram_does() {
        let bounds = exponential_buckets(0.0001, 2.0, 17);
        let (mut ours, mut theirs) = (Registry::default(), Registry::default());
        let histogram = BucketHistogram::new(&RPC_LATENCY_BOUNDS);
        let library = Histogram::new(bounds);
        ours.register("latency", "Latency.", histogram.clone());
        theirs.register("latency", "Latency.", library.clone());
        for value in [0.0, 0.00005, 0.0001, 0.0003, 0.02, 1.5, 6.6, 1e9, f64::NAN, -1.0] {
            histogram.observe(value);
            library.observe(value);
        }
        let text = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text
        };
        assert!(text(&ours).contains("latency_bucket{le=\"+Inf\"} 10"), "{}", text(&ours));
        assert_eq!(text(&ours), text(&theirs));
    }

    #[test]
    fn exports_every_metric_with_its_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.dropped(DropReason::Malformed);
        metrics.dropped(DropReason::TooShort);
        metrics.dropped(DropReason::Unmatched);
        metrics.call_finished("ping", Outcome::Ok, Some(0.002));
        // A clone counts into the same series (the second call takes the kept handles).
        metrics.clone().call_finished("ping", Outcome::Ok, Some(0.004));
        metrics.call_finished("ping", Outcome::Timeout, None);
        metrics.call_finished("kadscale_load", Outcome::Ok, Some(0.001));
        metrics.served(Procedure::of("find_node"));
        metrics.served(Procedure::of("kadscale_load"));
        metrics.lookup_finished("find_value", "found");
        metrics.routing_table_contacts.set(12);
        assert_eq!(metrics.malformed_total(), 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "dht_datagrams_dropped_total{reason=\"malformed\"} 1",
            "dht_rpc_calls_total{method=\"ping\",outcome=\"timeout\"} 1",
            "dht_rpc_calls_total{method=\"ping\",outcome=\"ok\"} 2",
            "dht_rpc_call_duration_seconds_count{method=\"ping\"} 2",
            "dht_rpc_calls_total{method=\"kadscale_load\",outcome=\"ok\"} 1",
            "dht_rpc_call_duration_seconds_count{method=\"kadscale_load\"} 1",
            "dht_requests_served_total{method=\"find_node\"} 1",
            "dht_requests_served_total{method=\"kadscale_load\"} 1",
            "dht_requests_served_total{method=\"store\"} 0",
            "dht_lookups_total{kind=\"find_value\",outcome=\"found\"} 1",
            "dht_routing_table_contacts 12",
            "dht_stored_values 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
