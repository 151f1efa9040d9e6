#!/usr/bin/env bash
# A Docker engine for building and smoke-testing the images on a machine without a registry:
#   container-engine.sh install      Debian's docker.io, runc and debootstrap (apt; root)
#   container-engine.sh start        dockerd with no bridge and no iptables rules; prints DOCKER_HOST=...
#   container-engine.sh base-image   a local Python base image (debootstrap bookworm + python3), built once
#   container-engine.sh stop         stop dockerd and unmount what it left
# State lives outside the repository, in $ERLMCP_CACHE (default ~/.cache/erlmcp-tools), so images and the base
# rootfs are reused by later runs. Exit 3 means the engine cannot run on this machine (the caller may skip).
set -euo pipefail

CACHE="${ERLMCP_CACHE:-$HOME/.cache/erlmcp-tools}"
STATE="$CACHE/docker"
SOCKET="$STATE/docker.sock"
BASE_IMAGE="${ERLMCP_BASE_IMAGE:-erlmcp-local/python:3.11-bookworm}"
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
    echo "DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  # No default bridge, no NAT or iptables changes: containers use --network host (servers bound to 127.0.0.1).
  dockerd --bridge=none --iptables=false --ip-masq=false \
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

base_image() {
  start >/dev/null
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "$BASE_IMAGE"
    return 0
  fi
  local tarball="$CACHE/python-3.11-bookworm-rootfs.tar"
  if [[ ! -f "$tarball" ]]; then
    local root
    root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    # Debian's python3 (3.11 in bookworm), venv and CA certificates: what the Dockerfiles' python3 needs.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$(mirror)" \
      >"$CACHE/debootstrap.log" 2>&1 || { tail -5 "$CACHE/debootstrap.log" >&2; rm -rf "$root"; exit 3; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$BASE_IMAGE" >/dev/null
  echo "$BASE_IMAGE"
}

mkdir -p "$CACHE"
case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  base-image) base_image ;;
  *) echo "usage: $0 install|start|stop|base-image" >&2; exit 2 ;;
esac
