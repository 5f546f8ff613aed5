//! Status and events: computed here (pure), written here (the one place that patches the status
//! subresource and publishes events).

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kadscale_node::tier::{format_ratio, RatioStatus, TierPlan};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;
use serde_json::json;

use crate::apply::{ApiError, FIELD_MANAGER};
use crate::builders::ClusterIdentity;
use crate::crd::{DhtCluster, DhtClusterStatus};
use crate::plan::{record_plan, saturating_i32, Decision, WorkerGate, WorkerPlan};
use crate::time::to_time;
use crate::validate::Settings;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const RATIO_WITHIN_LIMIT: &str = "RatioWithinLimit";

/// What the children report after this reconcile applied them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildrenStatus {
    /// Ready pods of the bootstrap StatefulSet.
    pub bootstrap_ready: u32,
    /// Pods of the worker Deployment.
    pub worker_replicas: u32,
    /// Ready pods of the worker Deployment.
    pub worker_ready: u32,
}

/// Everything a successful reconcile decided, for [`compute`].
#[derive(Clone, Debug)]
pub struct Reconciled<'a> {
    pub generation: Option<i64>,
    pub settings: &'a Settings,
    pub plan: &'a TierPlan,
    pub workers: &'a WorkerPlan,
    pub children: ChildrenStatus,
    pub selector: String,
}

impl<'a> Reconciled<'a> {
    /// What the reconcile of `cluster` (identified as `id`) decided, with what its children
    /// reported once applied.
    pub fn new(
        cluster: &DhtCluster,
        id: &ClusterIdentity,
        settings: &'a Settings,
        decision: &'a Decision,
        children: ChildrenStatus,
    ) -> Self {
        Reconciled {
            generation: cluster.metadata.generation,
            settings,
            plan: &decision.plan,
            workers: &decision.workers,
            children,
            selector: id.worker_selector(),
        }
    }
}

/// The status after a successful reconcile. Conditions keep their `lastTransitionTime` while
/// their status does not change, so an unchanged cluster yields an unchanged status.
pub fn compute(
    input: &Reconciled<'_>,
    previous: Option<&DhtClusterStatus>,
    now: SystemTime,
) -> DhtClusterStatus {
    let Reconciled { generation, settings, plan, workers, children, .. } = input;
    let mut status = DhtClusterStatus {
        observed_generation: *generation,
        selector: Some(input.selector.clone()),
        worker_growth_waiting_since: workers.waiting_since().map(to_time),
        ..DhtClusterStatus::default()
    };
    record_plan(&mut status, plan);
    status.bootstrap.ready = saturating_i32(children.bootstrap_ready);
    status.workers.applied = saturating_i32(workers.replicas);
    status.workers.replicas = saturating_i32(children.worker_replicas);
    status.workers.ready = saturating_i32(children.worker_ready);

    let bootstrap_ready = children.bootstrap_ready >= plan.bootstrap_replicas;
    let workers_ready =
        workers.replicas == settings.workers && children.worker_ready >= settings.workers;
    let counts = format!(
        "{}/{} bootstrap pods and {}/{} worker pods ready",
        children.bootstrap_ready, plan.bootstrap_replicas, children.worker_ready, settings.workers
    );
    let ready = if bootstrap_ready && workers_ready {
        (true, "AllReady", counts.clone())
    } else if !bootstrap_ready {
        (false, "BootstrapNotReady", counts.clone())
    } else {
        (false, "WorkersNotReady", counts.clone())
    };
    // Messages name deadlines, not countdowns, so that an unchanged cluster's status is a
    // fixed point and is not rewritten on every reconcile.
    let progressing = match workers.gate {
        WorkerGate::Waiting { since, .. } => (
            true,
            "WaitingForBootstrap",
            format!(
                "holding workers at {} of {} until {} bootstrap pods are Ready, at the latest \
                 until {} (spec.bootstrap.bootstrapReadyTimeoutSeconds)",
                workers.replicas,
                settings.workers,
                plan.bootstrap_replicas,
                to_time(since + settings.bootstrap_ready_timeout).0
            ),
        ),
        _ => match plan.scale_down_pending_since {
            Some(since) => (
                true,
                "ScaleDownPending",
                format!(
                    "{} workers call for {} bootstrap nodes; keeping {} until {} \
                     (spec.bootstrap.scaleDownStabilizationSeconds)",
                    plan.workers,
                    plan.target_bootstrap_replicas,
                    plan.bootstrap_replicas,
                    to_time(since + settings.policy.scale_down_stabilization).0
                ),
            ),
            None if !(bootstrap_ready && workers_ready) => (true, "RollingOut", counts),
            None => (false, "Stable", plan.reason.clone()),
        },
    };
    let ratio = format_ratio(plan.ratio);
    let limit = settings.policy.max_workers_per_bootstrap;
    let ratio_condition = match plan.ratio_status {
        RatioStatus::Ok => {
            (true, "WithinLimit", format!("{ratio} workers per bootstrap node, limit {limit}:1"))
        }
        RatioStatus::Warning => (
            false,
            "RatioExceeded",
            format!(
                "{ratio} workers per bootstrap node is above spec.bootstrap.maxWorkersPerBootstrap \
                 ({limit}); set spec.bootstrap.strategy to proportional or raise the tier's \
                 bootstrapNodes (and maxBootstrapNodes)"
            ),
        ),
    };
    let conditions = [
        (READY, ready),
        (PROGRESSING, progressing),
        (DEGRADED, (false, "ReconcileSucceeded", "every child object is applied".to_string())),
        (RATIO_WITHIN_LIMIT, ratio_condition),
    ];
    let previous_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions = conditions
        .into_iter()
        .map(|(type_, (value, reason, message))| {
            condition(previous_conditions, type_, value, reason, message, *generation, now)
        })
        .collect();
    status
}

