//! The plan of a reconcile (pure): bootstrap replicas from the tier policy, and how many workers
//! the Deployment may have right now.
//!
//! The tier policy (`kadscale_node::tier`) decides bootstrap replicas, including the scale-down
//! stabilization window. Its previous plan comes back from the `DhtCluster`'s status, so an
//! operator restart forgets neither the bootstrap count nor the scale-down clock. This module
//! adds the ordering rule: on the way up bootstrap replicas grow first and the worker Deployment
//! grows only once the bootstrap StatefulSet is Ready at its new size (or the ready timeout has
//! passed, so nothing deadlocks); on the way down workers shrink at once and bootstraps follow
//! after the stabilization window.

use std::time::{Duration, SystemTime};

use kadscale_node::tier::{RatioStatus, Tier, TierPlan};

use crate::builders::{Children, ClusterIdentity};
use crate::crd::DhtClusterStatus;
use crate::time::{from_time, to_time};
use crate::validate::Settings;

/// The tier plan for `settings.workers` now, continuing the plan recorded in `previous`.
pub fn plan_bootstrap(
    settings: &Settings,
    previous: Option<&DhtClusterStatus>,
    now: SystemTime,
) -> TierPlan {
    let previous_plan = previous.and_then(previous_plan);
    settings.policy.plan(settings.workers, previous_plan.as_ref(), now)
}

/// The plan recorded in a status, or `None` when the status holds none (a new cluster).
pub fn previous_plan(status: &DhtClusterStatus) -> Option<TierPlan> {
    let tier: Tier = serde_json::from_value(status.tier.clone()?.into()).ok()?;
    let ratio_status: RatioStatus =
        serde_json::from_value(status.ratio_status.clone()?.into()).ok()?;
    Some(TierPlan {
        workers: u32::try_from(status.workers.desired).ok()?,
        tier,
        bootstrap_replicas: u32::try_from(status.bootstrap.desired).ok()?,
        target_bootstrap_replicas: u32::try_from(status.bootstrap.target).ok()?,
        ratio: status.ratio_value?,
        ratio_status,
        scale_down_pending_since: status.scale_down_pending_since.as_ref().map(from_time),
        // Not kept in status: the Progressing condition's message carries it instead.
        reason: String::new(),
    })
}

/// What the worker Deployment looks like before this reconcile touches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `spec.replicas` of the worker Deployment; `None` when it does not exist yet.
    pub workers_applied: Option<u32>,
    /// Ready pods of the bootstrap StatefulSet, after this reconcile applied its replicas.
    pub bootstrap_ready: u32,
}

/// Whether the worker Deployment may take the spec's replicas now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerGate {
    /// Not growing, or the bootstrap tier is ready for the growth.
    Open,
    /// Growing while the bootstrap StatefulSet is not Ready at its new size: hold the current
    /// replicas until it is, or until `since + timeout`.
    Waiting { since: SystemTime, remaining: Duration },
    /// The bootstrap tier did not become Ready within the timeout; workers grew anyway.
    TimedOut,
}

/// Worker replicas to apply now, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerPlan {
    pub replicas: u32,
    pub gate: WorkerGate,
}

impl WorkerPlan {
    /// The clock to keep in `status.workerGrowthWaitingSince`.
    pub fn waiting_since(&self) -> Option<SystemTime> {
        match self.gate {
            WorkerGate::Waiting { since, .. } => Some(since),
            WorkerGate::Open | WorkerGate::TimedOut => None,
        }
    }
}

