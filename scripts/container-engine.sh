#!/usr/bin/env bash
# A Docker engine for building and smoke-testing the images on a machine without a registry:
#   container-engine.sh install      Debian's docker.io, runc and debootstrap (apt; root)
#   container-engine.sh start        dockerd with no bridge and no iptables rules; prints DOCKER_HOST=...
#   container-engine.sh base-image   a local slim Python base image (debootstrap bookworm + python3), built once
#   container-engine.sh build-image  the same with binutils: the Dockerfiles' build stage strips extensions with it
#   container-engine.sh stop         stop dockerd and unmount what it left
# Options of start and stop (after the command):
#   --state DIR    another engine, with its own images, containers and socket in DIR (default $ERLMCP_CACHE/docker)
#   --runc-clamp   (start) scripts/runc-clamp as the default runtime, for kubelet's Pods: this VM forbids the
#                  negative oom_score_adj kubelet asks for (see that file); an engine already running without it
#                  is left alone (exit 3)
# State lives outside the repository, in $ERLMCP_CACHE (default ~/.cache/erlmcp-tools), so images and the base
# rootfs are reused by later runs. Exit 3 means the engine cannot run on this machine (the caller may skip).
set -euo pipefail

CACHE="${ERLMCP_CACHE:-$HOME/.cache/erlmcp-tools}"
STATE="$CACHE/docker"
CLAMP=""
action="${1:-}"
[[ $# -gt 0 ]] && shift
while [[ $# -gt 0 ]]; do
  case "$1" in
    --state) STATE="${2:?--state needs a folder}"; shift 2 ;;
    --runc-clamp) CLAMP="$(cd "$(dirname "$0")" && pwd)/runc-clamp"; shift ;;
    *) echo "container-engine: unknown option $1" >&2; exit 2 ;;
  esac
done
SOCKET="$STATE/docker.sock"
BASE_IMAGE="${ERLMCP_BASE_IMAGE:-erlmcp-local/python:3.11-slim-bookworm}"
BUILD_IMAGE="${ERLMCP_BUILD_IMAGE:-erlmcp-local/python:3.11-bookworm}"
export DOCKER_HOST="unix://$SOCKET"

mirror() {
  # The Debian mirror apt already uses here (debootstrap needs one).
  local uri
  uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

install() {
  if command -v dockerd >/dev/null && command -v debootstrap >/dev/null && command -v docker >/dev/null; then
    return 0
  fi
  if [[ "$(id -u)" != 0 ]]; then
    echo "container-engine: installing docker.io and debootstrap needs root" >&2
    exit 3
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io runc containerd debootstrap \
    >"$CACHE/apt-docker.log" 2>&1 || { tail -5 "$CACHE/apt-docker.log" >&2; exit 3; }
}

running() {
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

start() {
  mkdir -p "$STATE"
  if running; then
    if [[ -n $CLAMP && "$(docker info --format '{{.DefaultRuntime}}')" != runc-clamp ]]; then
      echo "container-engine: the engine at $SOCKET runs without --runc-clamp; stop it first (or use --state)" >&2
      exit 3
    fi
    echo "DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  local runtime=()
  if [[ -n $CLAMP ]]; then
    runtime=(--add-runtime "runc-clamp=$CLAMP" --default-runtime runc-clamp)
  fi
  # No default bridge, no NAT or iptables changes: containers use --network host (servers bound to 127.0.0.1).
  dockerd --bridge=none --iptables=false --ip-masq=false "${runtime[@]}" \
    --data-root "$STATE/data" --exec-root "$STATE/exec" \
    -H "$DOCKER_HOST" --pidfile "$STATE/docker.pid" >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 1 100); do
    if running; then
      echo "DOCKER_HOST=$DOCKER_HOST"
      return 0
    fi
    if ! kill -0 "$!" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  echo "container-engine: dockerd did not start; its log:" >&2
  tail -20 "$STATE/dockerd.log" >&2
  exit 3
}

stop() {
  if [[ -f "$STATE/docker.pid" ]]; then
    kill "$(cat "$STATE/docker.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$(cat "$STATE/docker.pid" 2>/dev/null)" 2>/dev/null || break
      sleep 0.1
    done
  fi
  umount "$STATE/exec/netns/default" 2>/dev/null || true
}

# Files a server image never reads, left out the way Debian's slim images leave them out (also for anything a
# derived image installs later: dpkg honours the path-exclude rules).
SLIM_EXCLUDES=('/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*' '/usr/share/lintian/*')

base_image() {  # base_image IMAGE: build both images once (one debootstrap), print the one asked for
  local wanted=$1
  start >/dev/null
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && docker image inspect "$BUILD_IMAGE" >/dev/null 2>&1; then
    echo "$wanted"
    return 0
  fi
  local build_tar="$CACHE/python-3.11-bookworm-build-rootfs.tar" slim_tar="$CACHE/python-3.11-bookworm-slim-rootfs.tar"
  if [[ ! -f "$build_tar" || ! -f "$slim_tar" ]]; then
    local root
    root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    # Debian's python3 (3.11 in bookworm), venv and CA certificates: what the Dockerfiles' python3 needs; binutils
    # for the build stage only (strip), purged again from the runtime base below.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,binutils bookworm "$root" \
      "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 || { tail -5 "$CACHE/debootstrap.log" >&2; rm -rf "$root"; exit 3; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$build_tar.tmp" . && mv "$build_tar.tmp" "$build_tar"
    # binutils and the libraries only it uses (debootstrap marks them all as installed by hand: name them)
    chroot "$root" dpkg --purge binutils binutils-x86-64-linux-gnu binutils-common libbinutils libctf0 \
      libctf-nobfd0 libgprofng0 libjansson4 >>"$CACHE/debootstrap.log" 2>&1
    local rule
    for rule in "${SLIM_EXCLUDES[@]}"; do
      echo "path-exclude $rule" >>"$root/etc/dpkg/dpkg.cfg.d/erlmcp-slim"
      # every file but the licences (Debian keeps /usr/share/doc/*/copyright in its slim images too)
      find "$root${rule%/\*}" -mindepth 1 ! -type d ! -name copyright -exec rm -f {} +
      find "$root${rule%/\*}" -mindepth 1 -depth -type d -empty -exec rmdir {} +
    done
    echo "path-include /usr/share/doc/*/copyright" >>"$root/etc/dpkg/dpkg.cfg.d/erlmcp-slim"
    rm -rf "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old "$root"/var/log/*
    tar -C "$root" -cf "$slim_tar.tmp" . && mv "$slim_tar.tmp" "$slim_tar"
    rm -rf "$root"
  fi
  docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$build_tar" "$BUILD_IMAGE" >/dev/null
  docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$slim_tar" "$BASE_IMAGE" >/dev/null
  echo "$wanted"
}

mkdir -p "$CACHE"
case "$action" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  base-image) base_image "$BASE_IMAGE" ;;
  build-image) base_image "$BUILD_IMAGE" ;;
  *) echo "usage: $0 install|start|stop|base-image|build-image" >&2; exit 2 ;;
esac
