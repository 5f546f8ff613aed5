//! A record of every replica change of a DhtCluster's StatefulSet and Deployment, from a watch,
//! so tests can assert the order in which the operator changed them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;

/// Which of the two workloads changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Bootstrap,
    Workers,
}

/// One observed change of a workload's replicas or ready replicas.
#[derive(Clone, Debug)]
pub struct ReplicaChange {
    pub workload: Workload,
    /// spec.replicas.
    pub replicas: i32,
    /// status.readyReplicas.
    pub ready: i32,
    /// The object's resourceVersion: one etcd's revision, so it orders changes across kinds.
    pub revision: u64,
    /// When the watch delivered it.
    pub seen_at: Instant,
}

/// Watches `NAME-bootstrap` (StatefulSet) and `NAME-worker` (Deployment) in a namespace for as
/// long as it lives.
pub struct ReplicaHistory {
    changes: Arc<Mutex<Vec<ReplicaChange>>>,
    task: JoinHandle<()>,
}

impl ReplicaHistory {
    pub fn start(client: &Client, namespace: &str, cluster_name: &str) -> ReplicaHistory {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let bootstrap_name = format!("{cluster_name}-bootstrap");
        let workers_name = format!("{cluster_name}-worker");
        let statefulsets = watcher(
            Api::<StatefulSet>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .applied_objects()
        .try_filter(move |sts| std::future::ready(sts.name_any() == bootstrap_name))
        .map_ok(|sts| {
            let replicas = sts.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(0);
            let ready = sts.status.as_ref().and_then(|status| status.ready_replicas).unwrap_or(0);
            (Workload::Bootstrap, replicas, ready, revision(sts.resource_version()))
        });
        let deployments = watcher(
            Api::<Deployment>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .applied_objects()
        .try_filter(move |deploy| std::future::ready(deploy.name_any() == workers_name))
        .map_ok(|deploy| {
            let replicas = deploy.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(0);
            let ready =
                deploy.status.as_ref().and_then(|status| status.ready_replicas).unwrap_or(0);
            (Workload::Workers, replicas, ready, revision(deploy.resource_version()))
        });
        let recorded = changes.clone();
        let task = tokio::spawn(async move {
            let mut merged = futures::stream::select(statefulsets.boxed(), deployments.boxed());
            while let Some(item) = merged.next().await {
                // Watch errors are retried by the backoff; a gap shows up as a missing change.
                let Ok((workload, replicas, ready, revision)) = item else { continue };
                let mut changes = recorded.lock().expect("replica history lock");
                let last = changes
                    .iter()
                    .rev()
                    .find(|change: &&ReplicaChange| change.workload == workload);
                if last.is_none_or(|last| (last.replicas, last.ready) != (replicas, ready)) {
                    changes.push(ReplicaChange {
                        workload,
                        replicas,
                        ready,
                        revision,
                        seen_at: Instant::now(),
                    });
                }
            }
        });
        ReplicaHistory { changes, task }
    }

    /// Every change so far, ordered by revision (the order etcd committed them in).
    pub fn changes(&self) -> Vec<ReplicaChange> {
        let mut changes = self.changes.lock().expect("replica history lock").clone();
        changes.sort_by_key(|change| change.revision);
        changes
    }

    /// The first change of `workload` (by revision) that satisfies `matches`.
    pub fn first(
        &self,
        workload: Workload,
        matches: impl Fn(&ReplicaChange) -> bool,
    ) -> Option<ReplicaChange> {
        self.changes().into_iter().find(|change| change.workload == workload && matches(change))
    }

    /// The history as lines, for failure messages.
    pub fn describe(&self) -> String {
        self.changes()
            .iter()
            .map(|change| {
                format!(
                    "  rv {} {:?}: replicas {} ready {}",
                    change.revision, change.workload, change.replicas, change.ready
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ReplicaHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn revision(resource_version: Option<String>) -> u64 {
    resource_version.and_then(|version| version.parse().ok()).unwrap_or(0)
}
