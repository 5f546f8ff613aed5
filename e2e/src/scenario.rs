//! What every cluster scenario starts from: the cluster, the installed chart, a namespace of its
//! own, and a Lease of its own for the operators it starts.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use serde_json::json;

use crate::chart::{install_once, Release};
use crate::cluster::{Cluster, TestNamespace};
use crate::dht::{Dht, Observation, SMALL_10};
use crate::operator::{OperatorProcess, OperatorSettings};
use crate::wait::{until, Check};

/// Taking a free Lease, or one whose holder stopped renewing (lease duration plus retry).
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// One scenario's world. Operators started from it watch only its namespace and compete only
/// for its Lease, so scenarios run side by side.
pub struct Scenario {
    pub client: Client,
    pub release: &'static Release,
    pub namespace: TestNamespace,
    pub lease_name: String,
}

impl Scenario {
    /// Creates DhtCluster `dht` with 10 workers in this scenario's namespace and waits until it
    /// has settled at tier small ([`SMALL_10`]), the starting point most scenarios share.
    pub async fn small_dht(&self, timeout: Duration) -> Result<(Dht, Observation)> {
        let spec = json!({"workers": {"replicas": 10}});
        let dht = Dht::create(&self.client, self.namespace(), "dht", spec).await?;
        let settled = dht.wait_settled(SMALL_10, timeout).await?;
        Ok((dht, settled))
    }

    /// `None` when the test must skip (no cluster and `KADSCALE_E2E_REQUIRED` unset).
    pub async fn start(test: &str) -> Result<Option<Scenario>> {
        let Some(cluster) = Cluster::connect_or_skip(test).await else {
            return Ok(None);
        };
        let release = install_once(&cluster).await.context("installing the chart")?;
        let namespace = cluster.namespace(test).await?;
        let lease_name = format!("kadscale-{}", namespace.name);
        Ok(Some(Scenario { client: cluster.client, release, namespace, lease_name }))
    }

    pub fn namespace(&self) -> &str {
        &self.namespace.name
    }

    /// Starts an operator process with leader-election identity `identity`.
    pub async fn operator(&self, identity: &str) -> Result<OperatorProcess> {
        OperatorProcess::start(
            self.release,
            OperatorSettings {
                identity,
                lease_name: &self.lease_name,
                watch_namespace: self.namespace(),
            },
        )
        .await
    }

    /// This scenario's Lease, if an operator has created it.
    pub async fn lease(&self) -> Result<Option<Lease>> {
        Ok(Api::<Lease>::namespaced(self.client.clone(), &self.release.namespace)
            .get_opt(&self.lease_name)
            .await?)
    }

    /// The Lease's holderIdentity, if any.
    pub async fn lease_holder(&self) -> Result<Option<String>> {
        Ok(self.lease().await?.and_then(|lease| lease.spec?.holder_identity))
    }

    /// Waits until the Lease names one of `identities` as holder; returns that holder.
    pub async fn wait_for_lease_holder(
        &self,
        identities: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let what = format!(
            "one of {identities:?} to hold Lease {}/{}",
            self.release.namespace, self.lease_name
        );
        until(&what, timeout, || async {
            Ok(match self.lease_holder().await? {
                Some(holder) if identities.contains(&holder.as_str()) => Check::Done(holder),
                other => Check::NotYet(format!("holderIdentity {other:?}")),
            })
        })
        .await
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args([
                "delete",
                "lease",
                &self.lease_name,
                "-n",
                &self.release.namespace,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}
