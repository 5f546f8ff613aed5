#!/usr/bin/env bash
# `just demo-k8s`: the whole flow on this machine. Brings the local control plane up, installs
# the chart with helm, runs the operator as the chart's ServiceAccount (kwok pods run no
# process, so the operator runs here as a local process), applies an example DhtCluster and
# scales it through every tier while `kubectl get dhtc` shows it move.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
run_dir="$root/e2e/.run"
ns=kadscale-demo
release_ns=kadscale-system

just cluster-up
# shellcheck source=/dev/null
source "$run_dir/env"
cargo build -q -p kadscale-operator --bin dht-operator

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "helm install kadscale charts/kadscale -n $release_ns"
helm uninstall kadscale -n "$release_ns" --wait >/dev/null 2>&1 || true
helm install kadscale charts/kadscale -n "$release_ns" --create-namespace --wait --timeout 3m

step "dht-operator run, as ServiceAccount $release_ns/kadscale"
sa_kubeconfig="$run_dir/demo-operator.kubeconfig"
cp "$KUBECONFIG" "$sa_kubeconfig"
token="$(kubectl create token kadscale -n "$release_ns" --duration=1h)"
kubectl --kubeconfig "$sa_kubeconfig" config set-credentials kadscale-operator --token="$token" >/dev/null
kubectl --kubeconfig "$sa_kubeconfig" config set-context --current --user=kadscale-operator >/dev/null
KUBECONFIG="$sa_kubeconfig" POD_NAMESPACE="$release_ns" RUST_LOG=warn,kadscale_operator=info \
  "${CARGO_TARGET_DIR:-target}/debug/dht-operator" run --admin-addr 127.0.0.1:0 --lease-namespace "$release_ns" \
  >"$run_dir/demo-operator.log" 2>&1 &
operator_pid=$!
trap 'kill "$operator_pid" 2>/dev/null || true; wait "$operator_pid" 2>/dev/null || true' EXIT
echo "operator pid $operator_pid, log $run_dir/demo-operator.log"

kubectl delete namespace "$ns" --wait=true --ignore-not-found >/dev/null
kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null

# Waits until the DhtCluster reports `tier` with every bootstrap and worker pod Ready.
wait_for_tier() {
  local tier=$1 workers=$2 deadline=$((SECONDS + 180))
  while ((SECONDS < deadline)); do
    local got
    got="$(kubectl -n "$ns" get dhtc demo -o jsonpath='{.status.tier}/{.status.workers.ready}/{.status.bootstrap.ready}/{.status.bootstrap.desired}' 2>/dev/null || true)"
    IFS=/ read -r t wr br bd <<<"$got"
    if [[ $t == "$tier" && $wr == "$workers" && -n $bd && $br == "$bd" ]]; then
      kubectl -n "$ns" get dhtc demo
      return 0
    fi
    sleep 1
  done
  echo "timed out waiting for tier $tier with $workers workers Ready; status:" >&2
  kubectl -n "$ns" get dhtc demo -o yaml >&2
  exit 1
}

step "kubectl apply -f examples/dhtcluster-small.yaml (10 workers)"
sed 's/name: dht-small/name: demo/' examples/dhtcluster-small.yaml | kubectl -n "$ns" apply -f -
# A short stabilization window so the demo's scale-down is visible.
kubectl -n "$ns" patch dhtc demo --type merge -p '{"spec":{"bootstrap":{"scaleDownStabilizationSeconds":15}}}'
wait_for_tier small 10

for step_to in 30:medium 100:large 300:xlarge 10:small; do
  replicas=${step_to%%:*} tier=${step_to##*:}
  step "kubectl scale dhtc/demo --replicas $replicas (expect tier $tier)"
  kubectl -n "$ns" scale dhtc/demo --replicas "$replicas"
  wait_for_tier "$tier" "$replicas"
  kubectl -n "$ns" get statefulset,deployment -o wide | cut -c1-120
done

step "events"
kubectl -n "$ns" get events --field-selector involvedObject.kind=DhtCluster \
  -o custom-columns=REASON:.reason,MESSAGE:.message --sort-by=.metadata.creationTimestamp 2>/dev/null |
  tail -12 || true
echo
echo "demo done: the cluster is still up (just cluster-down stops it)."
