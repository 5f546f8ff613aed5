//! Operator faults and bad input on a real API server: children deleted, edited by hand or
//! co-owned by another field manager; a DhtCluster edited while no operator runs; every
//! out-of-range field refused by the API server naming it; and what only the operator can refuse
//! becoming a Degraded condition and an event while the cluster keeps its last good state.
//!
//! Needs a cluster in KUBECONFIG (`just test-e2e` starts one); skips loudly without one unless
//! KADSCALE_E2E_REQUIRED is set.

use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::NamespaceResourceScope;
use kadscale_e2e::dht::{Dht, Observation, MEDIUM_30, SETTLE_TIMEOUT, SMALL_10};
use kadscale_e2e::scenario::{Scenario, LEASE_TIMEOUT};
use kadscale_e2e::wait::{until, Check};
use kadscale_operator::crd::DhtCluster;
use kadscale_operator::status;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// A field manager other than the operator's: a person, or another controller.
const OTHER_MANAGER: &str = "e2e-other-manager";

/// Children edited by hand (replicas, a Service port, the PDB's budget) are put back; fields
/// another field manager added (labels, an annotation, a Deployment field the operator does not
/// set) survive those reconciles; children deleted by hand (Deployment, both Services, PDB) are
/// recreated; and the cluster settles again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_edited_deleted_or_co_owned_are_reconciled() -> Result<()> {
    let Some(scenario) = Scenario::start("children-fault").await? else { return Ok(()) };
    let mut operator = scenario.operator("operator-a").await?;
    let (dht, _) = scenario.small_dht(SETTLE_TIMEOUT).await?;
    let client = &scenario.client;
    let ns = scenario.namespace();
    let bootstrap = dht.bootstrap_name();
    let workers = dht.workers_name();

    // Another manager's additions, by server-side apply: fields the operator never sets.
    apply_as_other::<StatefulSet>(
        client,
        ns,
        &bootstrap,
        json!({"metadata": {"labels": {"example.com/team": "p2p"},
                            "annotations": {"example.com/note": "kept"}}}),
    )
    .await?;
    apply_as_other::<Deployment>(
        client,
        ns,
        &workers,
        json!({"spec": {"revisionHistoryLimit": 3}}),
    )
    .await?;
    apply_as_other::<Service>(
        client,
        ns,
        "dht",
        json!({"metadata": {"annotations": {"example.com/lb": "internal"}}}),
    )
    .await?;

    // Hand edits (plain patches, as `kubectl edit` makes) of fields the operator owns.
    edit_by_hand::<StatefulSet>(client, ns, &bootstrap, json!({"spec": {"replicas": 5}})).await?;
    edit_by_hand::<Deployment>(client, ns, &workers, json!({"spec": {"replicas": 3}})).await?;
    edit_by_hand::<Service>(
        client,
        ns,
        "dht",
        json!({"spec": {"ports": [{"name": "dht", "port": 9999, "protocol": "UDP",
                                   "targetPort": "dht"}]}}),
    )
    .await?;
    edit_by_hand::<PodDisruptionBudget>(
        client,
        ns,
        &bootstrap,
        json!({"spec": {"maxUnavailable": 2}}),
    )
    .await?;

    let restored = dht
        .wait_for("the hand edits to be undone", SETTLE_TIMEOUT, |seen| {
            seen.settled_at(SMALL_10)?;
            Ok(())
        })
        .await?;
    let service_ports = |service: &Service| {
        let ports = service.spec.as_ref().and_then(|spec| spec.ports.as_ref());
        ports.map(|ports| ports.iter().map(|port| port.port).collect::<Vec<_>>())
    };
    until(
        "Service dht back to the one port 5678 and the PDB's maxUnavailable back to 1",
        SETTLE_TIMEOUT,
        || async {
            let service = Api::<Service>::namespaced(client.clone(), ns).get("dht").await?;
            let pdb =
                Api::<PodDisruptionBudget>::namespaced(client.clone(), ns).get(&bootstrap).await?;
            let budget = pdb.spec.and_then(|spec| spec.max_unavailable);
            Ok(match (service_ports(&service), &budget) {
                (Some(ports), Some(IntOrString::Int(1))) if ports == [5678] => Check::Done(()),
                (ports, budget) => {
                    Check::NotYet(format!("ports {ports:?}, maxUnavailable {budget:?}"))
                }
            })
        },
    )
    .await?;
    operator.ensure_running()?;

    // What the other manager added is still there, and still its own.
    let statefulset = restored.bootstrap.as_ref().context("the StatefulSet")?;
    assert_eq!(statefulset.labels().get("example.com/team").map(String::as_str), Some("p2p"));
    assert_eq!(statefulset.annotations().get("example.com/note").map(String::as_str), Some("kept"));
    let deployment = restored.workers.as_ref().context("the Deployment")?;
    assert_eq!(deployment.spec.as_ref().and_then(|spec| spec.revision_history_limit), Some(3));
    let service = Api::<Service>::namespaced(client.clone(), ns).get("dht").await?;
    assert_eq!(service.annotations().get("example.com/lb").map(String::as_str), Some("internal"));
    for (kind, managers) in [
        ("StatefulSet", apply_managers(statefulset)),
        ("Deployment", apply_managers(deployment)),
        ("Service", apply_managers(&service)),
    ] {
        ensure!(
            managers.contains(&OTHER_MANAGER.to_string())
                && managers.contains(&kadscale_operator::apply::FIELD_MANAGER.to_string()),
            "{kind}: both managers must own fields after the reconciles, got {managers:?}"
        );
    }

    // Children deleted by hand come back as new objects.
    let uids = child_uids(client, ns, &dht).await?;
    let delete = DeleteParams::background();
    Api::<Deployment>::namespaced(client.clone(), ns).delete(&workers, &delete).await?;
    Api::<Service>::namespaced(client.clone(), ns).delete("dht", &delete).await?;
    Api::<Service>::namespaced(client.clone(), ns).delete(&bootstrap, &delete).await?;
    Api::<PodDisruptionBudget>::namespaced(client.clone(), ns).delete(&bootstrap, &delete).await?;
    until("every deleted child to be recreated", SETTLE_TIMEOUT, || async {
        let now = child_uids(client, ns, &dht).await?;
        let not_recreated: Vec<&str> = uids
            .iter()
            .zip(&now)
            .filter(|((_, before), (_, after))| after.is_none() || after == before)
            .map(|((child, _), _)| child.as_str())
            .filter(|child| *child != "StatefulSet")
            .collect();
        Ok(if not_recreated.is_empty() {
            Check::Done(())
        } else {
            Check::NotYet(format!("not recreated yet: {not_recreated:?}"))
        })
    })
    .await?;
    dht.wait_settled(SMALL_10, SETTLE_TIMEOUT).await?;
    operator.ensure_running()
}

