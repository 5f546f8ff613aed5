//! Harness of the kadscale end-to-end tests: a real API server from `KUBECONFIG` (the loopback
//! control plane of `just cluster-up`, or kind), the Helm chart installed once per test binary,
//! the operator as local processes authenticated as the chart's ServiceAccount (so a missing RBAC
//! rule fails a test), and bounded waits that explain what they were waiting for.
//!
//! Tests skip with a loud message when no cluster is reachable, unless `KADSCALE_E2E_REQUIRED`
//! is set (as `just test-e2e` does), in which case they fail.

pub mod chart;
pub mod cluster;
pub mod command;
pub mod dht;
pub mod operator;
pub mod paths;
pub mod scenario;
pub mod wait;
pub mod watch;
