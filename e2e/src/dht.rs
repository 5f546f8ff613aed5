//! One DhtCluster under test: create it, look at it and its children, wait for a state, and
//! explain (status, events, children) when a wait runs out.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kadscale_operator::crd::DhtCluster;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::command::kubectl;
use crate::wait::{until, Check};

/// A DhtCluster in a test namespace.
pub struct Dht {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub api: Api<DhtCluster>,
}

/// The cluster, its two workloads and their pods, read at one moment.
pub struct Observation {
    pub cluster: DhtCluster,
    pub bootstrap: Option<StatefulSet>,
    pub workers: Option<Deployment>,
    pub bootstrap_pods: Vec<Pod>,
    pub worker_pods: Vec<Pod>,
}

/// A settled DhtCluster: its tier, bootstrap and worker counts (desired, applied and Ready),
/// its ratio, and the Ready condition.
#[derive(Clone, Copy, Debug)]
pub struct Settled {
    pub tier: &'static str,
    pub bootstraps: i32,
    pub workers: i32,
    pub ratio: &'static str,
}

/// Where most operator scenarios start: 10 workers, tier small (see `Scenario::small_dht`).
pub const SMALL_10: Settled = Settled { tier: "small", bootstraps: 2, workers: 10, ratio: "5.0:1" };
pub const MEDIUM_30: Settled =
    Settled { tier: "medium", bootstraps: 3, workers: 30, ratio: "10.0:1" };
pub const LARGE_100: Settled =
    Settled { tier: "large", bootstraps: 4, workers: 100, ratio: "25.0:1" };