/// A DhtCluster edited while no operator runs (scaled to 30, NetworkPolicy turned on) stays
/// untouched until an operator starts, which then converges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_edited_while_the_operator_is_down_converges_when_it_starts() -> Result<()> {
    let Some(scenario) = Scenario::start("edited-while-down").await? else { return Ok(()) };
    let first = scenario.operator("operator-a").await?;
    scenario.wait_for_lease_holder(&["operator-a"], LEASE_TIMEOUT).await?;
    let (dht, settled) = scenario.small_dht(SETTLE_TIMEOUT).await?;
    first.terminate(Duration::from_secs(10)).await?;

    dht.api
        .patch(
            &dht.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"workers": {"replicas": 30},
                                          "networkPolicy": {"enabled": true}}})),
        )
        .await?;
    // Nobody acts on the edit while no operator runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = dht.observe().await?;
    let policies = Api::<NetworkPolicy>::namespaced(scenario.client.clone(), scenario.namespace());
    ensure!(
        idle.bootstrap_replicas() == 2
            && idle.worker_replicas() == 10
            && observed_generation(&idle) == observed_generation(&settled)
            && policies.get_opt(&dht.name).await?.is_none(),
        "something acted on the edit with no operator running:\n{}",
        dht.diagnostics().await
    );

    let mut second = scenario.operator("operator-b").await?;
    scenario.wait_for_lease_holder(&["operator-b"], LEASE_TIMEOUT).await?;
    dht.wait_settled(MEDIUM_30, SETTLE_TIMEOUT).await?;
    ensure!(
        policies.get_opt(&dht.name).await?.is_some(),
        "the NetworkPolicy turned on while the operator was down was not created"
    );
    second.ensure_running()
}

