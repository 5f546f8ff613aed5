//! The `DhtCluster` custom resource: spec, status and the schema rules the API server enforces.
//!
//! Every field has a doc comment because schemars turns them into the schema's descriptions,
//! which is what `kubectl explain dhtcluster.spec...` prints. Every field also has a default, so
//! that `spec: {workers: {replicas: 30}}` describes a complete cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
pub use kadscale_node::bootstrap::selection::SelectionStrategy;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image that holds both `dht-node` and `dht-operator`, used when neither the spec nor the
/// operator's `--image` flag names one.
pub const DEFAULT_IMAGE: &str = "kadscale/kadscale:0.1.0";

/// The desired state of one Kademlia DHT: its workers, its bootstrap tier and the settings every
/// node runs with.
// Several printer columns share a `type_`, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kadscale.io",
    version = "v1alpha1",
    kind = "DhtCluster",
    namespaced,
    shortname = "dhtc",
    category = "kadscale",
    status = "DhtClusterStatus",
    derive = "PartialEq",
    doc = "A Kademlia DHT whose bootstrap tier follows its worker count.",
    // validate::MAX_NAME and MAX_NAME_WITH_EXPOSE; a unit test keeps them in step.
    validation = Rule::new(
        "self.metadata.name.size() <= (has(self.spec.bootstrap.expose) ? 40 : 42)"
    )
    .message(
        "metadata.name must be at most 42 characters (40 with spec.bootstrap.expose) so that \
         the names of its children (NAME-bootstrap-HASH, NAME-bootstrap-N-external) fit in 63"
    ),
    scale(
        spec_replicas_path = ".spec.workers.replicas",
        status_replicas_path = ".status.workers.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Tier",
        type_ = "string",
        json_path = ".status.tier",
        description = "Tier of the worker count (bootstrap replicas may lag it by the scale-down window)"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".spec.workers.replicas",
        description = "Desired worker replicas"
    ),
    printcolumn(
        name = "Bootstraps",
        type_ = "integer",
        json_path = ".status.bootstrap.desired",
        description = "Bootstrap replicas the tier calls for"
    ),
    printcolumn(
        name = "Ratio",
        type_ = "string",
        json_path = ".status.ratio",
        description = "Workers per bootstrap node"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every bootstrap and worker pod is ready"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "RatioStatus",
        type_ = "string",
        json_path = ".status.ratioStatus",
        description = "OK while workers per bootstrap node is within maxWorkersPerBootstrap",
        priority = 1
    ),
    printcolumn(
        name = "ReadyWorkers",
        type_ = "integer",
        json_path = ".status.workers.ready",
        priority = 1
    ),
    printcolumn(
        name = "ReadyBootstraps",
        type_ = "integer",
        json_path = ".status.bootstrap.ready",
        priority = 1
    ),
    selectable = ".status.tier"
)]
#[serde(rename_all = "camelCase")]
pub struct DhtClusterSpec {
    /// The worker nodes: a Deployment whose pods join the DHT through the bootstrap tier.
    #[serde(default)]
    pub workers: WorkersSpec,
    /// The bootstrap tier: a StatefulSet sized by the tier policy from the worker count.
    #[serde(default)]
    pub bootstrap: BootstrapSpec,
    /// DHT settings every node (bootstrap and worker) runs with.
    #[serde(default)]
    pub node: NodeSpec,
    /// Container image holding `dht-node`. Unset: the operator's `--image` (default
    /// kadscale/kadscale:0.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\S+$"))]
    pub image: Option<String>,
    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// An optional NetworkPolicy limiting who reaches the DHT's pods.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

/// Pod placement and resources shared by the worker and bootstrap pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// CPU and memory requests and limits of the `dht-node` container.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra labels on the pods (the operator's own app.kubernetes.io labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

impl Default for PodSettings {
    fn default() -> Self {
        PodSettings {
            resources: default_resources(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
        }
    }
}

/// A DHT node is small: a UDP socket, a routing table and a value store.
fn default_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
    };
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "50m"), ("memory", "32Mi")])),
        limits: Some(quantities(&[("memory", "128Mi")])),
        ..ResourceRequirements::default()
    }
}

