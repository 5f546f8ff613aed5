//! Spec → validated settings (pure).
//!
//! The API server already enforces the schema's ranges and CEL rules, but a `DhtCluster` can
//! predate a CRD upgrade or come from a test, so the operator checks again here, turns the spec
//! into the types the tier policy and the builders use, and names the field when it refuses.

use std::time::Duration;

use kadscale_node::tier::{PolicyError, Tier, TierPolicy, TierStrategy, TierTable};

use crate::crd::{
    BootstrapStrategy, DhtClusterSpec, ExposeSpec, NetworkPolicySpec, NodeSpec, PodSettings,
    PullPolicy,
};

/// A spec the operator cannot act on; the message names the field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field} must be between {min} and {max}, got {value}")]
    OutOfRange { field: &'static str, value: String, min: String, max: String },
    #[error("spec.bootstrap: {0}")]
    Policy(#[from] PolicyError),
    #[error("spec.image must not be empty")]
    EmptyImage,
    #[error(
        "spec.bootstrap.expose.{field} ({base}) plus maxBootstrapNodes - 1 ({extra}) exceeds 65535"
    )]
    ExposePortOverflow { field: &'static str, base: u32, extra: u32 },
    #[error("metadata.name {name:?} is {len} characters; at most {max} fit {why}")]
    NameTooLong { name: String, len: usize, max: usize, why: &'static str },
    /// A label or annotation the API server would refuse on a child object: caught here so that
    /// no child is half-applied and the message names the DhtCluster's field, not the child's.
    #[error("spec.{field}: {what} {value:?} is invalid: {rule}")]
    InvalidMetadata { field: String, what: &'static str, value: String, rule: &'static str },
}

/// Longest cluster name whose StatefulSet `NAME-bootstrap` still fits: the StatefulSet
/// controller labels pods with `NAME-bootstrap-<10-character hash>`, at most 63 characters.
const MAX_NAME: usize = 63 - "-bootstrap".len() - 11;
/// Longest cluster name whose expose Services `NAME-bootstrap-<ordinal>-external` fit in 63
/// characters for up to 1000 bootstrap pods.
const MAX_NAME_WITH_EXPOSE: usize = 63 - "-bootstrap-999-external".len();

/// Checks that every child's name derived from the cluster's `name` is a valid object name.
pub fn check_name(name: &str, settings: &Settings) -> Result<(), SpecError> {
    let (max, why) = if settings.expose.is_some() {
        (MAX_NAME_WITH_EXPOSE, "the expose Services' names NAME-bootstrap-N-external")
    } else {
        (MAX_NAME, "the bootstrap pods' revision label NAME-bootstrap-HASH")
    };
    if name.len() > max {
        return Err(SpecError::NameTooLong { name: name.to_string(), len: name.len(), max, why });
    }
    Ok(())
}

/// Everything a reconcile needs from the spec, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub workers: u32,
    pub policy: TierPolicy,
    /// How long worker growth waits for the bootstrap StatefulSet to be Ready.
    pub bootstrap_ready_timeout: Duration,
    pub image: String,
    pub pull_policy: PullPolicy,
    pub node: NodeSpec,
    pub worker_pod: PodSettings,
    pub bootstrap_pod: PodSettings,
    pub expose: Option<ExposeSpec>,
    pub network_policy: NetworkPolicySpec,
}

impl Settings {
    /// The DHT port, checked to be 1..=65535.
    pub fn port(&self) -> u16 {
        u16::try_from(self.node.port).unwrap_or(u16::MAX)
    }
}

