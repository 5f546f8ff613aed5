//! kadscale-node: a Kademlia DHT node that speaks the wire protocol of the Python `kademlia`
//! package, plus the tier policy shared with the operator.

pub mod admin;
pub mod allocator;
pub mod bootstrap;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod id;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod node;
pub mod random_key;
pub mod rate_limit;
pub mod routing;
pub mod shutdown;
pub mod storage;
pub mod tier;
pub mod transport;

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not: every critical section of this crate leaves its data
/// consistent (a single update, or updates that cannot panic halfway).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