/// The worker nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Worker replicas. The bootstrap tier is sized from this count; `kubectl scale` and a
    /// HorizontalPodAutoscaler set it through the scale subresource.
    #[serde(default = "default_worker_replicas")]
    #[schemars(range(min = 0, max = 100000))]
    pub replicas: i32,
    /// Placement and resources of the worker pods.
    #[serde(flatten)]
    pub pod: PodSettings,
}

fn default_worker_replicas() -> i32 {
    3
}

impl Default for WorkersSpec {
    fn default() -> Self {
        WorkersSpec { replicas: default_worker_replicas(), pod: PodSettings::default() }
    }
}

/// How the bootstrap replica count is chosen from the worker count.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapStrategy {
    /// The tier whose worker range holds the worker count.
    #[default]
    Adaptive,
    /// Always the small tier.
    Small,
    /// Always the medium tier.
    Medium,
    /// Always the large tier.
    Large,
    /// Always the xlarge tier.
    Xlarge,
    /// The adaptive tier's count, raised to ceil(workers / maxWorkersPerBootstrap), capped by
    /// maxBootstrapNodes.
    Proportional,
}

/// The bootstrap tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.maxBootstrapNodes >= self.tiers.xlarge.bootstrapNodes")
        .message("spec.bootstrap.maxBootstrapNodes must be at least spec.bootstrap.tiers.xlarge.bootstrapNodes")
        .field_path(".maxBootstrapNodes"),
    // Bootstrap pod N gets port basePort + N, N up to maxBootstrapNodes - 1.
    validation = Rule::new("!has(self.expose) || self.expose.basePort + self.maxBootstrapNodes - 1 <= 65535")
        .message("spec.bootstrap.expose.basePort plus maxBootstrapNodes - 1 must not exceed 65535")
        .field_path(".expose.basePort"),
    validation = Rule::new(
        "!has(self.expose) || !has(self.expose.nodePortBase) || self.expose.nodePortBase + self.maxBootstrapNodes - 1 <= 65535"
    )
    .message("spec.bootstrap.expose.nodePortBase plus maxBootstrapNodes - 1 must not exceed 65535")
    .field_path(".expose.nodePortBase")
)]
pub struct BootstrapSpec {
    /// adaptive (by worker count), a fixed tier (small, medium, large, xlarge), or proportional
    /// (adaptive, raised so workers per bootstrap node stays within maxWorkersPerBootstrap).
    #[serde(default)]
    pub strategy: BootstrapStrategy,
    /// The tier table: worker ranges and their bootstrap node counts.
    #[serde(default)]
    pub tiers: TierTableSpec,
    /// Above this many workers per bootstrap node, status.ratioStatus is Warning.
    #[serde(default = "default_max_workers_per_bootstrap")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_workers_per_bootstrap: i32,
    /// Upper bound on bootstrap replicas, whatever the strategy; at least tiers.xlarge.bootstrapNodes.
    #[serde(default = "default_max_bootstrap_nodes")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_bootstrap_nodes: i32,
    /// How long a lower bootstrap count must stay right before bootstrap replicas shrink.
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i32,
    /// On the way up, workers grow once the bootstrap StatefulSet is Ready at its new size, or
    /// after this many seconds, whichever comes first.
    #[serde(default = "default_bootstrap_ready_timeout_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub bootstrap_ready_timeout_seconds: i32,
    /// Off unless set: one Service per bootstrap pod, so nodes outside the cluster (Python
    /// workers during a migration) can join through fixed addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ExposeSpec>,
    /// Placement and resources of the bootstrap pods.
    #[serde(flatten)]
    pub pod: PodSettings,
}

fn default_max_workers_per_bootstrap() -> i32 {
    50
}
fn default_max_bootstrap_nodes() -> i32 {
    20
}
fn default_scale_down_stabilization_seconds() -> i32 {
    300
}
fn default_bootstrap_ready_timeout_seconds() -> i32 {
    120
}

impl Default for BootstrapSpec {
    fn default() -> Self {
        BootstrapSpec {
            strategy: BootstrapStrategy::default(),
            tiers: TierTableSpec::default(),
            max_workers_per_bootstrap: default_max_workers_per_bootstrap(),
            max_bootstrap_nodes: default_max_bootstrap_nodes(),
            scale_down_stabilization_seconds: default_scale_down_stabilization_seconds(),
            bootstrap_ready_timeout_seconds: default_bootstrap_ready_timeout_seconds(),
            expose: None,
            pod: PodSettings::default(),
        }
    }
}