/// The API server refuses every field outside its schema range (each minimum, maximum and enum
/// the CRD declares under spec, found by walking the installed CRD's schema), every pattern
/// and every cross-field (CEL) rule, naming the field; through the scale subresource too. And
/// the status of a cluster deleted since it was read is written without an error or an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_out_of_range_field_is_refused_naming_it() -> Result<()> {
    let Some(scenario) = Scenario::start("refused").await? else { return Ok(()) };
    let resource = ApiResource::erase::<DhtCluster>(&());
    let api = Api::<DynamicObject>::namespaced_with(
        scenario.client.clone(),
        scenario.namespace(),
        &resource,
    );

    let crd = serde_json::to_value(DhtCluster::crd())?;
    let spec_schema =
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut cases = Vec::new();
    out_of_range_values(spec_schema, "spec", &mut cases);
    let fields: Vec<&str> = cases.iter().map(|(path, _)| path.as_str()).collect();
    for field in [
        "spec.workers.replicas",
        "spec.bootstrap.strategy",
        "spec.bootstrap.maxBootstrapNodes",
        "spec.bootstrap.tiers.xlarge.bootstrapNodes",
        "spec.bootstrap.expose.nodePortBase",
        "spec.node.connectionTimeoutSeconds",
        "spec.node.fallback.maxRetries",
        "spec.node.loadBalancing.maxConnectionsPerNode",
        "spec.imagePullPolicy",
    ] {
        ensure!(fields.contains(&field), "the schema walk missed {field}: {fields:?}");
    }
    let mut refusals = Vec::new();
    for (path, value) in &cases {
        let spec = nested(path.strip_prefix("spec.").context("a spec path")?, value.clone());
        refusals.push((format!("{path} = {value}"), "dht".to_string(), spec, path.clone()));
    }
    // Patterns, CEL rules and the name's length: values inside every range.
    let rules = [
        ("dht", json!({"image": ""}), "spec.image"),
        ("dht", json!({"image": "two words"}), "spec.image"),
        (
            "dht",
            json!({"networkPolicy": {"allowedNamespaces": ["Bad_Namespace"]}}),
            "spec.networkPolicy.allowedNamespaces[0]",
        ),
        (
            "dht",
            json!({"networkPolicy": {"allowedCidrs": ["10.0.0.0/33"]}}),
            "spec.networkPolicy.allowedCidrs",
        ),
        (
            "dht",
            json!({"bootstrap": {"expose": {"basePort": 65530}}}),
            "spec.bootstrap.expose.basePort",
        ),
        (
            "dht",
            json!({"bootstrap": {"expose": {"nodePortBase": 65530}}}),
            "spec.bootstrap.expose.nodePortBase",
        ),
        (
            "dht",
            json!({"bootstrap": {"tiers": {"medium": {"maxWorkers": 10, "bootstrapNodes": 3}}}}),
            "spec.bootstrap.tiers.medium.maxWorkers",
        ),
        (
            "dht",
            json!({"bootstrap": {"tiers": {"large": {"maxWorkers": 200, "bootstrapNodes": 2}}}}),
            "spec.bootstrap.tiers.large.bootstrapNodes",
        ),
        (
            "dht",
            json!({"bootstrap": {"tiers": {"xlarge": {"bootstrapNodes": 3}}}}),
            "spec.bootstrap.tiers.xlarge.bootstrapNodes",
        ),
        ("dht", json!({"bootstrap": {"maxBootstrapNodes": 5}}), "spec.bootstrap.maxBootstrapNodes"),
        ("dht", json!({"workers": {"replicas": "ten"}}), "spec.workers.replicas"),
        (&"n".repeat(43), json!({}), "metadata.name"),
        (&"n".repeat(41), json!({"bootstrap": {"expose": {}}}), "metadata.name"),
    ];
    for (name, spec, field) in rules {
        refusals.push((format!("{field}: {spec}"), name.to_string(), spec, field.to_string()));
    }

    let dry_run = PostParams { dry_run: true, field_manager: None };
    let mut wrong = Vec::new();
    for (case, name, spec, field) in &refusals {
        let mut object = DynamicObject::new(name, &resource);
        object.data = json!({ "spec": spec });
        match api.create(&dry_run, &object).await {
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(field) => {}
            Err(kube::Error::Api(status)) => {
                wrong.push(format!("{case}: {} {}", status.code, status.message))
            }
            Ok(_) => wrong.push(format!("{case}: accepted")),
            Err(other) => bail!("{case}: {other}"),
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} of {} invalid DhtClusters were not refused with a message naming the field:\n{}",
        wrong.len(),
        refusals.len(),
        wrong.join("\n")
    );
    eprintln!("e2e: the API server refused all {} invalid DhtClusters", refusals.len());

    // A valid cluster is accepted, and scaling it to -1 through /scale is refused.
    let mut valid = DynamicObject::new("valid", &resource);
    valid.data = json!({"spec": {"workers": {"replicas": 3}}});
    api.create(&PostParams::default(), &valid).await.context("a valid DhtCluster")?;
    let typed = Api::<DhtCluster>::namespaced(scenario.client.clone(), scenario.namespace());
    let scaled = typed
        .patch_scale(
            "valid",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": -1}})),
        )
        .await;
    match scaled {
        Err(kube::Error::Api(status)) => {
            ensure!(status.code == 422 && status.message.contains("replicas"), "{status:?}");
        }
        other => bail!("scaling to -1 must be refused, got {other:?}"),
    }
    assert_eq!(typed.get("valid").await?.spec.workers.replicas, 3);

    // Deleted between the operator's read and its status write (a user deleting a cluster mid
    // reconcile): the write is no error, so no retry warns about it, and no event is published.
    let read = typed.get("valid").await?;
    typed.delete("valid", &DeleteParams::default()).await?;
    let client = scenario.client.clone();
    let reporter = Reporter { controller: "e2e-status-write".into(), instance: None };
    let recorder = Recorder::new(client.clone(), reporter);
    let next =
        status::degraded(None, Some(1), "InvalidSpec", "a change to tell", SystemTime::now());
    status::write(&typed, &recorder, &read, &next)
        .await
        .context("writing the status of a deleted DhtCluster must not fail")?;
    let about = "involvedObject.kind=DhtCluster,involvedObject.name=valid";
    let events = Api::<Event>::namespaced(client, scenario.namespace())
        .list(&ListParams::default().fields(about))
        .await?;
    ensure!(events.items.is_empty(), "events about a deleted cluster: {:?}", events.items);
    Ok(())
}