/// Validates `spec`; `default_image` is the operator's `--image`, used when the spec names none.
pub fn validate(spec: &DhtClusterSpec, default_image: &str) -> Result<Settings, SpecError> {
    let bootstrap = &spec.bootstrap;
    let tiers = &bootstrap.tiers;
    let node_count = |field, value| in_range(field, value, 1, 1000);
    let table = TierTable::new(
        [
            in_range("bootstrap.tiers.small.maxWorkers", tiers.small.max_workers, 0, 100_000)?,
            in_range("bootstrap.tiers.medium.maxWorkers", tiers.medium.max_workers, 0, 100_000)?,
            in_range("bootstrap.tiers.large.maxWorkers", tiers.large.max_workers, 0, 100_000)?,
        ],
        [
            node_count("bootstrap.tiers.small.bootstrapNodes", tiers.small.bootstrap_nodes)?,
            node_count("bootstrap.tiers.medium.bootstrapNodes", tiers.medium.bootstrap_nodes)?,
            node_count("bootstrap.tiers.large.bootstrapNodes", tiers.large.bootstrap_nodes)?,
            node_count("bootstrap.tiers.xlarge.bootstrapNodes", tiers.xlarge.bootstrap_nodes)?,
        ],
    )?;
    let policy = TierPolicy {
        strategy: strategy(bootstrap.strategy),
        table,
        max_workers_per_bootstrap: in_range(
            "bootstrap.maxWorkersPerBootstrap",
            bootstrap.max_workers_per_bootstrap,
            1,
            100_000,
        )?,
        max_bootstrap_nodes: node_count(
            "bootstrap.maxBootstrapNodes",
            bootstrap.max_bootstrap_nodes,
        )?,
        scale_down_stabilization: Duration::from_secs(u64::from(in_range(
            "bootstrap.scaleDownStabilizationSeconds",
            bootstrap.scale_down_stabilization_seconds,
            0,
            86_400,
        )?)),
    };
    policy.validate()?;
    let bootstrap_ready_timeout = Duration::from_secs(u64::from(in_range(
        "bootstrap.bootstrapReadyTimeoutSeconds",
        bootstrap.bootstrap_ready_timeout_seconds,
        0,
        3600,
    )?));
    if let Some(expose) = &bootstrap.expose {
        check_expose(expose, policy.max_bootstrap_nodes)?;
    }
    check_node(&spec.node)?;
    check_pod_metadata("workers", &spec.workers.pod)?;
    check_pod_metadata("bootstrap", &bootstrap.pod)?;
    if let Some(expose) = &bootstrap.expose {
        for key in expose.annotations.keys() {
            check_qualified_name("bootstrap.expose.annotations", key)?;
        }
    }
    let image = spec.image.as_deref().unwrap_or(default_image).trim().to_string();
    if image.is_empty() {
        return Err(SpecError::EmptyImage);
    }
    Ok(Settings {
        workers: in_range("workers.replicas", spec.workers.replicas, 0, 100_000)?,
        policy,
        bootstrap_ready_timeout,
        image,
        pull_policy: spec.image_pull_policy,
        node: spec.node.clone(),
        worker_pod: spec.workers.pod.clone(),
        bootstrap_pod: bootstrap.pod.clone(),
        expose: bootstrap.expose.clone(),
        network_policy: spec.network_policy.clone(),
    })
}

fn strategy(strategy: BootstrapStrategy) -> TierStrategy {
    match strategy {
        BootstrapStrategy::Adaptive => TierStrategy::Adaptive,
        BootstrapStrategy::Proportional => TierStrategy::Proportional,
        BootstrapStrategy::Small => TierStrategy::Fixed(Tier::Small),
        BootstrapStrategy::Medium => TierStrategy::Fixed(Tier::Medium),
        BootstrapStrategy::Large => TierStrategy::Fixed(Tier::Large),
        BootstrapStrategy::Xlarge => TierStrategy::Fixed(Tier::Xlarge),
    }
}

fn check_node(node: &NodeSpec) -> Result<(), SpecError> {
    in_range("node.port", node.port, 1, 65_535)?;
    in_range("node.k", node.k, 1, 1000)?;
    in_range("node.alpha", node.alpha, 1, 100)?;
    in_range("node.healthCheckIntervalSeconds", node.health_check_interval_seconds, 1, 3600)?;
    in_range("node.failureThreshold", node.failure_threshold, 1, 100)?;
    seconds_in_range("node.connectionTimeoutSeconds", node.connection_timeout_seconds, 0.1, 300.0)?;
    seconds_in_range(
        "node.fallback.retryDelaySeconds",
        node.fallback.retry_delay_seconds,
        0.0,
        3600.0,
    )?;
    in_range("node.fallback.maxRetries", node.fallback.max_retries, 0, 1000)?;
    in_range(
        "node.loadBalancing.intervalSeconds",
        node.load_balancing.interval_seconds,
        1,
        86_400,
    )?;
    in_range(
        "node.loadBalancing.maxConnectionsPerNode",
        node.load_balancing.max_connections_per_node,
        1,
        100_000,
    )?;
    Ok(())
}

