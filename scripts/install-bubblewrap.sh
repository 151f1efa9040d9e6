#!/usr/bin/env bash
# Make sure bubblewrap (bwrap) is available for the pod-sandbox test: Debian's bubblewrap package.
# Installs it with apt-get when it is missing (CI machines run as root); the test runs the real server under it
# with the chart's security context (read-only root, UID 1000, no capabilities, writable /tmp and /var/run only).
set -euo pipefail
if command -v bwrap >/dev/null 2>&1; then
  echo "install-bubblewrap: $(bwrap --version)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-bubblewrap: bwrap is missing; install Debian's bubblewrap package (needs root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null
echo "install-bubblewrap: $(bwrap --version)"
