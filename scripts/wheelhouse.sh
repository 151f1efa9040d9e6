#!/usr/bin/env bash
# Download into wheelhouse/ every wheel an image installs (the lock file's extra, pinned by hash, and uv), for
# image builds that cannot reach PyPI: docker build --build-arg WHEELS=offline ...
#   scripts/wheelhouse.sh PYTHON_VERSION EXTRA...     e.g. scripts/wheelhouse.sh 3.11.2 app verify deployer
# PYTHON_VERSION is the image's interpreter (markers such as python_full_version < '3.11.3' depend on it); the
# wheels are for CPython on glibc x86_64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh >/dev/null
UV=.tools/uv/bin/uv
PIP=.tools/uv/bin/pip
PYTHON_VERSION="$1"
shift
TARGET=(--python-version "$PYTHON_VERSION" --implementation cp --only-binary=:all:
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
        --platform manylinux_2_34_x86_64 --platform linux_x86_64)
mkdir -p wheelhouse
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for extra in "$@"; do
  "$UV" export --frozen --no-dev --extra "$extra" --no-emit-project --format requirements-txt --quiet \
    -o "$work/$extra.txt"
  .venv/bin/python scripts/wheelhouse.py "$work/$extra.txt" "$work/$extra-target.txt" "$PYTHON_VERSION"
  "$PIP" download --quiet --disable-pip-version-check "${TARGET[@]}" --require-hashes \
    -r "$work/$extra-target.txt" -d wheelhouse 2> >(grep -v "is ignored: it is neither" >&2)
done
uv_version="$(grep -m1 -o 'UV_VERSION=[0-9.]*' scripts/bootstrap.sh | cut -d= -f2)"
"$PIP" download --quiet --disable-pip-version-check "${TARGET[@]}" "uv==$uv_version" -d wheelhouse \
  2> >(grep -v "is ignored: it is neither" >&2)
