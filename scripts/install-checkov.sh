#!/usr/bin/env bash
# Install checkov (pinned) in a virtualenv of its own (it pins many packages of its own), for the chart tests.
# Made once in ${XDG_CACHE_HOME:-~/.cache}/erlmcp-tools and linked as .tools/bin/checkov.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.3.30
venv=${XDG_CACHE_HOME:-$HOME/.cache}/erlmcp-tools/checkov-$VERSION
if [[ ! -x "$venv/bin/checkov" ]]; then
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$VERSION" 2>&1 | grep -v "^WARNING: Location" || true
fi
"$venv/bin/checkov" --version >/dev/null
mkdir -p .tools/bin
ln -sf "$venv/bin/checkov" .tools/bin/checkov
echo "install-checkov: checkov $("$venv/bin/checkov" --version)"
