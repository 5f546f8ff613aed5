//! The operator under test: `dht-operator run` as a local process, authenticated as the chart's
//! ServiceAccount through a token kubeconfig, so the chart's RBAC is exactly what it may do.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kube::config::{AuthInfo, Context as KubeContext, Kubeconfig, NamedAuthInfo, NamedContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use crate::chart::Release;
use crate::command::{kubectl, run};
use crate::paths::{artifacts_dir, repo_root, target_dir};

static OPERATOR_BINARY: OnceCell<PathBuf> = OnceCell::const_new();
static SERVICE_ACCOUNT_KUBECONFIG: OnceCell<PathBuf> = OnceCell::const_new();

/// The `dht-operator` binary: `KADSCALE_OPERATOR_BIN`, else built once per test binary with
/// cargo (a no-op when `just test-e2e` built it already).
pub async fn operator_binary() -> Result<&'static Path> {
    let path = OPERATOR_BINARY
        .get_or_try_init(|| async {
            if let Some(path) = std::env::var_os("KADSCALE_OPERATOR_BIN") {
                return Ok(PathBuf::from(path));
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let manifest = repo_root().join("Cargo.toml");
            let manifest = manifest.to_string_lossy();
            run(
                cargo,
                [
                    "build",
                    "--manifest-path",
                    &manifest,
                    "-p",
                    "kadscale-operator",
                    "--bin",
                    "dht-operator",
                ],
                Duration::from_secs(900),
            )
            .await
            .context("building dht-operator")?;
            anyhow::Ok(target_dir().join("debug/dht-operator"))
        })
        .await?;
    Ok(path.as_path())
}

/// A kubeconfig for the release's ServiceAccount: the admin kubeconfig's current cluster with a
/// token from `kubectl create token`. Made once per test binary.
pub async fn service_account_kubeconfig(release: &Release) -> Result<&'static Path> {
    let path = SERVICE_ACCOUNT_KUBECONFIG
        .get_or_try_init(|| async {
            let token = kubectl([
                "create",
                "token",
                release.service_account.as_str(),
                "-n",
                release.namespace.as_str(),
                "--duration=2h",
            ])
            .await
            .context("creating a token for the chart's ServiceAccount")?;
            let admin = Kubeconfig::read().context("reading KUBECONFIG")?;
            let current =
                admin.current_context.clone().context("KUBECONFIG has no current-context")?;
            let cluster_name = admin
                .contexts
                .iter()
                .find(|named| named.name == current)
                .and_then(|named| named.context.as_ref())
                .map(|context| context.cluster.clone())
                .with_context(|| format!("KUBECONFIG has no context named {current}"))?;
            let cluster = admin
                .clusters
                .into_iter()
                .find(|named| named.name == cluster_name)
                .with_context(|| format!("KUBECONFIG has no cluster named {cluster_name}"))?;
            let user =
                format!("system:serviceaccount:{}:{}", release.namespace, release.service_account);
            let kubeconfig = Kubeconfig {
                clusters: vec![cluster],
                auth_infos: vec![NamedAuthInfo {
                    name: user.clone(),
                    auth_info: Some(AuthInfo {
                        token: Some(token.trim().to_string().into()),
                        ..AuthInfo::default()
                    }),
                    other: Default::default(),
                }],
                contexts: vec![NamedContext {
                    name: "operator".into(),
                    context: Some(KubeContext {
                        cluster: cluster_name,
                        user: Some(user),
                        ..KubeContext::default()
                    }),
                    other: Default::default(),
                }],
                current_context: Some("operator".into()),
                ..Kubeconfig::default()
            };
            let dir = artifacts_dir();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("operator-{}.kubeconfig", std::process::id()));
            // JSON is YAML, and every kubeconfig reader takes it.
            std::fs::write(&path, serde_json::to_vec_pretty(&kubeconfig)?)
                .with_context(|| format!("writing {}", path.display()))?;
            anyhow::Ok(path)
        })
        .await?;
    Ok(path.as_path())
}

