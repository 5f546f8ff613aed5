//! Conversions between `SystemTime` (what the tier policy uses) and Kubernetes `Time`.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Kubernetes `Time` of `t`, truncated to whole seconds as the API server stores it (RFC 3339
/// without fractions), so a value read back from status equals the one written.
pub fn to_time(t: SystemTime) -> Time {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// `SystemTime` of a Kubernetes `Time`.
pub fn from_time(t: &Time) -> SystemTime {
    let secs = t.0.as_second();
    let nanos = u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// Whole seconds of `t`, so that clocks compared with stored times agree.
pub fn truncate(t: SystemTime) -> SystemTime {
    from_time(&to_time(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_whole_seconds_through_json() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_123_456);
        let time = to_time(t);
        let json = serde_json::to_string(&time).unwrap();
        assert_eq!(json, "\"2023-11-14T22:15:23Z\"");
        let back: Time = serde_json::from_str(&json).unwrap();
        assert_eq!(from_time(&back), truncate(t));
        assert_eq!(from_time(&back), SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_123));
    }
}
