#!/usr/bin/env bash
# Starts a Kubernetes control plane for the e2e suite and writes an admin kubeconfig to
# e2e/.run/kubeconfig (and `source`-able settings to e2e/.run/env).
#   up.sh        etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as local
#                processes on 127.0.0.1, built by build.sh; kwok fakes the kubelets of the Nodes
#                it creates, so Deployments and StatefulSets get pods that turn Ready.
#   up.sh kind   a kind cluster instead (needs a Docker engine).
# Idempotent: a cluster that is already up and healthy is left running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

fail() {
  echo "cluster-up: $*" >&2
  exit 1
}

admin_kubectl() {
  kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"
}

# ---------------------------------------------------------------------------------------------
# Certificates and kubeconfigs
# ---------------------------------------------------------------------------------------------

# issue_certificate NAME SUBJECT EXTENSIONS: an EC P-256 key and a certificate signed by the CA.
issue_certificate() {
  local name="$1" subject="$2" extensions="$3"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI_DIR/$name.key" -out "$PKI_DIR/$name.csr" -subj "$subject" 2>/dev/null
  openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -CAcreateserial -days 365 -out "$PKI_DIR/$name.crt" -extfile <(printf '%b' "$extensions") 2>/dev/null
  rm -f "$PKI_DIR/$name.csr"
}

generate_pki() {
  mkdir -p "$PKI_DIR"
  chmod 700 "$PKI_DIR"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" -days 3650 -subj "/CN=kadscale-e2e-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"
  issue_certificate apiserver "/CN=kube-apiserver" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_certificate admin "/O=system:masters/CN=kadscale-admin" "$client"
  issue_certificate front-proxy-client "/CN=front-proxy-client" "$client"
  issue_certificate kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  issue_certificate kube-scheduler "/CN=system:kube-scheduler" "$client"
  # kwok writes the status of many nodes and every pod on them; no built-in role covers that.
  issue_certificate kwok "/O=system:masters/CN=kwok-controller" "$client"
  # Service account tokens (TokenRequest, `kubectl create token`) are signed with this pair.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI_DIR/service-account.key" 2>/dev/null
  openssl pkey -in "$PKI_DIR/service-account.key" -pubout -out "$PKI_DIR/service-account.pub" 2>/dev/null
}

# write_kubeconfig FILE IDENTITY: a kubeconfig for the certificate IDENTITY, certificates embedded.
write_kubeconfig() {
  local file="$1" identity="$2"
  rm -f "$file"
  kubectl config --kubeconfig "$file" set-cluster kadscale-e2e --embed-certs \
    --server "https://127.0.0.1:$APISERVER_PORT" --certificate-authority "$PKI_DIR/ca.crt" >/dev/null
  kubectl config --kubeconfig "$file" set-credentials "$identity" --embed-certs \
    --client-certificate "$PKI_DIR/$identity.crt" --client-key "$PKI_DIR/$identity.key" >/dev/null
  kubectl config --kubeconfig "$file" set-context kadscale-e2e --cluster kadscale-e2e --user "$identity" >/dev/null
  kubectl config --kubeconfig "$file" use-context kadscale-e2e >/dev/null
  chmod 600 "$file"
}

# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

# start_component NAME ARGS...: runs the cached binary NAME in its own session, so it outlives
# the shell that started it and ignores that terminal's Ctrl-C; down.sh stops it by pid. It must
# not inherit the run-directory lock (fd 8), or the lock would be held for the cluster's lifetime.
start_component() {
  local name="$1"
  shift
  setsid "$(controlplane_binary_path "$name")" "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null 8>&- &
  echo $! >"$PID_DIR/$name.pid"
}

