//! The bootstrap manager: how a node finds bootstrap nodes, picks among them, watches their
//! health and joins the DHT through them, retrying for as long as the process lives.
//!
//! Pure parts, each unit-tested without sockets: [`endpoint`] (what the user named),
//! [`discovery`] (static list, DNS names, file; merging a fresh discovery into the pool),
//! [`selection`] (the seed's four strategies), [`health`], [`backoff`], [`load`] (the
//! `kadscale_load` procedure and the bootstrap side's counting). [`manager`] orchestrates them
//! against a [`manager::Prober`], so the same logic runs over a real node
//! ([`node_prober`], which also serves `kadscale_load` on bootstrap nodes) or a fake one;
//! [`args`] holds the flags that configure it.

pub mod args;
pub mod backoff;
pub mod discovery;
pub mod endpoint;
pub mod health;
pub mod load;
pub mod manager;
pub mod node_prober;
pub mod selection;
