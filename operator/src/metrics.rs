//! The operator's Prometheus metrics, served by the shared admin server (`kadscale_node::admin`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kadscale_node::tier::Tier;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::crd::DhtCluster;

/// Counters and histograms the reconcile loop updates.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<Vec<(String, String)>, Counter>,
    errors: Family<Vec<(String, String)>, Counter>,
    duration: Histogram,
    clusters: Arc<ClustersByTier>,
}

impl Metrics {
    /// Creates the metrics and registers them (prefix `kadscale_operator`) in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            clusters: Arc::new(ClustersByTier::default()),
        };
        let registry = registry.sub_registry_with_prefix("kadscale_operator");
        registry.register("reconciles", "Reconciles by result", metrics.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            metrics.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            metrics.duration.clone(),
        );
        registry.register_collector(Box::new(metrics.clusters.clone()));
        metrics
    }

    /// Counts one reconcile that took `elapsed`; `error` names the error kind if it failed.
    pub fn observe(&self, elapsed: Duration, error: Option<&str>) {
        self.duration.observe(elapsed.as_secs_f64());
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&vec![("result".into(), result.into())]).inc();
        if let Some(kind) = error {
            self.errors.get_or_create(&vec![("error".into(), kind.into())]).inc();
        }
    }

    /// From now on, `clusters` counts the clusters in `store` (the controller's cache).
    pub fn count_clusters_in(&self, store: Store<DhtCluster>) {
        *self.clusters.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(store);
    }
}

/// `kadscale_operator_clusters{tier}`, read from the controller's cache at scrape time, so a
/// deleted cluster stops counting at once.
#[derive(Default)]
struct ClustersByTier {
    store: Mutex<Option<Store<DhtCluster>>>,
}

impl std::fmt::Debug for ClustersByTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClustersByTier")
    }
}

/// Clusters per tier name, every tier present (zero included) plus `none` for clusters the
/// operator has not planned yet.
fn count_by_tier<'a>(clusters: impl IntoIterator<Item = &'a DhtCluster>) -> BTreeMap<String, i64> {
    let mut counts: BTreeMap<String, i64> =
        Tier::ALL.iter().map(|t| (t.name().to_string(), 0)).collect();
    counts.insert("none".into(), 0);
    for cluster in clusters {
        let tier = cluster.status.as_ref().and_then(|s| s.tier.clone());
        *counts.entry(tier.unwrap_or_else(|| "none".into())).or_default() += 1;
    }
    counts
}

impl Collector for ClustersByTier {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let clusters = match &*self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some(store) => store.state(),
            None => return Ok(()),
        };
        let counts = count_by_tier(clusters.iter().map(AsRef::as_ref));
        let mut metric = encoder.encode_descriptor(
            // The registry's prefix makes this kadscale_operator_clusters.
            "clusters",
            "DhtClusters by bootstrap tier",
            None,
            MetricType::Gauge,
        )?;
        for (tier, count) in counts {
            let labels = vec![("tier".to_string(), tier)];
            ConstGauge::new(count).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::crd::{DhtClusterSpec, DhtClusterStatus};

    fn cluster(name: &str, tier: Option<&str>) -> DhtCluster {
        let mut cluster = DhtCluster::new(name, DhtClusterSpec::default());
        cluster.metadata.namespace = Some("default".into());
        cluster.status =
            tier.map(|t| DhtClusterStatus { tier: Some(t.into()), ..DhtClusterStatus::default() });
        cluster
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn counts_reconciles_errors_and_clusters_by_tier() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.observe(Duration::from_millis(20), None);
        metrics.observe(Duration::from_millis(40), Some("apply"));
        let (reader, mut writer) = reflector::store::<DhtCluster>();
        for c in [cluster("a", Some("large")), cluster("b", Some("large")), cluster("c", None)] {
            writer.apply_watcher_event(&Event::Apply(c));
        }
        metrics.count_clusters_in(reader);
        let text = scrape(&registry);
        for line in [
            "kadscale_operator_reconciles_total{result=\"ok\"} 1",
            "kadscale_operator_reconciles_total{result=\"error\"} 1",
            "kadscale_operator_reconcile_errors_total{error=\"apply\"} 1",
            "kadscale_operator_reconcile_duration_seconds_count 2",
            "kadscale_operator_clusters{tier=\"large\"} 2",
            "kadscale_operator_clusters{tier=\"small\"} 0",
            "kadscale_operator_clusters{tier=\"none\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
