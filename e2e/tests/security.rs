//! The security posture, checked on a real API server:
//! - the chart's RBAC is exactly what the operator calls: the API server's audit log of an
//!   operator run (as the chart's ServiceAccount, every code path: expose Services and a
//!   NetworkPolicy created and deleted, status, events, the Lease) against the rules
//!   `helm template` renders;
//! - every pod the operator creates is admitted under Pod Security "restricted" (enforced on
//!   the test namespace, which a privileged pod proves);
//! - the NetworkPolicy admits only the cluster's own pods and the listed namespaces (and CIDRs,
//!   to the DHT port only). kwok does not enforce NetworkPolicies, so the object the API server
//!   holds is what is checked.
//!
//! The audit log exists on the local control plane (`e2e/controlplane/up.sh` writes it to
//! `$KADSCALE_RUN_DIR/logs/audit.log`, or `KADSCALE_AUDIT_LOG`); elsewhere the RBAC test skips
//! loudly (fails with KADSCALE_E2E_REQUIRED).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kadscale_e2e::chart::RELEASE_NAMESPACE;
use kadscale_e2e::cluster::POD_SECURITY_LEVEL;
use kadscale_e2e::command::run;
use kadscale_e2e::dht::{Dht, MEDIUM_30, SETTLE_TIMEOUT, SMALL_10};
use kadscale_e2e::paths::{helm_binary, repo_root, skip_or_fail};
use kadscale_e2e::scenario::{Scenario, LEASE_TIMEOUT};
use kadscale_e2e::wait::{until, Check};
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::{json, Value};

/// (API group, resource[/subresource], verb).
type Permission = (String, String, String);

/// Granted verbs an operator run need not exercise, and why the operator still needs them.
const JUSTIFIED_UNUSED: [(&str, &str, &str, &str); 1] = [(
    "events.k8s.io",
    "events",
    "patch",
    "kube's event Recorder patches an event that repeats within its cache window into a \
     series instead of creating it again",
)];

/// The operator, run as the chart's ServiceAccount through every code path, makes exactly the
/// calls the chart's (Cluster)Role and leader-election Role grant: none refused, none missing,
/// and every granted verb used (or listed in [`JUSTIFIED_UNUSED`] with the reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_is_exactly_what_the_operator_calls() -> Result<()> {
    let Some(scenario) = Scenario::start("rbac").await? else { return Ok(()) };
    let Some(audit) = AuditLog::open("chart_rbac_is_exactly_what_the_operator_calls")? else {
        return Ok(());
    };
    let ns = scenario.namespace().to_string();
    let operator = scenario.operator("operator-a").await?;
    scenario.wait_for_lease_holder(&["operator-a"], LEASE_TIMEOUT).await?;

    // Every child kind, the optional ones included; then a scale-down that deletes an expose
    // Service, and the NetworkPolicy turned off (deleted).
    let spec = json!({
        "workers": {"replicas": 30},
        "bootstrap": {"scaleDownStabilizationSeconds": 0, "expose": {"type": "NodePort"}},
        "networkPolicy": {"enabled": true, "allowedNamespaces": ["clients"]},
    });
    let dht = Dht::create(&scenario.client, &ns, "dht", spec).await?;
    dht.wait_settled(MEDIUM_30, SETTLE_TIMEOUT).await?;
    wait_for_expose_services(&dht, 3).await?;
    dht.kubectl_scale(SMALL_10.workers).await?;
    dht.wait_settled(SMALL_10, SETTLE_TIMEOUT).await?;
    wait_for_expose_services(&dht, 2).await?;
    dht.api
        .patch(
            &dht.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"networkPolicy": {"enabled": false}}})),
        )
        .await?;
    let policies = Api::<NetworkPolicy>::namespaced(scenario.client.clone(), &ns);
    until("the NetworkPolicy to be deleted", SETTLE_TIMEOUT, || async {
        Ok(match policies.get_opt(&dht.name).await? {
            None => Check::Done(()),
            Some(_) => Check::NotYet("still there".into()),
        })
    })
    .await?;
    // A clean stop releases the Lease: the last calls of the run.
    operator.terminate(Duration::from_secs(10)).await?;

    let user = format!(
        "system:serviceaccount:{}:{}",
        scenario.release.namespace, scenario.release.service_account
    );
    let mine = |event: &AuditEvent| {
        event.user.username == user
            && event.object_ref.as_ref().is_some_and(|object| {
                object.namespace.as_deref() == Some(ns.as_str())
                    || (object.resource == "leases"
                        && object.namespace.as_deref() == Some(RELEASE_NAMESPACE)
                        && object.name.as_deref().is_none_or(|name| name == scenario.lease_name))
            })
    };
    let events: Vec<AuditEvent> = audit.read_new()?.into_iter().filter(mine).collect();
    ensure!(!events.is_empty(), "no audit events of {user} in {ns}: is the audit policy on?");
    let mut used = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for event in &events {
        for permission in event.permissions() {
            if event.response_status.as_ref().and_then(|status| status.code) == Some(403) {
                refused.insert(permission.clone());
            }
            used.insert(permission);
        }
    }
    let granted = granted_by_chart().await?;
    let ungranted: Vec<_> = used.difference(&granted).collect();
    ensure!(
        refused.is_empty() && ungranted.is_empty(),
        "the operator called what the chart does not grant: refused {refused:?}, ungranted {ungranted:?}"
    );
    let justified: BTreeSet<Permission> = JUSTIFIED_UNUSED
        .iter()
        .map(|(group, resource, verb, _)| {
            (group.to_string(), resource.to_string(), verb.to_string())
        })
        .collect();
    let stale: Vec<_> = justified.difference(&granted).collect();
    ensure!(stale.is_empty(), "JUSTIFIED_UNUSED names verbs the chart no longer grants: {stale:?}");
    let unused: Vec<_> =
        granted.iter().filter(|p| !used.contains(*p) && !justified.contains(*p)).collect();
    ensure!(
        unused.is_empty(),
        "the chart grants what the operator never called (least privilege): {unused:?}\nused: {used:?}"
    );
    eprintln!(
        "e2e: {} audit events; {} permissions used, all granted; granted and unused: {:?}",
        events.len(),
        used.len(),
        granted.difference(&used).collect::<Vec<_>>()
    );
    Ok(())
}