/// The tier table. Defaults are the seed's: small 0-15 workers → 2 bootstrap nodes, medium
/// 16-50 → 3, large 51-200 → 4, xlarge above → 6. A row given replaces the whole row.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.medium.maxWorkers > self.small.maxWorkers")
        .message("spec.bootstrap.tiers.medium.maxWorkers must be greater than tiers.small.maxWorkers")
        .field_path(".medium.maxWorkers"),
    validation = Rule::new("self.large.maxWorkers > self.medium.maxWorkers")
        .message("spec.bootstrap.tiers.large.maxWorkers must be greater than tiers.medium.maxWorkers")
        .field_path(".large.maxWorkers"),
    validation = Rule::new("self.medium.bootstrapNodes >= self.small.bootstrapNodes")
        .message("spec.bootstrap.tiers.medium.bootstrapNodes must not be less than tiers.small.bootstrapNodes")
        .field_path(".medium.bootstrapNodes"),
    validation = Rule::new("self.large.bootstrapNodes >= self.medium.bootstrapNodes")
        .message("spec.bootstrap.tiers.large.bootstrapNodes must not be less than tiers.medium.bootstrapNodes")
        .field_path(".large.bootstrapNodes"),
    validation = Rule::new("self.xlarge.bootstrapNodes >= self.large.bootstrapNodes")
        .message("spec.bootstrap.tiers.xlarge.bootstrapNodes must not be less than tiers.large.bootstrapNodes")
        .field_path(".xlarge.bootstrapNodes")
)]
pub struct TierTableSpec {
    /// The smallest tier.
    #[serde(default = "default_small")]
    pub small: BoundedTierSpec,
    /// The tier above small.
    #[serde(default = "default_medium")]
    pub medium: BoundedTierSpec,
    /// The tier above medium.
    #[serde(default = "default_large")]
    pub large: BoundedTierSpec,
    /// The largest tier: every worker count above large.maxWorkers.
    #[serde(default = "default_xlarge")]
    pub xlarge: TopTierSpec,
}

fn default_small() -> BoundedTierSpec {
    BoundedTierSpec { max_workers: 15, bootstrap_nodes: 2 }
}
fn default_medium() -> BoundedTierSpec {
    BoundedTierSpec { max_workers: 50, bootstrap_nodes: 3 }
}
fn default_large() -> BoundedTierSpec {
    BoundedTierSpec { max_workers: 200, bootstrap_nodes: 4 }
}
fn default_xlarge() -> TopTierSpec {
    TopTierSpec { bootstrap_nodes: 6 }
}

impl Default for TierTableSpec {
    fn default() -> Self {
        TierTableSpec {
            small: default_small(),
            medium: default_medium(),
            large: default_large(),
            xlarge: default_xlarge(),
        }
    }
}

/// A tier with an upper bound on its worker count.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundedTierSpec {
    /// The largest worker count of this tier.
    #[schemars(range(min = 0, max = 100000))]
    pub max_workers: i32,
    /// Bootstrap nodes of this tier.
    #[schemars(range(min = 1, max = 1000))]
    pub bootstrap_nodes: i32,
}

/// The unbounded top tier.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopTierSpec {
    /// Bootstrap nodes of this tier.
    #[schemars(range(min = 1, max = 1000))]
    pub bootstrap_nodes: i32,
}

/// One Service per bootstrap pod, reachable from outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeSpec {
    /// NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub service_type: ExposeType,
    /// Service port of bootstrap pod 0; pod N gets basePort + N, as the seed numbered its
    /// bootstrap nodes 5678, 5679, ...
    #[serde(default = "default_expose_base_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub base_port: i32,
    /// NodePort of bootstrap pod 0 (pod N gets nodePortBase + N); unset: the API server picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port_base: Option<i32>,
    /// Extra annotations on each exposed Service (for example, a cloud load balancer's settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_expose_base_port() -> i32 {
    5678
}

/// How a bootstrap pod is exposed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExposeType {
    /// A port on every cluster node.
    NodePort,
    /// A cloud load balancer per bootstrap pod.
    #[default]
    LoadBalancer,
}

