#!/bin/sh
# image-venv.sh EXTRA DEST: run by the Dockerfile's build stages, the one way an image gets its Python packages.
# DEST becomes a venv without pip holding exactly the lock file's packages for the extra EXTRA (app, verify or
# deployer), each wheel checked against its hash, byte-compiled, extension modules stripped of symbols nothing
# loads. uv is /opt/uv/bin/uv; with WHEELS set (WHEELS=offline), nothing but /wheelhouse is read.
set -eu
extra="${1:?usage: image-venv.sh EXTRA DEST}"
dest="${2:?usage: image-venv.sh EXTRA DEST}"
/opt/uv/bin/uv export --frozen --no-dev --extra "$extra" --no-emit-project --format requirements-txt \
  -o "/tmp/requirements-$extra.txt"
python3 -m venv --without-pip "$dest"
/opt/uv/bin/uv pip install --python "$dest/bin/python" --no-cache --compile-bytecode --require-hashes \
  ${WHEELS:+--offline --no-index --find-links /wheelhouse} -r "/tmp/requirements-$extra.txt"
find "$dest" -name '*.so' ! -path '*.libs/*' -exec strip --strip-unneeded {} +
