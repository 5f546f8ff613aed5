//! The operator on a real API server: the chart installed with helm, `dht-operator run` as local
//! processes with the chart's ServiceAccount token, kwok turning the pods Ready.
//!
//! Needs a cluster in KUBECONFIG (`just test-e2e` starts one); skips loudly without one unless
//! KADSCALE_E2E_REQUIRED is set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kadscale_e2e::chart;
use kadscale_e2e::dht::{
    pod_uid, Dht, Observation, Settled, LARGE_100, MEDIUM_30, SETTLE_TIMEOUT, SMALL_10,
};
use kadscale_e2e::scenario::{Scenario, LEASE_TIMEOUT};
use kadscale_e2e::wait::{until, Check};
use kadscale_e2e::watch::{ReplicaHistory, Workload};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

const XLARGE_300: Settled =
    Settled { tier: "xlarge", bootstraps: 6, workers: 300, ratio: "50.0:1" };

/// Reaching 300 workers: kwok and the ReplicaSet controller take a while for that many pods.
const SETTLE_300_TIMEOUT: Duration = Duration::from_secs(240);

const FIELD_MANAGER: &str = kadscale_operator::apply::FIELD_MANAGER;

/// helm install; the operator takes the lease; 10 workers settle at tier small: 2 bootstrap and
/// 10 worker pods Ready, status Ready, ratio 5.0:1, and `kubectl get dhtc` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_lease_and_small_tier() -> Result<()> {
    let Some(scenario) = Scenario::start("small").await? else { return Ok(()) };
    let release = chart::status(scenario.release).await?;
    assert_eq!(release["info"]["status"], "deployed", "helm status: {release}");

    let mut operator = scenario.operator("operator-a").await?;
    let holder = scenario.wait_for_lease_holder(&["operator-a"], LEASE_TIMEOUT).await;
    operator.ensure_running()?;
    holder?;

    let (dht, settled) = scenario.small_dht(SETTLE_TIMEOUT).await?;
    let status = settled.cluster.status.as_ref().expect("settled has a status");
    assert_eq!(status.ratio_status.as_deref(), Some("OK"));
    assert_eq!(settled.condition("RatioWithinLimit"), Some("True"));
    assert_eq!(settled.condition("Degraded"), Some("False"));
    // status.selector (the scale subresource's, which an HPA uses) selects exactly the workers.
    let selector = status.selector.as_deref().context("status.selector")?;
    let selected = Api::<Pod>::namespaced(scenario.client.clone(), scenario.namespace())
        .list(&ListParams::default().labels(selector))
        .await?;
    let selected: BTreeSet<_> = selected.items.iter().map(pod_uid).collect();
    let workers: BTreeSet<_> = settled.worker_pods.iter().map(pod_uid).collect();
    assert_eq!(selected, workers, "status.selector {selector} must select the worker pods");

    let mut bootstrap_pods: Vec<String> =
        settled.bootstrap_pods.iter().map(|pod| pod.name_any()).collect();
    bootstrap_pods.sort();
    assert_eq!(bootstrap_pods, ["dht-bootstrap-0", "dht-bootstrap-1"]);

    assert_columns(&dht, SMALL_10).await?;
    // The operator records events about the cluster (events.k8s.io, which its RBAC must allow).
    let reasons = until("an event about dhtc/dht", SETTLE_TIMEOUT, || async {
        let reasons = dht.event_reasons().await?;
        Ok(if reasons.is_empty() {
            Check::NotYet("no events".into())
        } else {
            Check::Done(reasons)
        })
    })
    .await?;
    eprintln!("e2e: events about dhtc/dht: {reasons:?}");
    let (code, _) = operator.admin_get("/readyz").await?;
    assert_eq!(code, 200, "the leading operator's /readyz");
    operator.ensure_running()
}