impl ExposeType {
    pub fn name(self) -> &'static str {
        match self {
            ExposeType::NodePort => "NodePort",
            ExposeType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// When the kubelet pulls the image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// On every pod start.
    Always,
    /// Only when the node does not have the image.
    #[default]
    IfNotPresent,
    /// Never; the image must be on the node.
    Never,
}

impl PullPolicy {
    pub fn name(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Settings of every DHT node, passed to `dht-node` as flags.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// UDP port of the DHT on every pod (bootstrap and worker).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Kademlia k: bucket size and replication factor.
    #[serde(default = "default_k")]
    #[schemars(range(min = 1, max = 1000))]
    pub k: i32,
    /// Kademlia alpha: parallel requests per lookup step.
    #[serde(default = "default_alpha")]
    #[schemars(range(min = 1, max = 100))]
    pub alpha: i32,
    /// How a worker picks the bootstrap node to join through.
    #[serde(default)]
    pub selection_strategy: SelectionStrategy,
    /// Seconds between health pings of every bootstrap endpoint.
    #[serde(default = "default_health_check_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub health_check_interval_seconds: i32,
    /// Consecutive failed pings after which a bootstrap endpoint counts as unhealthy.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// Seconds to wait for a bootstrap endpoint's answer (fractions allowed).
    #[serde(default = "default_connection_timeout_seconds")]
    #[schemars(range(min = 0.1, max = 300.0))]
    pub connection_timeout_seconds: f64,
    /// Retrying a failed join through other endpoints, with exponential backoff.
    #[serde(default)]
    pub fallback: FallbackSpec,
    /// Rebalancing workers over bootstrap nodes.
    #[serde(default)]
    pub load_balancing: LoadBalancingSpec,
    /// Log format of the nodes.
    #[serde(default)]
    pub log_format: LogFormat,
}

fn default_port() -> i32 {
    5678
}
fn default_k() -> i32 {
    20
}
fn default_alpha() -> i32 {
    3
}
fn default_health_check_interval_seconds() -> i32 {
    30
}
fn default_failure_threshold() -> i32 {
    3
}
fn default_connection_timeout_seconds() -> f64 {
    5.0
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            port: default_port(),
            k: default_k(),
            alpha: default_alpha(),
            selection_strategy: SelectionStrategy::default(),
            health_check_interval_seconds: default_health_check_interval_seconds(),
            failure_threshold: default_failure_threshold(),
            connection_timeout_seconds: default_connection_timeout_seconds(),
            fallback: FallbackSpec::default(),
            load_balancing: LoadBalancingSpec::default(),
            log_format: LogFormat::default(),
        }
    }
}

/// Log format of the nodes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The value of `dht-node --log-format`.
    pub fn flag_value(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

/// Retrying a failed join.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackSpec {
    /// Try other endpoints and back off when a join fails.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// First retry delay in seconds; attempt n waits retryDelaySeconds × 2^n, with jitter.
    #[serde(default = "default_retry_delay_seconds")]
    #[schemars(range(min = 0.0, max = 3600.0))]
    pub retry_delay_seconds: f64,
    /// Retries with backoff before retrying at a capped interval.
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_retries: i32,
}

fn default_true() -> bool {
    true
}
fn default_retry_delay_seconds() -> f64 {
    2.0
}
fn default_max_retries() -> i32 {
    3
}

impl Default for FallbackSpec {
    fn default() -> Self {
        FallbackSpec {
            enabled: true,
            retry_delay_seconds: default_retry_delay_seconds(),
            max_retries: default_max_retries(),
        }
    }
}

/// Rebalancing workers over bootstrap nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancingSpec {
    /// Rebalance periodically.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds between rebalancing rounds.
    #[serde(default = "default_load_balance_interval_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub interval_seconds: i32,
    /// Connections a bootstrap node takes before it counts as full.
    #[serde(default = "default_max_connections_per_node")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections_per_node: i32,
}

fn default_load_balance_interval_seconds() -> i32 {
    60
}
fn default_max_connections_per_node() -> i32 {
    50
}

impl Default for LoadBalancingSpec {
    fn default() -> Self {
        LoadBalancingSpec {
            enabled: true,
            interval_seconds: default_load_balance_interval_seconds(),
            max_connections_per_node: default_max_connections_per_node(),
        }
    }
}