/// What passes the schema but the operator must refuse (a pod label key the API server would
/// refuse on the Deployment) becomes Degraded=True (InvalidSpec, naming the field) and a Warning
/// event, with the StatefulSet and Deployment left as they were (the scale in the same edit is not
/// half-applied); a child the API server refuses (a NodePort outside its range) is Degraded
/// Rejected; fixing the spec clears Degraded and the cluster converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_only_the_operator_can_refuse_degrades_and_keeps_the_last_good_state() -> Result<()> {
    let Some(scenario) = Scenario::start("degraded").await? else { return Ok(()) };
    let mut operator = scenario.operator("operator-a").await?;
    let (dht, good) = scenario.small_dht(SETTLE_TIMEOUT).await?;

    patch_spec(&dht, json!({"workers": {"replicas": 30, "podLabels": {"bad key": "x"}}})).await?;
    let degraded = wait_degraded(&dht, "InvalidSpec", "spec.workers.podLabels").await?;
    assert_workloads_unchanged(&good, &degraded)?;
    let note = wait_warning_event(&dht, "spec.workers.podLabels").await?;
    eprintln!("e2e: Degraded event: {note}");
    // Still untouched a moment later: the operator waits for a new spec, it does not retry.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_workloads_unchanged(&good, &dht.observe().await?)?;

    patch_spec(&dht, json!({"workers": {"podLabels": {"bad key": null}}})).await?;
    let fixed = dht.wait_settled(MEDIUM_30, SETTLE_TIMEOUT).await?;
    ensure!(fixed.condition("Degraded") == Some("False"), "Degraded after the fix");

    // A NodePort outside the API server's range (30000-32767 by default): only the API server
    // knows its range; the refusal is a Rejected Degraded condition naming the child's field.
    patch_spec(&dht, json!({"bootstrap": {"expose": {"type": "NodePort", "nodePortBase": 1000}}}))
        .await?;
    wait_degraded(&dht, "Rejected", "nodePort").await?;
    patch_spec(&dht, json!({"bootstrap": {"expose": null}})).await?;
    dht.wait_for("Degraded to clear after expose is removed", SETTLE_TIMEOUT, |seen| {
        seen.settled_at(MEDIUM_30)?;
        match seen.condition("Degraded") {
            Some("False") => Ok(()),
            other => Err(format!("Degraded {other:?}")),
        }
    })
    .await?;
    operator.ensure_running()
}