/// `kubectl scale` to 30, 100 and 300 workers: tiers medium, large and xlarge; the bootstrap
/// StatefulSet grows (and is Ready) before the worker Deployment grows; no worker pod is
/// replaced by a tier change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_through_the_tiers() -> Result<()> {
    let Some(scenario) = Scenario::start("scale-up").await? else { return Ok(()) };
    let mut operator = scenario.operator("operator-a").await?;
    let (dht, mut before) = scenario.small_dht(SETTLE_TIMEOUT).await?;
    let history = ReplicaHistory::start(&scenario.client, scenario.namespace(), &dht.name);

    for (expected, timeout) in
        [(MEDIUM_30, SETTLE_TIMEOUT), (LARGE_100, SETTLE_TIMEOUT), (XLARGE_300, SETTLE_300_TIMEOUT)]
    {
        dht.kubectl_scale(expected.workers).await?;
        let after = dht.wait_settled(expected, timeout).await?;
        operator.ensure_running()?;

        let grown = |workload, replicas| {
            history.first(workload, |change| change.replicas == replicas).with_context(|| {
                format!(
                    "the watch never saw {workload:?} at {replicas} replicas:\n{}",
                    history.describe()
                )
            })
        };
        let bootstrap_grew = grown(Workload::Bootstrap, expected.bootstraps)?;
        let workers_grew = grown(Workload::Workers, expected.workers)?;
        let bootstrap_ready = history
            .first(Workload::Bootstrap, |change| change.ready >= expected.bootstraps)
            .context("the watch never saw the grown StatefulSet Ready")?;
        ensure!(
            bootstrap_grew.revision < workers_grew.revision && bootstrap_ready.revision < workers_grew.revision,
            "to {} workers: the bootstrap StatefulSet must grow and be Ready before the Deployment \
             grows; replica changes in commit order:\n{}",
            expected.workers,
            history.describe()
        );

        assert_no_worker_replaced(&scenario.client, &dht, &before, &after).await?;
        assert_columns(&dht, expected).await?;
        before = after;
    }
    Ok(())
}

/// 300 → 10 workers with a 10 s stabilization window: workers shrink at once, the bootstrap
/// tier stays until the window has passed and then drops to small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_waits_for_the_stabilization_window() -> Result<()> {
    const WINDOW: Duration = Duration::from_secs(10);
    let Some(scenario) = Scenario::start("scale-down").await? else { return Ok(()) };
    let mut operator = scenario.operator("operator-a").await?;
    let spec = json!({
        "workers": {"replicas": 300},
        "bootstrap": {"scaleDownStabilizationSeconds": WINDOW.as_secs()},
    });
    let dht = Dht::create(&scenario.client, scenario.namespace(), "dht", spec).await?;
    dht.wait_settled(XLARGE_300, SETTLE_300_TIMEOUT).await?;
    let history = ReplicaHistory::start(&scenario.client, scenario.namespace(), &dht.name);

    dht.kubectl_scale(10).await?;
    let workers_shrunk = dht
        .wait_for("the worker Deployment to shrink to 10", SETTLE_TIMEOUT, |seen| {
            match seen.worker_replicas() {
                10 => Ok(()),
                other => Err(format!("Deployment replicas {other}")),
            }
        })
        .await?;
    let shrunk_at = Instant::now();
    ensure!(
        workers_shrunk.bootstrap_replicas() == 6,
        "the bootstrap StatefulSet dropped to {} together with the workers",
        workers_shrunk.bootstrap_replicas()
    );

    // Halfway through the window: still 6 bootstraps, and the status says a scale-down waits.
    tokio::time::sleep_until((shrunk_at + WINDOW / 2).into()).await;
    let midway = dht.observe().await?;
    let status = midway.cluster.status.clone().unwrap_or_default();
    ensure!(
        midway.bootstrap_replicas() == 6 && status.bootstrap.desired == 6,
        "bootstraps dropped before the {WINDOW:?} window: StatefulSet {}, status {:?}\n{}",
        midway.bootstrap_replicas(),
        status.bootstrap,
        dht.diagnostics().await
    );
    assert_eq!(status.bootstrap.target, 2, "status.bootstrap.target during the window");
    assert!(
        status.scale_down_pending_since.is_some(),
        "status.scaleDownPendingSince during the window"
    );
    assert_eq!(status.tier.as_deref(), Some("xlarge"), "status.tier is the tier in force");

    dht.wait_settled(SMALL_10, WINDOW + SETTLE_TIMEOUT).await?;
    operator.ensure_running()?;
    let workers_changed = history
        .first(Workload::Workers, |change| change.replicas == 10)
        .context("the watch never saw the Deployment at 10")?;
    let bootstrap_changed = history
        .first(Workload::Bootstrap, |change| change.replicas < 6)
        .context("the watch never saw the StatefulSet shrink")?;
    ensure!(
        workers_changed.revision < bootstrap_changed.revision,
        "workers must shrink before bootstraps:\n{}",
        history.describe()
    );
    assert_eq!(bootstrap_changed.replicas, 2, "bootstraps drop straight to the small tier");
    let waited = bootstrap_changed.seen_at.duration_since(workers_changed.seen_at);
    // The window starts when the operator first sees the lower count, a moment before the
    // Deployment change reaches our watch; a second of slack covers that.
    ensure!(
        waited + Duration::from_secs(1) >= WINDOW,
        "bootstraps dropped {waited:?} after the workers, inside the {WINDOW:?} window"
    );
    Ok(())
}

