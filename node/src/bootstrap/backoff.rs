//! Exponential backoff with jitter between join attempts.
//!
//! Attempt `n` (from 0) waits `retry_delay × 2^n` for the first `max_retries` attempts; from
//! then on the worker keeps retrying forever at the interval the doubling reached,
//! `retry_delay × 2^max_retries`, never more than [`MAX_RETRY_INTERVAL`]. With the seed's
//! defaults (2 s, 3 retries) that is 2 s, 4 s, 8 s, then every 16 s. Jitter only shortens a
//! delay, by up to [`JITTER_FRACTION`], so workers that failed together spread out while the
//! schedule stays an upper bound.

use std::time::Duration;

use rand::Rng;

/// The longest wait between two join attempts, however large `retry_delay × 2^max_retries`.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// A delay is drawn uniformly from `[base × (1 − JITTER_FRACTION), base]`.
pub const JITTER_FRACTION: f64 = 0.25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub retry_delay: Duration,
    pub max_retries: u32,
}

impl Default for Backoff {
    /// The seed's `bootstrap_fallback_retry_delay` and `bootstrap_fallback_max_retries`.
    fn default() -> Self {
        Backoff { retry_delay: Duration::from_secs(2), max_retries: 3 }
    }
}

impl Backoff {
    /// The delay before retrying after failed attempt `attempt`, without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.min(self.max_retries).min(31);
        self.retry_delay.saturating_mul(1 << doublings).min(MAX_RETRY_INTERVAL)
    }

    /// The delay before retrying after failed attempt `attempt`, with jitter from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let shortening = JITTER_FRACTION * rng.random::<f64>();
        self.base_delay(attempt).mul_f64(1.0 - shortening)
    }

    /// Whether attempt `attempt` is past the fast retries, into the capped interval.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_retries
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::{RngCore, SeedableRng};

    use super::*;

    /// An RNG that returns one fixed word, so that `random::<f64>()` is fixed.
    pub(crate) struct FixedRng(pub u64);

    impl RngCore for FixedRng {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0 as u8);
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn doubles_for_max_retries_then_stays() {
        let backoff = Backoff::default();
        let schedule: Vec<Duration> = (0..7).map(|attempt| backoff.base_delay(attempt)).collect();
        assert_eq!(
            schedule,
            [2.0, 4.0, 8.0, 16.0, 16.0, 16.0, 16.0].map(secs).to_vec(),
            "2 s × 2^attempt for 3 attempts, then every 16 s"
        );
        assert!(!backoff.exhausted(2));
        assert!(backoff.exhausted(3));
    }

    #[test]
    fn capped_at_a_minute() {
        let backoff = Backoff { retry_delay: secs(5.0), max_retries: 10 };
        assert_eq!(backoff.base_delay(3), secs(40.0));
        assert_eq!(backoff.base_delay(4), MAX_RETRY_INTERVAL);
        assert_eq!(backoff.base_delay(u32::MAX), MAX_RETRY_INTERVAL);
        let huge = Backoff { retry_delay: Duration::MAX, max_retries: u32::MAX };
        assert_eq!(huge.base_delay(u32::MAX), MAX_RETRY_INTERVAL);
    }

    #[test]
    fn zero_retries_means_the_first_interval_is_already_the_steady_one() {
        let backoff = Backoff { retry_delay: secs(2.0), max_retries: 0 };
        assert_eq!(backoff.base_delay(0), secs(2.0));
        assert_eq!(backoff.base_delay(5), secs(2.0));
        assert!(backoff.exhausted(0));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let backoff = Backoff::default();
        // random::<f64>() takes the top 53 bits: all zero gives 0.0, all ones just under 1.0.
        assert_eq!(backoff.delay(1, &mut FixedRng(0)), secs(4.0));
        let shortest = backoff.delay(1, &mut FixedRng(u64::MAX));
        assert!(shortest >= secs(4.0 * (1.0 - JITTER_FRACTION)), "{shortest:?}");
        assert!(shortest < secs(3.0 + 1e-6), "{shortest:?}");
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let draws: Vec<Duration> = (0..1000).map(|_| backoff.delay(2, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d >= secs(6.0) && *d <= secs(8.0)));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 900, "jitter spreads delays: {} distinct", distinct.len());
    }
}
