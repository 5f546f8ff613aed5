//! kadscale-operator: the `DhtCluster` custom resource and the controller that keeps a DHT's
//! bootstrap tier sized to its worker count.
//!
//! A reconcile is fetch → [`validate`] (pure) → [`plan`] (pure) → [`builders`] (pure) →
//! [`apply`] (server-side apply, one field manager) → [`status`] (conditions, events).

pub mod apply;
pub mod builders;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod status;
pub mod time;
pub mod validate;
