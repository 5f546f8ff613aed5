//! The one place that changes child objects: server-side apply with one field manager, and the
//! deletion of children no longer wanted.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::builders::{Children, ClusterIdentity, EXPOSE_COMPONENT};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "kadscale-operator";

/// A request the API server refused or could not answer.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {name}: {}", detail(source))]
pub struct ApiError {
    pub verb: &'static str,
    pub kind: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// The API server's own message for a refusal (kube's rendering adds the whole Status in
/// Debug form, too long for a condition), else the client error.
fn detail(source: &kube::Error) -> String {
    match source {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

impl ApiError {
    pub fn new(
        verb: &'static str,
        kind: impl Into<String>,
        name: &str,
        source: kube::Error,
    ) -> Self {
        ApiError { verb, kind: kind.into(), name: name.to_string(), source }
    }

    /// The `Degraded` reason of a request that retrying cannot fix, because it needs a person
    /// (RBAC, an admission policy, the spec): `Forbidden` or `Rejected`. `None` for errors that
    /// may pass on retry (timeouts, conflicts, an API server restarting).
    pub fn degraded_reason(&self) -> Option<&'static str> {
        match &self.source {
            kube::Error::Api(status) if status.is_forbidden() => Some("Forbidden"),
            kube::Error::Api(status) if status.is_invalid() => Some("Rejected"),
            _ => None,
        }
    }
}

/// The applied children, as the API server returned them.
pub struct Applied {
    pub bootstrap_statefulset: StatefulSet,
    pub worker_deployment: Deployment,
}

/// Applies every child. The worker Deployment goes first when it shrinks and last otherwise, so
/// that workers shrink before bootstraps and bootstraps grow before workers.
pub async fn apply_children(
    client: &Client,
    id: &ClusterIdentity,
    children: &Children,
    workers_first: bool,
) -> Result<Applied, ApiError> {
    let ns = id.namespace.as_str();
    let mut worker_deployment = None;
    if workers_first {
        worker_deployment = Some(apply(client, ns, &children.worker_deployment).await?);
    }
    // The tier is what a scale changes: applied before the objects that rarely change, so that
    // it takes effect one API round trip after the reconcile starts (the StatefulSet's pods
    // get their DNS names once the Service below exists, a moment later on creation).
    let bootstrap_statefulset = apply(client, ns, &children.bootstrap_statefulset).await?;
    apply(client, ns, &children.bootstrap_service).await?;
    apply(client, ns, &children.bootstrap_pdb).await?;
    apply(client, ns, &children.client_service).await?;
    for service in &children.expose_services {
        apply(client, ns, service).await?;
    }
    match &children.network_policy {
        Some(policy) => {
            apply(client, ns, policy).await?;
        }
        None => delete_owned::<NetworkPolicy>(client, id, &id.name).await?,
    }
    delete_stale_expose_services(client, id, children).await?;
    let worker_deployment = match worker_deployment {
        Some(applied) => applied,
        None => apply(client, ns, &children.worker_deployment).await?,
    };
    Ok(Applied { bootstrap_statefulset, worker_deployment })
}

/// Server-side applies `object` with the operator's field manager, taking over conflicting
/// fields (the operator is the only writer of its children's specs).
///
/// A hand edit can leave list entries that server-side apply keeps, because another manager
/// owns them, and that clash with the desired ones: a Service port changed by `kubectl edit`
/// stays next to the applied one under the same name, and the merged object is invalid. When the
/// API server refuses the apply as invalid, the spec is overwritten with a merge patch (which
/// replaces lists whole) and applied again; if that fails too, the apply's refusal is returned.
pub async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, ApiError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let refused = match api.patch(&name, &params, &Patch::Apply(object)).await {
        Ok(applied) => return Ok(applied),
        Err(kube::Error::Api(status)) if status.is_invalid() => kube::Error::Api(status),
        Err(source) => return Err(ApiError::new("apply", kind::<K>(), &name, source)),
    };
    let spec = serde_json::to_value(object).ok().map(|mut value| value["spec"].take());
    let overwrite =
        PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    if let Some(spec) = spec.filter(|spec| !spec.is_null()) {
        let repaired = api.patch(&name, &overwrite, &Patch::Merge(json!({ "spec": spec }))).await;
        if repaired.is_ok() {
            tracing::info!(kind = %kind::<K>(), %name, "overwrote a hand-edited spec the apply could not merge");
            if let Ok(applied) = api.patch(&name, &params, &Patch::Apply(object)).await {
                return Ok(applied);
            }
        }
    }
    Err(ApiError::new("apply", kind::<K>(), &name, refused))
}

/// Reads a child; `None` when it does not exist.
pub async fn get<K>(client: &Client, namespace: &str, name: &str) -> Result<Option<K>, ApiError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(|source| ApiError::new("get", kind::<K>(), name, source))
}

fn kind<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// Deletes `name` if it exists and this cluster owns it; a missing object is fine.
async fn delete_owned<K>(client: &Client, id: &ClusterIdentity, name: &str) -> Result<(), ApiError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let Some(existing) = get::<K>(client, &id.namespace, name).await? else {
        return Ok(());
    };
    if !owned_by(existing.meta(), id) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(client.clone(), &id.namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(ApiError::new("delete", kind::<K>(), name, source)),
    }
}

fn owned_by(meta: &kube::api::ObjectMeta, id: &ClusterIdentity) -> bool {
    meta.owner_references.iter().flatten().any(|owner| owner.uid == id.uid)
}

/// Deletes expose Services of this cluster that `children` no longer has: bootstrap pods gone
/// after a scale-down, or `spec.bootstrap.expose` unset.
async fn delete_stale_expose_services(
    client: &Client,
    id: &ClusterIdentity,
    children: &Children,
) -> Result<(), ApiError> {
    let api: Api<Service> = Api::namespaced(client.clone(), &id.namespace);
    let selector = id
        .labels(EXPOSE_COMPONENT)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let existing = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| ApiError::new("list", "Service", &selector, source))?;
    let wanted: Vec<String> = children.expose_services.iter().map(ResourceExt::name_any).collect();
    for service in existing.items {
        let name = service.name_any();
        if !wanted.contains(&name) && owned_by(&service.metadata, id) {
            delete_owned::<Service>(client, id, &name).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn refused(code: u16, reason: &str) -> ApiError {
        let status = Status::failure("refused", reason).with_code(code);
        ApiError::new("apply", "StatefulSet", "dht-bootstrap", kube::Error::Api(status.boxed()))
    }

    #[test]
    fn only_refusals_a_person_must_fix_degrade_the_cluster() {
        assert_eq!(refused(403, "Forbidden").degraded_reason(), Some("Forbidden"));
        assert_eq!(refused(422, "Invalid").degraded_reason(), Some("Rejected"));
        assert_eq!(refused(409, "Conflict").degraded_reason(), None);
        assert_eq!(refused(500, "InternalError").degraded_reason(), None);
        let message = refused(403, "Forbidden").to_string();
        assert_eq!(message, "apply StatefulSet dht-bootstrap: refused (Forbidden)");
    }
}