/// A deleted child StatefulSet is recreated; deleting the DhtCluster removes everything it
/// owned, pods included (the garbage collector in kube-controller-manager does that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_recreated_and_garbage_collected() -> Result<()> {
    let Some(scenario) = Scenario::start("children").await? else { return Ok(()) };
    let mut operator = scenario.operator("operator-a").await?;
    let (dht, settled) = scenario.small_dht(SETTLE_TIMEOUT).await?;
    let old_uid =
        settled.bootstrap.as_ref().and_then(|sts| sts.uid()).context("StatefulSet uid")?;

    let statefulsets =
        Api::<StatefulSet>::namespaced(scenario.client.clone(), scenario.namespace());
    statefulsets.delete(&dht.bootstrap_name(), &DeleteParams::background()).await?;
    dht.wait_for("the bootstrap StatefulSet to be recreated and settle", SETTLE_TIMEOUT, |seen| {
        let uid = seen.bootstrap.as_ref().and_then(|sts| sts.uid());
        if uid.is_none() || uid.as_deref() == Some(old_uid.as_str()) {
            return Err(format!("StatefulSet uid {uid:?} (the deleted one was {old_uid})"));
        }
        seen.settled_at(SMALL_10)
    })
    .await?;
    operator.ensure_running()?;

    let cluster_uid = dht.api.get(&dht.name).await?.uid().context("DhtCluster uid")?;
    let owned = owned_children(&scenario.client, scenario.namespace(), &cluster_uid).await?;
    for child in [
        "StatefulSet/dht-bootstrap",
        "Deployment/dht-worker",
        "Service/dht-bootstrap",
        "Service/dht",
    ] {
        assert!(owned.contains(child), "{child} must be owned by the DhtCluster; owned: {owned:?}");
    }
    assert!(
        owned.iter().any(|child| child.starts_with("PodDisruptionBudget/")),
        "owned: {owned:?}"
    );

    dht.api.delete(&dht.name, &DeleteParams::background()).await?;
    let namespace = scenario.namespace().to_string();
    until("everything the DhtCluster owned to be gone", SETTLE_TIMEOUT, || async {
        let mut left = owned_children(&scenario.client, &namespace, &cluster_uid).await?;
        let pods = Api::<Pod>::namespaced(scenario.client.clone(), &namespace)
            .list(&ListParams::default().labels("app.kubernetes.io/instance=dht"))
            .await?;
        left.extend(pods.items.iter().map(|pod| format!("Pod/{}", pod.name_any())));
        Ok(if left.is_empty() {
            Check::Done(())
        } else {
            Check::NotYet(format!("still there: {left:?}"))
        })
    })
    .await?;
    operator.ensure_running()
}

/// An operator killed mid-scale (after the bootstrap tier grew, before workers did) and a new
/// one in its place: the new one takes the Lease after it expires and converges, with exactly
/// one of every child and exactly one ReplicaSet for the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restarted_mid_scale_converges_without_duplicates() -> Result<()> {
    let Some(scenario) = Scenario::start("restart").await? else { return Ok(()) };
    let first = scenario.operator("operator-a").await?;
    scenario.wait_for_lease_holder(&["operator-a"], LEASE_TIMEOUT).await?;
    let (dht, _) = scenario.small_dht(SETTLE_TIMEOUT).await?;

    dht.kubectl_scale(LARGE_100.workers).await?;
    dht.wait_for("the bootstrap StatefulSet to start growing", SETTLE_TIMEOUT, |seen| {
        match seen.bootstrap_replicas() {
            replicas if replicas > SMALL_10.bootstraps => Ok(()),
            replicas => Err(format!("StatefulSet replicas {replicas}")),
        }
    })
    .await?;
    // A crash, not a clean exit: the Lease is not released and must expire.
    drop(first);

    let mut second = scenario.operator("operator-b").await?;
    scenario.wait_for_lease_holder(&["operator-b"], LEASE_TIMEOUT).await?;
    dht.wait_settled(LARGE_100, SETTLE_TIMEOUT).await?;
    second.ensure_running()?;

    let client = &scenario.client;
    let namespace = scenario.namespace();
    assert_eq!(names::<StatefulSet>(client, namespace).await?, ["dht-bootstrap"]);
    assert_eq!(names::<Deployment>(client, namespace).await?, ["dht-worker"]);
    assert_eq!(names::<Service>(client, namespace).await?, ["dht", "dht-bootstrap"]);
    assert_eq!(names::<PodDisruptionBudget>(client, namespace).await?, ["dht-bootstrap"]);
    let replica_sets = names::<ReplicaSet>(client, namespace).await?;
    assert_eq!(replica_sets.len(), 1, "one worker ReplicaSet: {replica_sets:?}");
    let mut bootstrap_pods: Vec<String> =
        dht.live_pods("bootstrap").await?.iter().map(|pod| pod.name_any()).collect();
    bootstrap_pods.sort();
    assert_eq!(
        bootstrap_pods,
        (0..4).map(|ordinal| format!("dht-bootstrap-{ordinal}")).collect::<Vec<_>>()
    );
    assert_single_manager::<StatefulSet>(client, namespace, "dht-bootstrap").await?;
    assert_single_manager::<Deployment>(client, namespace, "dht-worker").await?;
    Ok(())
}

