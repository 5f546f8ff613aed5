//! Health of one bootstrap endpoint, from real pings and join outcomes.
//!
//! An endpoint starts healthy; `failure_threshold` consecutive failures make it unhealthy, and
//! one success heals it, as in the seed.

use std::time::Duration;

/// The seed's default number of consecutive failures before an endpoint is skipped.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    consecutive_failures: u32,
    last_rtt: Option<Duration>,
}

impl Default for Health {
    fn default() -> Self {
        Health { healthy: true, consecutive_failures: 0, last_rtt: None }
    }
}

/// What one observation changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthTransition {
    Unchanged,
    BecameUnhealthy,
    Recovered,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Round-trip time of the last answered ping.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// The endpoint answered after `rtt`.
    pub fn record_success(&mut self, rtt: Duration) -> HealthTransition {
        let was_healthy = self.healthy;
        self.healthy = true;
        self.consecutive_failures = 0;
        self.last_rtt = Some(rtt);
        if was_healthy {
            HealthTransition::Unchanged
        } else {
            HealthTransition::Recovered
        }
    }

    /// The endpoint did not answer; a threshold of 0 is treated as 1.
    pub fn record_failure(&mut self, failure_threshold: u32) -> HealthTransition {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.healthy && self.consecutive_failures >= failure_threshold.max(1) {
            self.healthy = false;
            HealthTransition::BecameUnhealthy
        } else {
            HealthTransition::Unchanged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Event {
        Ok(u64),
        Fail,
    }

    /// Runs events from a fresh state and returns (transition, healthy, failures) after each.
    fn run(threshold: u32, events: &[Event]) -> Vec<(HealthTransition, bool, u32)> {
        let mut health = Health::default();
        events
            .iter()
            .map(|event| {
                let transition = match event {
                    Event::Ok(ms) => health.record_success(Duration::from_millis(*ms)),
                    Event::Fail => health.record_failure(threshold),
                };
                (transition, health.is_healthy(), health.consecutive_failures())
            })
            .collect()
    }

    #[test]
    fn starts_healthy() {
        let health = Health::default();
        assert!(health.is_healthy());
        assert_eq!(health.consecutive_failures(), 0);
        assert_eq!(health.last_rtt(), None);
    }

    #[test]
    fn threshold_consecutive_failures_make_it_unhealthy() {
        use HealthTransition::*;
        let steps = run(3, &[Event::Fail, Event::Fail, Event::Fail, Event::Fail]);
        assert_eq!(
            steps,
            vec![
                (Unchanged, true, 1),
                (Unchanged, true, 2),
                (BecameUnhealthy, false, 3),
                (Unchanged, false, 4)
            ]
        );
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        use HealthTransition::*;
        let steps = run(3, &[Event::Fail, Event::Fail, Event::Ok(5), Event::Fail, Event::Fail]);
        assert_eq!(steps[2], (Unchanged, true, 0));
        assert_eq!(steps[4], (Unchanged, true, 2));
    }

    #[test]
    fn one_success_heals_and_records_the_rtt() {
        use HealthTransition::*;
        let mut health = Health::default();
        for _ in 0..3 {
            health.record_failure(3);
        }
        assert!(!health.is_healthy());
        assert_eq!(health.record_success(Duration::from_millis(7)), Recovered);
        assert!(health.is_healthy());
        assert_eq!(health.consecutive_failures(), 0);
        assert_eq!(health.last_rtt(), Some(Duration::from_millis(7)));
    }

    #[test]
    fn threshold_one_and_zero_fail_at_once() {
        for threshold in [0, 1] {
            assert_eq!(
                run(threshold, &[Event::Fail])[0],
                (HealthTransition::BecameUnhealthy, false, 1)
            );
        }
    }
}
