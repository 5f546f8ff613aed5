#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and helm with the Go
# toolchain from the Go module proxy, once per version, into a cache that outlives the checkout:
#   ${KADSCALE_CACHE:-~/.cache/kadscale}/bin/<version>/<binary>
# A binary is rebuilt only when its build key (version, ldflags, wrapper go.sum) changes.
# Usage: build.sh [binary...]   (default: all of them)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# No `direct` fallback: the build machines reach the module proxy and nothing else.
export GOPROXY="${KADSCALE_GOPROXY:-https://proxy.golang.org}"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=

BUILD_LOG_DIR="$KADSCALE_CACHE/logs"
PROGRESS_INTERVAL_SECONDS="${KADSCALE_BUILD_PROGRESS_SECONDS:-60}"

fail() {
  echo "build.sh: $*" >&2
  exit 1
}

format_duration() {
  printf '%dm%02ds' $(($1 / 60)) $(($1 % 60))
}

kubernetes_minor() {
  local without_v="${KUBERNETES_VERSION#v}"
  without_v="${without_v#*.}"
  echo "${without_v%%.*}"
}

# requires_module GO_MOD MODULE VERSION: whether GO_MOD requires exactly MODULE at VERSION.
requires_module() {
  grep -Eq "^(require)?[[:space:]]*$2 $3( |\$)" "$1"
}

# The wrapper modules pin versions too; a mismatch would build one version and stamp another.
check_wrapper_versions() {
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  requires_module "$CONTROLPLANE_DIR/kubernetes/go.mod" k8s.io/kubernetes "$KUBERNETES_VERSION" ||
    fail "kubernetes/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION (common.sh)"
  if grep -E '=> k8s.io/[a-z-]+ v' "$CONTROLPLANE_DIR/kubernetes/go.mod" | grep -v " $staging_version\$" >&2; then
    fail "kubernetes/go.mod: the staging replace lines above are not at $staging_version"
  fi
  requires_module "$CONTROLPLANE_DIR/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" ||
    fail "etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION (common.sh)"
}

# The release date of the Kubernetes module, as buildDate in /version (reproducible, unlike now).
# The module proxy does not record the commit, so gitCommit is stamped empty rather than left
# as the source archive's unexpanded "$Format:%H$".
kubernetes_release_date() {
  (cd "$CONTROLPLANE_DIR/kubernetes" && go list -m -json k8s.io/kubernetes) |
    sed -n 's/^[[:space:]]*"Time": "\(.*\)",*$/\1/p'
}

kubernetes_ldflags() {
  local flags=(-s -w) package
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=(
      "-X $package.gitVersion=$KUBERNETES_VERSION"
      "-X $package.gitMajor=1"
      "-X $package.gitMinor=$(kubernetes_minor)"
      "-X $package.gitTreeState=clean"
      "-X $package.gitCommit="
      "-X $package.buildDate=$KUBERNETES_RELEASE_DATE"
    )
  done
  echo "${flags[*]}"
}

