#!/usr/bin/env bash
# Install IBM's network-config-analyzer (nca, pinned) in a virtualenv of its own, for the NetworkPolicy tests
# (tests/chart/test_network_policies.py). Made once in ${XDG_CACHE_HOME:-~/.cache}/erlmcp-tools, linked as .tools/bin/nca.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.1.0
# nca pins its direct dependencies exactly; these are the unpinned ones below them, at the versions tested with it.
EXTRA_PINS=(fastcore==2.2.41 soupsieve==4.1.4 packaging==26.4)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/erlmcp-tools/nca-$VERSION
if [[ ! -x "$venv/bin/nca" ]]; then
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "network-config-analyzer==$VERSION" "${EXTRA_PINS[@]}" \
    2>&1 | grep -v "^WARNING: Location" || true
fi
installed=$("$venv/bin/nca" --version)
[[ "$installed" == "NCA version $VERSION" ]] || { echo "install-nca: expected nca $VERSION, got: $installed" >&2; exit 1; }
mkdir -p .tools/bin
ln -sf "$venv/bin/nca" .tools/bin/nca
echo "install-nca: $installed ($venv)"
