# syntax=docker/dockerfile:1
# The erlmcp server image: python -m app as UID 1000, listening on 0.0.0.0:8080 (MCP) and :9090 (metrics).
# Build: docker build -t IMAGE .   Only the app extra of the lock file is installed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/uv && /opt/uv/bin/pip install "uv==0.13.9"
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv export --frozen --no-dev --extra app --no-emit-project --format requirements-txt -o /tmp/requirements.txt \
 && python -m venv /opt/erlmcp \
 && /opt/erlmcp/bin/pip install --require-hashes -r /tmp/requirements.txt
COPY app /srv/erlmcp/app
RUN /opt/erlmcp/bin/python -m compileall -q /srv/erlmcp/app

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="erlmcp" \
      org.opencontainers.image.description="A production MCP server for Google Cloud" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 erlmcp && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin erlmcp
COPY --from=build /opt/erlmcp /opt/erlmcp
COPY --from=build /srv/erlmcp /srv/erlmcp
WORKDIR /srv/erlmcp
ENV PATH=/opt/erlmcp/bin:$PATH \
    PYTHONPATH=/srv/erlmcp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ERLMCP_HOST=0.0.0.0 \
    ERLMCP_LOG_FORMAT=json
USER 1000:1000
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "app"]
