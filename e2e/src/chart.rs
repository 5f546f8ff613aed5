//! The Helm chart, installed once per test binary from charts/kadscale with the real helm.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use tokio::sync::OnceCell;

use crate::cluster::Cluster;
use crate::command::{kubectl, run};
use crate::paths::{helm_binary, repo_root};
use crate::wait::{until, Check};

/// The release every test's operator runs as.
pub const RELEASE_NAME: &str = "kadscale";
/// Where the release (ServiceAccount, leader-election Role, Leases) lives.
pub const RELEASE_NAMESPACE: &str = "kadscale-e2e-system";
/// The CRD the chart ships.
pub const CRD_NAME: &str = "dhtclusters.kadscale.io";

/// The installed release.
#[derive(Clone, Debug)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    /// The chart's ServiceAccount, whose token the operator processes use.
    pub service_account: String,
}

static RELEASE: OnceCell<Release> = OnceCell::const_new();

/// Installs the chart the first time it is called in this process and returns the release.
///
/// A release left by an earlier run is uninstalled first, so every run really installs. Helm
/// installs the chart's CRD only where none exists and never upgrades one, so the CRD is then
/// server-side applied from the chart, which keeps a reused cluster on the chart's current schema
/// without deleting the CRD (and with it every DhtCluster on the cluster). The chart's own
/// operator Deployment is scaled to zero: the operator under test runs as local processes (on
/// kind, an in-cluster replica would compete for the DhtClusters).
pub async fn install_once(cluster: &Cluster) -> Result<&'static Release> {
    RELEASE.get_or_try_init(|| install(cluster)).await
}

async fn install(cluster: &Cluster) -> Result<Release> {
    let helm = helm_binary();
    let helm_timeout = Duration::from_secs(180);
    let chart = repo_root().join("charts/kadscale");
    let previous =
        run(&helm, ["status", RELEASE_NAME, "-n", RELEASE_NAMESPACE], helm_timeout).await;
    if previous.is_ok() {
        eprintln!("e2e: removing release {RELEASE_NAME} left by an earlier run");
        run(&helm, ["uninstall", RELEASE_NAME, "-n", RELEASE_NAMESPACE, "--wait"], helm_timeout)
            .await?;
    }
    eprintln!("e2e: helm install {RELEASE_NAME} {} -n {RELEASE_NAMESPACE}", chart.display());
    let chart = chart.to_string_lossy().into_owned();
    run(
        &helm,
        [
            "install",
            RELEASE_NAME,
            chart.as_str(),
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--set",
            "replicaCount=0",
            "--wait",
            "--timeout",
            "2m",
        ],
        helm_timeout,
    )
    .await
    .context("helm install of charts/kadscale")?;
    let crd_file = repo_root().join("charts/kadscale/crds/dhtcluster.yaml");
    kubectl([
        "apply".as_ref(),
        "--server-side".as_ref(),
        "--force-conflicts".as_ref(),
        "--field-manager=kadscale-e2e".as_ref(),
        "-f".as_ref(),
        crd_file.as_os_str(),
    ])
    .await
    .context("bringing the DhtCluster CRD up to the chart's")?;

    let crds = Api::<CustomResourceDefinition>::all(cluster.client.clone());
    until("the DhtCluster CRD to be Established", Duration::from_secs(60), || async {
        let crd = crds.get(CRD_NAME).await?;
        let established = crd
            .status
            .and_then(|status| status.conditions)
            .unwrap_or_default()
            .iter()
            .any(|condition| condition.type_ == "Established" && condition.status == "True");
        Ok(if established { Check::Done(()) } else { Check::NotYet("not Established".into()) })
    })
    .await?;

    let accounts = Api::<ServiceAccount>::namespaced(cluster.client.clone(), RELEASE_NAMESPACE)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE_NAME}")))
        .await
        .context("listing the release's ServiceAccounts")?;
    let names: Vec<String> =
        accounts.items.into_iter().filter_map(|account| account.metadata.name).collect();
    let [service_account] = names.as_slice() else {
        bail!("expected the chart to create one ServiceAccount in {RELEASE_NAMESPACE}, found {names:?}");
    };
    Ok(Release {
        name: RELEASE_NAME.to_string(),
        namespace: RELEASE_NAMESPACE.to_string(),
        service_account: service_account.clone(),
    })
}

/// `helm status` of the release as JSON.
pub async fn status(release: &Release) -> Result<serde_json::Value> {
    let output = run(
        helm_binary(),
        ["status", release.name.as_str(), "-n", release.namespace.as_str(), "-o", "json"],
        Duration::from_secs(60),
    )
    .await?;
    serde_json::from_str(&output).context("parsing `helm status -o json`")
}
