//! Tunables of a node, with the Python package's defaults where it has one.

use std::time::Duration;

use crate::id::NodeId;

/// Everything a [`crate::node::Node`] can be tuned with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's id; random when not given.
    pub node_id: Option<NodeId>,
    /// Bucket size and the number of closest nodes a value is stored on (Python: 20).
    pub k: usize,
    /// Parallel queries per lookup round (Python: 3).
    pub alpha: usize,
    /// How long a call waits for its answer (rpcudp: 5 s).
    pub rpc_timeout: Duration,
    /// A lookup that got no answer for this long stops waiting for the calls in flight and
    /// asks the next closest nodes (their late answers still count).
    pub lookup_stall: Duration,
    /// Calls awaiting an answer at once; further calls fail fast instead of growing memory.
    pub max_outstanding_calls: usize,
    /// How long a stored value lives (Python: one week).
    pub storage_ttl: Duration,
    /// Most values held at once; the oldest is dropped to make room.
    pub max_stored_values: usize,
    /// Largest value payload accepted, in bytes.
    pub max_value_size: usize,
    /// Most contacts of one IP address in one k-bucket and in its replacement cache, so that
    /// one host making up ids cannot fill this node's view of the network; counted per IP and
    /// port on loopback, where one-machine setups run every node on 127.0.0.1.
    pub max_contacts_per_ip: usize,
    /// Requests per second handled from one source (IP; IP and port on loopback), with a
    /// burst of one second's worth; beyond it they are dropped unanswered. 0: no limit.
    pub max_requests_per_source: u32,
    /// Answer bytes per second sent to one source, so that requests with a forged source
    /// cannot aim more than this at a victim. 0: no limit.
    pub max_answer_bytes_per_source: u32,
    /// How often stale buckets are refreshed and old values republished (Python: one hour).
    pub refresh_interval: Duration,
    /// A bucket untouched for this long gets a refresh lookup (Python: one hour).
    pub bucket_stale_after: Duration,
    /// Values older than this are republished at each refresh (Python: one hour).
    pub republish_after: Duration,
    /// After a join, the buckets its lookup did not fill are refreshed once, at a random time
    /// between this and twice this: by then the peers that met the node in the meantime are
    /// in its table, and a storm of joins does not meet a storm of refreshes (Python: none).
    pub far_refresh_delay: Duration,
    /// Fraction (0 to 1) of received datagrams dropped at random: fault tests only, 0 otherwise.
    pub datagram_loss: f64,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            node_id: None,
            k: 20,
            alpha: 3,
            rpc_timeout: Duration::from_secs(5),
            lookup_stall: Duration::from_secs(1),
            max_outstanding_calls: 4096,
            storage_ttl: Duration::from_secs(7 * 24 * 3600),
            max_stored_values: 100_000,
            max_value_size: 64 * 1024,
            max_contacts_per_ip: crate::routing::DEFAULT_MAX_CONTACTS_PER_IP,
            refresh_interval: Duration::from_secs(3600),
            bucket_stale_after: Duration::from_secs(3600),
            republish_after: Duration::from_secs(3600),
            far_refresh_delay: Duration::from_secs(1),
            datagram_loss: 0.0,
            max_requests_per_source: 2000,
            max_answer_bytes_per_source: 1024 * 1024,
        }
    }
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("alpha must be at least 1")]
    ZeroAlpha,
    #[error("max_outstanding_calls must be at least 1")]
    ZeroOutstandingCalls,
    #[error("rpc_timeout must be longer than zero")]
    ZeroTimeout,
    #[error("max_contacts_per_ip must be at least 1")]
    ZeroContactsPerIp,
    #[error("datagram_loss must be a fraction from 0 to 1, not {0}")]
    DatagramLoss(String),
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.k == 0 {
            return Err(ConfigError::ZeroK);
        }
        if self.alpha == 0 {
            return Err(ConfigError::ZeroAlpha);
        }
        if self.max_outstanding_calls == 0 {
            return Err(ConfigError::ZeroOutstandingCalls);
        }
        if self.rpc_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.max_contacts_per_ip == 0 {
            return Err(ConfigError::ZeroContactsPerIp);
        }
        if !(0.0..=1.0).contains(&self.datagram_loss) {
            return Err(ConfigError::DatagramLoss(self.datagram_loss.to_string()));
        }
        Ok(())
    }
}
