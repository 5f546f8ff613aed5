//! The `kadscale_load` procedure: the load a bootstrap node reports about itself.
//!
//! A kadscale-only RPC (Python nodes ignore it): args `[node_id]`, answer a msgpack map
//! `{"joins_last_minute": int, "routing_table_size": int, "requests_per_second": float,
//! "overloaded": bool}`. Workers rank bootstrap nodes by it under `least_loaded`; the bootstrap
//! side counts with a [`LoadTracker`].

use std::time::Duration;

use rmpv::Value;
use tokio::time::Instant;

/// The procedure name carried in the RPC request.
pub const LOAD_PROCEDURE: &str = "kadscale_load";

/// The kadscale-only notice a worker sends each seed it joined through, args `[node_id]`,
/// never answered: how a bootstrap node counts the joins it served.
pub const JOINED_PROCEDURE: &str = "kadscale_joined";

/// What a bootstrap node says about its own load.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// Joins served in the last 60 s.
    pub joins_last_minute: u64,
    pub routing_table_size: u64,
    /// Requests of any kind, averaged over the last minute.
    pub requests_per_second: f64,
    /// Joins in the current load interval are above `--max-connections-per-node`.
    pub overloaded: bool,
}

const JOINS_LAST_MINUTE: &str = "joins_last_minute";
const ROUTING_TABLE_SIZE: &str = "routing_table_size";
const REQUESTS_PER_SECOND: &str = "requests_per_second";
const OVERLOADED: &str = "overloaded";

/// Why a `kadscale_load` answer was refused; names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadDecodeError {
    #[error("kadscale_load answer is not a map but {found}")]
    NotAMap { found: String },
    #[error("kadscale_load answer has no field {field:?}")]
    MissingField { field: &'static str },
    #[error("kadscale_load field {field:?} should be {expected}, found {found}")]
    WrongType { field: &'static str, expected: &'static str, found: String },
}

impl LoadReport {
    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            (Value::from(JOINS_LAST_MINUTE), Value::from(self.joins_last_minute)),
            (Value::from(ROUTING_TABLE_SIZE), Value::from(self.routing_table_size)),
            (Value::from(REQUESTS_PER_SECOND), Value::from(self.requests_per_second)),
            (Value::from(OVERLOADED), Value::from(self.overloaded)),
        ])
    }

    /// Decodes an answer; unknown fields are ignored so that later versions can add some.
    pub fn from_value(value: &Value) -> Result<Self, LoadDecodeError> {
        let Value::Map(entries) = value else {
            return Err(LoadDecodeError::NotAMap { found: describe(value) });
        };
        let field = |name: &'static str| {
            entries
                .iter()
                .find(|(key, _)| key_is(key, name))
                .map(|(_, value)| value)
                .ok_or(LoadDecodeError::MissingField { field: name })
        };
        let wrong_type = |field: &'static str, expected: &'static str, value: &Value| {
            LoadDecodeError::WrongType { field, expected, found: describe(value) }
        };
        let count = |name: &'static str| {
            let value = field(name)?;
            value.as_u64().ok_or_else(|| wrong_type(name, "a non-negative integer", value))
        };
        let rate = field(REQUESTS_PER_SECOND)?;
        let requests_per_second = match rate {
            Value::F64(rate) => *rate,
            Value::F32(rate) => f64::from(*rate),
            Value::Integer(rate) => rate.as_f64().unwrap_or(f64::NAN),
            other => return Err(wrong_type(REQUESTS_PER_SECOND, "a number", other)),
        };
        if !requests_per_second.is_finite() || requests_per_second < 0.0 {
            return Err(wrong_type(REQUESTS_PER_SECOND, "a finite non-negative number", rate));
        }
        let overloaded = field(OVERLOADED)?;
        Ok(LoadReport {
            joins_last_minute: count(JOINS_LAST_MINUTE)?,
            routing_table_size: count(ROUTING_TABLE_SIZE)?,
            requests_per_second,
            overloaded: overloaded
                .as_bool()
                .ok_or_else(|| wrong_type(OVERLOADED, "a boolean", overloaded))?,
        })
    }
}

/// Map keys may come as str or, from some msgpack encoders, as bin.
fn key_is(key: &Value, name: &str) -> bool {
    match key {
        Value::String(key) => key.as_str() == Some(name),
        Value::Binary(key) => key.as_slice() == name.as_bytes(),
        _ => false,
    }
}

fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "bytes",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an ext value",
    };
    format!("{kind} ({value})")
}

/// The one minute over which joins and requests are counted.
const MINUTE: Duration = Duration::from_secs(60);