/// A NetworkPolicy for the cluster's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.allowedCidrs) || self.allowedCidrs.all(c, isCIDR(c))")
    .message("spec.networkPolicy.allowedCidrs must hold CIDRs such as 10.0.0.0/8 or fd00::/8")
    .field_path(".allowedCidrs"))]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy: only this cluster's pods, the namespaces and CIDRs below reach
    /// the DHT port and the admin port.
    #[serde(default)]
    pub enabled: bool,
    /// Namespaces (by name) whose pods may reach the DHT and admin ports, e.g. clients and
    /// Prometheus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub allowed_namespaces: Vec<String>,
    /// CIDRs that may reach the DHT port, e.g. nodes outside the cluster using bootstrap.expose.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 49)))]
    pub allowed_cidrs: Vec<String>,
}

/// What the operator observed and decided, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DhtClusterStatus {
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The tier the worker count falls in: small, medium, large or xlarge (bootstrap.desired
    /// may lag it during a scale-down window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Bootstrap replicas: desired by the tier policy (after stabilization) and ready.
    #[serde(default)]
    pub bootstrap: BootstrapStatus,
    /// Worker replicas: desired by the spec, applied to the Deployment, running and ready.
    #[serde(default)]
    pub workers: WorkerStatus,
    /// Workers per bootstrap node, as the seed wrote it, e.g. "25.0:1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<String>,
    /// Workers per bootstrap node as a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_value: Option<f64>,
    /// OK while the ratio is within spec.bootstrap.maxWorkersPerBootstrap, else Warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_status: Option<String>,
    /// Label selector of the worker pods, for the scale subresource (HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Since when a lower bootstrap count has been right; set while a scale-down waits out
    /// spec.bootstrap.scaleDownStabilizationSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_pending_since: Option<Time>,
    /// Since when worker growth has waited for the bootstrap StatefulSet to be Ready; set while
    /// it waits (at most spec.bootstrap.bootstrapReadyTimeoutSeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_growth_waiting_since: Option<Time>,
    /// Ready, Progressing, Degraded and RatioWithinLimit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Bootstrap replica counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapStatus {
    /// Bootstrap replicas in force (the StatefulSet's replicas).
    #[serde(default)]
    pub desired: i32,
    /// Bootstrap replicas the worker count calls for before stabilization.
    #[serde(default)]
    pub target: i32,
    /// Ready bootstrap pods.
    #[serde(default)]
    pub ready: i32,
}

/// Worker replica counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Worker replicas in the spec.
    #[serde(default)]
    pub desired: i32,
    /// Worker replicas applied to the Deployment; below desired while growth waits for the
    /// bootstrap tier.
    #[serde(default)]
    pub applied: i32,
    /// Worker pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Ready worker pods.
    #[serde(default)]
    pub ready: i32,
}

