//! kadscale-operator: the `DhtCluster` custom resource and the controller that keeps a DHT's
//! bootstrap tier sized to its worker count.

pub mod builders;
pub mod crd;
pub mod plan;
pub mod time;
pub mod validate;
