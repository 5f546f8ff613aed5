//! The cluster under test and the namespace each test runs in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Config};

use crate::paths::skip_or_fail;

/// The pod security level every test namespace enforces: the operator's pods must pass it.
pub const POD_SECURITY_LEVEL: &str = "restricted";

/// An admin connection to the cluster in `KUBECONFIG`.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
}

impl Cluster {
    /// Connects to the cluster in `KUBECONFIG`. `None` means the test must skip: no cluster is
    /// configured or reachable and `KADSCALE_E2E_REQUIRED` is unset (a loud message says so).
    /// With `KADSCALE_E2E_REQUIRED` set, an unreachable cluster panics instead.
    pub async fn connect_or_skip(test: &str) -> Option<Cluster> {
        let reason = if std::env::var_os("KUBECONFIG").is_none() {
            "KUBECONFIG is not set".to_string()
        } else {
            match Self::connect().await {
                Ok(cluster) => return Some(cluster),
                Err(error) => format!("the cluster in KUBECONFIG is not reachable: {error:#}"),
            }
        };
        skip_or_fail(test, &reason, "`just cluster-up` starts a cluster");
        None
    }

    async fn connect() -> Result<Cluster> {
        let config = Config::infer().await.context("reading KUBECONFIG")?;
        let server = config.cluster_url.clone();
        let client = Client::try_from(config).context("building a client")?;
        let version = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
            .await
            .with_context(|| format!("{server} did not answer /version within 10s"))?
            .with_context(|| format!("GET {server}/version"))?;
        eprintln!("e2e: cluster {server} runs Kubernetes {}", version.git_version);
        Ok(Cluster { client })
    }

    /// Creates a fresh namespace `e2e-PREFIX-SUFFIX` that enforces the restricted pod security
    /// standard; it is deleted (without waiting) when the returned guard drops.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!("e2e-{prefix}-{:x}", (nanos ^ u128::from(std::process::id())) as u32);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        ("pod-security.kubernetes.io/enforce", POD_SECURITY_LEVEL),
                        ("pod-security.kubernetes.io/enforce-version", "latest"),
                        ("app.kubernetes.io/part-of", "kadscale-e2e"),
                    ]
                    .into_iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace { name })
    }
}

/// A test's namespace; deleted when dropped (in the background: kwok's pods go on their own).
pub struct TestNamespace {
    pub name: String,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("KADSCALE_E2E_KEEP_NAMESPACES").is_some() {
            eprintln!("e2e: keeping namespace {} (KADSCALE_E2E_KEEP_NAMESPACES)", self.name);
            return;
        }
        let deleted = std::process::Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .output();
        match deleted {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "e2e: deleting namespace {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("e2e: could not run kubectl to delete {}: {error}", self.name),
        }
    }
}
