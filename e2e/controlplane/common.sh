# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts that source it
# Shared by build.sh, up.sh and down.sh (sourced, not run): versions, cache and run paths, ports.
# Every value can be overridden from the environment.

CONTROLPLANE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CONTROLPLANE_DIR/../.." && pwd)"

# Kubernetes must match the operator's k8s-openapi feature (v1_33); etcd is the 3.5 line that
# Kubernetes 1.33 pins in its own go.mod. The Kubernetes version is also fixed in
# kubernetes/go.mod and the etcd version in etcd/go.mod; build.sh checks that they agree.
KUBERNETES_VERSION="v1.33.13"
ETCD_VERSION="v3.5.21"
KWOK_VERSION="v0.7.0"
HELM_VERSION="v3.19.5"
# umoci builds the OCI image without Docker; Debian's 0.4.7 writes layer tars without their
# end-of-archive marker (fixed in 0.5.0), so it is built from its Go module like the rest.
UMOCI_VERSION="v0.5.0"

KADSCALE_CACHE="${KADSCALE_CACHE:-$HOME/.cache/kadscale}"

# Where build.sh puts one binary, e.g. ~/.cache/kadscale/bin/v1.33.13/kube-apiserver.
controlplane_binary_path() {
  local name="$1"
  echo "$KADSCALE_CACHE/bin/$(controlplane_binary_version "$name")/$name"
}

controlplane_binary_version() {
  case "$1" in
    kube-apiserver | kube-controller-manager | kube-scheduler) echo "$KUBERNETES_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    umoci) echo "$UMOCI_VERSION" ;;
    *)
      echo "unknown control plane binary: $1" >&2
      return 1
      ;;
  esac
}

CONTROLPLANE_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm umoci)

# Run directory (gitignored): kubeconfig, env file, links to the binaries, state and logs.
RUN_DIR="${KADSCALE_RUN_DIR:-$REPO_ROOT/e2e/.run}"
STATE_DIR="$RUN_DIR/cluster"
LOG_DIR="$RUN_DIR/logs"
PKI_DIR="$STATE_DIR/pki"
PID_DIR="$STATE_DIR/pids"
KUBECONFIG_PATH="$RUN_DIR/kubeconfig"
ENV_FILE="$RUN_DIR/env"
LINK_DIR="$RUN_DIR/bin"

# Loopback only. Non-default ports so a developer's own cluster or kubelet is left alone.
ETCD_CLIENT_PORT="${KADSCALE_ETCD_CLIENT_PORT:-23790}"
ETCD_PEER_PORT="${KADSCALE_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${KADSCALE_APISERVER_PORT:-16443}"
CONTROLLER_MANAGER_PORT="${KADSCALE_CONTROLLER_MANAGER_PORT:-10357}"
SCHEDULER_PORT="${KADSCALE_SCHEDULER_PORT:-10359}"
KWOK_PORT="${KADSCALE_KWOK_PORT:-10347}"

# Fake nodes: 4 x 300 pods leaves room for the largest e2e tier (~1,100 pods).
KWOK_NODE_COUNT="${KADSCALE_KWOK_NODES:-4}"
KWOK_PODS_PER_NODE="${KADSCALE_KWOK_PODS_PER_NODE:-300}"

SERVICE_CIDR="10.96.0.0/16"

# Components in start order.
LOCAL_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# Bump when the flags a component starts with change: up.sh restarts a running cluster whose
# $STATE_DIR/config-version differs, so a checkout never tests against stale settings.
# 2: the API server's audit log; kube-controller-manager's longer node grace period.
CLUSTER_CONFIG_VERSION=2

# The API server logs (metadata only) every request of the ServiceAccounts in this group, for
# the e2e test that compares the chart's RBAC with the calls the operator makes. The e2e suite
# installs the chart in namespace kadscale-e2e-system (e2e/src/chart.rs RELEASE_NAMESPACE).
AUDITED_GROUP="${KADSCALE_AUDITED_GROUP:-system:serviceaccounts:kadscale-e2e-system}"
AUDIT_LOG="$LOG_DIR/audit.log"

# Prints the pid of a component started by up.sh if that process is still the same binary
# (a recycled pid belonging to something else is never signalled). A binary that build.sh has
# replaced since the process started shows up as "PATH (deleted)".
recorded_pid() {
  local name="$1" pid_file="$PID_DIR/$1.pid" pid exe binary
  [[ -f "$pid_file" ]] || return 1
  pid="$(cat "$pid_file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  binary="$(readlink -f "$(controlplane_binary_path "$name")")"
  [[ "$exe" == "$binary" || "$exe" == "$binary (deleted)" ]] || return 1
  echo "$pid"
}

# stop_components NAME...: SIGTERM to each running one at once, SIGKILL to any still running
# 5 seconds later. kube-apiserver on SIGTERM stops listening at once but then waits up to a
# minute for its loopback connections to drain; its state is being discarded, so no need to wait.
stop_components() {
  local name pid pids=() running=() waited
  for name in "$@"; do
    pid="$(recorded_pid "$name")" || continue
    echo "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  for ((waited = 0; waited < 50; waited++)); do
    running=()
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then running+=("$pid"); fi
    done
    ((${#running[@]} > 0)) || return 0
    sleep 0.1
  done
  echo "sending SIGKILL to pids ${running[*]}, still running 5 s after SIGTERM"
  kill -KILL "${running[@]}" 2>/dev/null || true
}

# Stops the local cluster (etcd last, so the others never lose their store while running) and
# removes the state directory; logs stay in $LOG_DIR until the next start.
stop_local_cluster() {
  stop_components kwok kube-scheduler kube-controller-manager kube-apiserver
  stop_components etcd
  rm -rf "$STATE_DIR" "$KUBECONFIG_PATH" "$ENV_FILE"
}

# Serialises up.sh and down.sh so two callers never start or tear down the cluster at once.
lock_run_dir() {
  mkdir -p "$RUN_DIR"
  exec 8>"$RUN_DIR/.lock"
  if ! flock -n 8; then
    echo "waiting for another cluster-up/cluster-down to finish (lock $RUN_DIR/.lock)…"
    flock 8
  fi
}

KIND_CLUSTER_NAME="${KADSCALE_KIND_CLUSTER:-kadscale-e2e}"
# kind's node image for the Kubernetes minor we target.
KIND_NODE_IMAGE="${KADSCALE_KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