/// The longest load interval the tracker counts joins over; longer intervals are clamped.
pub const MAX_LOAD_INTERVAL: Duration = Duration::from_secs(3600);

/// Counts events in one-second buckets over a sliding window of whole seconds.
#[derive(Clone, Debug)]
struct SlidingCounter {
    buckets: Vec<u64>,
    epoch: Instant,
    /// Seconds since `epoch` of the newest bucket.
    head: u64,
}

impl SlidingCounter {
    fn new(window: Duration, epoch: Instant) -> Self {
        let seconds = window.as_secs().max(1);
        SlidingCounter { buckets: vec![0; seconds as usize], epoch, head: 0 }
    }

    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Moves the head to `now`, clearing the buckets of the seconds it skips.
    fn advance(&mut self, now: Instant) {
        let second = self.second_of(now);
        if second <= self.head {
            return;
        }
        let len = self.buckets.len() as u64;
        let first_stale = self.head + 1;
        for stale in first_stale..=second.min(first_stale + len - 1) {
            self.buckets[(stale % len) as usize] = 0;
        }
        self.head = second;
    }

    fn add(&mut self, now: Instant, events: u64) {
        self.advance(now);
        let len = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(self.head % len) as usize];
        *bucket = bucket.saturating_add(events);
    }

    /// Events in the last `span` (whole seconds, the current one included, at most the window).
    fn count(&mut self, now: Instant, span: Duration) -> u64 {
        self.advance(now);
        let len = self.buckets.len() as u64;
        let span = span.as_secs().clamp(1, len).min(self.head + 1);
        (self.head + 1 - span..=self.head).map(|second| self.buckets[(second % len) as usize]).sum()
    }
}

/// A bootstrap node's own load, counted as joins and requests arrive.
#[derive(Clone, Debug)]
pub struct LoadTracker {
    joins: SlidingCounter,
    requests: SlidingCounter,
    /// The request total at the last [`LoadTracker::observe_requests_total`].
    requests_seen: u64,
    load_interval: Duration,
    max_joins_per_interval: u64,
}

impl LoadTracker {
    /// `max_joins_per_interval` is `--max-connections-per-node`, a soft limit per
    /// `load_interval` (`--load-balance-interval`).
    pub fn new(load_interval: Duration, max_joins_per_interval: u64, now: Instant) -> Self {
        let load_interval = load_interval.clamp(Duration::from_secs(1), MAX_LOAD_INTERVAL);
        LoadTracker {
            joins: SlidingCounter::new(load_interval.max(MINUTE), now),
            requests: SlidingCounter::new(MINUTE, now),
            requests_seen: 0,
            load_interval,
            max_joins_per_interval,
        }
    }

    pub fn record_join(&mut self, now: Instant) {
        self.joins.add(now, 1);
    }

    /// Takes the node's running total of requests served; what it grew by since the last
    /// call counts as arriving now (a total below the last one restarts the count).
    pub fn observe_requests_total(&mut self, now: Instant, total: u64) {
        let new_requests = total.checked_sub(self.requests_seen).unwrap_or(total);
        self.requests_seen = total;
        self.requests.add(now, new_requests);
    }