/// What one operator process is told.
pub struct OperatorSettings<'a> {
    /// Its leader-election identity (the Lease's holderIdentity while it leads).
    pub identity: &'a str,
    /// The Lease it competes for, in the release namespace.
    pub lease_name: &'a str,
    /// The one namespace it watches, so that tests running side by side stay apart.
    pub watch_namespace: &'a str,
}

/// A running `dht-operator run`; killed when dropped.
pub struct OperatorProcess {
    child: Child,
    pub identity: String,
    pub admin_addr: SocketAddr,
    pub log_path: PathBuf,
}

impl OperatorProcess {
    /// Starts `dht-operator run` as the release's ServiceAccount, logging at debug level.
    pub async fn start(
        release: &Release,
        settings: OperatorSettings<'_>,
    ) -> Result<OperatorProcess> {
        Self::start_with_log_filter(release, settings, "info,kadscale_operator=debug").await
    }

    /// [`OperatorProcess::start`] with `RUST_LOG=log_filter` (the benchmark measures the operator
    /// at the chart's level, `info`, not with the tests' debug logging).
    pub async fn start_with_log_filter(
        release: &Release,
        settings: OperatorSettings<'_>,
        log_filter: &str,
    ) -> Result<OperatorProcess> {
        let binary = operator_binary().await?;
        let kubeconfig = service_account_kubeconfig(release).await?;
        let admin_addr = free_loopback_port()?;
        let log_dir = artifacts_dir().join(settings.watch_namespace);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("{}.log", settings.identity));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(binary)
            .args([
                "run".to_string(),
                format!("--admin-addr={admin_addr}"),
                format!("--lease-name={}", settings.lease_name),
                format!("--lease-namespace={}", release.namespace),
                format!("--namespace={}", settings.watch_namespace),
                "--log-format=text".to_string(),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", settings.identity)
            .env("RUST_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        eprintln!(
            "e2e: started operator {} (pid {}), log {}",
            settings.identity,
            child.id(),
            log_path.display()
        );
        Ok(OperatorProcess { child, identity: settings.identity.to_string(), admin_addr, log_path })
    }

    /// The process id (for /proc/PID: CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited (with the tail of its log).
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("operator {} exited ({status}); log tail:\n{}", self.identity, self.log_tail(40));
        }
        Ok(())
    }

    /// GET `path` on the admin server: (status code, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.admin_addr, path).await
    }

    /// The total of `kadscale_operator_reconciles_total` (every result) on its /metrics.
    pub async fn reconciles(&self) -> Result<f64> {
        let (code, body) = self.admin_get("/metrics").await?;
        ensure!(code == 200, "operator {} /metrics answered {code}", self.identity);
        body.lines()
            .filter(|line| line.starts_with("kadscale_operator_reconciles_total"))
            .map(|line| {
                let value = line.rsplit(' ').next().unwrap_or_default();
                value.parse::<f64>().with_context(|| format!("metric line {line:?}"))
            })
            .sum()
    }

    /// Sends `signal` (a name such as TERM, STOP, CONT) to the process.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        run("kill", [format!("-{signal}"), self.child.id().to_string()], Duration::from_secs(5))
            .await?;
        Ok(())
    }

    /// Sends SIGTERM and waits for a clean exit (the operator releases its Lease on the way out).
    pub async fn terminate(mut self, timeout: Duration) -> Result<()> {
        self.signal("TERM").await?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "operator {} exited with {status} after SIGTERM; log tail:\n{}",
                        self.identity,
                        self.log_tail(40)
                    );
                }
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("operator {} still running {timeout:?} after SIGTERM", self.identity);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        eprintln!(
            "e2e: operator {} stopped; log {} ends with:\n{}",
            self.identity,
            self.log_path.display(),
            self.log_tail(30)
        );
    }
}

/// A loopback port nothing listens on right now.
fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// A minimal HTTP/1.0 GET, enough for the admin server's plain-text endpoints.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no status line in {head:?}"))?;
    Ok((code, body.to_string()))
}