/// Server-side applies `fields` to child `name` as [`OTHER_MANAGER`].
async fn apply_as_other<K>(client: &Client, ns: &str, name: &str, fields: Value) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let mut patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&())});
    merge(&mut patch, fields);
    patch["metadata"]["name"] = json!(name);
    Api::<K>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply(OTHER_MANAGER), &Patch::Apply(&patch))
        .await
        .with_context(|| format!("applying {patch} as {OTHER_MANAGER}"))?;
    Ok(())
}

/// A merge patch of child `name`, as `kubectl edit` or `kubectl patch` make it.
async fn edit_by_hand<K>(client: &Client, ns: &str, name: &str, patch: Value) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let params =
        PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
    Api::<K>::namespaced(client.clone(), ns)
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .with_context(|| format!("editing {} {name}: {patch}", K::kind(&())))?;
    Ok(())
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

/// Managers of `Apply` entries in the object's managedFields.
fn apply_managers(object: &impl Resource) -> Vec<String> {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.operation.as_deref() == Some("Apply"))
        .filter_map(|entry| entry.manager.clone())
        .collect()
}

/// (child, uid) of every always-present child; uid `None` while it does not exist.
async fn child_uids(client: &Client, ns: &str, dht: &Dht) -> Result<Vec<(String, Option<String>)>> {
    let uid = |meta: Option<kube::api::ObjectMeta>| meta.and_then(|meta| meta.uid);
    let services = Api::<Service>::namespaced(client.clone(), ns);
    Ok(vec![
        (
            "StatefulSet".into(),
            uid(Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&dht.bootstrap_name())
                .await?
                .map(|o| o.metadata)),
        ),
        (
            "Deployment".into(),
            uid(Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(&dht.workers_name())
                .await?
                .map(|o| o.metadata)),
        ),
        ("Service dht".into(), uid(services.get_opt(&dht.name).await?.map(|o| o.metadata))),
        (
            "Service dht-bootstrap".into(),
            uid(services.get_opt(&dht.bootstrap_name()).await?.map(|o| o.metadata)),
        ),
        (
            "PodDisruptionBudget".into(),
            uid(Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
                .get_opt(&dht.bootstrap_name())
                .await?
                .map(|o| o.metadata)),
        ),
    ])
}

