//! The reconcile loop: a `kube::runtime::Controller` over `DhtCluster`s and the children they
//! own, so that a deleted or edited child is put back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Client, ResourceExt};

use crate::apply::{self, ApiError};
use crate::builders::{ClusterIdentity, MissingMetadata, MANAGED_BY};
use crate::crd::DhtCluster;
use crate::metrics::Metrics;
use crate::plan::{decide, Observed};
use crate::status::{self, ChildrenStatus, Reconciled};
use crate::time::truncate;
use crate::validate::{check_name, validate};

/// Why a reconcile failed; each is retried with per-object exponential backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Metadata(#[from] MissingMetadata),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Metadata(_) => "metadata",
            Error::Api(error) => error.verb,
        }
    }
}

/// What the controller watches and which image pods run by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Watch one namespace; `None`: every namespace.
    pub namespace: Option<String>,
    /// Image of clusters whose spec names none.
    pub default_image: String,
    /// The `reportingInstance` of events (this replica's identity).
    pub instance: String,
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    recorder: Recorder,
    config: Config,
    metrics: Metrics,
    /// Consecutive failures per cluster, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<DhtCluster>, u32>>,
}

/// How long to wait after a clean reconcile with nothing scheduled: a resync that catches
/// anything a missed watch event would have told.
const RESYNC: Duration = Duration::from_secs(300);

/// Delay before retrying a cluster after `failures` consecutive failed reconciles:
/// 5 s, 10 s, 20 s, ... capped at 5 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(5).saturating_mul(1 << exponent).min(Duration::from_secs(300))
}

/// Runs the controller until `shutdown` completes; reconciles in flight finish first.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters: Api<DhtCluster> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(clusters, watcher::Config::default())
        .owns(namespaced_or_all::<StatefulSet>(&client, &config), children.clone())
        .owns(namespaced_or_all::<Deployment>(&client, &config), children.clone())
        .owns(namespaced_or_all::<Service>(&client, &config), children.clone())
        .owns(namespaced_or_all::<PodDisruptionBudget>(&client, &config), children.clone())
        .owns(namespaced_or_all::<NetworkPolicy>(&client, &config), children)
        .graceful_shutdown_on(shutdown);
    metrics.count_clusters_in(controller.store());
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: MANAGED_BY.into(), instance: Some(config.instance.clone()) },
    );
    let context = Arc::new(Context {
        client,
        recorder,
        config,
        metrics,
        failures: Mutex::new(HashMap::new()),
    });
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                // A deleted cluster's last queued reconcile: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                    tracing::debug!(%object, "cluster gone before its reconcile");
                }
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
    tracing::info!("controller stopped");
}

fn namespaced_or_all<K>(client: &Client, config: &Config) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn reconcile(cluster: Arc<DhtCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_cluster(&cluster, &ctx).await;
    ctx.metrics.observe(started.elapsed(), result.as_ref().err().map(Error::kind));
    match &result {
        Ok(_) => {
            lock(&ctx.failures).remove(&ObjectRef::from(cluster.as_ref()));
        }
        Err(Error::Api(error)) => {
            // Retrying cannot fix a forbidden or invalid request: tell the user in status.
            if let Some(reason) = error.degraded_reason() {
                write_degraded(&cluster, &ctx, reason, &error.to_string()).await;
            }
        }
        Err(Error::Metadata(_)) => {}
    }
    result
}

fn error_policy(cluster: Arc<DhtCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = lock(&ctx.failures);
    let count = failures.entry(ObjectRef::from(cluster.as_ref())).or_default();
    *count = count.saturating_add(1);
    let delay = backoff_delay(*count);
    tracing::warn!(cluster = %cluster.name_any(), %error, failures = *count, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn reconcile_cluster(cluster: &DhtCluster, ctx: &Context) -> Result<Action, Error> {
    if cluster.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let id = ClusterIdentity::of(cluster)?;
    let now = truncate(SystemTime::now());
    let previous = cluster.status.as_ref();
    let validated = validate(&cluster.spec, &ctx.config.default_image)
        .and_then(|settings| check_name(&id.name, &settings).map(|()| settings));
    let settings = match validated {
        Ok(settings) => settings,
        Err(error) => {
            // Nothing to retry until the spec changes.
            write_degraded(cluster, ctx, "InvalidSpec", &error.to_string()).await;
            return Ok(Action::await_change());
        }
    };
    let client = &ctx.client;
    // Both at once: each is a round trip to the API server before anything is applied.
    let (worker_name, bootstrap_name) = (id.worker_name(), id.bootstrap_name());
    let (deployment, statefulset) = tokio::try_join!(
        apply::get::<Deployment>(client, &id.namespace, &worker_name),
        apply::get::<StatefulSet>(client, &id.namespace, &bootstrap_name),
    )?;
    let observed = Observed {
        workers_applied: deployment
            .and_then(|d| d.spec?.replicas)
            .map(|r| u32::try_from(r).unwrap_or(0)),
        bootstrap_ready: statefulset.as_ref().map_or(0, ready_bootstraps),
    };
    let decision = decide(&id, &settings, previous, observed, now);
    let applied =
        apply::apply_children(client, &id, &decision.children, decision.workers_first).await?;
    let worker_status = applied.worker_deployment.status.unwrap_or_default();
    let children = ChildrenStatus {
        bootstrap_ready: ready_bootstraps(&applied.bootstrap_statefulset),
        worker_replicas: count(worker_status.replicas),
        worker_ready: count(worker_status.ready_replicas),
    };
    let reconciled = Reconciled::new(cluster, &id, &settings, &decision, children);
    let next = status::compute(&reconciled, previous, now);
    status::write(&cluster_api(cluster, ctx), &ctx.recorder, cluster, &next).await?;
    Ok(Action::requeue(decision.requeue_after.unwrap_or(RESYNC)))
}

fn ready_bootstraps(statefulset: &StatefulSet) -> u32 {
    count(statefulset.status.as_ref().and_then(|s| s.ready_replicas))
}

fn count(value: Option<i32>) -> u32 {
    value.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

fn cluster_api(cluster: &DhtCluster, ctx: &Context) -> Api<DhtCluster> {
    match cluster.namespace() {
        Some(ns) => Api::namespaced(ctx.client.clone(), &ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// Best effort: a cluster the operator cannot act on gets a Degraded condition and an event.
/// Failing to write them is logged; the reconcile's own error drives the retry.
async fn write_degraded(cluster: &DhtCluster, ctx: &Context, reason: &str, message: &str) {
    let now = truncate(SystemTime::now());
    let next = status::degraded(
        cluster.status.as_ref(),
        cluster.metadata.generation,
        reason,
        message,
        now,
    );
    if let Err(error) =
        status::write(&cluster_api(cluster, ctx), &ctx.recorder, cluster, &next).await
    {
        tracing::warn!(cluster = %cluster.name_any(), %error, "writing Degraded status");
    }
    tracing::warn!(cluster = %cluster.name_any(), reason, message, "cluster degraded");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_and_is_capped() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(300));
    }
}