/// Worker replicas for the Deployment: shrinking is immediate, growing waits for the bootstrap
/// tier (at `bootstrap_replicas`) to be Ready, at most `settings.bootstrap_ready_timeout` counted
/// from the `waiting_since` kept in status.
pub fn plan_workers(
    settings: &Settings,
    bootstrap_replicas: u32,
    observed: Observed,
    waiting_since: Option<SystemTime>,
    now: SystemTime,
) -> WorkerPlan {
    let desired = settings.workers;
    let current = observed.workers_applied.unwrap_or(0);
    if desired <= current || observed.bootstrap_ready >= bootstrap_replicas {
        return WorkerPlan { replicas: desired, gate: WorkerGate::Open };
    }
    let since = waiting_since.unwrap_or(now);
    let waited = now.duration_since(since).unwrap_or_default();
    match settings.bootstrap_ready_timeout.checked_sub(waited) {
        Some(remaining) if !remaining.is_zero() => {
            WorkerPlan { replicas: current, gate: WorkerGate::Waiting { since, remaining } }
        }
        _ => WorkerPlan { replicas: desired, gate: WorkerGate::TimedOut },
    }
}

/// When to look again without a watch event: when a scale-down window or a worker wait ends.
pub fn requeue_after(
    settings: &Settings,
    plan: &TierPlan,
    workers: &WorkerPlan,
    now: SystemTime,
) -> Option<Duration> {
    let scale_down = plan.scale_down_pending_since.map(|since| {
        let waited = now.duration_since(since).unwrap_or_default();
        settings.policy.scale_down_stabilization.saturating_sub(waited)
    });
    let worker_wait = match workers.gate {
        WorkerGate::Waiting { remaining, .. } => Some(remaining),
        WorkerGate::Open | WorkerGate::TimedOut => None,
    };
    // One second past the deadline, so the next reconcile sees it expired.
    [scale_down, worker_wait].into_iter().flatten().min().map(|d| d + Duration::from_secs(1))
}

/// Everything one reconcile decides, before it talks to the API server.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub plan: TierPlan,
    pub workers: WorkerPlan,
    pub children: Children,
    /// Apply the worker Deployment before the bootstrap side, because workers shrink.
    pub workers_first: bool,
    pub requeue_after: Option<Duration>,
}

/// Plans bootstrap and worker replicas from the settings, the previous status and what the
/// cluster looks like, and builds every child object for them.
pub fn decide(
    id: &ClusterIdentity,
    settings: &Settings,
    previous: Option<&DhtClusterStatus>,
    observed: Observed,
    now: SystemTime,
) -> Decision {
    let plan = plan_bootstrap(settings, previous, now);
    let waiting_since =
        previous.and_then(|s| s.worker_growth_waiting_since.as_ref()).map(from_time);
    let workers = plan_workers(settings, plan.bootstrap_replicas, observed, waiting_since, now);
    let workers_first = observed.workers_applied.is_some_and(|current| workers.replicas < current);
    let requeue_after = requeue_after(settings, &plan, &workers, now);
    let children = Children::build(id, settings, plan.bootstrap_replicas, workers.replicas);
    Decision { plan, workers, children, workers_first, requeue_after }
}

/// Records a plan in a status the way [`previous_plan`] reads it back.
pub fn record_plan(status: &mut DhtClusterStatus, plan: &TierPlan) {
    status.tier = Some(plan.tier.name().to_string());
    status.bootstrap.desired = saturating_i32(plan.bootstrap_replicas);
    status.bootstrap.target = saturating_i32(plan.target_bootstrap_replicas);
    status.workers.desired = saturating_i32(plan.workers);
    status.ratio = Some(kadscale_node::tier::format_ratio(plan.ratio));
    status.ratio_value = Some(plan.ratio);
    status.ratio_status = Some(plan.ratio_status.name().to_string());
    status.scale_down_pending_since = plan.scale_down_pending_since.map(to_time);
}

