#!/usr/bin/env bash
# Stops the cluster that up.sh started (local processes or kind) and removes its state:
# etcd data, certificates, kubeconfigs. Logs of a local cluster stay in e2e/.run/logs.
# Usage: down.sh [kind]   (the mode is remembered by up.sh; `kind` forces the kind teardown)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

lock_run_dir
mode="${1:-}"
if [[ -z "$mode" && -f "$STATE_DIR/mode" ]]; then
  mode="$(cat "$STATE_DIR/mode")"
fi
if [[ "$mode" == kind ]]; then
  if command -v kind >/dev/null && kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
    kind delete cluster --name "$KIND_CLUSTER_NAME"
  fi
  rm -rf "$STATE_DIR" "$KUBECONFIG_PATH" "$ENV_FILE"
else
  stop_local_cluster
fi
echo "cluster is down"
