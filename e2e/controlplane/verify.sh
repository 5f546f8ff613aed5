#!/usr/bin/env bash
# Checks that the cluster from up.sh does what the e2e suite relies on: /version is stamped,
# Deployment and StatefulSet pods turn Ready under kwok (StatefulSet pods one after another),
# a ServiceAccount token from TokenRequest authenticates and is held to RBAC, and a custom
# resource's scale subresource works, helm installs a chart. Exits non-zero naming the first check that failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAMESPACE="kadscale-verify-$$"
CRD_NAME="widgets.verify.kadscale.dev"

fail() {
  echo "verify: FAILED: $*" >&2
  exit 1
}

pass() {
  echo "verify: ok: $*"
}

admin_kubectl() {
  kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"
}

cleanup() {
  admin_kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  admin_kubectl delete crd "$CRD_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}

check_version() {
  local version
  version="$(admin_kubectl version -o json | sed -n '/serverVersion/,$s/.*"gitVersion": "\(.*\)".*/\1/p')"
  [[ "$version" == "$KUBERNETES_VERSION" ]] || fail "/version says gitVersion '$version', expected $KUBERNETES_VERSION"
  pass "/version gitVersion is $version"
}

check_deployment() {
  admin_kubectl -n "$NAMESPACE" create deployment web --image registry.k8s.io/pause:3.10 --replicas 5 >/dev/null
  admin_kubectl -n "$NAMESPACE" rollout status deployment/web --timeout 120s >/dev/null ||
    fail "Deployment web did not roll out 5 replicas"
  local ready
  ready="$(admin_kubectl -n "$NAMESPACE" get deployment web -o jsonpath='{.status.readyReplicas}')"
  [[ "$ready" == 5 ]] || fail "Deployment web has $ready ready replicas, expected 5"
  pass "Deployment with 5 replicas: 5 pods Ready"
}

# OrderedReady: pod N+1 may only be created once pod N is Ready. A watch started before the
# StatefulSet records every pod change in order; timestamps have only one-second resolution.
check_statefulset() {
  local watch_log="$STATE_DIR/verify-statefulset-watch.log"
  admin_kubectl -n "$NAMESPACE" get pods -l app=db --watch \
    -o jsonpath='{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' >"$watch_log" 2>&1 &
  local watcher=$!
  sleep 1
  admin_kubectl -n "$NAMESPACE" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 8468, protocol: UDP}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  podManagementPolicy: OrderedReady
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: registry.k8s.io/pause:3.10}]
EOF
  admin_kubectl -n "$NAMESPACE" rollout status statefulset/db --timeout 120s >/dev/null ||
    fail "StatefulSet db did not roll out 3 replicas"
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  local ordinal first_seen_next first_ready
  for ordinal in 0 1; do
    first_ready="$(grep -n "^db-$ordinal True\$" "$watch_log" | head -n 1 | cut -d: -f1)"
    first_seen_next="$(grep -n "^db-$((ordinal + 1)) " "$watch_log" | head -n 1 | cut -d: -f1)"
    [[ -n "$first_ready" && -n "$first_seen_next" ]] ||
      fail "the pod watch missed db-$ordinal turning Ready or db-$((ordinal + 1)) appearing ($watch_log)"
    ((first_seen_next > first_ready)) ||
      fail "db-$((ordinal + 1)) appeared (watch line $first_seen_next) before db-$ordinal was Ready (line $first_ready)"
  done
  pass "StatefulSet with 3 replicas: db-0, db-1, db-2 Ready, each created after the previous one was Ready"
}

# A token from `kubectl create token` authenticates as the ServiceAccount and gets only what
# RBAC grants it: what the e2e suite needs to run the operator as the chart's ServiceAccount.
check_service_account_token() {
  admin_kubectl -n "$NAMESPACE" create serviceaccount reader >/dev/null
  admin_kubectl -n "$NAMESPACE" create role pod-reader --verb get,list,watch --resource pods >/dev/null
  admin_kubectl -n "$NAMESPACE" create rolebinding reader --role pod-reader \
    --serviceaccount "$NAMESPACE:reader" >/dev/null
  local token as_reader user
  token="$(admin_kubectl -n "$NAMESPACE" create token reader --duration 10m)"
  as_reader=(kubectl --kubeconfig /dev/null --server "https://127.0.0.1:$APISERVER_PORT"
    --certificate-authority "$PKI_DIR/ca.crt" --token "$token" -n "$NAMESPACE")
  user="$("${as_reader[@]}" auth whoami -o jsonpath='{.status.userInfo.username}')"
  [[ "$user" == "system:serviceaccount:$NAMESPACE:reader" ]] || fail "the token authenticates as '$user'"
  "${as_reader[@]}" get pods >/dev/null || fail "the ServiceAccount could not list pods that its Role allows"
  if "${as_reader[@]}" get secrets >/dev/null 2>&1; then
    fail "the ServiceAccount listed secrets that no Role allows it (RBAC not enforced)"
  fi
  pass "kubectl create token: authenticates as $user; RBAC allows pods, refuses secrets"
}