/// Every bootstrap pod the tier may ever have needs a port below 65536.
fn check_expose(expose: &ExposeSpec, max_bootstrap_nodes: u32) -> Result<(), SpecError> {
    let extra = max_bootstrap_nodes.saturating_sub(1);
    let base = in_range("bootstrap.expose.basePort", expose.base_port, 1, 65_535)?;
    if base + extra > 65_535 {
        return Err(SpecError::ExposePortOverflow { field: "basePort", base, extra });
    }
    if let Some(node_port_base) = expose.node_port_base {
        let base = in_range("bootstrap.expose.nodePortBase", node_port_base, 1, 65_535)?;
        if base + extra > 65_535 {
            return Err(SpecError::ExposePortOverflow { field: "nodePortBase", base, extra });
        }
    }
    Ok(())
}

/// Labels, annotations and node selector of one role's pods, by the API server's rules for
/// object metadata (the schema cannot express them for map keys).
fn check_pod_metadata(role: &str, pod: &PodSettings) -> Result<(), SpecError> {
    for (map, field, values_are_labels) in [
        (&pod.pod_labels, "podLabels", true),
        (&pod.node_selector, "nodeSelector", true),
        (&pod.pod_annotations, "podAnnotations", false),
    ] {
        let field = format!("{role}.{field}");
        for (key, value) in map {
            check_qualified_name(&field, key)?;
            if values_are_labels {
                check_label_value(&field, value)?;
            }
        }
    }
    Ok(())
}

/// `[prefix/]name`: the prefix a DNS subdomain of at most 253 characters, the name at most 63
/// alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
fn check_qualified_name(field: &str, key: &str) -> Result<(), SpecError> {
    let refuse = |rule| SpecError::InvalidMetadata {
        field: field.to_string(),
        what: "key",
        value: key.to_string(),
        rule,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(refuse(
                "the prefix before '/' must be a DNS subdomain (lowercase alphanumerics, '-' and \
                 '.', at most 253 characters)",
            ));
        }
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(refuse(
            "the name must be 1 to 63 alphanumerics, '-', '_' or '.', starting and ending with an \
             alphanumeric, after an optional DNS-subdomain prefix and '/'",
        ));
    }
    Ok(())
}

/// A label value: empty, or what [`is_label_name`] accepts.
fn check_label_value(field: &str, value: &str) -> Result<(), SpecError> {
    if value.is_empty() || is_label_name(value) {
        return Ok(());
    }
    Err(SpecError::InvalidMetadata {
        field: field.to_string(),
        what: "value",
        value: value.to_string(),
        rule: "a label value must be at most 63 alphanumerics, '-', '_' or '.', starting and \
               ending with an alphanumeric",
    })
}

/// At most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric.
fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn in_range(field: &'static str, value: i32, min: u32, max: u32) -> Result<u32, SpecError> {
    u32::try_from(value).ok().filter(|v| (min..=max).contains(v)).ok_or(SpecError::OutOfRange {
        field,
        value: value.to_string(),
        min: min.to_string(),
        max: max.to_string(),
    })
}

