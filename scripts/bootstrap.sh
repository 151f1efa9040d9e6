#!/usr/bin/env bash
# Set up a fresh clone: the locked virtualenv at .venv and the pinned tools in .tools/bin.
# Idempotent and quick when everything is already in place. Needs python3 >= 3.11 and npm (for Helm).
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PYTHON=${PYTHON:-python3}

"$PYTHON" - <<'PY' || { echo "bootstrap: erlmcp needs Python 3.11 or newer ($PYTHON is older)" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY

# uv, pinned, in its own small virtualenv: it installs the project's locked dependencies.
if [[ "$(.tools/uv/bin/uv --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
  rm -rf .tools/uv
  "$PYTHON" -m venv .tools/uv
  .tools/uv/bin/pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never
.tools/uv/bin/uv sync --locked --quiet --python "$(command -v "$PYTHON")"

bash scripts/install-tools.sh .tools/bin