check_scale_subresource() {
  admin_kubectl apply -f - >/dev/null <<EOF
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: $CRD_NAME}
spec:
  group: verify.kadscale.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              replicas: {type: integer, minimum: 0}
          status:
            type: object
            properties:
              replicas: {type: integer}
EOF
  admin_kubectl wait crd "$CRD_NAME" --for condition=Established --timeout 60s >/dev/null
  admin_kubectl -n "$NAMESPACE" apply -f - >/dev/null <<EOF
apiVersion: verify.kadscale.dev/v1
kind: Widget
metadata: {name: w}
spec: {replicas: 1}
EOF
  admin_kubectl -n "$NAMESPACE" scale widget/w --replicas 7 >/dev/null
  local replicas
  replicas="$(admin_kubectl -n "$NAMESPACE" get --raw \
    "/apis/verify.kadscale.dev/v1/namespaces/$NAMESPACE/widgets/w/scale" | sed -n 's/.*"spec":{"replicas":\([0-9]*\)}.*/\1/p')"
  [[ "$replicas" == 7 ]] || fail "the scale subresource reports spec.replicas '$replicas' after scaling to 7"
  if admin_kubectl -n "$NAMESPACE" patch widget w --type merge -p '{"spec":{"replicas":-1}}' >/dev/null 2>&1; then
    fail "the API server accepted spec.replicas -1 against the schema's minimum 0"
  fi
  pass "CRD scale subresource: kubectl scale --replicas 7 reads back 7; schema refuses -1"
}

# helm (from build.sh) installs into this cluster and renders for the stamped Kubernetes minor.
check_helm() {
  local chart="$STATE_DIR/verify-chart" rendered
  mkdir -p "$chart/templates"
  printf 'apiVersion: v2\nname: verify\nversion: 0.1.0\n' >"$chart/Chart.yaml"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: verify\ndata:\n  kube: "{{ .Capabilities.KubeVersion.Version }}"\n' \
    >"$chart/templates/configmap.yaml"
  "$LINK_DIR/helm" --kubeconfig "$KUBECONFIG_PATH" install verify "$chart" -n "$NAMESPACE" --wait --timeout 60s >/dev/null ||
    fail "helm install of a one-ConfigMap chart failed"
  rendered="$(admin_kubectl -n "$NAMESPACE" get configmap verify -o jsonpath='{.data.kube}')"
  [[ "$rendered" == "$KUBERNETES_VERSION" ]] || fail "helm install rendered KubeVersion '$rendered', expected $KUBERNETES_VERSION"
  local minor="${KUBERNETES_VERSION#v1.}"
  rendered="$("$LINK_DIR/helm" template "$chart" | sed -n 's/.*kube: "\(.*\)"/\1/p')"
  [[ "$rendered" == "v1.${minor%%.*}.0" ]] || fail "helm template assumes Kubernetes '$rendered', expected v1.${minor%%.*}.0"
  pass "helm install against the cluster sees $KUBERNETES_VERSION; helm template assumes $rendered"
}

main() {
  [[ -f "$KUBECONFIG_PATH" ]] || fail "no kubeconfig at $KUBECONFIG_PATH; run \`just cluster-up\` first"
  trap cleanup EXIT
  admin_kubectl create namespace "$NAMESPACE" >/dev/null
  local waited
  for ((waited = 0; waited < 120; waited++)); do
    admin_kubectl -n "$NAMESPACE" get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.5
  done
  check_version
  check_deployment
  check_statefulset
  check_service_account_token
  check_scale_subresource
  check_helm
  echo "verify: all checks passed"
}

main "$@"