/// Two operator processes: only the Lease holder writes. With the holder frozen (SIGSTOP) the
/// standby changes nothing, though a scale waits, until the Lease expires; then it takes over
/// and does the scale; the thawed first holder does not take the Lease back, and gets it (well
/// before an expiry) when the second holder stops cleanly (SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes() -> Result<()> {
    let Some(scenario) = Scenario::start("two-operators").await? else { return Ok(()) };
    let mut operators =
        vec![scenario.operator("operator-a").await?, scenario.operator("operator-b").await?];
    let holder =
        scenario.wait_for_lease_holder(&["operator-a", "operator-b"], LEASE_TIMEOUT).await?;
    let first_index =
        operators.iter().position(|operator| operator.identity == holder).expect("holder is ours");
    let standby = operators.remove(1 - first_index);
    let first_holder = operators.remove(0);

    let (dht, settled) = scenario.small_dht(SETTLE_TIMEOUT).await?;
    assert_eq!(scenario.lease_holder().await?.as_deref(), Some(first_holder.identity.as_str()));
    let (standby_alive, _) = standby.admin_get("/healthz").await?;
    assert_eq!(standby_alive, 200, "the standby is alive");
    assert!(first_holder.reconciles().await? > 0.0, "the holder reconciled");
    assert_eq!(standby.reconciles().await?, 0.0, "the standby must not reconcile");

    first_holder.signal("STOP").await?;
    let lease = scenario.lease().await?.and_then(|lease| lease.spec).context("the Lease")?;
    let duration = Duration::from_secs(
        lease.lease_duration_seconds.context("leaseDurationSeconds")?.try_into()?,
    );
    let generation_before = settled.cluster.metadata.generation;
    dht.kubectl_scale(MEDIUM_30.workers).await?;
    // Until the frozen holder's Lease runs out (minus a safety second), the standby must not act.
    let hold_until = Instant::now() + duration.saturating_sub(Duration::from_secs(1));
    while Instant::now() < hold_until {
        let seen = dht.observe().await?;
        let observed = seen.cluster.status.as_ref().and_then(|status| status.observed_generation);
        ensure!(
            seen.bootstrap_replicas() == 2
                && seen.worker_replicas() == 10
                && observed == generation_before,
            "the standby wrote while {} held the Lease: StatefulSet {}, Deployment {}, \
             observedGeneration {observed:?} (was {generation_before:?}); holder {:?}",
            first_holder.identity,
            seen.bootstrap_replicas(),
            seen.worker_replicas(),
            scenario.lease_holder().await?
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    scenario.wait_for_lease_holder(&[standby.identity.as_str()], LEASE_TIMEOUT).await?;
    dht.wait_settled(MEDIUM_30, SETTLE_TIMEOUT).await?;

    first_holder.signal("CONT").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        scenario.lease_holder().await?.as_deref(),
        Some(standby.identity.as_str()),
        "the thawed former holder must not take the Lease back"
    );
    dht.kubectl_scale(SMALL_10.workers).await?;
    dht.wait_for("workers to shrink to 10 under the new holder", SETTLE_TIMEOUT, |seen| match seen
        .worker_replicas()
    {
        10 => Ok(()),
        other => Err(format!("Deployment replicas {other}")),
    })
    .await?;

    // A clean stop (SIGTERM) releases the Lease: the other replica takes it well before it
    // would have expired.
    let handed_over = Instant::now();
    standby.terminate(Duration::from_secs(10)).await?;
    scenario.wait_for_lease_holder(&[first_holder.identity.as_str()], LEASE_TIMEOUT).await?;
    ensure!(
        handed_over.elapsed() < duration,
        "the Lease took {:?} to change hands after SIGTERM, as long as an expiry ({duration:?})",
        handed_over.elapsed()
    );
    Ok(())
}