/// Every (path, value) out of the range a property under `schema` declares: one below each
/// minimum, one above each maximum, one outside each enum. Descends into object properties.
fn out_of_range_values(schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    let integer = schema["type"] == "integer";
    if let Some(min) = schema["minimum"].as_f64() {
        let below =
            if integer { json!(min as i64 - 1) } else { json!(min - min.abs().max(1.0) / 2.0) };
        out.push((path.to_string(), below));
    }
    if let Some(max) = schema["maximum"].as_f64() {
        let above = if integer { json!(max as i64 + 1) } else { json!(max + 1.0) };
        out.push((path.to_string(), above));
    }
    if schema["enum"].is_array() {
        out.push((path.to_string(), json!("not-a-value")));
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            out_of_range_values(property, &format!("{path}.{name}"), out);
        }
    }
}

/// `{"a": {"b": value}}` for path `a.b`.
fn nested(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |inner, key| json!({ key: inner }))
}

fn observed_generation(seen: &Observation) -> Option<i64> {
    seen.cluster.status.as_ref().and_then(|status| status.observed_generation)
}

async fn patch_spec(dht: &Dht, spec: Value) -> Result<()> {
    dht.api
        .patch(&dht.name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
        .await
        .with_context(|| format!("patching dhtc/{} with spec {spec}", dht.name))?;
    Ok(())
}

/// Waits for Degraded=True with `reason` and a message containing `field`, for the current
/// generation.
async fn wait_degraded(dht: &Dht, reason: &str, field: &str) -> Result<Observation> {
    let what = format!("Degraded=True ({reason}) naming {field}");
    dht.wait_for(&what, SETTLE_TIMEOUT, |seen| {
        let status = seen.cluster.status.as_ref().ok_or("no status")?;
        let degraded = status
            .conditions
            .iter()
            .find(|condition| condition.type_ == "Degraded")
            .ok_or("no Degraded condition")?;
        let current = status.observed_generation == seen.cluster.metadata.generation;
        if current
            && degraded.status == "True"
            && degraded.reason == reason
            && degraded.message.contains(field)
        {
            Ok(())
        } else {
            Err(format!(
                "Degraded {} {}: {} (observedGeneration current: {current})",
                degraded.status, degraded.reason, degraded.message
            ))
        }
    })
    .await
}

/// Waits for a Warning event `Degraded` about the cluster whose note names `field`.
async fn wait_warning_event(dht: &Dht, field: &str) -> Result<String> {
    let events = Api::<Event>::namespaced(dht.client.clone(), &dht.namespace);
    let about = format!("involvedObject.kind=DhtCluster,involvedObject.name={}", dht.name);
    until("a Degraded Warning event naming the field", SETTLE_TIMEOUT, || async {
        let list = events.list(&ListParams::default().fields(&about)).await?;
        let found = list.items.into_iter().find(|event| {
            event.type_.as_deref() == Some("Warning")
                && event.reason.as_deref() == Some("Degraded")
                && event.message.as_deref().is_some_and(|note| note.contains(field))
        });
        Ok(match found {
            Some(event) => Check::Done(event.message.unwrap_or_default()),
            None => Check::NotYet("no such event".into()),
        })
    })
    .await
}

/// The StatefulSet's and Deployment's specs (replicas, template) are those of `before`.
fn assert_workloads_unchanged(before: &Observation, now: &Observation) -> Result<()> {
    let statefulset = |seen: &Observation| seen.bootstrap.as_ref().and_then(|s| s.spec.clone());
    let deployment = |seen: &Observation| seen.workers.as_ref().and_then(|d| d.spec.clone());
    ensure!(
        statefulset(before) == statefulset(now),
        "the invalid spec changed the StatefulSet: replicas {} → {}",
        before.bootstrap_replicas(),
        now.bootstrap_replicas()
    );
    ensure!(
        deployment(before) == deployment(now),
        "the invalid spec changed the Deployment: replicas {} → {}",
        before.worker_replicas(),
        now.worker_replicas()
    );
    Ok(())
}
