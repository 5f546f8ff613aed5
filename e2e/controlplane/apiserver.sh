#!/usr/bin/env bash
# Stops or starts the kube-apiserver of the local control plane that up.sh started, leaving
# etcd, the controllers and kwok running: the e2e suite's API server outage.
#   apiserver.sh stop    SIGTERM, SIGKILL 5 s later if still running (stop_components)
#   apiserver.sh start   start it again with the flags up.sh gives it; waits for /readyz
# Honours KADSCALE_RUN_DIR and the KADSCALE_*_PORT variables like up.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/up.sh"

lock_run_dir
[[ "$(cat "$STATE_DIR/mode" 2>/dev/null)" == local ]] ||
  fail "no local control plane is up in $RUN_DIR (\`just cluster-up\` starts one)"
case "${1:-}" in
  stop)
    recorded_pid kube-apiserver >/dev/null || fail "kube-apiserver is not running"
    stop_components kube-apiserver
    ;;
  start)
    if recorded_pid kube-apiserver >/dev/null; then
      fail "kube-apiserver is already running"
    fi
    # start_component truncates the log: keep the one of the stopped process next to it.
    if [[ -f "$LOG_DIR/kube-apiserver.log" ]]; then
      mv "$LOG_DIR/kube-apiserver.log" "$LOG_DIR/kube-apiserver.previous.log"
    fi
    start_apiserver
    echo "kube-apiserver is back on https://127.0.0.1:$APISERVER_PORT"
    ;;
  *)
    echo "usage: $0 stop|start" >&2
    exit 2
    ;;
esac