/// Kubernetes counts are int32; ours never exceed the schema's ranges, but saturate anyway.
pub fn saturating_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::{DhtClusterSpec, DEFAULT_IMAGE};
    use crate::validate::validate;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn settings(workers: u32, extra: serde_json::Value) -> Settings {
        let mut spec = json!({"workers": {"replicas": workers}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        validate(&serde_json::from_value::<DhtClusterSpec>(spec).unwrap(), DEFAULT_IMAGE).unwrap()
    }

    /// Plans `workers` at `now` continuing `status`, and records the plan back into it.
    fn step(status: &mut DhtClusterStatus, workers: u32, now: SystemTime) -> TierPlan {
        let plan = plan_bootstrap(&settings(workers, json!({})), Some(status), now);
        record_plan(status, &plan);
        plan
    }

    #[test]
    fn seed_boundaries_through_the_operator() {
        let table = [
            (0, "small", 2, "0.0:1", "OK"),
            (15, "small", 2, "7.5:1", "OK"),
            (16, "medium", 3, "5.3:1", "OK"),
            (50, "medium", 3, "16.7:1", "OK"),
            (51, "large", 4, "12.8:1", "OK"),
            (200, "large", 4, "50.0:1", "OK"),
            (201, "xlarge", 6, "33.5:1", "OK"),
            (500, "xlarge", 6, "83.3:1", "Warning"),
        ];
        for (workers, tier, bootstraps, ratio, ratio_status) in table {
            let mut status = DhtClusterStatus::default();
            step(&mut status, workers, t(0));
            assert_eq!(status.tier.as_deref(), Some(tier), "{workers}");
            assert_eq!(status.bootstrap.desired, bootstraps, "{workers}");
            assert_eq!(status.ratio.as_deref(), Some(ratio), "{workers}");
            assert_eq!(status.ratio_status.as_deref(), Some(ratio_status), "{workers}");
        }
    }

    #[test]
    fn proportional_at_500_stays_within_the_limit() {
        let settings = settings(500, json!({"bootstrap": {"strategy": "proportional"}}));
        let plan = plan_bootstrap(&settings, None, t(0));
        assert_eq!(plan.bootstrap_replicas, 10);
        assert_eq!(plan.ratio_status, RatioStatus::Ok);
    }

    #[test]
    fn status_round_trips_the_plan() {
        let mut status = DhtClusterStatus::default();
        let plan = step(&mut status, 300, t(0));
        let waiting = step(&mut status, 10, t(10));
        assert_eq!(waiting.scale_down_pending_since, Some(t(10)));
        let back = previous_plan(&status).unwrap();
        assert_eq!(back.bootstrap_replicas, plan.bootstrap_replicas);
        assert_eq!(back.scale_down_pending_since, Some(t(10)));
        assert_eq!(back.tier, Tier::Xlarge, "the tier in force while the window runs");
        assert_eq!(previous_plan(&DhtClusterStatus::default()), None);
    }

    #[test]
    fn scale_down_clock_survives_a_restart() {
        // The status is all a restarted operator has; the window still ends at t(10) + 300s.
        let mut status = DhtClusterStatus::default();
        step(&mut status, 300, t(0));
        let table =
            [(10, 6, Some(t(10))), (200, 6, Some(t(10))), (309, 6, Some(t(10))), (310, 2, None)];
        for (at, bootstraps, since) in table {
            let restarted: DhtClusterStatus =
                serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
            status = restarted;
            let plan = step(&mut status, 10, t(at));
            assert_eq!(plan.bootstrap_replicas, bootstraps, "at {at}s");
            assert_eq!(plan.scale_down_pending_since, since, "at {at}s");
        }
    }

    #[test]
    fn boundary_wobble_does_not_flap() {
        let mut status = DhtClusterStatus::default();
        step(&mut status, 51, t(0));
        for (i, workers) in [50, 51, 49, 50, 52, 50].into_iter().enumerate() {
            let plan = step(&mut status, workers, t(30 * (i as u64 + 1)));
            assert_eq!(plan.bootstrap_replicas, 4, "step {i}: {workers} workers");
        }
    }

    #[test]
    fn workers_wait_for_the_bootstrap_tier_on_the_way_up() {
        // 16 → 51 workers: tier medium (3) → large (4).
        let settings = settings(51, json!({}));
        let observed = Observed { workers_applied: Some(16), bootstrap_ready: 3 };
        let wait = plan_workers(&settings, 4, observed, None, t(0));
        assert_eq!(wait.replicas, 16);
        assert_eq!(
            wait.gate,
            WorkerGate::Waiting { since: t(0), remaining: Duration::from_secs(120) }
        );
        let still = plan_workers(&settings, 4, observed, wait.waiting_since(), t(60));
        assert_eq!((still.replicas, still.waiting_since()), (16, Some(t(0))));
        let ready = Observed { bootstrap_ready: 4, ..observed };
        let grown = plan_workers(&settings, 4, ready, still.waiting_since(), t(61));
        assert_eq!((grown.replicas, grown.gate), (51, WorkerGate::Open));
    }

    #[test]
    fn workers_grow_after_the_ready_timeout() {
        let settings = settings(201, json!({}));
        let observed = Observed { workers_applied: Some(200), bootstrap_ready: 4 };
        let at_119 = plan_workers(&settings, 6, observed, Some(t(0)), t(119));
        assert_eq!(at_119.replicas, 200);
        let at_120 = plan_workers(&settings, 6, observed, Some(t(0)), t(120));
        assert_eq!((at_120.replicas, at_120.gate), (201, WorkerGate::TimedOut));
        assert_eq!(at_120.waiting_since(), None);
    }

    #[test]
    fn workers_shrink_at_once_and_bootstraps_after_the_window() {
        // 500 → 15 workers: workers drop now, bootstraps hold 6 for 300s, then drop to 2.
        let mut status = DhtClusterStatus::default();
        step(&mut status, 500, t(0));
        let settings = settings(15, json!({}));
        let observed = Observed { workers_applied: Some(500), bootstrap_ready: 6 };
        let table = [(1, 6), (150, 6), (300, 6), (301, 2)];
        for (at, bootstraps) in table {
            let plan = step(&mut status, 15, t(at));
            let workers = plan_workers(&settings, plan.bootstrap_replicas, observed, None, t(at));
            assert_eq!(workers.replicas, 15, "at {at}s");
            assert_eq!(plan.bootstrap_replicas, bootstraps, "at {at}s");
        }
    }

    #[test]
    fn a_new_cluster_waits_for_its_first_bootstrap_pods() {
        let settings = settings(30, json!({}));
        let observed = Observed { workers_applied: None, bootstrap_ready: 0 };
        let first = plan_workers(&settings, 3, observed, None, t(0));
        assert_eq!(first.replicas, 0);
        let ready = Observed { bootstrap_ready: 3, ..observed };
        assert_eq!(plan_workers(&settings, 3, ready, Some(t(0)), t(5)).replicas, 30);
    }

    #[test]
    fn unchanged_tier_growth_is_immediate_when_bootstraps_are_ready() {
        let settings = settings(40, json!({}));
        let observed = Observed { workers_applied: Some(20), bootstrap_ready: 3 };
        assert_eq!(plan_workers(&settings, 3, observed, None, t(0)).replicas, 40);
    }

    #[test]
    fn requeue_at_the_earliest_deadline() {
        let mut status = DhtClusterStatus::default();
        step(&mut status, 300, t(0));
        let plan = step(&mut status, 10, t(100));
        let settings = settings(10, json!({}));
        let open = WorkerPlan { replicas: 10, gate: WorkerGate::Open };
        assert_eq!(requeue_after(&settings, &plan, &open, t(100)), Some(Duration::from_secs(301)));
        let waiting = WorkerPlan {
            replicas: 5,
            gate: WorkerGate::Waiting { since: t(90), remaining: Duration::from_secs(20) },
        };
        assert_eq!(
            requeue_after(&settings, &plan, &waiting, t(100)),
            Some(Duration::from_secs(21))
        );
        let stable = step(&mut status, 10, t(500));
        assert_eq!(requeue_after(&settings, &stable, &open, t(500)), None);
    }
}
