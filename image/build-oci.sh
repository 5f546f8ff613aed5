#!/usr/bin/env bash
# Builds the kadscale image (the Dockerfile's twin) without a Docker engine: static musl
# binaries, a scratch base, user 65532, into an OCI image layout archived as a tar.
# Usage: image/build-oci.sh [OUT_TAR]   (default $CARGO_TARGET_DIR or target/, then image/kadscale-<version>.oci.tar)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
target_dir="${CARGO_TARGET_DIR:-target}"
out="${1:-$target_dir/image/kadscale-$version.oci.tar}"
target=x86_64-unknown-linux-musl

# umoci v0.5.0, built from its Go module into the control plane's cache (Debian's 0.4.7 writes
# layer tars without their end-of-archive marker).
e2e/controlplane/build.sh umoci >/dev/null
source e2e/controlplane/common.sh
umoci="$(controlplane_binary_path umoci)"
# ring compiles C for the musl target.
command -v musl-gcc >/dev/null || { echo "musl-gcc missing: apt-get install -y musl-tools" >&2; exit 1; }
rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target"

echo "image: building static binaries for $target (release)"
cargo build --release --locked --target "$target" \
  -p kadscale-node --bin dht-node -p kadscale-operator --bin dht-operator

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/usr/local/bin" "$work/rootfs/etc"
cp image/rootfs/etc/passwd image/rootfs/etc/group "$work/rootfs/etc/"
install -m 0755 "$target_dir/$target/release/dht-node" "$target_dir/$target/release/dht-operator" \
  "$work/rootfs/usr/local/bin/"

echo "image: assembling OCI layout kadscale:$version"
layout="$work/layout"
"$umoci" init --layout "$layout"
"$umoci" new --image "$layout:$version"
"$umoci" insert --image "$layout:$version" --history.created_by "image/build-oci.sh" "$work/rootfs" /
"$umoci" config --image "$layout:$version" \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/dht-node \
  --config.env PATH=/usr/local/bin \
  --config.exposedports 5678/udp --config.exposedports 9090/tcp \
  --config.label "org.opencontainers.image.title=kadscale" \
  --config.label "org.opencontainers.image.version=$version" \
  --architecture amd64 --os linux
"$umoci" gc --layout "$layout"
mkdir -p "$(dirname "$out")"
tar -C "$layout" -cf "$out" .
echo "image: wrote $out ($(du -h "$out" | cut -f1))"
