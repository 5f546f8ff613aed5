//! The child objects of a `DhtCluster` (pure): one function per object, from the cluster's
//! identity, its validated settings and the planned replica counts.
//!
//! Every object carries the recommended `app.kubernetes.io/*` labels and a controller owner
//! reference to the `DhtCluster`, so deleting the cluster garbage-collects them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as K8sNetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{DhtCluster, PodSettings};
use crate::validate::Settings;

/// Port of every node's admin server (`/healthz`, `/readyz`, `/metrics`).
pub const ADMIN_PORT: u16 = 9090;
/// Value of `app.kubernetes.io/managed-by` on every child; the operator watches only these.
pub const MANAGED_BY: &str = "kadscale-operator";
/// Value of `app.kubernetes.io/name` on every child.
pub const APP_NAME: &str = "kadscale";
/// `app.kubernetes.io/component` of the per-bootstrap-pod Services of `spec.bootstrap.expose`.
pub const EXPOSE_COMPONENT: &str = "bootstrap-expose";
/// User and group the nodes run as: non-root, as Pod Security "restricted" requires.
const RUN_AS_USER: i64 = 65532;

/// Who the children belong to.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub owner: OwnerReference,
}

/// A `DhtCluster` without the metadata its children need (never the case for an object read
/// from the API server).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DhtCluster has no metadata.{0}")]
pub struct MissingMetadata(pub &'static str);

impl ClusterIdentity {
    pub fn of(cluster: &DhtCluster) -> Result<Self, MissingMetadata> {
        let namespace = cluster.namespace().ok_or(MissingMetadata("namespace"))?;
        let uid = cluster.uid().ok_or(MissingMetadata("uid"))?;
        let owner = cluster.controller_owner_ref(&()).ok_or(MissingMetadata("name"))?;
        Ok(ClusterIdentity { name: cluster.name_any(), namespace, uid, owner })
    }

    pub fn bootstrap_name(&self) -> String {
        format!("{}-bootstrap", self.name)
    }

    pub fn worker_name(&self) -> String {
        format!("{}-worker", self.name)
    }

    /// Name of the Service exposing bootstrap pod `ordinal`.
    pub fn expose_name(&self, ordinal: u32) -> String {
        format!("{}-bootstrap-{ordinal}-external", self.name)
    }

    /// `NAME-bootstrap.NS.svc:PORT`: resolves to every bootstrap pod through the headless Service.
    pub fn bootstrap_dns(&self, port: u16) -> String {
        format!("{}.{}.svc:{port}", self.bootstrap_name(), self.namespace)
    }

    /// Labels that select this cluster's pods of one component (immutable in selectors).
    pub fn selector_labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.instance_labels();
        labels.insert("app.kubernetes.io/component".into(), component.into());
        labels
    }

    /// Labels that select every pod of this cluster.
    pub fn instance_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
        ])
    }

    /// Selector labels plus `managed-by`, for object metadata.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels(component);
        labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
        labels
    }

    /// The label selector of the worker pods, as `status.selector` (scale subresource) wants it.
    pub fn worker_selector(&self) -> String {
        self.selector_labels(Role::Worker.component())
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The two kinds of DHT pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Bootstrap,
    Worker,
}

impl Role {
    pub fn component(self) -> &'static str {
        match self {
            Role::Bootstrap => "bootstrap",
            Role::Worker => "worker",
        }
    }
}

/// Every object a reconcile applies, built from one identity, settings and replica counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub bootstrap_service: Service,
    pub client_service: Service,
    pub bootstrap_statefulset: StatefulSet,
    pub bootstrap_pdb: PodDisruptionBudget,
    pub worker_deployment: Deployment,
    pub network_policy: Option<NetworkPolicy>,
    pub expose_services: Vec<Service>,
}