/// `kubectl get dhtc` shows the tier, workers, bootstraps, ratio and readiness.
async fn assert_columns(dht: &Dht, expected: Settled) -> Result<()> {
    let columns: BTreeMap<String, String> = dht.kubectl_get_columns().await?.into_iter().collect();
    let wanted = [
        ("TIER", expected.tier.to_string()),
        ("WORKERS", expected.workers.to_string()),
        ("BOOTSTRAPS", expected.bootstraps.to_string()),
        ("RATIO", expected.ratio.to_string()),
        ("READY", "True".to_string()),
    ];
    for (column, value) in wanted {
        ensure!(
            columns.get(column) == Some(&value),
            "`kubectl get dhtc` column {column} is {:?}, want {value}; all: {columns:?}",
            columns.get(column)
        );
    }
    Ok(())
}

/// No worker pod was replaced between two settled observations: every earlier worker pod still
/// runs, the pod template is unchanged, and the Deployment has a single ReplicaSet.
async fn assert_no_worker_replaced(
    client: &Client,
    dht: &Dht,
    before: &Observation,
    after: &Observation,
) -> Result<()> {
    let live: BTreeSet<(String, String)> = after.worker_pods.iter().map(pod_uid).collect();
    let gone: Vec<_> =
        before.worker_pods.iter().map(pod_uid).filter(|pod| !live.contains(pod)).collect();
    ensure!(gone.is_empty(), "a tier change replaced worker pods: {gone:?}");

    let template = |seen: &Observation| {
        seen.workers
            .as_ref()
            .and_then(|deploy| deploy.spec.as_ref())
            .map(|spec| spec.template.clone())
    };
    ensure!(template(before) == template(after), "the tier change altered the worker pod template");

    let hashes: BTreeSet<String> = after
        .worker_pods
        .iter()
        .filter_map(|pod| pod.labels().get("pod-template-hash").cloned())
        .collect();
    ensure!(hashes.len() == 1, "worker pods of several templates: {hashes:?}");
    let replica_sets = names::<ReplicaSet>(client, &dht.namespace).await?;
    ensure!(
        replica_sets.len() == 1,
        "the worker Deployment has several ReplicaSets: {replica_sets:?}"
    );
    Ok(())
}

/// Names of every object of kind `K` in `namespace`, sorted.
async fn names<K>(client: &Client, namespace: &str) -> Result<Vec<String>>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let list = Api::<K>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?;
    let mut names: Vec<String> = list.items.iter().map(|object| object.name_any()).collect();
    names.sort();
    Ok(names)
}

/// "Kind/name" of every child in `namespace` whose owner references name `owner_uid`.
async fn owned_children(
    client: &Client,
    namespace: &str,
    owner_uid: &str,
) -> Result<BTreeSet<String>> {
    let mut owned = BTreeSet::new();
    owned.extend(owned_of::<StatefulSet>(client, namespace, owner_uid).await?);
    owned.extend(owned_of::<Deployment>(client, namespace, owner_uid).await?);
    owned.extend(owned_of::<Service>(client, namespace, owner_uid).await?);
    owned.extend(owned_of::<PodDisruptionBudget>(client, namespace, owner_uid).await?);
    owned.extend(
        owned_of::<k8s_openapi::api::networking::v1::NetworkPolicy>(client, namespace, owner_uid)
            .await?,
    );
    Ok(owned)
}

async fn owned_of<K>(client: &Client, namespace: &str, owner_uid: &str) -> Result<Vec<String>>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let list = Api::<K>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?;
    let kind = K::kind(&K::DynamicType::default()).to_string();
    Ok(list
        .items
        .iter()
        .filter(|object| object.owner_references().iter().any(|owner| owner.uid == owner_uid))
        .map(|object| format!("{kind}/{}", object.name_any()))
        .collect())
}

/// The object's fields are applied by one manager, the operator's, once: two operators (or a
/// restarted one) writing under different names would show up as a second entry.
async fn assert_single_manager<K>(client: &Client, namespace: &str, name: &str) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object = Api::<K>::namespaced(client.clone(), namespace).get(name).await?;
    let appliers: Vec<String> = object
        .managed_fields()
        .iter()
        .filter(|entry| entry.operation.as_deref() == Some("Apply"))
        .filter_map(|entry| entry.manager.clone())
        .collect();
    ensure!(
        appliers == [FIELD_MANAGER],
        "{name}: Apply managers {appliers:?}, want only {FIELD_MANAGER}"
    );
    Ok(())
}
