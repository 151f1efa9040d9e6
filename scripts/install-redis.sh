#!/usr/bin/env bash
# Make sure a real Redis server is available for the multi-replica tests: Debian's redis-server package.
# Installs it with apt-get when it is missing (CI machines run as root); the tests start it themselves on a
# loopback port, so the package's own service is never used.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  echo "install-redis: $(redis-server --version | cut -d' ' -f3)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-redis: redis-server is missing; install Debian's redis-server package (needs root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package may start its own service; the tests do not use it.
(command -v service >/dev/null && service redis-server stop >/dev/null 2>&1) || true
pkill -f "redis-server 127.0.0.1:6379" 2>/dev/null || true
echo "install-redis: $(redis-server --version | cut -d' ' -f3)"
