//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! only one reconciles.
//!
//! Written by hand on the Lease API: create or take over the Lease when it is free or expired,
//! renew it while holding it, release it on shutdown. Expiry is judged the way client-go judges
//! it, by how long the Lease record has stayed unchanged on this replica's own clock, so clock
//! skew between nodes cannot make two replicas leaders.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

/// What this replica should do about the Lease it just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease exists: create it, holding it.
    Create,
    /// The Lease is free (released) or expired: take it over.
    Acquire,
    /// This replica holds the Lease: renew it.
    Renew,
    /// Another replica holds it; it expires after `remaining` more without a renewal.
    Wait { holder: String, remaining: Duration },
}

/// The decision for `lease` as `me`, when its record has not changed for `unchanged_for`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::Acquire;
    }
    let duration = Duration::from_secs(
        u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or_default(),
    );
    match duration.checked_sub(unchanged_for) {
        Some(remaining) if !remaining.is_zero() => {
            LeaseDecision::Wait { holder: holder.to_string(), remaining }
        }
        _ => LeaseDecision::Acquire,
    }
}

/// The parts of a Lease whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LeaseRecord {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
}

fn record_of(spec: Option<&LeaseSpec>) -> Option<LeaseRecord> {
    spec.map(|s| LeaseRecord {
        holder: s.holder_identity.clone(),
        renew_time: s.renew_time.as_ref().map(|t| t.0),
    })
}

/// Timing of the election, as in client-go: a leader that cannot renew for `renew_deadline`
/// steps down, well before others may take over after `lease_duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's side of the election for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The last record seen and since when (this replica's clock) it has not changed.
    observed: Option<(Option<LeaseRecord>, Instant)>,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: read the Lease, act on [`decide`]; true when this replica holds it after.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.name).await?;
        let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
        let record = record_of(spec);
        let now = Instant::now();
        let since = match &self.observed {
            Some((seen, since)) if *seen == record => *since,
            _ => now,
        };
        self.observed = Some((record, since));
        let decision = decide(spec, &self.identity, now.duration_since(since));
        let written = match decision {
            LeaseDecision::Wait { holder, remaining } => {
                tracing::debug!(%holder, ?remaining, lease = %self.name, "lease held by another replica");
                return Ok(false);
            }
            LeaseDecision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(self.held_spec(None, true)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            LeaseDecision::Acquire | LeaseDecision::Renew => {
                let mut lease = lease.unwrap_or_default();
                let taking_over = decision == LeaseDecision::Acquire;
                lease.spec = Some(self.held_spec(lease.spec.as_ref(), taking_over));
                // The resourceVersion read above makes this a compare-and-swap: of two
                // replicas taking over at once, one gets a conflict.
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.observed = Some((record_of(lease.spec.as_ref()), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    fn held_spec(&self, previous: Option<&LeaseSpec>, taking_over: bool) -> LeaseSpec {
        let now = micro_time(SystemTime::now());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if taking_over {
                Some(now.clone())
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if taking_over && previous.is_some() {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Waits until this replica holds the Lease, retrying every `retry_period`. API errors are
    /// logged and retried: an operator without its API server has nothing else to do.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, lease = %self.name, "reading the lease"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease every `retry_period`; returns when leadership is lost: another replica
    /// holds the Lease, or renewing failed for `renew_deadline`.
    pub async fn keep_renewing(&mut self) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    tracing::warn!(lease = %self.name, "lost the lease to another replica");
                    return;
                }
                Err(error) => tracing::warn!(%error, lease = %self.name, "renewing the lease"),
            }
            if last_renewal.elapsed() >= self.timing.renew_deadline {
                tracing::warn!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }

    /// Gives the Lease up so that another replica takes over at once instead of waiting for it
    /// to expire.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro_time(SystemTime::now()));
        self.api.replace(&self.name, &PostParams::default(), &lease).await?;
        tracing::info!(lease = %self.name, "released the lease");
        Ok(())
    }
}

fn micro_time(t: SystemTime) -> MicroTime {
    let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    // Whole microseconds: what the API server keeps of a MicroTime.
    let nanos = i32::try_from(since_epoch.subsec_micros() * 1000).unwrap_or(0);
    MicroTime(Timestamp::new(secs, nanos).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "me", Duration::ZERO), LeaseDecision::Create);
    }

    #[test]
    fn the_holder_renews() {
        let lease = held_by(Some("me"), 15);
        assert_eq!(decide(Some(&lease), "me", Duration::from_secs(60)), LeaseDecision::Renew);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        for holder in [None, Some("")] {
            let lease = held_by(holder, 1);
            assert_eq!(decide(Some(&lease), "me", Duration::ZERO), LeaseDecision::Acquire);
        }
    }

    #[test]
    fn another_holder_is_respected_until_the_record_is_stale() {
        let lease = held_by(Some("other"), 15);
        assert_eq!(
            decide(Some(&lease), "me", Duration::from_secs(5)),
            LeaseDecision::Wait { holder: "other".into(), remaining: Duration::from_secs(10) }
        );
        assert_eq!(
            decide(Some(&lease), "me", Duration::from_millis(14_999)),
            LeaseDecision::Wait { holder: "other".into(), remaining: Duration::from_millis(1) }
        );
        assert_eq!(decide(Some(&lease), "me", Duration::from_secs(15)), LeaseDecision::Acquire);
    }

    #[test]
    fn leader_steps_down_before_others_may_take_over() {
        let timing = Timing::default();
        assert!(timing.renew_deadline < timing.lease_duration);
        assert!(timing.retry_period < timing.renew_deadline);
    }

    #[test]
    fn micro_time_keeps_microseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let micro = micro_time(t);
        assert_eq!(micro.0.as_second(), 1_700_000_000);
        assert_eq!(micro.0.subsec_nanosecond(), 123_456_000);
    }
}