/// The test namespace enforces "restricted" (a privileged pod is refused), yet every bootstrap
/// and worker pod got created (no FailedCreate event) and turned Ready; and the NetworkPolicy the
/// API server holds admits only the cluster's pods and the listed namespaces to the DHT and admin
/// ports, plus the listed CIDRs to the DHT port alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_restricted_and_only_the_cluster_reaches_the_dht_port() -> Result<()> {
    let Some(scenario) = Scenario::start("restricted").await? else { return Ok(()) };
    let client = &scenario.client;
    let ns = scenario.namespace();
    let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
    assert_eq!(
        namespace.labels().get("pod-security.kubernetes.io/enforce").map(String::as_str),
        Some(POD_SECURITY_LEVEL)
    );
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "busybox",
                                 "securityContext": {"privileged": true}}]},
    }))?;
    let dry_run = PostParams { dry_run: true, field_manager: None };
    match Api::<Pod>::namespaced(client.clone(), ns).create(&dry_run, &privileged).await {
        Err(kube::Error::Api(status)) => ensure!(
            status.code == 403 && status.message.contains("violates PodSecurity"),
            "a privileged pod must be refused by Pod Security admission: {status:?}"
        ),
        other => anyhow::bail!("a privileged pod was not refused in {ns}: {other:?}"),
    }

    let mut operator = scenario.operator("operator-a").await?;
    let spec = json!({
        "workers": {"replicas": SMALL_10.workers},
        "networkPolicy": {"enabled": true, "allowedNamespaces": ["clients", "monitoring"],
                          "allowedCidrs": ["192.168.10.0/24"]},
    });
    let dht = Dht::create(client, ns, "dht", spec).await?;
    let settled = dht.wait_settled(SMALL_10, SETTLE_TIMEOUT).await?;
    let failed: Vec<String> = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields("reason=FailedCreate"))
        .await?
        .items
        .into_iter()
        .map(|event| {
            format!("{:?}: {}", event.involved_object.name, event.message.unwrap_or_default())
        })
        .collect();
    ensure!(failed.is_empty(), "pods were refused: {failed:?}");

    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .get(&dht.name)
        .await
        .context("the NetworkPolicy")?;
    let policy = serde_json::to_value(policy.spec.context("NetworkPolicy spec")?)?;
    let cluster_pods = json!({"podSelector": {"matchLabels": {
        "app.kubernetes.io/instance": "dht", "app.kubernetes.io/name": "kadscale"}}});
    let namespaces = json!({"namespaceSelector": {"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "In",
        "values": ["clients", "monitoring"]}]}});
    let cidr = json!({"ipBlock": {"cidr": "192.168.10.0/24"}});
    let expected = json!({
        "podSelector": cluster_pods["podSelector"],
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [cluster_pods, namespaces, cidr], "ports": [{"protocol": "UDP", "port": "dht"}]},
            {"from": [cluster_pods, namespaces], "ports": [{"protocol": "TCP", "port": "admin"}]},
        ],
    });
    assert_eq!(policy, expected, "the NetworkPolicy as the API server holds it");
    // Its pod selector selects exactly this cluster's pods, and their named ports exist.
    let selected = Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=dht,app.kubernetes.io/name=kadscale"),
        )
        .await?;
    let selected: BTreeSet<String> = selected.items.iter().map(|pod| pod.name_any()).collect();
    let cluster: BTreeSet<String> = settled
        .bootstrap_pods
        .iter()
        .chain(&settled.worker_pods)
        .map(|pod| pod.name_any())
        .collect();
    assert_eq!(selected, cluster, "the policy's podSelector must select the cluster's pods");
    for pod in settled.bootstrap_pods.iter().chain(&settled.worker_pods) {
        let ports: BTreeMap<String, (String, i32)> = pod
            .spec
            .iter()
            .flat_map(|spec| &spec.containers)
            .flat_map(|container| container.ports.iter().flatten())
            .filter_map(|port| {
                Some((port.name.clone()?, (port.protocol.clone()?, port.container_port)))
            })
            .collect();
        assert_eq!(ports.get("dht"), Some(&("UDP".to_string(), 5678)), "{}", pod.name_any());
        assert_eq!(ports.get("admin"), Some(&("TCP".to_string(), 9090)), "{}", pod.name_any());
    }
    operator.ensure_running()
}

