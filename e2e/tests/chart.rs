//! The Helm chart as helm renders it: lint clean, the objects and settings the operator needs,
//! least-privilege RBAC, restricted pod security, and values the schema refuses.

use std::time::Duration;

use anyhow::{Context, Result};
use kadscale_e2e::command::run;
use kadscale_e2e::paths::{helm_binary, repo_root, skip_or_fail};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

const HELM_TIMEOUT: Duration = Duration::from_secs(60);

static HELM_PRESENT: OnceCell<bool> = OnceCell::const_new();

/// The chart's directory, as an argument for helm (tests run in e2e/, not the repository root).
fn chart() -> String {
    repo_root().join("charts/kadscale").to_string_lossy().into_owned()
}

/// `helm ARGS...`, or `None` (skipped) where helm is not installed; checked once per run.
async fn helm(args: &[&str]) -> Option<Result<String>> {
    let helm = helm_binary();
    let present = *HELM_PRESENT
        .get_or_init(|| async { run(&helm, ["version", "--short"], HELM_TIMEOUT).await.is_ok() })
        .await;
    if !present {
        skip_or_fail("chart", "helm is not installed", "run `just controlplane` (builds helm)");
        return None;
    }
    Some(run(&helm, args, HELM_TIMEOUT).await)
}

/// Every object `helm template` renders with `extra` arguments, as JSON values.
async fn render(extra: &[&str]) -> Option<Result<Vec<Value>>> {
    let chart = chart();
    let mut args = vec!["template", "kadscale", chart.as_str(), "-n", "kadscale-system"];
    args.extend_from_slice(extra);
    let rendered = match helm(&args).await? {
        Ok(text) => text,
        Err(error) => return Some(Err(error)),
    };
    Some(parse_documents(&rendered))
}

fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("helm template printed invalid YAML")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|object| object["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn helm_lint_is_clean() -> Result<()> {
    let Some(output) = helm(&["lint", "--strict", &chart()]).await else { return Ok(()) };
    let output = output?;
    assert!(output.contains("0 chart(s) failed"), "helm lint --strict:\n{output}");
    Ok(())
}

#[tokio::test]
async fn default_render_runs_the_operator_with_restricted_security() -> Result<()> {
    let Some(objects) = render(&[]).await else { return Ok(()) };
    let objects = objects?;
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"] {
        one(&objects, kind);
    }
    assert!(find(&objects, "ServiceMonitor").is_empty(), "ServiceMonitor is off by default");

    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "kadscale/kadscale:0.1.0", "image defaults to the appVersion");
    assert_eq!(strings(&container["command"]), ["dht-operator"]);
    let args = strings(&container["args"]);
    assert_eq!(args.first(), Some(&"run"));
    assert!(args.contains(&"--lease-namespace=$(POD_NAMESPACE)"), "{args:?}");
    assert!(args.contains(&"--admin-addr=0.0.0.0:8080"), "{args:?}");
    assert!(!args.iter().any(|arg| arg.starts_with("--namespace")), "watches all namespaces");
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let service_account = one(&objects, "ServiceAccount")["metadata"]["name"].clone();
    assert_eq!(pod["serviceAccountName"], service_account);
    Ok(())
}

#[tokio::test]
async fn rbac_grants_only_named_resources_and_verbs() -> Result<()> {
    let Some(objects) = render(&[]).await else { return Ok(()) };
    let objects = objects?;
    let cluster_role = one(&objects, "ClusterRole");
    let rules = cluster_role["rules"].as_array().context("ClusterRole rules")?;
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(!strings(&rule[field]).contains(&"*"), "wildcard {field} in {rule}");
        }
        assert!(
            !strings(&rule["resources"]).iter().any(|r| *r == "secrets" || *r == "pods/exec"),
            "the operator never touches {rule}"
        );
    }
    let verbs_on = |resource: &str| -> Vec<&str> {
        rules
            .iter()
            .filter(|rule| strings(&rule["resources"]).contains(&resource))
            .flat_map(|rule| strings(&rule["verbs"]))
            .collect()
    };
    assert_eq!(verbs_on("dhtclusters"), ["list", "watch"], "DhtClusters are only watched");
    assert_eq!(verbs_on("dhtclusters/status"), ["patch"], "status is written by patch");
    assert!(verbs_on("statefulsets").contains(&"patch"), "children are server-side applied");
    for always_wanted in ["statefulsets", "deployments", "poddisruptionbudgets"] {
        assert!(!verbs_on(always_wanted).contains(&"delete"), "{always_wanted} are never deleted");
    }
    let leases: Vec<_> = find(&objects, "Role")
        .into_iter()
        .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        .filter(|rule| strings(&rule["resources"]).contains(&"leases"))
        .collect();
    assert_eq!(leases.len(), 1, "one Role for the leader-election Lease");
    assert_eq!(strings(&leases[0]["verbs"]), ["get", "create", "update"]);
    Ok(())
}

#[tokio::test]
async fn watch_namespace_uses_a_role_there() -> Result<()> {
    let Some(objects) = render(&["--set", "watchNamespace=team-a"]).await else { return Ok(()) };
    let objects = objects?;
    assert!(find(&objects, "ClusterRole").is_empty(), "no cluster-wide role for one namespace");
    let in_team_a: Vec<_> = find(&objects, "Role")
        .into_iter()
        .filter(|role| role["metadata"]["namespace"] == "team-a")
        .collect();
    assert_eq!(in_team_a.len(), 1, "the operator's Role lives in the watched namespace");
    let args =
        strings(&one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
    assert!(args.contains(&"--namespace=team-a".to_string()), "{args:?}");
    Ok(())
}

#[tokio::test]
async fn service_monitor_is_rendered_when_enabled() -> Result<()> {
    let Some(objects) = render(&["--set", "metrics.serviceMonitor.enabled=true"]).await else {
        return Ok(());
    };
    let objects = objects?;
    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    Ok(())
}

#[tokio::test]
async fn crds_are_the_generated_file() -> Result<()> {
    let Some(objects) = render(&["--include-crds"]).await else { return Ok(()) };
    let objects = objects?;
    let crd = one(&objects, "CustomResourceDefinition");
    let generated = std::fs::read_to_string(repo_root().join("crds/dhtcluster.yaml"))?;
    let generated = parse_documents(&generated)?;
    assert_eq!(crd, &generated[0], "charts/kadscale/crds must be crds/dhtcluster.yaml");
    Ok(())
}

#[tokio::test]
async fn the_values_schema_refuses_bad_values() -> Result<()> {
    for (set, field) in [
        ("replicaCount=-1", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.logFormat=xml", "logFormat"),
        ("metrics.port=70000", "port"),
        ("unknownValue=1", "unknownValue"),
    ] {
        let Some(result) = render(&["--set", set]).await else { return Ok(()) };
        let error = result.expect_err(&format!("--set {set} must be refused")).to_string();
        assert!(error.contains(field), "--set {set}: the error names {field}: {error}");
    }
    Ok(())
}
