//! The operator benchmark (`just bench-operator`) at a tiny size, so that it cannot rot: the
//! same code as `operator-bench`, 5 + 2 scale changes, a sweep to 60 workers, 2 clusters of 3
//! workers, no 1,000-worker cluster. Asserts that every figure is there and sane; writes nothing.

use std::time::Duration;

use anyhow::Result;
use kadscale_e2e::bench::{self, Sizes};
use kadscale_e2e::plot::Direction;
use kadscale_e2e::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_bench_at_a_tiny_size() -> Result<()> {
    let Some(scenario) = Scenario::start("bench-smoke").await? else { return Ok(()) };
    let sizes = Sizes::tiny();
    let report = bench::run(&scenario, &sizes).await?;

    for (scale, changes) in
        [(&report.scale, sizes.scale_changes), (&report.busy_scale, sizes.busy_scale_changes)]
    {
        assert_eq!(scale.changes.len(), changes);
        for change in &scale.changes {
            assert_ne!(change.from_bootstraps, change.to_bootstraps, "{change:?} moved no tier");
            assert!(change.latency_ms > 0.0, "{change:?}");
            assert!(change.latency_ms < 30_000.0, "{change:?}");
        }
        assert!(scale.p50_ms > 0.0 && scale.p50_ms <= scale.p99_ms && scale.p99_ms <= scale.max_ms);
    }

    // Up 0..60 (with the tier edges 15, 16, 50, 51) and back: 8 + 7 points, all as the policy says.
    assert_eq!(report.sweep.len(), 15, "{:?}", report.sweep);
    assert_eq!(report.sweep_mismatches, 0, "{:?}", report.sweep);
    let at = |direction: Direction, workers: u32| {
        report
            .sweep
            .iter()
            .find(|p| p.direction == direction && p.workers == workers)
            .map(|p| p.bootstrap_replicas)
    };
    assert_eq!(at(Direction::Up, 51), Some(4));
    assert_eq!(at(Direction::Down, 15), Some(2), "scale-down is immediate with a 0 s window");

    assert!(report.xlarge.is_none());
    let clusters = &report.clusters;
    assert_eq!(clusters.clusters, 2);
    assert_eq!(clusters.pods_ready, 2 * (3 + 2), "3 workers and 2 bootstrap pods each");
    assert_eq!(clusters.pods_wanted, clusters.pods_ready);
    let ready_s = clusters.ready_s.expect("2 small clusters turn Ready");
    assert!(clusters.reconciled_s > 0.0 && clusters.reconciled_s <= ready_s);
    assert!(clusters.reconciled_per_second > 0.0 && clusters.rescaled_per_second > 0.0);

    let operator = &report.operator;
    assert!(operator.cpu_seconds > 0.0, "{operator:?}");
    assert!(
        operator.peak_rss_bytes >= clusters.settled_rss_bytes && clusters.settled_rss_bytes > 0
    );
    let changes = sizes.scale_changes + sizes.busy_scale_changes + report.sweep.len();
    assert!(operator.reconciles >= changes as f64, "{operator:?}");
    assert!(operator
        .phases
        .iter()
        .all(|phase| phase.seconds < Duration::from_secs(600).as_secs_f64()));
    Ok(())
}