impl Children {
    pub fn build(
        id: &ClusterIdentity,
        settings: &Settings,
        bootstrap_replicas: u32,
        worker_replicas: u32,
    ) -> Self {
        Children {
            bootstrap_service: bootstrap_service(id, settings),
            client_service: client_service(id, settings),
            bootstrap_statefulset: bootstrap_statefulset(id, settings, bootstrap_replicas),
            bootstrap_pdb: bootstrap_pdb(id),
            worker_deployment: worker_deployment(id, settings, worker_replicas),
            network_policy: network_policy(id, settings),
            expose_services: expose_services(id, settings, bootstrap_replicas),
        }
    }
}

/// The DHT's UDP port on a Service, targeting the container port by name.
fn dht_service_port(port: i32, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some("dht".into()),
        protocol: Some("UDP".into()),
        port,
        target_port: Some(IntOrString::String("dht".into())),
        node_port,
        ..ServicePort::default()
    }
}

/// `NAME-bootstrap`: headless, publishing not-ready pods, so that bootstrap pods find each other
/// while they start and workers resolve every bootstrap pod through one DNS name.
pub fn bootstrap_service(id: &ClusterIdentity, settings: &Settings) -> Service {
    Service {
        metadata: id.meta(id.bootstrap_name(), Role::Bootstrap.component()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(id.selector_labels(Role::Bootstrap.component())),
            ports: Some(vec![dht_service_port(i32::from(settings.port()), None)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `NAME`: the DHT's address for clients (`dht-node get --bootstrap NAME.NS.svc:PORT`), every
/// ready node of the cluster behind it.
pub fn client_service(id: &ClusterIdentity, settings: &Settings) -> Service {
    Service {
        metadata: id.meta(id.name.clone(), "client"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(id.instance_labels()),
            ports: Some(vec![dht_service_port(i32::from(settings.port()), None)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `NAME-bootstrap`: the bootstrap tier. Stable pod names `NAME-bootstrap-0..N-1`; each pod's
/// node id is sha1(uid + "/" + ordinal), so a restarted bootstrap pod keeps its identity.
pub fn bootstrap_statefulset(
    id: &ClusterIdentity,
    settings: &Settings,
    replicas: u32,
) -> StatefulSet {
    let component = Role::Bootstrap.component();
    StatefulSet {
        metadata: id.meta(id.bootstrap_name(), component),
        spec: Some(StatefulSetSpec {
            replicas: Some(crate::plan::saturating_i32(replicas)),
            service_name: Some(id.bootstrap_name()),
            // Bootstrap pods do not depend on each other's start order; grow the tier at once.
            pod_management_policy: Some("Parallel".into()),
            selector: match_labels(id.selector_labels(component)),
            template: pod_template(id, settings, Role::Bootstrap, &settings.bootstrap_pod),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// `NAME-bootstrap`: at most one bootstrap pod voluntarily down at a time.
pub fn bootstrap_pdb(id: &ClusterIdentity) -> PodDisruptionBudget {
    let component = Role::Bootstrap.component();
    PodDisruptionBudget {
        metadata: id.meta(id.bootstrap_name(), component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(match_labels(id.selector_labels(component))),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// `NAME-worker`: the workers. Their pod template holds nothing tier-dependent (workers find
/// bootstrap pods through DNS), so a tier change never restarts a worker.
pub fn worker_deployment(id: &ClusterIdentity, settings: &Settings, replicas: u32) -> Deployment {
    let component = Role::Worker.component();
    Deployment {
        metadata: id.meta(id.worker_name(), component),
        spec: Some(DeploymentSpec {
            replicas: Some(crate::plan::saturating_i32(replicas)),
            selector: match_labels(id.selector_labels(component)),
            template: pod_template(id, settings, Role::Worker, &settings.worker_pod),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// `NAME` NetworkPolicy, when enabled: the DHT port is open to this cluster's pods, the allowed
/// namespaces and CIDRs; the admin port to this cluster's pods and the allowed namespaces.
pub fn network_policy(id: &ClusterIdentity, settings: &Settings) -> Option<NetworkPolicy> {
    let spec = &settings.network_policy;
    if !spec.enabled {
        return None;
    }
    let mut in_cluster = vec![NetworkPolicyPeer {
        pod_selector: Some(match_labels(id.instance_labels())),
        ..NetworkPolicyPeer::default()
    }];
    if !spec.allowed_namespaces.is_empty() {
        in_cluster.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "In".into(),
                    values: Some(spec.allowed_namespaces.clone()),
                }]),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        });
    }
    let cidrs = spec.allowed_cidrs.iter().map(|cidr| NetworkPolicyPeer {
        ip_block: Some(IPBlock { cidr: cidr.clone(), except: None }),
        ..NetworkPolicyPeer::default()
    });
    let port = |protocol: &str, port: &str| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::String(port.into())),
        ..NetworkPolicyPort::default()
    };
    Some(NetworkPolicy {
        metadata: id.meta(id.name.clone(), "network-policy"),
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(match_labels(id.instance_labels())),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(in_cluster.iter().cloned().chain(cidrs).collect()),
                    ports: Some(vec![port("UDP", "dht")]),
                },
                NetworkPolicyIngressRule {
                    from: Some(in_cluster),
                    ports: Some(vec![port("TCP", "admin")]),
                },
            ]),
            ..K8sNetworkPolicySpec::default()
        }),
    })
}

/// One Service per bootstrap pod when `spec.bootstrap.expose` is set: pod N on port
/// basePort + N (and nodePortBase + N), so nodes outside the cluster join through fixed
/// addresses. `externalTrafficPolicy: Local` keeps the sender's address, which a Kademlia node
/// records in its routing table.
pub fn expose_services(
    id: &ClusterIdentity,
    settings: &Settings,
    bootstrap_replicas: u32,
) -> Vec<Service> {
    let Some(expose) = &settings.expose else {
        return Vec::new();
    };
    (0..bootstrap_replicas)
        .map(|ordinal| {
            let offset = crate::plan::saturating_i32(ordinal);
            let mut metadata = id.meta(id.expose_name(ordinal), EXPOSE_COMPONENT);
            if !expose.annotations.is_empty() {
                metadata.annotations = Some(expose.annotations.clone());
            }
            Service {
                metadata,
                spec: Some(ServiceSpec {
                    type_: Some(expose.service_type.name().into()),
                    external_traffic_policy: Some("Local".into()),
                    selector: Some(BTreeMap::from([(
                        "statefulset.kubernetes.io/pod-name".to_string(),
                        format!("{}-{ordinal}", id.bootstrap_name()),
                    )])),
                    ports: Some(vec![dht_service_port(
                        expose.base_port + offset,
                        expose.node_port_base.map(|base| base + offset),
                    )]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            }
        })
        .collect()
}

/// `dht-node` arguments of a pod of `role`: the role's subcommand, the bootstrap DNS name and
/// the node settings flags (see CONTRACTS: bootstrap-manager flags).
pub fn node_args(id: &ClusterIdentity, settings: &Settings, role: Role) -> Vec<String> {
    let node = &settings.node;
    let port = settings.port();
    let mut args = vec![role.component().to_string(), "--port".into(), port.to_string()];
    if role == Role::Bootstrap {
        args.extend(["--node-id-seed".into(), id.uid.clone()]);
    }
    let flags: [(&str, String); 12] = [
        ("--bootstrap-dns", id.bootstrap_dns(port)),
        ("--k", node.k.to_string()),
        ("--alpha", node.alpha.to_string()),
        ("--selection-strategy", node.selection_strategy.name().into()),
        ("--health-check-interval", node.health_check_interval_seconds.to_string()),
        ("--failure-threshold", node.failure_threshold.to_string()),
        ("--connection-timeout", node.connection_timeout_seconds.to_string()),
        ("--retry-delay", node.fallback.retry_delay_seconds.to_string()),
        ("--max-retries", node.fallback.max_retries.to_string()),
        ("--load-balance-interval", node.load_balancing.interval_seconds.to_string()),
        ("--max-connections-per-node", node.load_balancing.max_connections_per_node.to_string()),
        ("--admin-addr", format!("0.0.0.0:{ADMIN_PORT}")),
    ];
    for (flag, value) in flags {
        args.extend([flag.to_string(), value]);
    }
    if !node.fallback.enabled {
        args.push("--no-fallback".into());
    }
    if !node.load_balancing.enabled {
        args.push("--no-load-balancing".into());
    }
    args.extend(["--log-format".into(), node.log_format.flag_value().into()]);
    args
}

/// The pod of `role`: restricted Pod Security, probes on the admin port, the user's placement.
pub fn pod_template(
    id: &ClusterIdentity,
    settings: &Settings,
    role: Role,
    pod: &PodSettings,
) -> PodTemplateSpec {
    let mut labels = pod.pod_labels.clone();
    labels.extend(id.labels(role.component()));
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "dht-node".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.pull_policy.name().into()),
        command: Some(vec!["dht-node".into()]),
        args: Some(node_args(id, settings, role)),
        ports: Some(vec![
            ContainerPort {
                name: Some("dht".into()),
                container_port: i32::from(settings.port()),
                protocol: Some("UDP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: i32::from(ADMIN_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(pod.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!pod.pod_annotations.is_empty()).then(|| pod.pod_annotations.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            // The nodes never call the Kubernetes API.
            automount_service_account_token: Some(false),
            // Service links would put e.g. DHT_PORT=udp://... (for a Service named "dht") into
            // the environment, which dht-node reads as its port.
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..PodSecurityContext::default()
            }),
            node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
            tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
            affinity: pod.affinity.clone(),
            ..PodSpec::default()
        }),
    }
}

fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels), ..LabelSelector::default() }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Toleration;

    use super::*;
    use crate::crd::DEFAULT_IMAGE;
    use crate::validate::validate;

    /// A cluster as the API server returns it, from YAML.
    fn cluster(yaml: &str) -> DhtCluster {
        yaml_serde::from_str(yaml).unwrap()
    }

    const BASIC: &str = "
apiVersion: kadscale.io/v1alpha1
kind: DhtCluster
metadata: {name: dht, namespace: prod, uid: 0b7e-uid}
spec:
  workers: {replicas: 30}
";

    fn children_of(yaml: &str, bootstraps: u32, workers: u32) -> (ClusterIdentity, Children) {
        let cluster = cluster(yaml);
        let id = ClusterIdentity::of(&cluster).unwrap();
        let settings = validate(&cluster.spec, DEFAULT_IMAGE).unwrap();
        let children = Children::build(&id, &settings, bootstraps, workers);
        (id, children)
    }

    fn all_metadata(children: &Children) -> Vec<&ObjectMeta> {
        let mut metas = vec![
            &children.bootstrap_service.metadata,
            &children.client_service.metadata,
            &children.bootstrap_statefulset.metadata,
            &children.bootstrap_pdb.metadata,
            &children.worker_deployment.metadata,
        ];
        metas.extend(children.network_policy.iter().map(|n| &n.metadata));
        metas.extend(children.expose_services.iter().map(|s| &s.metadata));
        metas
    }

    fn container(template: &PodTemplateSpec) -> &Container {
        &template.spec.as_ref().unwrap().containers[0]
    }

    fn statefulset_template(children: &Children) -> &PodTemplateSpec {
        &children.bootstrap_statefulset.spec.as_ref().unwrap().template
    }

    fn worker_template(children: &Children) -> &PodTemplateSpec {
        &children.worker_deployment.spec.as_ref().unwrap().template
    }

    const EVERYTHING_ON: &str = "
apiVersion: kadscale.io/v1alpha1
kind: DhtCluster
metadata: {name: dht, namespace: prod, uid: 0b7e-uid}
spec:
  workers: {replicas: 30}
  networkPolicy: {enabled: true, allowedNamespaces: [clients], allowedCidrs: [10.1.0.0/16]}
  bootstrap:
    expose: {type: NodePort, nodePortBase: 30678}
";

    #[test]
    fn every_child_is_owned_labelled_and_namespaced() {
        let (_, children) = children_of(EVERYTHING_ON, 3, 30);
        let metas = all_metadata(&children);
        assert_eq!(metas.len(), 5 + 1 + 3);
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("DhtCluster", "dht"));
            assert_eq!(owner.uid, "0b7e-uid");
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("prod"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGED_BY);
            assert_eq!(labels["app.kubernetes.io/instance"], "dht");
            assert_eq!(labels["app.kubernetes.io/name"], "kadscale");
        }
    }

    #[test]
    fn bootstrap_service_is_headless_and_publishes_not_ready_pods() {
        let (_, children) = children_of(BASIC, 3, 30);
        let service = &children.bootstrap_service;
        assert_eq!(service.metadata.name.as_deref(), Some("dht-bootstrap"));
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.protocol.as_deref()), (5678, Some("UDP")));
        assert_eq!(spec.selector.as_ref().unwrap()["app.kubernetes.io/component"], "bootstrap");
    }

    #[test]
    fn client_service_selects_every_node_of_the_cluster() {
        let (id, children) = children_of(BASIC, 3, 30);
        let spec = children.client_service.spec.as_ref().unwrap();
        assert_eq!(children.client_service.metadata.name.as_deref(), Some("dht"));
        assert_eq!(spec.selector.as_ref().unwrap(), &id.instance_labels());
        assert_eq!(spec.ports.as_ref().unwrap()[0].protocol.as_deref(), Some("UDP"));
    }

    #[test]
    fn statefulset_runs_bootstrap_nodes_with_stable_ids() {
        let (_, children) = children_of(BASIC, 4, 30);
        let sts = children.bootstrap_statefulset.spec.as_ref().unwrap();
        assert_eq!(sts.replicas, Some(4));
        assert_eq!(sts.service_name.as_deref(), Some("dht-bootstrap"));
        assert_eq!(sts.volume_claim_templates, None);
        let args = container(&sts.template).args.as_ref().unwrap();
        assert_eq!(args[..5], ["bootstrap", "--port", "5678", "--node-id-seed", "0b7e-uid"]);
        let dns = args.iter().position(|a| a == "--bootstrap-dns").unwrap();
        assert_eq!(args[dns + 1], "dht-bootstrap.prod.svc:5678");
        let template_labels = sts.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        for (key, value) in sts.selector.match_labels.as_ref().unwrap() {
            assert_eq!(&template_labels[key], value, "selector label {key}");
        }
    }

    #[test]
    fn pdb_allows_one_bootstrap_down() {
        let (id, children) = children_of(BASIC, 4, 30);
        let spec = children.bootstrap_pdb.spec.as_ref().unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.as_ref().unwrap().match_labels.as_ref().unwrap(),
            &id.selector_labels("bootstrap")
        );
    }

    #[test]
    fn worker_runs_with_the_contract_flags() {
        let (_, children) = children_of(BASIC, 3, 30);
        let deployment = children.worker_deployment.spec.as_ref().unwrap();
        assert_eq!(deployment.replicas, Some(30));
        let args = container(&deployment.template).args.as_ref().unwrap();
        let expected = "worker --port 5678 --bootstrap-dns dht-bootstrap.prod.svc:5678 --k 20 \
            --alpha 3 --selection-strategy round_robin --health-check-interval 30 \
            --failure-threshold 3 --connection-timeout 5 --retry-delay 2 --max-retries 3 \
            --load-balance-interval 60 --max-connections-per-node 50 --admin-addr 0.0.0.0:9090 \
            --log-format json";
        assert_eq!(args.join(" "), expected);
        assert_eq!(container(&deployment.template).command, Some(vec!["dht-node".to_string()]));
    }

    #[test]
    fn node_settings_become_flags() {
        let yaml = format!(
            "{BASIC}  node:
    port: 7000
    selectionStrategy: least_loaded
    connectionTimeoutSeconds: 2.5
    fallback: {{enabled: false}}
    loadBalancing: {{enabled: false}}
    logFormat: text
"
        );
        let (_, children) = children_of(&yaml, 3, 30);
        let args = container(worker_template(&children)).args.as_ref().unwrap().join(" ");
        for expected in [
            "--port 7000",
            "--bootstrap-dns dht-bootstrap.prod.svc:7000",
            "--selection-strategy least_loaded",
            "--connection-timeout 2.5",
            "--no-fallback",
            "--no-load-balancing",
            "--log-format text",
        ] {
            assert!(args.contains(expected), "{expected} missing from {args}");
        }
        let ports = container(worker_template(&children)).ports.as_ref().unwrap();
        assert_eq!(ports[0].container_port, 7000);
    }

    #[test]
    fn pods_meet_restricted_pod_security_and_probe_the_admin_port() {
        let (_, children) = children_of(BASIC, 3, 30);
        for template in [statefulset_template(&children), worker_template(&children)] {
            let pod = template.spec.as_ref().unwrap();
            let pod_security = pod.security_context.as_ref().unwrap();
            assert_eq!(pod_security.run_as_non_root, Some(true));
            assert_eq!(pod_security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
            let c = container(template);
            let security = c.security_context.as_ref().unwrap();
            assert_eq!(security.run_as_non_root, Some(true));
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(security.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".into()]));
            assert_eq!(security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
            let readiness = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(readiness.path.as_deref(), Some("/readyz"));
            assert_eq!(readiness.port, IntOrString::String("admin".into()));
            let liveness = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(liveness.path.as_deref(), Some("/healthz"));
            let admin =
                c.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("admin"));
            assert_eq!(admin.unwrap().container_port, 9090);
            assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "128Mi");
            assert_eq!(c.image.as_deref(), Some(DEFAULT_IMAGE));
        }
    }

    #[test]
    fn worker_pod_template_is_identical_across_tiers() {
        let settings_for = |workers: u32| {
            let yaml = BASIC.replace("replicas: 30", &format!("replicas: {workers}"));
            let cluster = cluster(&yaml);
            (
                ClusterIdentity::of(&cluster).unwrap(),
                validate(&cluster.spec, DEFAULT_IMAGE).unwrap(),
            )
        };
        let (id, base_settings) = settings_for(0);
        let base = worker_deployment(&id, &base_settings, 0).spec.unwrap().template;
        let mut tiers = std::collections::BTreeSet::new();
        for workers in [0, 15, 16, 50, 51, 200, 201, 500] {
            let (id, settings) = settings_for(workers);
            let plan = settings.policy.plan(workers, None, std::time::SystemTime::UNIX_EPOCH);
            tiers.insert(plan.tier);
            let children = Children::build(&id, &settings, plan.bootstrap_replicas, workers);
            assert_eq!(worker_template(&children), &base, "{workers} workers");
            assert_eq!(
                statefulset_template(&children).spec.as_ref().unwrap().containers[0].args,
                bootstrap_statefulset(&id, &settings, 2)
                    .spec
                    .unwrap()
                    .template
                    .spec
                    .unwrap()
                    .containers[0]
                    .args,
                "bootstrap args do not depend on the tier either"
            );
        }
        assert_eq!(tiers.len(), 4, "the table covers every tier");
    }

    #[test]
    fn pod_settings_reach_the_pods_and_operator_labels_win() {
        let yaml = "
apiVersion: kadscale.io/v1alpha1
kind: DhtCluster
metadata: {name: dht, namespace: prod, uid: 0b7e-uid}
spec:
  workers:
    replicas: 30
    nodeSelector: {disk: ssd}
    tolerations: [{key: dedicated, operator: Equal, value: dht, effect: NoSchedule}]
    podLabels: {team: p2p, app.kubernetes.io/component: hijack}
    podAnnotations: {prometheus.io/scrape: 'true'}
";
        let (_, children) = children_of(yaml, 3, 30);
        let template = worker_template(&children);
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
        let toleration: &Toleration = &pod.tolerations.as_ref().unwrap()[0];
        assert_eq!(toleration.key.as_deref(), Some("dedicated"));
        let meta = template.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "p2p");
        assert_eq!(labels["app.kubernetes.io/component"], "worker");
        assert_eq!(meta.annotations.as_ref().unwrap()["prometheus.io/scrape"], "true");
        // Worker settings do not leak into bootstrap pods.
        assert_eq!(statefulset_template(&children).spec.as_ref().unwrap().node_selector, None);
    }

    #[test]
    fn network_policy_only_when_enabled() {
        let (_, children) = children_of(BASIC, 3, 30);
        assert_eq!(children.network_policy, None);
        let (id, children) = children_of(EVERYTHING_ON, 3, 30);
        let policy = children.network_policy.unwrap().spec.unwrap();
        assert_eq!(policy.pod_selector.unwrap().match_labels.unwrap(), id.instance_labels());
        assert_eq!(policy.policy_types, Some(vec!["Ingress".into()]));
        let rules = policy.ingress.unwrap();
        let dht = &rules[0];
        assert_eq!(dht.ports.as_ref().unwrap()[0].protocol.as_deref(), Some("UDP"));
        let peers = dht.from.as_ref().unwrap();
        assert_eq!(peers.len(), 3, "cluster pods, allowed namespaces, allowed CIDR");
        let namespaces = peers[1].namespace_selector.as_ref().unwrap();
        assert_eq!(
            namespaces.match_expressions.as_ref().unwrap()[0].values,
            Some(vec!["clients".to_string()])
        );
        assert_eq!(peers[2].ip_block.as_ref().unwrap().cidr, "10.1.0.0/16");
        let admin = &rules[1];
        assert_eq!(
            admin.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::String("admin".into()))
        );
        assert_eq!(admin.from.as_ref().unwrap().len(), 2, "no CIDR reaches the admin port");
    }

    #[test]
    fn expose_services_number_bootstrap_pods_from_the_base_port() {
        let (_, children) = children_of(BASIC, 3, 30);
        assert!(children.expose_services.is_empty());
        let (_, children) = children_of(EVERYTHING_ON, 4, 30);
        assert_eq!(children.expose_services.len(), 4);
        for (ordinal, service) in children.expose_services.iter().enumerate() {
            let ordinal = i32::try_from(ordinal).unwrap();
            assert_eq!(
                service.metadata.name.as_deref(),
                Some(format!("dht-bootstrap-{ordinal}-external").as_str())
            );
            let spec = service.spec.as_ref().unwrap();
            assert_eq!(spec.type_.as_deref(), Some("NodePort"));
            assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
            assert_eq!(
                spec.selector.as_ref().unwrap()["statefulset.kubernetes.io/pod-name"],
                format!("dht-bootstrap-{ordinal}")
            );
            let port = &spec.ports.as_ref().unwrap()[0];
            assert_eq!(port.port, 5678 + ordinal);
            assert_eq!(port.node_port, Some(30678 + ordinal));
            assert_eq!(port.target_port, Some(IntOrString::String("dht".into())));
        }
    }

    #[test]
    fn worker_selector_matches_worker_pod_labels() {
        let (id, children) = children_of(BASIC, 3, 30);
        assert_eq!(
            id.worker_selector(),
            "app.kubernetes.io/component=worker,app.kubernetes.io/instance=dht,app.kubernetes.io/name=kadscale"
        );
        let labels = worker_template(&children).metadata.as_ref().unwrap().labels.as_ref().unwrap();
        for pair in id.worker_selector().split(',') {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(labels[k], v);
        }
    }

    #[test]
    fn identity_needs_namespace_and_uid() {
        let mut cluster = cluster(BASIC);
        cluster.metadata.uid = None;
        assert_eq!(ClusterIdentity::of(&cluster).unwrap_err(), MissingMetadata("uid"));
        cluster.metadata.namespace = None;
        assert_eq!(ClusterIdentity::of(&cluster).unwrap_err(), MissingMetadata("namespace"));
    }
}
