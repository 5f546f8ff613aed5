//! Bounded polling: every wait has a deadline and says what it last saw when it runs out.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often a condition is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// One look at the world: done with a value, or not yet, with what was seen instead.
pub enum Check<T> {
    Done(T),
    NotYet(String),
}

/// Polls `probe` until it is done or `timeout` passes. A probe error (an API hiccup) counts as
/// "not yet" and is reported if it is still the last thing seen at the deadline.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let started = Instant::now();
    loop {
        let last_seen = match probe().await {
            Ok(Check::Done(value)) => return Ok(value),
            Ok(Check::NotYet(seen)) => seen,
            Err(error) => format!("error: {error:#}"),
        };
        if started.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
