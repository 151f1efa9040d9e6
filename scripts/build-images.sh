#!/usr/bin/env bash
# Build the four Marketplace images with a local Docker engine, from a local base image, without a registry:
#   scripts/build-images.sh PREFIX TAG
# makes PREFIX:TAG (server), PREFIX/tester:TAG, PREFIX/deployer:TAG (the Dockerfile's three targets) and
# PREFIX/redis:TAG (redis/Dockerfile), and prints each image's size. Every wheel and tool comes from wheelhouse/
# (filled here from the lock file, checked by hash): the Python images build with no network. The redis image installs Debian's redis-server package with the base's apt, from
# the Debian mirror debootstrap used (--network host, for that build only; a cached build fetches nothing).
# Exit 3 when no container engine can run on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${1:?usage: build-images.sh PREFIX TAG}"
TAG="${2:?usage: build-images.sh PREFIX TAG}"

bash scripts/container-engine.sh install
eval "export $(bash scripts/container-engine.sh start)"
base="$(bash scripts/container-engine.sh base-image)"
build_base="$(bash scripts/container-engine.sh build-image)"
python_version="$(docker run --rm --network none "$base" python3 -c 'import platform; print(platform.python_version())')"
bash scripts/wheelhouse.sh "$python_version" app verify deployer
bash scripts/install-tools.sh >/dev/null  # the pinned helm and kubectl; the deployer image checks their sha256
rm -rf wheelhouse/bin && mkdir -p wheelhouse/bin && cp -L .tools/bin/helm .tools/bin/kubectl wheelhouse/bin/

sizes() {  # sizes IMAGE: as unpacked on a node (docker images), and compressed as a registry stores and pulls it
  local unpacked packed
  unpacked=$(docker image inspect "$1" --format '{{.Size}}')
  packed=$(docker save "$1" | gzip -6 | wc -c)
  awk -v u="$unpacked" -v p="$packed" 'BEGIN {printf "%.0f MB (%.0f MB compressed, as pushed)", u / 1e6, p / 1e6}'
}

report() {  # report IMAGE: its line of the size table
  printf '%-50s %s\n' "$1" "$(sizes "$1")"
}

build() {  # build IMAGE TARGET [BUILD-ARG...]: a target of the one Dockerfile
  local image=$1 target=$2
  shift 2
  local args=(--network none --build-arg "PYTHON_IMAGE=$base" --build-arg "BUILD_IMAGE=$build_base" --build-arg WHEELS=offline)
  for arg in "$@"; do args+=(--build-arg "$arg"); done
  docker build --quiet "${args[@]}" --target "$target" -t "$image" . >/dev/null
  report "$image"
}
build "$PREFIX:$TAG" server "VERSION=$TAG"
build "$PREFIX/tester:$TAG" tester "VERSION=$TAG"
build "$PREFIX/deployer:$TAG" deployer "REGISTRY=$PREFIX" "VERSION=$TAG"
# Redis: on the same slim base (its layers are shared with the server's on a node), redis/ as the whole context.
docker build --quiet --network host --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$TAG" \
  -f redis/Dockerfile -t "$PREFIX/redis:$TAG" redis >/dev/null
report "$PREFIX/redis:$TAG"
echo "base image $base ($(sizes "$base"))"
