//! Per-source budgets for the requests a node handles and the answer bytes it sends: a flood
//! from one address takes a bounded share of the node's work, and requests with a forged
//! source address cannot aim more than a bounded stream of answers at the victim.
//!
//! Each source (an IP address; IP and port on loopback, see [`source_of`]) has two token
//! buckets refilled continuously, each holding at most one second of its rate. A request is
//! handled only while its source has a request token and answer bytes left; its answer is
//! then charged in full, so a source overdraws by at most one answer. Pure: the caller passes
//! the time, and tests drive it without sockets.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::codec::PeerAddr;
use crate::random_key::RandomKeys;
use crate::routing::source_of;

/// Most sources tracked at once (about 3 MiB): requests with random forged addresses cannot
/// grow memory. Beyond it, new sources share one budget until idle ones are forgotten.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// A source idle this long has its buckets full again and is forgotten when room is needed.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// A source's buckets in 16 bytes (an entry of the map is 24, not 64 with a `SocketAddr` key
/// and `f64`s beside an `Instant`: every node tracks every peer that asked it anything). `f32`
/// counts at most a few million tokens, exact while whole; partial refills round below a
/// millionth of the count.
#[derive(Clone, Copy, Debug)]
struct Budget {
    requests: f32,
    answer_bytes: f32,
    /// Nanoseconds since [`SourceLimits::epoch`].
    refilled_at: u64,
}

impl Budget {
    fn full(requests: f64, answer_bytes: f64, now: u64) -> Budget {
        Budget { requests: requests as f32, answer_bytes: answer_bytes as f32, refilled_at: now }
    }
}

/// The budgets of every source a node hears requests from.
#[derive(Debug)]
pub struct SourceLimits {
    requests_per_second: f64,
    answer_bytes_per_second: f64,
    keys: RandomState,
    /// Keyed by a keyed SipHash of the source (`keys`), 8 bytes instead of an 18-byte
    /// [`PeerAddr`]. Two sources whose hashes collide (2^-64, and not to be aimed at without
    /// the random keys) would share a budget.
    sources: HashMap<u64, Budget, RandomKeys>,
    /// Shared by new sources while [`MAX_TRACKED_SOURCES`] are tracked.
    overflow: Budget,
    /// Where the budgets' times count from.
    epoch: Instant,
    last_cleanup: Instant,
}

impl SourceLimits {
    /// Budgets of `requests_per_second` and `answer_bytes_per_second` per source; 0 means no
    /// limit on that one.
    pub fn new(requests_per_second: u32, answer_bytes_per_second: u32, now: Instant) -> Self {
        let rate = |limit: u32| if limit == 0 { f64::INFINITY } else { f64::from(limit) };
        let (requests_per_second, answer_bytes_per_second) =
            (rate(requests_per_second), rate(answer_bytes_per_second));
        SourceLimits {
            requests_per_second,
            answer_bytes_per_second,
            keys: RandomState::new(),
            sources: HashMap::default(),
            overflow: Budget::full(requests_per_second, answer_bytes_per_second, 0),
            epoch: now,
            last_cleanup: now,
        }
    }

    /// The time to pass to [`SourceLimits::admit_request`] and [`SourceLimits::charge_answer`]:
    /// the clock when a budget counts, otherwise the time of the last cleanup, which unlimited
    /// budgets never look at (a clock read per datagram was 1% of serving one).
    pub fn now(&self) -> Instant {
        if self.is_unlimited() {
            self.last_cleanup
        } else {
            Instant::now()
        }
    }