/// The previous status with `Degraded` set (and `Ready` cleared) because the operator cannot
/// act on the cluster: an invalid spec or a request the API server refused.
pub fn degraded(
    previous: Option<&DhtClusterStatus>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
    now: SystemTime,
) -> DhtClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let previous_conditions = status.conditions.clone();
    let updates = [
        (READY, false, "Degraded", "the operator cannot act on this cluster; see Degraded"),
        (DEGRADED, true, reason, message),
    ];
    for (type_, value, reason, message) in updates {
        let updated = condition(
            &previous_conditions,
            type_,
            value,
            reason,
            message.to_string(),
            generation,
            now,
        );
        match status.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => *existing = updated,
            None => status.conditions.push(updated),
        }
    }
    status
}

fn condition(
    previous: &[Condition],
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: SystemTime,
) -> Condition {
    let status = if value { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// An event to publish about a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    /// Events of one object with the same reason and action within minutes are folded into one
    /// series (keeping the first note), so the action names what differs, e.g. the new tier.
    pub action: String,
    pub note: String,
}

/// Events a status change deserves: a tier change, the ratio crossing its limit either way,
/// and the cluster becoming degraded.
pub fn notices(previous: Option<&DhtClusterStatus>, next: &DhtClusterStatus) -> Vec<Notice> {
    let mut notices = Vec::new();
    let previous_tier = previous.and_then(|s| s.tier.as_deref());
    if let Some(tier) = next.tier.as_deref() {
        if previous_tier != Some(tier) {
            notices.push(Notice {
                warning: false,
                reason: "TierChanged",
                action: format!("ScaleTo{}", capitalized(tier)),
                note: format!(
                    "tier {} → {tier} for {} workers: {} bootstrap nodes called for, {} in force ({})",
                    previous_tier.unwrap_or("none"),
                    next.workers.desired,
                    next.bootstrap.target,
                    next.bootstrap.desired,
                    next.ratio.as_deref().unwrap_or("-"),
                ),
            });
        }
    }
    // The tier follows the worker count at once; bootstrap replicas follow it up at once and
    // down after the stabilization window, so their change is an event of its own.
    if let Some(before) = previous.map(|s| s.bootstrap.desired).filter(|n| *n > 0) {
        let after = next.bootstrap.desired;
        if after != before && after > 0 {
            notices.push(Notice {
                warning: false,
                reason: "BootstrapScaled",
                action: format!("ScaleBootstrapTo{after}"),
                note: format!(
                    "bootstrap nodes {before} → {after} for {} workers ({})",
                    next.workers.desired,
                    next.ratio.as_deref().unwrap_or("-"),
                ),
            });
        }
    }
    // A wait for the bootstrap tier that ended with workers growing while bootstraps were
    // still not Ready: the timeout fired.
    if let Some(before) = previous.filter(|p| p.worker_growth_waiting_since.is_some()) {
        let grew = next.workers.applied > before.workers.applied;
        if grew
            && next.worker_growth_waiting_since.is_none()
            && next.bootstrap.ready < next.bootstrap.desired
        {
            notices.push(Notice {
                warning: true,
                reason: "BootstrapReadyTimeout",
                action: "GrowWorkers".into(),
                note: format!(
                    "bootstrap tier not Ready ({}/{}) within spec.bootstrap.bootstrapReadyTimeoutSeconds; \
                     workers grow to {} anyway",
                    next.bootstrap.ready, next.bootstrap.desired, next.workers.applied
                ),
            });
        }
    }
    let was = previous.and_then(|s| s.ratio_status.as_deref());
    match (was, next.ratio_status.as_deref()) {
        (Some("Warning"), Some("Warning")) | (_, None) => {}
        (_, Some("Warning")) => notices.push(Notice {
            warning: true,
            reason: "RatioExceeded",
            action: "CheckRatio".into(),
            note: condition_message(next, RATIO_WITHIN_LIMIT),
        }),
        (Some("Warning"), Some(_)) => notices.push(Notice {
            warning: false,
            reason: "RatioWithinLimit",
            action: "CheckRatio".into(),
            note: condition_message(next, RATIO_WITHIN_LIMIT),
        }),
        _ => {}
    }
    let degraded = |s: &DhtClusterStatus| {
        s.conditions.iter().find(|c| c.type_ == DEGRADED && c.status == "True").cloned()
    };
    if let Some(now_degraded) = degraded(next) {
        let before = previous.and_then(degraded);
        if before.map(|c| (c.reason, c.message))
            != Some((now_degraded.reason.clone(), now_degraded.message.clone()))
        {
            notices.push(Notice {
                warning: true,
                reason: "Degraded",
                action: now_degraded.reason.clone(),
                note: format!("{}: {}", now_degraded.reason, now_degraded.message),
            });
        }
    }
    notices
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn condition_message(status: &DhtClusterStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Writes `next` to the status subresource (server-side apply, the operator's field manager)
/// unless it equals `previous`, then publishes the events the change deserves. A cluster
/// deleted since it was read has no status to write and nothing to tell: that is no error,
/// which would only retry, fail again and warn.
pub async fn write(
    api: &Api<DhtCluster>,
    recorder: &Recorder,
    cluster: &DhtCluster,
    next: &DhtClusterStatus,
) -> Result<(), ApiError> {
    let previous = cluster.status.as_ref();
    let name = cluster.metadata.name.clone().unwrap_or_default();
    if previous != Some(next) {
        let patch = json!({
            "apiVersion": DhtCluster::api_version(&()),
            "kind": DhtCluster::kind(&()),
            "status": next,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            Err(source) => {
                return Err(ApiError::new("patch status of", "DhtCluster", &name, source))
            }
        }
    }
    let reference = cluster.object_ref(&());
    for notice in notices(previous, next) {
        let event = Event {
            type_: if notice.warning { EventType::Warning } else { EventType::Normal },
            reason: notice.reason.to_string(),
            note: Some(notice.note),
            action: notice.action,
            secondary: None,
        };
        // An event that fails to publish is logged, not retried: the status already says it.
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(%error, cluster = %name, "publishing event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::crd::DEFAULT_IMAGE;
    use crate::plan::{decide, Observed};
    use crate::validate::validate;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn cluster(workers: u32) -> DhtCluster {
        yaml_serde::from_str(&format!(
            "
apiVersion: kadscale.io/v1alpha1
kind: DhtCluster
metadata: {{name: dht, namespace: prod, uid: 0b7e-uid, generation: 4}}
spec:
  workers: {{replicas: {workers}}}
"
        ))
        .unwrap()
    }

    /// One pure reconcile: decide, then the status the children's report gives.
    fn reconcile(
        cluster: &DhtCluster,
        previous: Option<&DhtClusterStatus>,
        observed: Observed,
        children: ChildrenStatus,
        now: SystemTime,
    ) -> (Decision, DhtClusterStatus) {
        let id = ClusterIdentity::of(cluster).unwrap();
        let settings = validate(&cluster.spec, DEFAULT_IMAGE).unwrap();
        let decision = decide(&id, &settings, previous, observed, now);
        let input = Reconciled::new(cluster, &id, &settings, &decision, children);
        let status = compute(&input, previous, now);
        (decision, status)
    }

    fn find<'a>(status: &'a DhtClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn reconciling_an_unchanged_cluster_changes_nothing() {
        // Steady, waiting for bootstraps, and waiting out a scale-down: in each, a second
        // reconcile builds equal objects and reaches the same status (a fixed point).
        let steady = (30, Observed { workers_applied: Some(30), bootstrap_ready: 3 }, 3, 30);
        let waiting = (100, Observed { workers_applied: Some(30), bootstrap_ready: 3 }, 3, 30);
        for (workers, observed, bootstrap_ready, worker_ready) in [steady, waiting] {
            let cluster = cluster(workers);
            let report =
                ChildrenStatus { bootstrap_ready, worker_replicas: worker_ready, worker_ready };
            let (first, status) = reconcile(&cluster, None, observed, report, t(0));
            let (second, again) = reconcile(&cluster, Some(&status), observed, report, t(7));
            assert_eq!(second.children, first.children, "{workers} workers");
            assert_eq!(again, status, "{workers} workers");
            assert!(notices(Some(&status), &again).is_empty());
        }
        let big = cluster(300);
        let observed = Observed { workers_applied: Some(300), bootstrap_ready: 6 };
        let report = ChildrenStatus { bootstrap_ready: 6, worker_replicas: 300, worker_ready: 300 };
        let (_, at_300) = reconcile(&big, None, observed, report, t(0));
        let small = cluster(10);
        let observed = Observed { workers_applied: Some(10), bootstrap_ready: 6 };
        let report = ChildrenStatus { bootstrap_ready: 6, worker_replicas: 10, worker_ready: 10 };
        let (first, pending) = reconcile(&small, Some(&at_300), observed, report, t(5));
        let (second, again) = reconcile(&small, Some(&pending), observed, report, t(50));
        assert_eq!(first.plan.bootstrap_replicas, 6);
        assert_eq!(second.children, first.children);
        assert_eq!(again, pending);
    }

    #[test]
    fn status_reports_plan_counts_and_conditions() {
        let cluster = cluster(30);
        let observed = Observed { workers_applied: Some(30), bootstrap_ready: 3 };
        let report = ChildrenStatus { bootstrap_ready: 3, worker_replicas: 30, worker_ready: 28 };
        let (_, status) = reconcile(&cluster, None, observed, report, t(0));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.tier.as_deref(), Some("medium"));
        assert_eq!((status.bootstrap.desired, status.bootstrap.ready), (3, 3));
        assert_eq!(
            (status.workers.desired, status.workers.applied, status.workers.ready),
            (30, 30, 28)
        );
        assert_eq!(status.ratio.as_deref(), Some("10.0:1"));
        assert_eq!(status.ratio_value, Some(10.0));
        assert_eq!(status.ratio_status.as_deref(), Some("OK"));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/component=worker,app.kubernetes.io/instance=dht,app.kubernetes.io/name=kadscale")
        );
        let ready = find(&status, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "WorkersNotReady"));
        assert!(ready.message.contains("28/30 worker pods"), "{}", ready.message);
        assert_eq!(find(&status, PROGRESSING).reason, "RollingOut");
        assert_eq!(find(&status, DEGRADED).status, "False");
        assert_eq!(find(&status, RATIO_WITHIN_LIMIT).status, "True");

        let all = ChildrenStatus { worker_ready: 30, ..report };
        let (_, healthy) = reconcile(&cluster, Some(&status), observed, all, t(10));
        let ready = find(&healthy, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "AllReady"));
        assert_eq!(ready.last_transition_time, to_time(t(10)));
        assert_eq!(find(&healthy, PROGRESSING).status, "False");
        // Degraded stayed False: its transition time is the first one.
        assert_eq!(find(&healthy, DEGRADED).last_transition_time, to_time(t(0)));
    }

    #[test]
    fn waiting_for_bootstrap_is_progressing_with_a_deadline() {
        let cluster = cluster(51);
        let observed = Observed { workers_applied: Some(16), bootstrap_ready: 3 };
        let report = ChildrenStatus { bootstrap_ready: 3, worker_replicas: 16, worker_ready: 16 };
        let (decision, status) = reconcile(&cluster, None, observed, report, t(0));
        assert_eq!(decision.workers.replicas, 16);
        assert_eq!(status.workers.applied, 16);
        assert_eq!(status.worker_growth_waiting_since, Some(to_time(t(0))));
        let progressing = find(&status, PROGRESSING);
        assert_eq!(progressing.reason, "WaitingForBootstrap");
        assert!(progressing.message.contains("16 of 51"), "{}", progressing.message);
        assert_eq!(find(&status, READY).reason, "BootstrapNotReady");
        assert_eq!(decision.requeue_after, Some(Duration::from_secs(121)));
    }

    #[test]
    fn a_timed_out_wait_is_a_warning_event() {
        let cluster = cluster(51);
        let observed = Observed { workers_applied: Some(16), bootstrap_ready: 3 };
        let report = ChildrenStatus { bootstrap_ready: 3, worker_replicas: 16, worker_ready: 16 };
        let (_, waiting) = reconcile(&cluster, None, observed, report, t(0));
        let (_, still) = reconcile(&cluster, Some(&waiting), observed, report, t(60));
        assert!(notices(Some(&waiting), &still).is_empty());
        let (decision, grown) = reconcile(&cluster, Some(&still), observed, report, t(120));
        assert_eq!(decision.workers.replicas, 51);
        let events = notices(Some(&still), &grown);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].warning && events[0].reason == "BootstrapReadyTimeout");
        assert!(events[0].note.contains("(3/4)"), "{}", events[0].note);
        // Bootstraps turning Ready ends the wait without a warning.
        let ready = Observed { bootstrap_ready: 4, ..observed };
        let report = ChildrenStatus { bootstrap_ready: 4, ..report };
        let (_, opened) = reconcile(&cluster, Some(&still), ready, report, t(61));
        assert!(notices(Some(&still), &opened).is_empty());
    }

    #[test]
    fn ratio_warning_is_a_condition_and_an_event() {
        let observed = Observed { workers_applied: Some(200), bootstrap_ready: 4 };
        let report = ChildrenStatus { bootstrap_ready: 4, worker_replicas: 200, worker_ready: 200 };
        let (_, at_200) = reconcile(&cluster(200), None, observed, report, t(0));
        let observed = Observed { workers_applied: Some(500), bootstrap_ready: 6 };
        let report = ChildrenStatus { bootstrap_ready: 6, worker_replicas: 500, worker_ready: 500 };
        let (_, at_500) = reconcile(&cluster(500), Some(&at_200), observed, report, t(1));
        let ratio = find(&at_500, RATIO_WITHIN_LIMIT);
        assert_eq!((ratio.status.as_str(), ratio.reason.as_str()), ("False", "RatioExceeded"));
        assert!(ratio.message.contains("83.3:1") && ratio.message.contains("proportional"));
        let events = notices(Some(&at_200), &at_500);
        let reasons: Vec<_> =
            events.iter().map(|n| (n.reason, n.action.as_str(), n.warning)).collect();
        assert_eq!(
            reasons,
            [
                ("TierChanged", "ScaleToXlarge", false),
                ("BootstrapScaled", "ScaleBootstrapTo6", false),
                ("RatioExceeded", "CheckRatio", true)
            ]
        );
        assert!(events[0].note.contains("large → xlarge"), "{}", events[0].note);
        assert_eq!(events[1].note, "bootstrap nodes 4 → 6 for 500 workers (83.3:1)");
    }

    #[test]
    fn degraded_keeps_the_plan_and_says_why() {
        let cluster = cluster(30);
        let observed = Observed { workers_applied: Some(30), bootstrap_ready: 3 };
        let report = ChildrenStatus { bootstrap_ready: 3, worker_replicas: 30, worker_ready: 30 };
        let (_, healthy) = reconcile(&cluster, None, observed, report, t(0));
        let message = "spec.bootstrap: maxBootstrapNodes (5) must be at least ...";
        let broken = degraded(Some(&healthy), Some(5), "InvalidSpec", message, t(9));
        assert_eq!(broken.tier, healthy.tier);
        assert_eq!(broken.observed_generation, Some(5));
        let condition = find(&broken, DEGRADED);
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", "InvalidSpec"));
        assert_eq!(condition.message, message);
        assert_eq!(condition.last_transition_time, to_time(t(9)));
        assert_eq!(find(&broken, READY).status, "False");
        let events = notices(Some(&healthy), &broken);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning && events[0].note.starts_with("InvalidSpec: spec.bootstrap"));
        // The same failure again is not a new event.
        let again = degraded(Some(&broken), Some(5), "InvalidSpec", message, t(20));
        assert_eq!(again, broken);
        assert!(notices(Some(&broken), &again).is_empty());
    }
}
