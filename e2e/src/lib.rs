//! Harness of the kadscale end-to-end tests: a real API server from `KUBECONFIG` (the loopback
//! control plane of `just cluster-up`, or kind), the Helm chart installed once per test binary,
//! the operator as local processes authenticated as the chart's ServiceAccount (so a missing RBAC
//! rule fails a test), and bounded waits that explain what they were waiting for.
//!
//! Tests skip with a loud message when no cluster is reachable, unless `KADSCALE_E2E_REQUIRED`
//! is set (as `just test-e2e` does), in which case they fail.
//!
//! Run: `just test-e2e` (cluster up, image built, everything required), or against any cluster
//! `KUBECONFIG=... cargo test -p kadscale-e2e`. Environment:
//! - `KUBECONFIG`: the cluster (admin); nothing else is read, not even ~/.kube/config.
//! - `KADSCALE_E2E_REQUIRED=1`: fail instead of skipping when the cluster or the image is missing.
//! - `KADSCALE_HELM`: the helm binary (default: e2e/.run/bin/helm, else `helm` on PATH).
//! - `KADSCALE_OPERATOR_BIN`: a prebuilt `dht-operator` (default: `cargo build` of it, once).
//! - `KADSCALE_IMAGE_OCI`: the image archive (default: target/image/kadscale-VERSION.oci.tar).
//! - `KADSCALE_E2E_KEEP_NAMESPACES`: keep each test's namespace for a post-mortem.
//!
//! Operator logs and the ServiceAccount kubeconfig stay in target/e2e/ after a run.

pub mod bench;
pub mod chart;
pub mod cluster;
pub mod command;
pub mod dht;
pub mod operator;
pub mod paths;
pub mod plot;
pub mod process;
pub mod scenario;
pub mod wait;
pub mod watch;
