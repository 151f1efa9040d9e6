#!/usr/bin/env bash
# A real Kubernetes cluster for the deployer's integration tests, without a cloud:
#   - etcd from Debian's etcd-server package;
#   - kube-apiserver, kube-controller-manager, kube-scheduler and kubelet v1.20.2 built from Debian 12's kubernetes
#     source package with Debian's Go (the only Kubernetes server source Debian carries; no prebuilt server binaries
#     are reachable), and the pod sandbox's `pause` program compiled from the same tree. kubelet 1.20 is the last
#     one with the built-in Docker runtime (dockershim), which runs Pods on scripts/container-engine.sh's engine.
# Only the binaries that are missing are built: all of them from nothing take about 8 minutes and 2.7 GB of scratch
# space; the binaries (~360 MB) are cached in ${XDG_CACHE_HOME:-~/.cache}/erlmcp-tools/kubernetes-1.20.2 and reused
# while they are there. Nothing is written into the repository except the links in .tools/bin. Needs root for
# apt-get (CI machines run as root). The two fixes the build needs are explained where they are made below (rsync
# for the code generators, reflect2).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.20.2
SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
cache=${XDG_CACHE_HOME:-$HOME/.cache}/erlmcp-tools/kubernetes-$VERSION
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet)

apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-kube: missing Debian packages: ${missing[*]} (installing them needs root)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install etcd-server openssl
# The package may start its own etcd on 2379 (the tests start theirs on free loopback ports): stop that one only, by
# its pidfile. Not `service etcd stop`: Debian's init-d-script ends with `start-stop-daemon --stop --exec
# /usr/bin/etcd`, which kills every etcd on the machine, the control planes of tests running meanwhile included.
if [[ -f /run/etcd.pid ]]; then
  start-stop-daemon --stop --quiet --oknodo --retry TERM/10/KILL/5 --pidfile /run/etcd.pid --exec /usr/bin/etcd || true
fi

# The Kubernetes programs not in the cache yet (or not of this version); `pause` is checked separately.
missing_binaries() {
  local binary
  for binary in "${binaries[@]}"; do
    if [[ ! -x "$cache/$binary" || "$("$cache/$binary" --version 2>/dev/null)" != "Kubernetes v$VERSION" ]]; then
      echo "$binary"
    fi
  done
}
mapfile -t missing < <(missing_binaries)
[[ -x "$cache/pause" ]] || missing+=(pause)

if [[ ${#missing[@]} -gt 0 ]]; then
  started=$SECONDS
  # rsync: the tree's code generators need it; reflect2: see below; gcc and libc6-dev: the static pause program.
  apt_install golang-go dpkg-dev rsync golang-github-modern-go-reflect2-dev debian-archive-keyring gcc libc6-dev
  work=$(mktemp -d "${TMPDIR:-/tmp}/erlmcp-kube-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "install-kube: building ${missing[*]} v$VERSION from Debian's source (all of them: about 8 min)"
  # A deb-src entry in a private apt state folder: the machine's own apt sources stay untouched.
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  uri=${uri:-http://deb.debian.org/debian}
  mkdir -p "$work/apt/lists/partial" "$work/apt/parts"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" >"$work/apt/parts/src.sources"
  apt_options=(-o Dir::State::Lists="$work/apt/lists" -o Dir::Etc::SourceList=/dev/null
    -o Dir::Etc::SourceParts="$work/apt/parts" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
  apt-get "${apt_options[@]}" update >/dev/null
  (cd "$work" && apt-get "${apt_options[@]}" source "kubernetes=$SOURCE_VERSION" >"$work/source.log" 2>&1) || {
    tail -20 "$work/source.log" >&2
    exit 1
  }
  tree="$work/kubernetes-1.20.5+really1.20.2"
  # The vendored reflect2 1.0.1 crashes under Go >= 1.18 (fatal error: fault in mapiternext on the first
  # custom-resource write); Debian's reflect2 1.0.2 is the fix.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod"
  mkdir -p "$tree/.go/src/k8s.io" && ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
  what=()
  for binary in "${missing[@]}"; do
    [[ $binary == pause ]] || what+=("cmd/$binary")
  done
  if [[ ${#what[@]} -gt 0 ]]; then
    (cd "$tree" && env GOPATH="$tree/.go" CGO_ENABLED=0 HOME="$work/home" GOFLAGS= \
      KUBE_GIT_VERSION="v$VERSION" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean \
      KUBE_GIT_COMMIT=0000000000000000000000000000000000000000 \
      make WHAT="${what[*]}" >"$work/make.log" 2>&1) || {
      tail -40 "$work/make.log" >&2
      exit 1
    }
  fi
  # The pod sandbox image holds this one static program (kubelet's --pod-infra-container-image; no registry here).
  gcc -Os -static -o "$tree/_output/pause" "$tree/build/pause/linux/pause.c"
  mkdir -p "$cache"
  for binary in "${missing[@]}"; do
    if [[ $binary == pause ]]; then
      install -m 0755 "$tree/_output/pause" "$cache/pause.new"
    else
      install -m 0755 "$tree/_output/bin/$binary" "$cache/$binary.new"
    fi
    mv "$cache/$binary.new" "$cache/$binary"
  done
  echo "install-kube: built ${missing[*]} in $((SECONDS - started)) s"
fi

mkdir -p .tools/bin
for binary in "${binaries[@]}"; do
  ln -sf "$cache/$binary" ".tools/bin/$binary"
done
ln -sf "$cache/pause" .tools/bin/kube-pause  # .tools/bin is on the tests' PATH: no bare `pause` there
# The package's etcd, looked up outside .tools/bin (which may already hold this very link).
etcd=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v etcd)
ln -sfn "$etcd" .tools/bin/etcd
echo "install-kube: $("$cache/kube-apiserver" --version), etcd $("$etcd" --version | awk '/etcd Version/{print $3}')"
