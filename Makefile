# erlmcp: `make demo` runs the main job, `make test` runs every test. Both set up a fresh clone first.
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.venv/bin:$(PATH)

# The demo renders the chart for this image prefix; the image itself is not pulled (the server runs locally).
IMAGE_REPO_PREFIX ?= gcr.io/erlmcp-public/erlmcp
PYTEST_ARGS ?=

.PHONY: setup conformance-tools clients test-services kind-verify demo bench images test soak lint format pytest clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## create .venv from the lock file and install the pinned tools (helm, kubectl) into .tools/bin
	@bash scripts/bootstrap.sh

conformance-tools:  ## install the official MCP conformance suite and Node 22 (for the tests)
	@bash scripts/install-conformance.sh

clients: setup conformance-tools  ## install the pinned MCP clients of the interop matrix (Python mcp 1.9.4, 1.12.4, 1.30.0, 2.3.0; TypeScript SDK 1.32.2)
	@bash scripts/install-clients.sh

test-services:  ## install redis-server, bubblewrap, checkov, nca (network-config-analyzer), etcd, Kubernetes 1.20 (apiserver, controllers, scheduler, kubelet: built once, ~14 min, cached), docker.io
	@bash scripts/install-redis.sh
	@bash scripts/install-bubblewrap.sh
	@bash scripts/container-engine.sh install || echo "make: no container engine here; the image tests will skip"
	@bash scripts/install-checkov.sh
	@bash scripts/install-nca.sh
	@bash scripts/install-kube.sh

kind-verify:  ## mpdev verify on a local kind cluster with a local registry (needs docker and kind; not in CI)
	@bash scripts/kind-verify.sh

demo: setup  ## render the chart, run its server locally as the Pod would, verify it, stop it
	$(PY) -m deployer demo --image-repo-prefix $(IMAGE_REPO_PREFIX)

images: setup  ## build the server, tester, deployer and redis images with a local Docker engine (no registry); print sizes
	bash scripts/build-images.sh $(IMAGE_REPO_PREFIX) $(shell $(PY) -c "import app; print(app.__version__)")

bench: setup  ## benchmark erlmcp against the official Python SDK and a bare FastAPI ceiling (bench-results/); BASELINE=REF adds erlmcp as of git REF
	$(PY) -m benchmarks $(if $(BASELINE),--baseline "$(BASELINE)")

lint: setup  ## ruff, mypy --strict, helm lint --strict, hadolint
	ruff check .
	ruff format --check .
	mypy
	helm lint --strict chart/
	hadolint Dockerfile redis/Dockerfile

format: setup  ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

pytest: setup conformance-tools clients test-services  ## the test suite only (PYTEST_ARGS="-m 'not slow'" for the quick part)
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest  ## everything CI runs: lint, then every test

soak: setup test-services  ## long soak runs (SOAK_SECONDS, default 600): memory, tasks and descriptors must not climb
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

clean:  ## remove the virtualenv, the tools and caches
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache
