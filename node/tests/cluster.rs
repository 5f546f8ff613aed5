//! `dht-node cluster` in-process: a policy-sized tier on 127.0.0.1 grows, loses a bootstrap
//! node, keeps its values, and shrinks after the stabilization window.

use std::time::Duration;

use clap::Parser;
use kadscale_node::cluster::report::ClusterReport;
use kadscale_node::cluster::scenario::ClusterCommand;
use kadscale_node::cluster::{Cluster, ClusterArgs, Outcome};
use kadscale_node::codec::Value;
use kadscale_node::tier::{RatioStatus, Tier};

/// The flags as `dht-node cluster` reads them.
#[derive(Parser)]
struct ClusterFlags {
    #[command(flatten)]
    args: ClusterArgs,
}

fn cluster_args(flags: &[&str]) -> ClusterArgs {
    let argv = ["dht-node cluster"].into_iter().chain(flags.iter().copied());
    ClusterFlags::try_parse_from(argv).expect("cluster flags parse").args
}

async fn apply(cluster: &mut Cluster, command: ClusterCommand) -> Outcome {
    let text = command.to_string();
    cluster.apply(&command).await.unwrap_or_else(|error| panic!("{text}: {error:#}"))
}

fn report_of(outcome: Outcome) -> ClusterReport {
    match outcome {
        Outcome::Report(report) => *report,
        other => panic!("expected a table, got {other:?}"),
    }
}

/// Polls the table until `done` holds (joins are counted by notices sent after the join).
async fn report_when(cluster: &Cluster, done: impl Fn(&ClusterReport) -> bool) -> ClusterReport {
    for _ in 0..100 {
        let report = cluster.report();
        if done(&report) {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.report()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_follows_the_workers_and_values_survive_a_lost_bootstrap_node() {
    let args = cluster_args(&["--workers", "20", "--scale-down-stabilization", "1"]);
    let mut cluster = Cluster::start(args).await.expect("cluster starts");

    let report = cluster.report();
    assert_eq!(report.plan.tier, Tier::Medium, "20 workers");
    assert_eq!((report.bootstraps_running(), report.plan.bootstrap_replicas), (3, 3));
    assert_eq!((report.workers, report.workers_joined), (20, 20));

    let values = [("alpha", "one"), ("beta", "two"), ("gamma", "three")];
    for (key, value) in values {
        let put = ClusterCommand::Put { key: key.into(), value: value.into() };
        match apply(&mut cluster, put).await {
            Outcome::Stored { nodes, .. } => assert!(nodes > 0, "{key} stored nowhere"),
            other => panic!("put {key}: {other:?}"),
        }
    }

    let report = report_of(apply(&mut cluster, ClusterCommand::Workers(60)).await);
    assert_eq!(report.plan.tier, Tier::Large, "60 workers");
    assert_eq!((report.bootstraps_running(), report.plan.bootstrap_replicas), (4, 4));
    assert_eq!((report.workers, report.workers_joined), (60, 60));
    assert_eq!(report.plan.ratio, 15.0);
    assert_eq!(report.plan.ratio_status, RatioStatus::Ok);
    assert!(report.join_p50.is_some() && report.join_p50 <= report.join_p99);
    let scale_up = report.last_scale_up.expect("every new worker joined");
    assert_eq!(scale_up.added, 40);
    assert!(report.to_string().contains("tier          large\n"), "{report}");

    // Every worker tells the seeds it joined through; every bootstrap node served some.
    let report = report_when(&cluster, |r| {
        r.joins_served_total() >= 60 && r.bootstraps.iter().all(|row| row.joins_served > 0)
    })
    .await;
    assert!(report.joins_served_total() >= 60, "{report}");
    assert!(report.bootstraps.iter().all(|row| row.joins_served > 0), "{report}");

    match apply(&mut cluster, ClusterCommand::KillBootstrap(1)).await {
        Outcome::BootstrapStopped { index: 1, .. } => {}
        other => panic!("kill-bootstrap 1: {other:?}"),
    }
    assert!(cluster.apply(&ClusterCommand::KillBootstrap(1)).await.is_err(), "already stopped");
    assert!(cluster.apply(&ClusterCommand::KillBootstrap(9)).await.is_err(), "no such node");
    let report = cluster.report();
    assert_eq!((report.bootstraps_running(), report.plan.bootstrap_replicas), (3, 4));
    assert!(!report.bootstraps[1].running);

    for (key, value) in values {
        match apply(&mut cluster, ClusterCommand::Get { key: key.into() }).await {
            Outcome::Got { value: Some(found), .. } => assert_eq!(found, Value::Str(value.into())),
            other => panic!("get {key} after the kill: {other:?}"),
        }
    }
    match apply(&mut cluster, ClusterCommand::Get { key: "never-put".into() }).await {
        Outcome::Got { value: None, .. } => {}
        other => panic!("get never-put: {other:?}"),
    }

    let killed_addr = cluster.report().bootstraps[1].addr;
    match apply(&mut cluster, ClusterCommand::StartBootstrap(1)).await {
        Outcome::BootstrapStarted { index: 1, addr } => assert_eq!(addr, killed_addr),
        other => panic!("start-bootstrap 1: {other:?}"),
    }
    let report = report_when(&cluster, |r| r.bootstraps[1].routing_table > 0).await;
    assert_eq!(report.bootstraps_running(), 4);
    assert!(report.bootstraps[1].routing_table > 0, "restarted node rejoined its peers");

    // Shrinking: workers go at once, the tier only after the stabilization window.
    let report = report_of(apply(&mut cluster, ClusterCommand::Workers(20)).await);
    assert_eq!(report.workers, 20);
    assert_eq!(report.plan.bootstrap_replicas, 4, "scale-down waits: {}", report.plan.reason);
    apply(&mut cluster, ClusterCommand::Wait(Duration::from_millis(1500))).await;
    let report = report_of(apply(&mut cluster, ClusterCommand::Status).await);
    assert_eq!(report.plan.tier, Tier::Medium);
    assert_eq!((report.bootstraps_running(), report.bootstraps.len()), (3, 3));
    cluster.shutdown();
}