# wait_until DESCRIPTION COMPONENT TIMEOUT COMMAND...: polls COMMAND; fails early, with the
# component's log tail, if that component exits.
wait_until() {
  local description="$1" component="$2" timeout="$3" deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    # Only liveness here: right after the fork /proc/PID/exe may still be setsid, not the binary.
    if ! kill -0 "$(cat "$PID_DIR/$component.pid")" 2>/dev/null; then
      tail -n 25 "$LOG_DIR/$component.log" >&2 || true
      fail "$component exited while waiting for $description (log: $LOG_DIR/$component.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 25 "$LOG_DIR/$component.log" >&2 || true
      fail "timed out after ${timeout}s waiting for $description (log: $LOG_DIR/$component.log)"
    fi
    sleep 0.5
  done
}

# Something accepts connections on 127.0.0.1:PORT (bash's /dev/tcp: no extra tool needed).
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports_free() {
  local port
  for port in "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$CONTROLLER_MANAGER_PORT" \
    "$SCHEDULER_PORT" "$KWOK_PORT"; do
    if port_in_use "$port"; then
      fail "port 127.0.0.1:$port is already in use (ss -ltnp 'sport = :$port' shows by what); \
set the matching KADSCALE_*_PORT variable to move it"
    fi
  done
}

start_etcd() {
  start_component etcd \
    --name kadscale-e2e \
    --data-dir "$STATE_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "kadscale-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync
  wait_until "etcd health" etcd 60 curl -sf "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

start_apiserver() {
  # The request-header (front proxy) settings are what aggregated API servers authenticate with;
  # without them every component logs a missing CA bundle error over and over.
  # --advertise-address must be set or it is taken from the default route, which a loopback-only
  # cluster must not depend on; Endpoints reject loopback addresses, so the reconciler of the
  # `kubernetes` Service's endpoints is off (nothing runs in pods here to use them).
  start_component kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --secure-port "$APISERVER_PORT" \
    --endpoint-reconciler-type none \
    --tls-cert-file "$PKI_DIR/apiserver.crt" \
    --tls-private-key-file "$PKI_DIR/apiserver.key" \
    --client-ca-file "$PKI_DIR/ca.crt" \
    --requestheader-client-ca-file "$PKI_DIR/ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI_DIR/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI_DIR/service-account.pub" \
    --service-account-signing-key-file "$PKI_DIR/service-account.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --allow-privileged=true \
    --audit-policy-file "$STATE_DIR/audit-policy.yaml" \
    --audit-log-path "$AUDIT_LOG" \
    --audit-log-maxsize 200 \
    --profiling=false
  wait_until "kube-apiserver /readyz" kube-apiserver 120 admin_kubectl get --raw /readyz
}

# Metadata (who, verb, resource, name, namespace, response code) of every request made by the
# audited ServiceAccounts; nothing else, so the log stays small.
write_audit_policy() {
  cat >"$STATE_DIR/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["$AUDITED_GROUP"]
  - level: None
EOF
}

start_controllers() {
  local kcm_kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig"
  write_kubeconfig "$kcm_kubeconfig" kube-controller-manager
  # Per-controller service account credentials exercise TokenRequest from the start. The node
  # grace period outlasts the e2e suite's 30 s API server outage (plus restart): kwok cannot renew
  # its node leases meanwhile, and the default 50 s would mark every fake node NotReady.
  start_component kube-controller-manager \
    --kubeconfig "$kcm_kubeconfig" \
    --authentication-kubeconfig "$kcm_kubeconfig" \
    --authorization-kubeconfig "$kcm_kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$CONTROLLER_MANAGER_PORT" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI_DIR/service-account.key" \
    --root-ca-file "$PKI_DIR/ca.crt" \
    --cluster-signing-cert-file "$PKI_DIR/ca.crt" \
    --cluster-signing-key-file "$PKI_DIR/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --kube-api-qps 200 \
    --kube-api-burst 400 \
    --node-monitor-grace-period 2m \
    --profiling=false

  local scheduler_kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig"
  write_kubeconfig "$scheduler_kubeconfig" kube-scheduler
  cat >"$STATE_DIR/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $scheduler_kubeconfig
  qps: 200
  burst: 400
leaderElection:
  leaderElect: false
EOF
  start_component kube-scheduler \
    --config "$STATE_DIR/kube-scheduler.yaml" \
    --authentication-kubeconfig "$scheduler_kubeconfig" \
    --authorization-kubeconfig "$scheduler_kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$SCHEDULER_PORT"

  local kwok_kubeconfig="$STATE_DIR/kwok.kubeconfig"
  write_kubeconfig "$kwok_kubeconfig" kwok
  start_component kwok \
    --kubeconfig "$kwok_kubeconfig" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 \
    --server-address "127.0.0.1:$KWOK_PORT"

  wait_until "kube-controller-manager /healthz" kube-controller-manager 60 \
    curl -skf "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz"
  wait_until "kube-scheduler /healthz" kube-scheduler 60 curl -skf "https://127.0.0.1:$SCHEDULER_PORT/healthz"
  wait_until "kwok /healthz" kwok 60 curl -sf "http://127.0.0.1:$KWOK_PORT/healthz"
}

# Fake nodes for kwok: untainted, with room for KWOK_PODS_PER_NODE pods each and a /22 pod CIDR
# from which kwok hands out pod IPs. Addresses are loopback so nothing ever dials out.
create_fake_nodes() {
  ((KWOK_NODE_COUNT >= 1 && KWOK_NODE_COUNT <= 64)) || fail "KADSCALE_KWOK_NODES must be 1..64, got $KWOK_NODE_COUNT"
  ((KWOK_PODS_PER_NODE >= 1 && KWOK_PODS_PER_NODE <= 1000)) ||
    fail "KADSCALE_KWOK_PODS_PER_NODE must be 1..1000 (a /22 pod CIDR), got $KWOK_PODS_PER_NODE"
  local index name manifest="$STATE_DIR/nodes.yaml"
  : >"$manifest"
  for ((index = 0; index < KWOK_NODE_COUNT; index++)); do
    name="kwok-node-$index"
    cat >>"$manifest" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    type: kwok
spec:
  podCIDR: 10.244.$((index * 4)).0/22
  podCIDRs: [10.244.$((index * 4)).0/22]
status:
  addresses:
  - {type: InternalIP, address: 127.0.0.1}
  - {type: Hostname, address: $name}
  allocatable: {cpu: "256", memory: 1Ti, pods: "$KWOK_PODS_PER_NODE"}
  capacity: {cpu: "256", memory: 1Ti, pods: "$KWOK_PODS_PER_NODE"}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: $KUBERNETES_VERSION
EOF
  done
  admin_kubectl create -f "$manifest" >/dev/null
  wait_until "$KWOK_NODE_COUNT kwok nodes Ready" kwok 60 \
    admin_kubectl wait node --all --for condition=Ready --timeout 2s
}

# The whole chain (controller manager → scheduler → kwok) must work before anyone relies on it.
smoke_test() {
  local namespace=kadscale-cluster-up-check
  admin_kubectl create namespace "$namespace" >/dev/null
  wait_until "the default ServiceAccount in $namespace" kube-controller-manager 60 \
    admin_kubectl -n "$namespace" get serviceaccount default
  admin_kubectl -n "$namespace" create deployment check --image registry.k8s.io/pause:3.10 --replicas 3 >/dev/null
  wait_until "the check Deployment's 3 pods Ready" kwok 120 \
    admin_kubectl -n "$namespace" rollout status deployment/check --timeout 2s
  admin_kubectl delete namespace "$namespace" --wait=true --timeout 120s >/dev/null
}

write_env_file() {
  cat >"$ENV_FILE" <<EOF
# kadscale e2e control plane: \`source $ENV_FILE\`
export KUBECONFIG="$KUBECONFIG_PATH"
export KADSCALE_HELM="$LINK_DIR/helm"
export PATH="$LINK_DIR:\$PATH"
EOF
}

print_summary() {
  echo "cluster is up ($1). Admin kubeconfig: $KUBECONFIG_PATH"
  echo "  export KUBECONFIG=$KUBECONFIG_PATH    # or: source $ENV_FILE (adds helm to PATH too)"
  [[ "$1" == kind ]] || echo "  logs: $LOG_DIR"
}

# Healthy: started with this checkout's flags, every component runs the binary currently in the
# cache, and the API server is ready.
local_cluster_healthy() {
  local name pid
  [[ "$(cat "$STATE_DIR/config-version" 2>/dev/null)" == "$CLUSTER_CONFIG_VERSION" ]] || return 1
  for name in "${LOCAL_COMPONENTS[@]}"; do
    pid="$(recorded_pid "$name")" || return 1
    [[ "$(readlink "/proc/$pid/exe")" != *" (deleted)" ]] || return 1
  done
  admin_kubectl get --raw /readyz >/dev/null 2>&1
}

up_local() {
  command -v openssl >/dev/null || fail "openssl is required to generate the cluster's certificates"
  command -v kubectl >/dev/null || fail "kubectl is required"
  if [[ -f "$STATE_DIR/mode" && "$(cat "$STATE_DIR/mode")" == kind ]]; then
    fail "a kind cluster is up from this checkout; run \`just cluster-down\` first"
  fi
  if local_cluster_healthy; then
    print_summary "already running"
    return
  fi
  "$CONTROLPLANE_DIR/build.sh"
  if [[ -d "$STATE_DIR" ]]; then
    echo "cleaning up a previous cluster that is not healthy"
    stop_local_cluster
  fi
  check_ports_free
  local started=$SECONDS
  rm -rf "$LOG_DIR"
  mkdir -p "$STATE_DIR" "$PID_DIR" "$LOG_DIR"
  echo local >"$STATE_DIR/mode"
  echo "$CLUSTER_CONFIG_VERSION" >"$STATE_DIR/config-version"
  generate_pki
  write_audit_policy
  write_kubeconfig "$KUBECONFIG_PATH" admin
  echo "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT"
  start_etcd
  echo "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  start_apiserver
  echo "starting kube-controller-manager (:$CONTROLLER_MANAGER_PORT), kube-scheduler (:$SCHEDULER_PORT), kwok (:$KWOK_PORT)"
  start_controllers
  echo "creating $KWOK_NODE_COUNT kwok nodes × $KWOK_PODS_PER_NODE pods"
  create_fake_nodes
  echo "checking that a Deployment's pods get scheduled and turn Ready"
  smoke_test
  write_env_file
  print_summary "local, $KUBERNETES_VERSION, started in $((SECONDS - started))s"
}

up_kind() {
  command -v kind >/dev/null || fail "kind is not on PATH (https://kind.sigs.k8s.io)"
  docker info >/dev/null 2>&1 || fail "kind needs a running Docker engine; use \`just cluster-up\` without kind here"
  if [[ -f "$STATE_DIR/mode" && "$(cat "$STATE_DIR/mode")" == local ]]; then
    fail "a local control plane is up from this checkout; run \`just cluster-down\` first"
  fi
  "$CONTROLPLANE_DIR/build.sh" helm
  if ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
    kind create cluster --name "$KIND_CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --wait 300s \
      --config "$CONTROLPLANE_DIR/kind-config.yaml" --kubeconfig "$KUBECONFIG_PATH"
  else
    kind export kubeconfig --name "$KIND_CLUSTER_NAME" --kubeconfig "$KUBECONFIG_PATH"
  fi
  mkdir -p "$STATE_DIR"
  echo kind >"$STATE_DIR/mode"
  write_env_file
  print_summary kind
}

main() {
  lock_run_dir
  case "${1:-local}" in
    local) up_local ;;
    kind) up_kind ;;
    *) fail "unknown mode '$1' (expected nothing or 'kind')" ;;
  esac
}

# Sourced by apiserver.sh for start_apiserver: then only the functions are defined.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