async fn wait_for_expose_services(dht: &Dht, count: usize) -> Result<()> {
    let services =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(dht.client.clone(), &dht.namespace);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={}",
        dht.name,
        kadscale_operator::builders::EXPOSE_COMPONENT
    );
    until(&format!("{count} expose Services"), SETTLE_TIMEOUT, || async {
        let found = services.list(&ListParams::default().labels(&selector)).await?.items.len();
        Ok(if found == count {
            Check::Done(())
        } else {
            Check::NotYet(format!("{found} expose Services"))
        })
    })
    .await
}

/// Every (group, resource, verb) the chart's rendered (Cluster)Roles grant.
async fn granted_by_chart() -> Result<BTreeSet<Permission>> {
    let chart = repo_root().join("charts/kadscale");
    let rendered = run(
        helm_binary(),
        [
            "template".as_ref(),
            "kadscale".as_ref(),
            chart.as_os_str(),
            "-n".as_ref(),
            RELEASE_NAMESPACE.as_ref(),
        ],
        Duration::from_secs(60),
    )
    .await?;
    let mut granted = BTreeSet::new();
    for document in yaml_serde::Deserializer::from_str(&rendered) {
        let object = Value::deserialize(document)?;
        if !matches!(object["kind"].as_str(), Some("Role" | "ClusterRole")) {
            continue;
        }
        for rule in object["rules"].as_array().into_iter().flatten() {
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|value| value.as_str().map(str::to_string))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    ensure!(!granted.is_empty(), "helm template rendered no rules");
    Ok(granted)
}

/// The API server's audit log (JSON lines), read from where it stood when opened.
struct AuditLog {
    path: PathBuf,
    start: u64,
}

impl AuditLog {
    /// `None` (skipped) when there is no audit log.
    fn open(test: &str) -> Result<Option<AuditLog>> {
        let path = std::env::var_os("KADSCALE_AUDIT_LOG").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("KADSCALE_RUN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("e2e/.run"))
                .join("logs/audit.log")
        });
        let Ok(metadata) = std::fs::metadata(&path) else {
            skip_or_fail(
                test,
                &format!("there is no API server audit log at {}", path.display()),
                "`just cluster-up` starts a control plane that writes one (set KADSCALE_AUDIT_LOG \
                 for another)",
            );
            return Ok(None);
        };
        Ok(Some(AuditLog { path, start: metadata.len() }))
    }

    /// Every event written since [`AuditLog::open`].
    fn read_new(&self) -> Result<Vec<AuditEvent>> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.start))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).with_context(|| format!("audit line {line}")))
            .collect()
    }
}

/// The fields of an audit.k8s.io/v1 Event this test reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    verb: String,
    user: AuditUser,
    object_ref: Option<ObjectRef>,
    response_status: Option<ResponseStatus>,
}

#[derive(Deserialize)]
struct AuditUser {
    username: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    api_group: Option<String>,
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct ResponseStatus {
    code: Option<u16>,
}

impl AuditEvent {
    /// The permissions this request needed: its verb, plus `create` for a server-side apply
    /// (PATCH) that created the object (201), which the API server authorizes as a create too.
    fn permissions(&self) -> Vec<Permission> {
        let Some(object) = &self.object_ref else { return Vec::new() };
        let resource = match &object.subresource {
            Some(sub) => format!("{}/{sub}", object.resource),
            None => object.resource.clone(),
        };
        let group = object.api_group.clone().unwrap_or_default();
        let mut needed = vec![(group.clone(), resource.clone(), self.verb.clone())];
        let created = self.response_status.as_ref().and_then(|status| status.code) == Some(201);
        if self.verb == "patch" && created {
            needed.push((group, resource, "create".to_string()));
        }
        needed
    }
}
