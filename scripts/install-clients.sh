#!/usr/bin/env bash
# Install the real MCP clients of the interop matrix (tests/interop), pinned, from PyPI and npm.
#
#   Python `mcp` 1.9.4, 1.12.4, 1.30.0 and 2.3.0, each in a virtualenv of its own (old and new ones cannot share
#   one: mcp 2.x needs pydantic >= 2.12, mcp 1.9/1.12 break on it), from the hashed lock files
#   scripts/clients/python-mcp-<version>.txt (made with `uv pip compile --generate-hashes`; the old ones with
#   pydantic<2.12, httpx<0.29, anyio<4.12, which they need).
#   The official TypeScript SDK @modelcontextprotocol/sdk 1.32.2, from scripts/clients/typescript/package-lock.json
#   (`npm ci`), run with the Node >= 22 of scripts/install-conformance.sh (its WebSocket transport needs Node's
#   global WebSocket).
#
# Each is installed once into ${XDG_CACHE_HOME:-~/.cache}/erlmcp-tools, in a folder named after its lock file's
# digest (a changed lock installs anew), and linked into the project:
#   .tools/clients/python-mcp-<version>  -> the virtualenv (bin/python)
#   .tools/clients/typescript-sdk        -> the npm prefix (node_modules/@modelcontextprotocol/sdk)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_CLIENTS=(1.9.4 1.12.4 1.30.0 2.3.0)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/erlmcp-tools
uv=.tools/uv/bin/uv
[[ -x $uv ]] || bash scripts/bootstrap.sh
export UV_PYTHON_DOWNLOADS=never npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
python=$(.venv/bin/python -c 'import sys; print(sys.executable)')

digest() { sha256sum "$@" | sha256sum | cut -c1-12; }

mkdir -p .tools/clients
for version in "${PYTHON_CLIENTS[@]}"; do
  lock=scripts/clients/python-mcp-$version.txt
  venv=$cache/python-mcp-$version-$(digest "$lock")
  if [[ ! -f $venv/.installed ]]; then
    rm -rf "$venv"
    "$uv" venv --quiet --python "$python" "$venv"
    "$uv" pip install --quiet --python "$venv/bin/python" --require-hashes --no-deps -r "$lock"
    touch "$venv/.installed"
  fi
  ln -sfn "$venv" ".tools/clients/python-mcp-$version"
done

typescript=scripts/clients/typescript
prefix=$cache/typescript-sdk-$(digest "$typescript/package.json" "$typescript/package-lock.json")
if [[ ! -f $prefix/.installed ]]; then
  rm -rf "$prefix"
  mkdir -p "$prefix"
  cp "$typescript/package.json" "$typescript/package-lock.json" "$prefix/"
  (cd "$prefix" && npm ci --silent --no-audit --no-fund >/dev/null)
  touch "$prefix/.installed"
fi
ln -sfn "$prefix" .tools/clients/typescript-sdk

echo "install-clients: python mcp ${PYTHON_CLIENTS[*]}; typescript sdk" \
  "$(node -p 'require(process.argv[1]).version' "$prefix/node_modules/@modelcontextprotocol/sdk/package.json")"