    pub fn report(&mut self, now: Instant, routing_table_size: usize) -> LoadReport {
        let requests = self.requests.count(now, MINUTE);
        // A node up for less than a minute averages over the seconds it has been up.
        let seconds = (self.requests.head + 1).min(MINUTE.as_secs());
        LoadReport {
            joins_last_minute: self.joins.count(now, MINUTE),
            routing_table_size: routing_table_size as u64,
            requests_per_second: requests as f64 / seconds as f64,
            overloaded: self.joins.count(now, self.load_interval) > self.max_joins_per_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> LoadReport {
        LoadReport {
            joins_last_minute: 42,
            routing_table_size: 17,
            requests_per_second: 3.25,
            overloaded: true,
        }
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
    }

    #[test]
    fn round_trips_through_msgpack_bytes() {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &report().to_value()).unwrap();
        let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        assert_eq!(LoadReport::from_value(&value), Ok(report()));
    }

    #[test]
    fn accepts_integer_rates_bin_keys_and_unknown_fields() {
        let value = Value::Map(vec![
            (Value::Binary(b"joins_last_minute".to_vec()), Value::from(1)),
            (Value::from("routing_table_size"), Value::from(2)),
            (Value::from("requests_per_second"), Value::from(3)),
            (Value::from("overloaded"), Value::from(false)),
            (Value::from("added_later"), Value::Nil),
        ]);
        let decoded = LoadReport::from_value(&value).unwrap();
        assert_eq!(decoded.joins_last_minute, 1);
        assert_eq!(decoded.requests_per_second, 3.0);
    }

    #[test]
    fn bad_answers_name_the_field() {
        let full = |replace: &str, with: Value| {
            let mut entries = vec![
                ("joins_last_minute", Value::from(1)),
                ("routing_table_size", Value::from(2)),
                ("requests_per_second", Value::from(0.5)),
                ("overloaded", Value::from(false)),
            ];
            for entry in &mut entries {
                if entry.0 == replace {
                    entry.1 = with.clone();
                }
            }
            map(entries)
        };
        let cases = [
            (full("joins_last_minute", Value::from(-1)), "joins_last_minute"),
            (full("routing_table_size", Value::from("many")), "routing_table_size"),
            (full("requests_per_second", Value::from(true)), "requests_per_second"),
            (full("requests_per_second", Value::from(f64::NAN)), "requests_per_second"),
            (full("requests_per_second", Value::from(-2.0)), "requests_per_second"),
            (full("overloaded", Value::from(1)), "overloaded"),
        ];
        for (value, field) in cases {
            let error = LoadReport::from_value(&value).unwrap_err();
            assert!(matches!(&error, LoadDecodeError::WrongType { field: f, .. } if *f == field));
            assert!(error.to_string().contains(field), "{error}");
        }
        let missing = map(vec![("joins_last_minute", Value::from(1))]);
        assert_eq!(
            LoadReport::from_value(&missing),
            Err(LoadDecodeError::MissingField { field: "requests_per_second" })
        );
        let error = LoadReport::from_value(&Value::from("x")).unwrap_err();
        assert_eq!(error.to_string(), "kadscale_load answer is not a map but a string (\"x\")");
    }

    fn at(start: Instant, seconds: f64) -> Instant {
        start + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn joins_slide_out_after_a_minute() {
        let start = Instant::now();
        let mut tracker = LoadTracker::new(MINUTE, 50, start);
        for second in [0.0, 10.5, 59.9] {
            tracker.record_join(at(start, second));
        }
        assert_eq!(tracker.report(at(start, 59.9), 0).joins_last_minute, 3);
        // The join at 0 s leaves when second 60 begins, the one at 10.5 s when second 70 does.
        assert_eq!(tracker.report(at(start, 60.0), 0).joins_last_minute, 2);
        assert_eq!(tracker.report(at(start, 69.9), 0).joins_last_minute, 2);
        assert_eq!(tracker.report(at(start, 70.0), 0).joins_last_minute, 1);
        assert_eq!(tracker.report(at(start, 500.0), 0).joins_last_minute, 0);
        tracker.record_join(at(start, 500.0));
        assert_eq!(tracker.report(at(start, 500.0), 9).joins_last_minute, 1);
        assert_eq!(tracker.report(at(start, 500.0), 9).routing_table_size, 9);
    }

    #[test]
    fn overloaded_above_the_limit_in_the_load_interval() {
        let start = Instant::now();
        let mut tracker = LoadTracker::new(Duration::from_secs(120), 3, start);
        for second in [0.0, 30.0, 61.0] {
            tracker.record_join(at(start, second));
        }
        assert!(!tracker.report(at(start, 62.0), 0).overloaded, "3 joins is at the limit");
        tracker.record_join(at(start, 90.0));
        let report = tracker.report(at(start, 90.0), 0);
        assert!(report.overloaded, "4 joins in 120 s is above 3");
        assert_eq!(report.joins_last_minute, 2, "the minute holds only 61 s and 90 s");
        assert!(!tracker.report(at(start, 125.0), 0).overloaded, "the 0 s join left the interval");
    }

    #[test]
    fn requests_per_second_over_the_minute() {
        let start = Instant::now();
        let mut tracker = LoadTracker::new(MINUTE, 50, start);
        for second in 0..10u64 {
            tracker.observe_requests_total(at(start, second as f64), 10 * (second + 1));
        }
        // 100 requests in the first 10 seconds (second 0 to 9).
        assert_eq!(tracker.report(at(start, 9.5), 0).requests_per_second, 10.0);
        assert!(
            (tracker.report(at(start, 59.5), 0).requests_per_second - 100.0 / 60.0).abs() < 1e-9
        );
        assert_eq!(tracker.report(at(start, 75.0), 0).requests_per_second, 0.0);
        // The node restarted its count: the new total is all new.
        tracker.observe_requests_total(at(start, 80.0), 30);
        assert_eq!(tracker.report(at(start, 80.0), 0).requests_per_second, 0.5);
    }
}
