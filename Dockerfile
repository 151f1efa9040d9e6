# syntax=docker/dockerfile:1
# erlmcp's three Python images, one target each, built from the repository root:
#   server    <prefix>:<version>           python -m app as UID 1000, on 0.0.0.0:8080 (MCP) and :9090 (metrics)
#             docker build --build-arg VERSION=0.2.0 -t IMAGE .            (the default target)
#   tester    <prefix>/tester:<version>    python -m verify as UID 1000: the chart's test Pod, Marketplace's tester
#             docker build --target tester --build-arg VERSION=0.2.0 -t IMAGE .
#   deployer  <prefix>/deployer:<version>  Marketplace's deployer contract, laid out as Google's Helm deployer images:
#               /data/schema.yaml              schema.yaml with $REGISTRY and $TAG filled in (REGISTRY, VERSION)
#               /data/chart/erlmcp.tar.gz      the chart, top-level folder chart/
#               /data-test/schema.yaml         deployer/data-test/schema.yaml (the tester image), filled in alike
#               /bin/deploy.sh, /bin/deploy_with_tests.sh   the entrypoints mpdev install and mpdev verify call
#             docker build --target deployer --build-arg REGISTRY=gcr.io/PROJECT/erlmcp --build-arg VERSION=0.2.0 \
#               -t gcr.io/PROJECT/erlmcp/deployer:0.2.0 .
# (The Redis image is redis/Dockerfile: Debian's redis-server package, nothing of this repository.)
# Each image's packages are the lock file's for its extra (app, verify, deployer), each wheel pinned by hash, in a
# venv with no pip or setuptools, extension modules stripped of symbols nothing loads (scripts/image-venv.sh).
# All three run on one runtime stage: the same base, UID/GID 1000 (user erlmcp), no bytecode written at run time.
# PYTHON_IMAGE: any Debian-based image with python3 3.11+ and venv (tests build from a local debootstrap base).
# BUILD_IMAGE: the same Python with binutils (strip); its python3 must sit at the same path as PYTHON_IMAGE's.
# WHEELS=offline: install from ./wheelhouse only (scripts/wheelhouse.sh fills it), for builds without PyPI; helm and
# kubectl for the deployer always come from wheelhouse/bin (scripts/install-tools.sh wheelhouse/bin puts the
# pinned builds there; their sha256 is checked again here).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=python:3.11-bookworm
ARG VERSION=0.2.0

# -- build stages --------------------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS lock
ARG WHEELS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 WHEELS=${WHEELS}
WORKDIR /src
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install ${WHEELS:+--no-index --find-links /wheelhouse} "uv==0.13.9"
COPY pyproject.toml uv.lock README.md scripts/image-venv.sh ./

FROM lock AS server-build
RUN sh image-venv.sh app /opt/erlmcp
COPY app /srv/erlmcp/app
RUN /opt/erlmcp/bin/python -m compileall -q /srv/erlmcp/app

FROM lock AS tester-build
RUN sh image-venv.sh verify /opt/verify
COPY verify /srv/verify/verify
RUN /opt/verify/bin/python -m compileall -q /srv/verify

FROM lock AS deployer-build
# The deployer's images are REGISTRY's (no default: a builder without BuildKit builds this stage for every target).
ARG REGISTRY=""
ARG VERSION
RUN sh image-venv.sh deployer /opt/deployer
COPY scripts/install-tools.sh scripts/
RUN bash scripts/install-tools.sh /wheelhouse/bin && install -m 0755 /wheelhouse/bin/helm /usr/local/bin/helm \
 && install -m 0755 /wheelhouse/bin/kubectl /usr/local/bin/kubectl
COPY deployer /srv/deployer/deployer
COPY chart /tmp/chart
COPY schema.yaml /tmp/schema.yaml
RUN mkdir -p /data/chart /data-test/chart \
 && tar -C /tmp -czf /data/chart/erlmcp.tar.gz chart \
 && sed -e "s|\$REGISTRY|${REGISTRY}|g" -e "s|\$TAG|${VERSION}|g" /tmp/schema.yaml > /data/schema.yaml \
 && sed -e "s|\$REGISTRY|${REGISTRY}|g" -e "s|\$TAG|${VERSION}|g" /srv/deployer/deployer/data-test/schema.yaml \
      > /data-test/schema.yaml \
 && /opt/deployer/bin/python -m compileall -q /srv/deployer

# -- the runtime all three images share ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 1000 erlmcp && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin erlmcp
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# -- targets -------------------------------------------------------------------------------------------------------
FROM runtime AS tester
ARG VERSION
LABEL org.opencontainers.image.title="erlmcp tester" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/erlmcp/erlmcp" \
      org.opencontainers.image.description="Verifies an erlmcp installation" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=tester-build /opt/verify /opt/verify
COPY --from=tester-build /srv/verify /srv/verify
WORKDIR /srv/verify
ENV PATH=/opt/verify/bin:$PATH \
    PYTHONPATH=/srv/verify
USER 1000:1000
ENTRYPOINT ["python", "-m", "verify"]

FROM runtime AS deployer
ARG VERSION
LABEL org.opencontainers.image.title="erlmcp deployer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/erlmcp/erlmcp" \
      org.opencontainers.image.description="Installs erlmcp from Google Cloud Marketplace" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=deployer-build /opt/deployer /opt/deployer
COPY --from=deployer-build /srv/deployer /srv/deployer
COPY --from=deployer-build /usr/local/bin/helm /usr/local/bin/kubectl /usr/local/bin/
COPY --from=deployer-build /data /data
COPY --from=deployer-build /data-test /data-test
COPY deployer/bin/deploy.sh deployer/bin/deploy_with_tests.sh /bin/
ENV PATH=/opt/deployer/bin:$PATH \
    PYTHONPATH=/srv/deployer \
    HOME=/tmp \
    WAIT_FOR_READY_TIMEOUT=300 \
    TESTER_TIMEOUT=300
WORKDIR /tmp
USER 1000:1000
ENTRYPOINT ["/bin/deploy.sh"]

# The server last: the default target.
FROM runtime AS server
ARG VERSION
LABEL org.opencontainers.image.title="erlmcp" \
      org.opencontainers.image.description="A production MCP server for Google Cloud" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/erlmcp/erlmcp" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=server-build /opt/erlmcp /opt/erlmcp
COPY --from=server-build /srv/erlmcp /srv/erlmcp
WORKDIR /srv/erlmcp
# Read-only root filesystem: nothing is written but /tmp (TMPDIR) and /var/run, both mounted writable.
ENV PATH=/opt/erlmcp/bin:$PATH \
    PYTHONPATH=/srv/erlmcp \
    TMPDIR=/tmp \
    ERLMCP_HOST=0.0.0.0 \
    ERLMCP_LOG_FORMAT=json
USER 1000:1000
EXPOSE 8080 9090
# Exec form: python is PID 1 and gets SIGTERM itself (the server drains and stops on it).
ENTRYPOINT ["python", "-m", "app"]
