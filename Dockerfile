# syntax=docker/dockerfile:1
# The erlmcp server image: python -m app as UID 1000, listening on 0.0.0.0:8080 (MCP) and :9090 (metrics).
# Build: docker build -t IMAGE .   Only the app extra of the lock file is installed, each wheel pinned by hash.
# PYTHON_IMAGE: any Debian-based image with python3 3.11+ and venv (tests build from a local debootstrap base).
# The runtime venv has no pip or setuptools, and its extension modules are stripped of symbols nothing loads.
# WHEELS=offline: install from ./wheelhouse only (scripts/wheelhouse.sh fills it), for builds without PyPI.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# BUILD_IMAGE: the same Python with binutils (strip); its python3 must sit at the same path as PYTHON_IMAGE's.
ARG BUILD_IMAGE=python:3.11-bookworm

FROM ${BUILD_IMAGE} AS build
ARG WHEELS=""
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install ${WHEELS:+--no-index --find-links /wheelhouse} "uv==0.13.9"
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv export --frozen --no-dev --extra app --no-emit-project --format requirements-txt -o /tmp/requirements.txt \
 && python3 -m venv --without-pip /opt/erlmcp \
 && /opt/uv/bin/uv pip install --python /opt/erlmcp/bin/python --no-cache --compile-bytecode --require-hashes \
      ${WHEELS:+--offline --no-index --find-links /wheelhouse} -r /tmp/requirements.txt \
 && find /opt/erlmcp -name '*.so' ! -path '*.libs/*' -exec strip --strip-unneeded {} +
COPY app /srv/erlmcp/app
RUN /opt/erlmcp/bin/python -m compileall -q /srv/erlmcp/app

FROM ${PYTHON_IMAGE}
ARG VERSION=0.2.0
LABEL org.opencontainers.image.title="erlmcp" \
      org.opencontainers.image.description="A production MCP server for Google Cloud" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/erlmcp/erlmcp" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 erlmcp && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin erlmcp
COPY --from=build /opt/erlmcp /opt/erlmcp
COPY --from=build /srv/erlmcp /srv/erlmcp
WORKDIR /srv/erlmcp
# Read-only root filesystem: nothing is written but /tmp (TMPDIR) and /var/run, both mounted writable.
ENV PATH=/opt/erlmcp/bin:$PATH \
    PYTHONPATH=/srv/erlmcp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    ERLMCP_HOST=0.0.0.0 \
    ERLMCP_LOG_FORMAT=json
USER 1000:1000
EXPOSE 8080 9090
# Exec form: python is PID 1 and gets SIGTERM itself (the server drains and stops on it).
ENTRYPOINT ["python", "-m", "app"]