/// Reaching a tier of at most 100 workers, pods included.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Dht {
    /// Creates `name` in `namespace` with `spec` (JSON, as a user would write it).
    pub async fn create(
        client: &Client,
        namespace: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<Dht> {
        let api = Api::<DhtCluster>::namespaced(client.clone(), namespace);
        let cluster: DhtCluster = serde_json::from_value(json!({
            "apiVersion": "kadscale.io/v1alpha1",
            "kind": "DhtCluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }))
        .context("building the DhtCluster")?;
        api.create(&PostParams::default(), &cluster)
            .await
            .with_context(|| format!("creating DhtCluster {namespace}/{name}"))?;
        Ok(Dht { client: client.clone(), namespace: namespace.into(), name: name.into(), api })
    }

    pub fn bootstrap_name(&self) -> String {
        format!("{}-bootstrap", self.name)
    }

    pub fn workers_name(&self) -> String {
        format!("{}-worker", self.name)
    }

    /// The label selector of this cluster's pods of one role (`bootstrap` or `worker`).
    pub fn pod_selector(&self, component: &str) -> String {
        format!("app.kubernetes.io/instance={},app.kubernetes.io/component={component}", self.name)
    }

    /// Reads the cluster, its StatefulSet, its Deployment and their live (not terminating) pods.
    pub async fn observe(&self) -> Result<Observation> {
        let cluster =
            self.api.get(&self.name).await.with_context(|| format!("GET dhtc/{}", self.name))?;
        let statefulsets = Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace);
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), &self.namespace);
        Ok(Observation {
            cluster,
            bootstrap: statefulsets.get_opt(&self.bootstrap_name()).await?,
            workers: deployments.get_opt(&self.workers_name()).await?,
            bootstrap_pods: self.live_pods("bootstrap").await?,
            worker_pods: self.live_pods("worker").await?,
        })
    }

    /// Pods of one role that are not being deleted.
    pub async fn live_pods(&self, component: &str) -> Result<Vec<Pod>> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&self.pod_selector(component)))
            .await?;
        Ok(pods.items.into_iter().filter(|pod| pod.metadata.deletion_timestamp.is_none()).collect())
    }

    /// Waits until `accept` is satisfied by an observation; on timeout the error carries the
    /// last mismatch plus the cluster's status and the namespace's events.
    pub async fn wait_for<F>(&self, what: &str, timeout: Duration, accept: F) -> Result<Observation>
    where
        F: Fn(&Observation) -> std::result::Result<(), String>,
    {
        let waited = until(what, timeout, || async {
            let observation = self.observe().await?;
            Ok(match accept(&observation) {
                Ok(()) => Check::Done(observation),
                Err(mismatch) => Check::NotYet(mismatch),
            })
        })
        .await;
        match waited {
            Ok(observation) => Ok(observation),
            Err(error) => Err(error.context(self.diagnostics().await)),
        }
    }

    /// Waits until the cluster has settled at `expected` (see [`Observation::settled_at`]).
    pub async fn wait_settled(&self, expected: Settled, timeout: Duration) -> Result<Observation> {
        let what = format!(
            "dhtc/{} to settle at tier {} with {} bootstrap and {} worker pods Ready",
            self.name, expected.tier, expected.bootstraps, expected.workers
        );
        self.wait_for(&what, timeout, |observation| observation.settled_at(expected)).await
    }

    /// `kubectl scale dhtc/NAME --replicas=N`, through the scale subresource.
    pub async fn kubectl_scale(&self, replicas: i32) -> Result<()> {
        kubectl([
            "scale".to_string(),
            format!("dhtc/{}", self.name),
            format!("--replicas={replicas}"),
            "-n".to_string(),
            self.namespace.clone(),
        ])
        .await?;
        Ok(())
    }

    /// `kubectl get dhtc NAME` as (column header → value) pairs, in column order.
    pub async fn kubectl_get_columns(&self) -> Result<Vec<(String, String)>> {
        let output =
            kubectl(["get", "dhtc", self.name.as_str(), "-n", self.namespace.as_str()]).await?;
        let mut lines = output.lines();
        let header = lines.next().context("`kubectl get dhtc` printed nothing")?;
        let row = lines
            .next()
            .with_context(|| format!("`kubectl get dhtc` printed no row:\n{output}"))?;
        Ok(header
            .split_whitespace()
            .map(str::to_string)
            .zip(row.split_whitespace().map(str::to_string))
            .collect())
    }

    /// Reasons of the events about this DhtCluster (the operator's events).
    pub async fn event_reasons(&self) -> Result<Vec<String>> {
        let about_me = format!("involvedObject.kind=DhtCluster,involvedObject.name={}", self.name);
        let events = Api::<Event>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().fields(&about_me))
            .await?;
        Ok(events.items.into_iter().filter_map(|event| event.reason).collect())
    }

    /// The cluster's status and the namespace's recent events, for failure messages.
    pub async fn diagnostics(&self) -> String {
        let status = match self.api.get(&self.name).await {
            Ok(cluster) => serde_json::to_string_pretty(&json!({
                "generation": cluster.metadata.generation,
                "spec.workers.replicas": cluster.spec.workers.replicas,
                "status": cluster.status,
            }))
            .unwrap_or_default(),
            Err(error) => format!("(could not read dhtc/{}: {error})", self.name),
        };
        let events = match Api::<Event>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => {
                let mut events = list.items;
                events.sort_by_key(|event| {
                    event.last_timestamp.clone().or(event.first_timestamp.clone())
                });
                let lines: Vec<String> = events
                    .iter()
                    .rev()
                    .take(25)
                    .rev()
                    .map(|event| {
                        format!(
                            "  {} {}/{}: {} {}",
                            event.type_.as_deref().unwrap_or("?"),
                            event.involved_object.kind.as_deref().unwrap_or("?"),
                            event.involved_object.name.as_deref().unwrap_or("?"),
                            event.reason.as_deref().unwrap_or("?"),
                            event.message.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                lines.join("\n")
            }
            Err(error) => format!("  (could not list events: {error})"),
        };
        format!(
            "dhtc/{} in {}:\n{status}\nevents (latest last):\n{events}",
            self.name, self.namespace
        )
    }
}

impl Observation {
    /// Ok when the cluster has settled at `expected`: status (tier, counts, ratio, Ready,
    /// observedGeneration), the StatefulSet's and Deployment's replicas, and that many Ready pods.
    /// Err names the first difference.
    pub fn settled_at(&self, expected: Settled) -> std::result::Result<(), String> {
        let Some(status) = self.cluster.status.as_ref() else {
            return Err("no status yet".into());
        };
        let observed_generation = status.observed_generation;
        let generation = self.cluster.metadata.generation;
        let checks: [(&str, String, String); 13] = [
            (
                "status.observedGeneration",
                format!("{observed_generation:?}"),
                format!("{generation:?}"),
            ),
            (
                "status.tier",
                format!("{:?}", status.tier.as_deref()),
                format!("{:?}", Some(expected.tier)),
            ),
            (
                "status.bootstrap.desired",
                status.bootstrap.desired.to_string(),
                expected.bootstraps.to_string(),
            ),
            (
                "status.bootstrap.ready",
                status.bootstrap.ready.to_string(),
                expected.bootstraps.to_string(),
            ),
            (
                "status.workers.desired",
                status.workers.desired.to_string(),
                expected.workers.to_string(),
            ),
            (
                "status.workers.ready",
                status.workers.ready.to_string(),
                expected.workers.to_string(),
            ),
            (
                "status.ratio",
                format!("{:?}", status.ratio.as_deref()),
                format!("{:?}", Some(expected.ratio)),
            ),
            (
                "Ready condition",
                format!("{:?}", self.condition("Ready")),
                format!("{:?}", Some("True")),
            ),
            (
                "StatefulSet spec.replicas",
                format!(
                    "{:?}",
                    self.bootstrap.as_ref().and_then(|sts| sts.spec.as_ref()?.replicas)
                ),
                format!("{:?}", Some(expected.bootstraps)),
            ),
            (
                "Deployment spec.replicas",
                format!(
                    "{:?}",
                    self.workers.as_ref().and_then(|deploy| deploy.spec.as_ref()?.replicas)
                ),
                format!("{:?}", Some(expected.workers)),
            ),
            (
                "bootstrap pods",
                self.bootstrap_pods.len().to_string(),
                expected.bootstraps.to_string(),
            ),
            (
                "Ready bootstrap pods",
                ready_count(&self.bootstrap_pods).to_string(),
                expected.bootstraps.to_string(),
            ),
            (
                "Ready worker pods",
                ready_count(&self.worker_pods).to_string(),
                expected.workers.to_string(),
            ),
        ];
        for (field, actual, wanted) in checks {
            if actual != wanted {
                return Err(format!("{field} is {actual}, want {wanted}"));
            }
        }
        if self.worker_pods.len() != expected.workers as usize {
            return Err(format!(
                "{} worker pods exist, want {}",
                self.worker_pods.len(),
                expected.workers
            ));
        }
        Ok(())
    }

    /// The status of condition `type_`, if the operator has set it.
    pub fn condition(&self, type_: &str) -> Option<&str> {
        let status = self.cluster.status.as_ref()?;
        status
            .conditions
            .iter()
            .find(|condition| condition.type_ == type_)
            .map(|condition| condition.status.as_str())
    }

    /// The StatefulSet's spec.replicas (0 when it does not exist).
    pub fn bootstrap_replicas(&self) -> i32 {
        self.bootstrap.as_ref().and_then(|sts| sts.spec.as_ref()?.replicas).unwrap_or(0)
    }

    /// The Deployment's spec.replicas (0 when it does not exist).
    pub fn worker_replicas(&self) -> i32 {
        self.workers.as_ref().and_then(|deploy| deploy.spec.as_ref()?.replicas).unwrap_or(0)
    }
}

/// Pods whose Ready condition is True.
pub fn ready_count(pods: &[Pod]) -> usize {
    pods.iter().filter(|pod| is_ready(pod)).count()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|status| status.conditions.as_ref()).is_some_and(|conditions| {
        conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Name and uid of a pod.
pub fn pod_uid(pod: &Pod) -> (String, String) {
    (pod.name_any(), pod.uid().unwrap_or_default())
}
