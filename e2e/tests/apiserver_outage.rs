//! The API server stopped for 30 s in the middle of a scale: the operator process rides it out
//! (same process, never restarted), gets its Lease back and converges.
//!
//! A test binary of its own, because the outage would fail whatever else ran meanwhile (test
//! binaries run one after another). It stops and starts kube-apiserver with
//! `e2e/controlplane/apiserver.sh`, so it needs the local control plane of `just cluster-up`;
//! elsewhere (kind) it skips loudly, or fails with KADSCALE_E2E_REQUIRED.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use kadscale_e2e::command::run;
use kadscale_e2e::dht::{MEDIUM_30, SETTLE_TIMEOUT, SMALL_10};
use kadscale_e2e::paths::{repo_root, skip_or_fail};
use kadscale_e2e::scenario::{Scenario, LEASE_TIMEOUT};

/// How long the API server stays down.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rides_out_a_30s_api_server_outage_during_a_scale() -> Result<()> {
    let test = "operator_rides_out_a_30s_api_server_outage_during_a_scale";
    let Some(scenario) = Scenario::start("outage").await? else { return Ok(()) };
    if !local_control_plane() {
        skip_or_fail(test, "the cluster is not the local control plane", "`just cluster-up`");
        return Ok(());
    }
    let mut operator = scenario.operator("operator-a").await?;
    let pid = operator.pid();
    scenario.wait_for_lease_holder(&["operator-a"], LEASE_TIMEOUT).await?;
    let (dht, _) = scenario.small_dht(SETTLE_TIMEOUT).await?;
    let reconciles_before = operator.reconciles().await?;

    // The scale lands, then the API server goes away before the operator can finish it: the
    // bootstrap tier must grow and turn Ready before workers grow, which takes seconds.
    dht.kubectl_scale(MEDIUM_30.workers).await?;
    apiserver("stop").await?;
    let stopped = Instant::now();
    eprintln!("e2e: kube-apiserver stopped for {OUTAGE:?}");
    // Past the Lease's renew deadline (10 s) the operator stops leading; it must stay alive and
    // keep answering /healthz.
    tokio::time::sleep(Duration::from_secs(15)).await;
    operator.ensure_running()?;
    let (alive, _) = operator.admin_get("/healthz").await?;
    ensure!(alive == 200, "/healthz answered {alive} during the outage");
    tokio::time::sleep_until((stopped + OUTAGE).into()).await;
    apiserver("start").await?;
    eprintln!("e2e: kube-apiserver back after {:?}", stopped.elapsed());

    let back = Instant::now();
    dht.wait_settled(MEDIUM_30, SETTLE_TIMEOUT).await?;
    eprintln!("e2e: converged at tier medium {:?} after the API server came back", back.elapsed());
    operator.ensure_running()?;
    ensure!(operator.pid() == pid, "the operator process was replaced");
    assert_eq!(
        scenario.lease_holder().await?.as_deref(),
        Some("operator-a"),
        "the operator takes its Lease back"
    );
    ensure!(
        operator.reconciles().await? > reconciles_before,
        "the same process reconciled after the outage"
    );
    // And it keeps working: a scale after the outage converges too.
    dht.kubectl_scale(SMALL_10.workers).await?;
    dht.wait_for("workers to shrink to 10 after the outage", SETTLE_TIMEOUT, |seen| {
        match seen.worker_replicas() {
            10 => Ok(()),
            other => Err(format!("Deployment replicas {other}")),
        }
    })
    .await?;
    operator.ensure_running()
}

/// Whether `up.sh` started a local control plane in the run directory (not kind).
fn local_control_plane() -> bool {
    let run_dir = std::env::var_os("KADSCALE_RUN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("e2e/.run"));
    std::fs::read_to_string(run_dir.join("cluster/mode")).is_ok_and(|mode| mode.trim() == "local")
}

/// `e2e/controlplane/apiserver.sh stop|start`.
async fn apiserver(action: &str) -> Result<()> {
    let script = repo_root().join("e2e/controlplane/apiserver.sh");
    run(&script, [action], Duration::from_secs(150)).await?;
    Ok(())
}