fn seconds_in_range(field: &'static str, value: f64, min: f64, max: f64) -> Result<f64, SpecError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(SpecError::OutOfRange {
            field,
            value: value.to_string(),
            min: min.to_string(),
            max: max.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::DEFAULT_IMAGE;

    fn spec(value: serde_json::Value) -> DhtClusterSpec {
        serde_json::from_value(value).unwrap()
    }

    fn error(value: serde_json::Value) -> String {
        validate(&spec(value), DEFAULT_IMAGE).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_seed_policy() {
        let settings =
            validate(&spec(json!({"workers": {"replicas": 30}})), DEFAULT_IMAGE).unwrap();
        assert_eq!(settings.workers, 30);
        assert_eq!(settings.policy, TierPolicy::default());
        assert_eq!(settings.bootstrap_ready_timeout, Duration::from_secs(120));
        assert_eq!(settings.image, DEFAULT_IMAGE);
        assert_eq!(settings.port(), 5678);
    }

    #[test]
    fn spec_image_overrides_the_operator_default() {
        let settings =
            validate(&spec(json!({"image": "registry.local/kadscale:dev"})), DEFAULT_IMAGE)
                .unwrap();
        assert_eq!(settings.image, "registry.local/kadscale:dev");
        assert_eq!(validate(&spec(json!({})), "other:1").unwrap().image, "other:1");
        assert_eq!(error(json!({"image": " "})), "spec.image must not be empty");
    }

    #[test]
    fn strategies_map_to_the_policy() {
        for (name, expected) in [
            ("adaptive", TierStrategy::Adaptive),
            ("proportional", TierStrategy::Proportional),
            ("xlarge", TierStrategy::Fixed(Tier::Xlarge)),
            ("small", TierStrategy::Fixed(Tier::Small)),
        ] {
            let settings =
                validate(&spec(json!({"bootstrap": {"strategy": name}})), DEFAULT_IMAGE).unwrap();
            assert_eq!(settings.policy.strategy, expected, "{name}");
        }
    }

    #[test]
    fn names_must_leave_room_for_child_names() {
        let plain = validate(&spec(json!({})), DEFAULT_IMAGE).unwrap();
        let exposed = validate(&spec(json!({"bootstrap": {"expose": {}}})), DEFAULT_IMAGE).unwrap();
        assert!(check_name(&"a".repeat(42), &plain).is_ok());
        let error = check_name(&"a".repeat(43), &plain).unwrap_err().to_string();
        assert!(error.starts_with("metadata.name") && error.contains("at most 42"), "{error}");
        assert!(check_name(&"a".repeat(40), &exposed).is_ok());
        assert!(check_name(&"a".repeat(41), &exposed).is_err());
        // The longest names still give valid children.
        assert_eq!(format!("{}-bootstrap-{}", "a".repeat(42), "0123456789").len(), 63);
        assert_eq!(format!("{}-bootstrap-999-external", "a".repeat(40)).len(), 63);
    }

    #[test]
    fn labels_and_annotations_follow_the_api_servers_rules() {
        let fine = json!({
            "workers": {
                "podLabels": {"team": "p2p", "example.com/tier": "", "a": "A.b_c-9"},
                "podAnnotations": {"prometheus.io/scrape": "any value at all: ok"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
            },
        });
        validate(&spec(fine), DEFAULT_IMAGE).unwrap();
        let long = "a".repeat(64);
        for (labels, bad) in [
            (json!({&long: "x"}), long.as_str()),
            (json!({"x": &long}), long.as_str()),
            (json!({"-team": "x"}), "-team"),
            (json!({"team": "x y"}), "x y"),
            (json!({"/team": "x"}), "/team"),
        ] {
            let message = error(json!({"workers": {"podLabels": labels}}));
            assert!(message.starts_with("spec.workers.podLabels: "), "{message}");
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"workers": {"replicas": -1}}), "spec.workers.replicas"),
            (
                json!({"bootstrap": {"tiers": {"medium": {"maxWorkers": 10, "bootstrapNodes": 3}}}}),
                "tiers.medium.maxWorkers",
            ),
            (
                json!({"bootstrap": {"tiers": {"large": {"maxWorkers": 200, "bootstrapNodes": 2}}}}),
                "tiers.large.bootstrapNodes",
            ),
            (json!({"bootstrap": {"maxBootstrapNodes": 5}}), "maxBootstrapNodes"),
            (json!({"bootstrap": {"maxWorkersPerBootstrap": 0}}), "maxWorkersPerBootstrap"),
            (json!({"bootstrap": {"scaleDownStabilizationSeconds": -5}}), "scaleDownStabilization"),
            (json!({"node": {"port": 70000}}), "spec.node.port"),
            (json!({"node": {"connectionTimeoutSeconds": 0.0}}), "connectionTimeoutSeconds"),
            (json!({"node": {"fallback": {"retryDelaySeconds": -1.0}}}), "retryDelaySeconds"),
            (json!({"bootstrap": {"expose": {"basePort": 65530}}}), "expose.basePort"),
            (json!({"workers": {"podLabels": {"bad key": "x"}}}), "spec.workers.podLabels"),
            (json!({"workers": {"podLabels": {"team": "-x"}}}), "spec.workers.podLabels"),
            (
                json!({"bootstrap": {"nodeSelector": {"Example.com/x": "y"}}}),
                "bootstrap.nodeSelector",
            ),
            (json!({"bootstrap": {"podAnnotations": {"a/b/c": "ok"}}}), "bootstrap.podAnnotations"),
            (
                json!({"bootstrap": {"expose": {"annotations": {"": "x"}}}}),
                "bootstrap.expose.annotations",
            ),
        ];
        for (value, field) in cases {
            let message = error(value.clone());
            assert!(message.contains(field), "{value}: {message}");
        }
    }
}