# Helm assumes Kubernetes 1.20 for `helm template` and `helm lint` unless told otherwise.
helm_ldflags() {
  local flags=(-s -w "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    "-X helm.sh/helm/v3/internal/version.gitTreeState=clean") package
  for package in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    flags+=("-X $package.k8sVersionMajor=1" "-X $package.k8sVersionMinor=$(kubernetes_minor)")
  done
  echo "${flags[*]}"
}

kwok_ldflags() {
  echo "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBERNETES_VERSION"
}

# Runs a command with its output in a log, printing a line every PROGRESS_INTERVAL_SECONDS so a
# long cold build visibly progresses (`go build -v` logs one line per compiled package).
run_with_progress() {
  local name="$1" log="$2" started=$SECONDS next_report
  shift 2
  "$@" >"$log" 2>&1 &
  local pid=$!
  next_report=$((SECONDS + PROGRESS_INTERVAL_SECONDS))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if ((SECONDS >= next_report)); then
      echo "  … $name: $(format_duration $((SECONDS - started))) elapsed, $(grep -cv '^go: ' "$log" || true) packages compiled"
      next_report=$((SECONDS + PROGRESS_INTERVAL_SECONDS))
    fi
  done
  wait "$pid"
}

# build_one NAME: builds NAME unless its stamp already holds the same build key.
build_one() {
  local name="$1" version target stamp key log ldflags package workdir="" install_version=""
  version="$(controlplane_binary_version "$name")"
  target="$(controlplane_binary_path "$name")"
  stamp="$target.stamp"
  case "$name" in
    kube-apiserver | kube-controller-manager | kube-scheduler)
      workdir="$CONTROLPLANE_DIR/kubernetes"
      package="k8s.io/kubernetes/cmd/$name"
      ldflags="$(kubernetes_ldflags)"
      ;;
    etcd)
      workdir="$CONTROLPLANE_DIR/etcd"
      package="go.etcd.io/etcd/server/v3"
      ldflags="-s -w"
      ;;
    kwok)
      package="sigs.k8s.io/kwok/cmd/kwok"
      install_version="$KWOK_VERSION"
      ldflags="$(kwok_ldflags)"
      ;;
    helm)
      package="helm.sh/helm/v3/cmd/helm"
      install_version="$HELM_VERSION"
      ldflags="$(helm_ldflags)"
      ;;
    umoci)
      package="github.com/opencontainers/umoci/cmd/umoci"
      install_version="$UMOCI_VERSION"
      ldflags="-s -w"
      ;;
  esac
  key="$name $version ldflags=[$ldflags]"
  if [[ -n "$workdir" ]]; then
    key+=" go.sum=$(sha256sum "$workdir/go.sum" | cut -d' ' -f1)"
  fi
  if [[ -x "$target" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    echo "$name $version: cached ($target)"
    return
  fi

  local hint=""
  case "$name" in
    kube-apiserver) hint=" (cold build can take 10+ minutes)" ;;
    kube-controller-manager | kube-scheduler) hint=" (mostly reuses kube-apiserver's packages)" ;;
  esac
  echo "building $name $version$hint…"
  mkdir -p "$(dirname "$target")" "$BUILD_LOG_DIR"
  log="$BUILD_LOG_DIR/$name-$version.log"
  local scratch started=$SECONDS
  scratch="$(mktemp -d "$(dirname "$target")/.build-$name.XXXXXX")"
  if [[ -n "$workdir" ]]; then
    (cd "$workdir" && run_with_progress "$name" "$log" \
      go build -v -mod=readonly -trimpath -ldflags "$ldflags" -o "$scratch/$name" "$package") ||
      {
        tail -n 30 "$log" >&2
        rm -rf "$scratch"
        fail "building $name failed; full log: $log"
      }
  else
    (cd "$scratch" && export GOBIN="$scratch" && run_with_progress "$name" "$log" \
      go install -v -trimpath -ldflags "$ldflags" "$package@$install_version") ||
      {
        tail -n 30 "$log" >&2
        rm -rf "$scratch"
        fail "building $name failed; full log: $log"
      }
  fi
  mv -f "$scratch/$name" "$target"
  rm -rf "$scratch"
  echo "$key" >"$stamp"
  echo "built $name $version in $(format_duration $((SECONDS - started))) → $target"
}

# Stable names for scripts and people: e2e/.run/bin/<binary> → the cached binary.
link_binary() {
  mkdir -p "$LINK_DIR"
  ln -sfn "$(controlplane_binary_path "$1")" "$LINK_DIR/$1"
}

main() {
  command -v go >/dev/null 2>&1 || fail "the Go toolchain (go) is not on PATH"
  local wanted=("$@") name
  if ((${#wanted[@]} == 0)); then
    wanted=("${CONTROLPLANE_BINARIES[@]}")
  fi
  for name in "${wanted[@]}"; do
    controlplane_binary_version "$name" >/dev/null || exit 2
  done
  check_wrapper_versions
  mkdir -p "$KADSCALE_CACHE/bin"
  # Two CI runs on one machine must not build into the same cache at once.
  exec 9>"$KADSCALE_CACHE/bin/.build.lock"
  if ! flock -n 9; then
    echo "waiting for another build.sh to finish (lock $KADSCALE_CACHE/bin/.build.lock)…"
    flock 9
  fi
  KUBERNETES_RELEASE_DATE="$(kubernetes_release_date)"
  [[ -n "$KUBERNETES_RELEASE_DATE" ]] || fail "could not read the release date of k8s.io/kubernetes $KUBERNETES_VERSION"
  local started=$SECONDS
  for name in "${wanted[@]}"; do
    build_one "$name"
    link_binary "$name"
  done
  echo "control plane binaries ready in $(format_duration $((SECONDS - started))) (cache: $KADSCALE_CACHE/bin, links: $LINK_DIR)"
}

main "$@"