/// The CRD as YAML, exactly what `dht-operator crd` prints and crds/dhtcluster.yaml holds.
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    let yaml = yaml_serde::to_string(&DhtCluster::crd())?;
    Ok(format!("# Generated by `dht-operator crd` (just crds); do not edit.\n---\n{yaml}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn crd_json() -> serde_json::Value {
        serde_json::to_value(DhtCluster::crd()).unwrap()
    }

    #[test]
    fn minimal_spec_is_complete() {
        let spec: DhtClusterSpec =
            serde_json::from_value(json!({"workers": {"replicas": 30}})).unwrap();
        assert_eq!(spec.workers.replicas, 30);
        assert_eq!(spec.bootstrap, BootstrapSpec::default());
        assert_eq!(
            spec.bootstrap.tiers.medium,
            BoundedTierSpec { max_workers: 50, bootstrap_nodes: 3 }
        );
        assert_eq!(spec.node.port, 5678);
        assert_eq!(spec.node.selection_strategy, SelectionStrategy::RoundRobin);
        assert!(spec.node.fallback.enabled && spec.node.load_balancing.enabled);
        assert!(!spec.network_policy.enabled);
        assert_eq!(spec.workers.pod.resources, default_resources());
    }

    #[test]
    fn names_scale_and_status_subresources() {
        let crd = DhtCluster::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("dhtclusters.kadscale.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["dhtc".to_string()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["kadscale".to_string()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.workers.replicas");
        assert_eq!(scale.status_replicas_path, ".status.workers.replicas");
        assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Tier", "Workers", "Bootstraps", "Ratio", "Ready", "Age"]);
    }

    #[test]
    fn schema_has_ranges_enums_defaults_and_docs() {
        let crd = crd_json();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let workers = &spec["properties"]["workers"]["properties"];
        assert_eq!(workers["replicas"]["minimum"].as_f64(), Some(0.0));
        assert_eq!(workers["replicas"]["default"], 3);
        assert!(workers["replicas"]["description"]
            .as_str()
            .unwrap()
            .contains("HorizontalPodAutoscaler"));
        // Flattened pod settings land on the workers object itself.
        assert!(workers["nodeSelector"].is_object());
        let bootstrap = &spec["properties"]["bootstrap"]["properties"];
        assert_eq!(
            bootstrap["strategy"]["enum"],
            json!(["adaptive", "small", "medium", "large", "xlarge", "proportional"])
        );
        assert_eq!(bootstrap["maxWorkersPerBootstrap"]["minimum"].as_f64(), Some(1.0));
        let node = &spec["properties"]["node"]["properties"];
        assert_eq!(
            node["selectionStrategy"]["enum"],
            json!(["round_robin", "least_loaded", "priority", "random"])
        );
        assert_eq!(node["port"]["maximum"].as_f64(), Some(65535.0));
    }

    #[test]
    fn cel_rules_name_their_field() {
        let crd = crd_json();
        let bootstrap = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["bootstrap"];
        let rules = bootstrap["x-kubernetes-validations"].as_array().unwrap();
        assert!(rules[0]["message"].as_str().unwrap().contains("maxBootstrapNodes"));
        let tier_rules =
            bootstrap["properties"]["tiers"]["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(tier_rules.len(), 5);
        for rule in tier_rules {
            let path = rule["fieldPath"].as_str().unwrap();
            assert!(rule["message"].as_str().unwrap().contains(&path[1..]), "{rule}");
        }
    }

    /// Runs the CRD's CEL rules on `spec` locally (kube's `cel` feature), after applying the
    /// schema's defaults as the API server does; returns the failure messages.
    fn cel_failures(spec: serde_json::Value) -> Vec<String> {
        cel_failures_named("dht", spec)
    }

    /// [`cel_failures`] of a DhtCluster named `name`.
    fn cel_failures_named(name: &str, spec: serde_json::Value) -> Vec<String> {
        let crd = crd_json();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let object = json!({
            "apiVersion": "kadscale.io/v1alpha1",
            "kind": "DhtCluster",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        });
        match kube::core::cel::Validator::new().validate(schema, &object, None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn cel_accepts_defaults_and_consistent_tables() {
        assert_eq!(cel_failures(json!({"workers": {"replicas": 30}})), Vec::<String>::new());
        assert_eq!(cel_failures(json!({})), Vec::<String>::new());
        let custom = json!({"bootstrap": {
            "maxBootstrapNodes": 8,
            "tiers": {
                "small": {"maxWorkers": 5, "bootstrapNodes": 1},
                "medium": {"maxWorkers": 10, "bootstrapNodes": 2},
                "large": {"maxWorkers": 20, "bootstrapNodes": 3},
                "xlarge": {"bootstrapNodes": 8},
            },
        }});
        assert_eq!(cel_failures(custom), Vec::<String>::new());
    }

    #[test]
    fn cel_rejects_each_broken_rule_naming_the_field() {
        let cases = [
            (
                json!({"tiers": {"medium": {"maxWorkers": 15, "bootstrapNodes": 3}}}),
                "tiers.medium.maxWorkers must be greater",
            ),
            (
                json!({"tiers": {"large": {"maxWorkers": 40, "bootstrapNodes": 4}}}),
                "tiers.large.maxWorkers must be greater",
            ),
            (
                json!({"tiers": {"medium": {"maxWorkers": 50, "bootstrapNodes": 1}}}),
                "tiers.medium.bootstrapNodes must not be less",
            ),
            (
                json!({"tiers": {"large": {"maxWorkers": 200, "bootstrapNodes": 2}}}),
                "tiers.large.bootstrapNodes must not be less",
            ),
            (json!({"tiers": {"xlarge": {"bootstrapNodes": 3}}}), "tiers.xlarge.bootstrapNodes"),
            (json!({"maxBootstrapNodes": 5}), "maxBootstrapNodes must be at least"),
            (
                json!({"maxBootstrapNodes": 10, "tiers": {"xlarge": {"bootstrapNodes": 12}}}),
                "maxBootstrapNodes must be at least",
            ),
        ];
        for (bootstrap, expected) in cases {
            let failures = cel_failures(json!({ "bootstrap": bootstrap }));
            assert_eq!(failures.len(), 1, "{bootstrap}: {failures:?}");
            assert!(failures[0].contains(expected), "{bootstrap}: {failures:?}");
        }
    }

    #[test]
    fn cel_rejects_expose_ports_past_65535_and_bad_cidrs() {
        let cases = [
            (json!({"bootstrap": {"expose": {"basePort": 65517}}}), "expose.basePort plus"),
            (
                json!({"bootstrap": {"expose": {"nodePortBase": 65520, "basePort": 5678}}}),
                "expose.nodePortBase plus",
            ),
            (
                json!({"networkPolicy": {"allowedCidrs": ["10.0.0.0/8", "10.1.2.3"]}}),
                "allowedCidrs",
            ),
        ];
        for (spec, expected) in cases {
            let failures = cel_failures(spec.clone());
            assert_eq!(failures.len(), 1, "{spec}: {failures:?}");
            assert!(failures[0].contains(expected), "{spec}: {failures:?}");
        }
        // The highest ports that fit: 65516 + 20 - 1 = 65535.
        let fits = json!({
            "bootstrap": {"expose": {"basePort": 65516, "nodePortBase": 65516}},
            "networkPolicy": {"allowedCidrs": ["10.0.0.0/8", "fd00::/8", "192.168.1.7/32"]},
        });
        assert_eq!(cel_failures(fits), Vec::<String>::new());
    }

    /// The schema's name rule and the operator's own check agree at every length around the
    /// limits, with and without expose.
    #[test]
    fn cel_name_rule_matches_the_operators_check() {
        for spec in [json!({}), json!({"bootstrap": {"expose": {}}})] {
            let typed: DhtClusterSpec = serde_json::from_value(spec.clone()).unwrap();
            let settings = crate::validate::validate(&typed, DEFAULT_IMAGE).unwrap();
            for len in 38..=44 {
                let name = "a".repeat(len);
                let schema_ok = cel_failures_named(&name, spec.clone()).is_empty();
                let operator_ok = crate::validate::check_name(&name, &settings).is_ok();
                assert_eq!(schema_ok, operator_ok, "{len} characters, spec {spec}");
            }
        }
        let failures = cel_failures_named(&"a".repeat(43), json!({}));
        assert!(failures[0].contains("metadata.name must be at most 42"), "{failures:?}");
    }

    /// Every DhtCluster in the README's YAML blocks (and the quick start's heredoc) is valid:
    /// it parses, passes the CEL rules and the operator's own validation.
    #[test]
    fn readme_examples_are_valid() {
        let readme = include_str!("../README.md");
        let mut checked = 0;
        for block in readme.split("```").skip(1).step_by(2) {
            let yaml = match block.split_once("<<'EOF'\n") {
                Some((_, rest)) => rest.split("\nEOF").next().unwrap_or_default(),
                None => block.strip_prefix("yaml\n").unwrap_or_default(),
            };
            if !yaml.contains("kind: DhtCluster") {
                continue;
            }
            let cluster: DhtCluster = yaml_serde::from_str(yaml).unwrap();
            let spec = serde_json::to_value(&cluster.spec).unwrap();
            assert_eq!(cel_failures(spec), Vec::<String>::new(), "{yaml}");
            crate::validate::validate(&cluster.spec, DEFAULT_IMAGE).unwrap();
            checked += 1;
        }
        assert_eq!(checked, 2, "the quick start and the fuller example");
    }

    #[test]
    fn committed_crd_matches_generated() {
        let committed = include_str!("../../crds/dhtcluster.yaml");
        assert!(
            committed == crd_yaml().unwrap(),
            "crds/dhtcluster.yaml is stale: run `just crds` (dht-operator crd > crds/dhtcluster.yaml)"
        );
    }
}