    /// True when neither budget is limited: the caller can skip the bookkeeping.
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_second.is_infinite() && self.answer_bytes_per_second.is_infinite()
    }

    /// Whether a request from `from` may be handled now; takes one request token if so.
    pub fn admit_request(&mut self, from: SocketAddr, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        let budget = self.budget(from, now);
        if budget.requests < 1.0 || budget.answer_bytes <= 0.0 {
            return false;
        }
        budget.requests -= 1.0;
        true
    }

    /// Charges an answer of `bytes` sent to `from` (admitted just before).
    pub fn charge_answer(&mut self, from: SocketAddr, bytes: usize, now: Instant) {
        if self.is_unlimited() {
            return;
        }
        self.budget(from, now).answer_bytes -= bytes as f32;
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// The refilled budget of `from`'s source.
    fn budget(&mut self, from: SocketAddr, now: Instant) -> &mut Budget {
        let source = self.keys.hash_one(source_of(&PeerAddr::from(from)));
        let known = self.sources.contains_key(&source);
        if !known && self.sources.len() >= MAX_TRACKED_SOURCES {
            self.forget_idle(now);
        }
        let now = self.nanos_since_epoch(now);
        let (requests_rate, bytes_rate) = (self.requests_per_second, self.answer_bytes_per_second);
        let budget = if known || self.sources.len() < MAX_TRACKED_SOURCES {
            self.sources
                .entry(source)
                .or_insert_with(|| Budget::full(requests_rate, bytes_rate, now))
        } else {
            &mut self.overflow
        };
        let elapsed = now.saturating_sub(budget.refilled_at) as f64 / 1e9;
        let refill = |tokens: f32, rate: f64| (f64::from(tokens) + rate * elapsed).min(rate) as f32;
        budget.requests = refill(budget.requests, requests_rate);
        budget.answer_bytes = refill(budget.answer_bytes, bytes_rate);
        budget.refilled_at = now;
        budget
    }

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Forgets sources idle for [`IDLE_AFTER`] (their budgets are full: nothing is lost), at
    /// most once per [`IDLE_AFTER`] so that a flood of new sources does not rescan the map
    /// for every datagram.
    fn forget_idle(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_cleanup) < IDLE_AFTER {
            return;
        }
        self.last_cleanup = now;
        let (now, idle_after) = (self.nanos_since_epoch(now), IDLE_AFTER.as_nanos() as u64);
        self.sources.retain(|_, budget| now.saturating_sub(budget.refilled_at) < idle_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Requests admitted from `from` when `count` arrive at `now`.
    fn admitted(limits: &mut SourceLimits, from: SocketAddr, count: usize, now: Instant) -> usize {
        (0..count).filter(|_| limits.admit_request(from, now)).count()
    }

    #[test]
    fn a_source_gets_one_second_of_requests_at_once_and_its_rate_after() {
        let start = Instant::now();
        let mut limits = SourceLimits::new(100, 0, start);
        let flooder = addr("192.0.2.1:4000");
        assert_eq!(admitted(&mut limits, flooder, 1000, start), 100);
        let later = start + Duration::from_millis(500);
        assert_eq!(admitted(&mut limits, flooder, 1000, later), 50);
        // Other ports of the same host share its budget; another host has its own.
        assert_eq!(admitted(&mut limits, addr("192.0.2.1:4001"), 10, later), 0);
        assert_eq!(admitted(&mut limits, addr("192.0.2.2:4000"), 10, later), 10);
    }

    #[test]
    fn answers_are_charged_and_a_source_out_of_answer_bytes_is_refused() {
        let start = Instant::now();
        let mut limits = SourceLimits::new(0, 10_000, start);
        let victim = addr("198.51.100.7:53");
        let mut sent = 0;
        while limits.admit_request(victim, start) {
            limits.charge_answer(victim, 900, start);
            sent += 900;
        }
        // Refused once the budget is spent: at most one answer over it.
        assert!((10_000..10_000 + 900).contains(&sent), "{sent} bytes");
        assert!(!limits.admit_request(victim, start + Duration::from_millis(10)));
        assert!(limits.admit_request(victim, start + Duration::from_millis(100)));
    }

    #[test]
    fn on_loopback_each_port_is_a_source() {
        let start = Instant::now();
        let mut limits = SourceLimits::new(5, 0, start);
        assert_eq!(admitted(&mut limits, addr("127.0.0.1:7001"), 10, start), 5);
        assert_eq!(admitted(&mut limits, addr("127.0.0.1:7002"), 10, start), 5);
    }

    #[test]
    fn zero_means_no_limit() {
        let start = Instant::now();
        let mut limits = SourceLimits::new(0, 0, start);
        assert!(limits.is_unlimited());
        assert_eq!(admitted(&mut limits, addr("192.0.2.1:1"), 100_000, start), 100_000);
        assert!(!SourceLimits::new(1, 0, start).is_unlimited());
    }

    #[test]
    fn forged_sources_beyond_the_tracked_maximum_share_one_budget_and_memory_stays_bounded() {
        let start = Instant::now();
        let mut limits = SourceLimits::new(2, 0, start);
        let forged = |i: u32| SocketAddr::from((i.to_be_bytes(), 9));
        let sources = u32::try_from(MAX_TRACKED_SOURCES).unwrap();
        for i in 0..sources {
            assert!(limits.admit_request(forged(i), start));
        }
        assert_eq!(limits.tracked(), MAX_TRACKED_SOURCES);
        // Every further new source draws from the one shared budget of 2.
        let beyond = (sources..sources + 1000).filter(|i| limits.admit_request(forged(*i), start));
        assert_eq!(beyond.count(), 2);
        assert_eq!(limits.tracked(), MAX_TRACKED_SOURCES);
        // Once the first ones are idle they are forgotten and new sources are tracked again.
        let later = start + IDLE_AFTER;
        assert!(limits.admit_request(forged(sources + 5000), later));
        assert_eq!(limits.tracked(), 1);
    }
}
