"""Cloud Run as code: the erlmcp service of the seed design (section 2), planned, applied and rolled out with a
canary (``python -m deployer cloudrun plan|apply|canary|promote|rollback [--dry-run]``).

The service is one Knative ``serving.knative.dev/v1`` Service, spoken to through the Cloud Run Admin API v1
(``https://REGION-run.googleapis.com/apis/serving.knative.dev/v1/namespaces/PROJECT/services/NAME``). It is
rendered from the configuration alone (:func:`desired_service`), checked before any call against the Knative
Service CRD's schema (vendored in ``schemas/``) and the limits Cloud Run adds (:func:`problems`), then compared
with the live service on the fields it sets. ``plan`` prints CREATE, UPDATE (with the differing fields) or NO
CHANGE; ``apply`` creates (POST) or replaces (PUT, carrying ``metadata.resourceVersion``: a concurrent change is
re-read and planned again) and waits until the service is Ready, then reports the ready revision and the URL.
Applying again writes nothing. ``--dry-run`` asks Cloud Run to check the write (``dryRun=all``), which persists
nothing.

Decisions, with the server's own settings (``app/settings.py``) as the reference:

* **Sessions.** Cloud Run scales to zero and sends each request to any instance; its session affinity is a
  best-effort cookie MCP clients do not keep. So either sessions are shared, or there are none: with a Redis URL
  (``cloudRun.redisUrlSecret``, or ``redis-url`` among ``secrets.keys``) the server keeps sessions and event
  streams in Redis (``ERLMCP_REDIS_URL`` from Secret Manager) and any instance serves any session, resumable
  streams included; without one it runs with ``ERLMCP_STATELESS=true``: every POST stands alone, GET and DELETE
  ``/mcp`` answer 405, and server-to-client requests are unavailable. Memorystore has private addresses only,
  so with Redis the revision gets Direct VPC egress to private ranges on the configuration's network and subnet
  (``cloudRun.vpcEgress``: ``auto``; ``none`` leaves VPC settings alone). 2026-07-28 multi-round requests seal
  ``requestState`` with a key every instance must share: ``cloudRun.requestStateKeySecret`` names a secret
  holding it (``ERLMCP_REQUEST_STATE_KEY``); without one the plan warns.
* **Listener.** Cloud Run routes to the one declared container port and sets ``PORT`` to it; the server reads
  ``ERLMCP_PORT`` (default 8080) and ``ERLMCP_HOST`` (the image sets 0.0.0.0), not ``PORT``, so both are set
  explicitly to 8080 and 0.0.0.0. The port is named ``http1``: uvicorn speaks HTTP/1.1 only, and Cloud Run
  streams HTTP/1.1 responses (SSE) as they are written; ``h2c`` would need an HTTP/2 cleartext server and only
  lifts the 32 MiB request limit the server's 4 MiB body limit never reaches. The request timeout (300 s) also
  ends SSE streams: clients reconnect, with ``Last-Event-ID`` when sessions are in Redis. The metrics listener
  (9090) is not routed; Cloud Run's own request metrics stand in for it.
* **Probes.** Startup: ``GET /readyz`` every 2 s, up to 30 failures (a cold start takes under a second, the
  tool workers included). Liveness: ``GET /livez`` every 15 s, 3 failures: ``/readyz`` answers 503 while the
  server drains, which must not get the instance restarted. Fields at their default are not written (no port:
  Cloud Run probes the serving port; no zero delay): the API's JSON leaves zero values out, and a field it does
  not give back would show as a difference on every plan.
* **Execution environment: gen2.** The server runs tool workers as processes with an address-space limit and
  uses uvloop; the second generation runs a Linux kernel (a microVM) where they behave as on GKE and in the
  tests, where the first emulates system calls (gVisor), and gives faster sustained CPU and network. Its cost:
  at least 512 MiB (the seed's memory) and a slower cold start, which ``startup-cpu-boost`` offsets.
* **Shutdown.** Cloud Run sends SIGTERM and kills 10 s later; ``ERLMCP_SHUTDOWN_TIMEOUT_SECONDS=8`` lets
  in-flight requests end within that. No drain delay: Cloud Run sends nothing new to a stopping instance.
* **Secrets** (:mod:`deployer.gcp.server_secrets`, IDs ``<name>-<key>``). An environment variable with
  ``valueFrom.secretKeyRef`` (version ``latest``) wherever the server takes the value from one: ``redis-url``
  and the request-state key. A secret volume (``/secrets/<key>/<key>``, read-only, ``latest``) for the settings
  the server reads only from a file (``ERLMCP_API_KEY_FILE``, ``ERLMCP_JWT_PUBLIC_KEY_FILE``,
  ``OTEL_EXPORTER_OTLP_CERTIFICATE``); a mounted ``latest`` secret is fetched from Secret Manager when it is
  read, so a rotated API key needs no new revision, where an environment variable is fixed at the instance's
  start. The TLS secrets are not used: Cloud Run ends TLS at its front end and sends plain HTTP to the
  container, and client certificates never reach it.
* **Access.** ``run.googleapis.com/invoker-iam-disabled: "true"`` (``cloudRun.invokerIamCheck: false``, the
  default): MCP clients send the server's API key or JWT in ``Authorization``, where Cloud Run's IAM check would
  want a Google ID token; the server authenticates every request itself. Ingress ``all`` by default.
  ``run.googleapis.com/launch-stage`` is never set: every setting used is generally available.
* **Ownership.** The service carries ``managed-by: erlmcp``; an existing service without it is not taken over.
  Fields the deployer does not set (a label, a Cloud SQL annotation added by hand) are kept on replace; the
  lists it sets (containers, volumes, traffic) are its own.

The canary (seed: 5 % of traffic):

* ``canary --image IMAGE``: the new revision gets a fixed name, ``<service>-<8 hex>`` of a hash of its template
  (the image and every revision setting), so a repeated canary reuses its revision and never collides with one
  of other settings. Traffic: ``canaryPercent`` to it with the tag ``canary`` (its own URL), the rest pinned by
  ``revisionName`` to the revision that served 100 %. Refused when a different canary runs, when traffic is
  split otherwise, or when the image and settings already serve.
* ``promote``: 100 % to the latest revision, which must be the canary and Ready; the tag goes. The service is
  back to "latest revision gets everything", so the next ``apply`` with the same image changes nothing.
* ``rollback``: 100 % to the revision the canary was measured against, the tag goes; allowed while the canary
  is failing (waits for the routes only: the failed revision keeps the service's Ready False until the next
  ``apply`` deploys the configuration's image again).
* ``apply`` refuses while a canary runs: it would send it everything.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import jsonschema
import requests
import yaml

from deployer.errors import CloudError, ValuesError
from deployer.gcp import converge
from deployer.gcp.changes import CREATE, NO_CHANGE, UPDATE, Change, differences, emit_desired, render, run_mode
from deployer.gcp.config import GcpConfig, config_from
from deployer.gcp.conflicts import again_on_conflict
from deployer.gcp.credentials import default_credentials, rest_root
from deployer.gcp.server_secrets import SERVER_SECRETS, SecretSpec, by_key
from deployer.log import Log

__all__ = [
    "API_VERSION",
    "CANARY_TAG",
    "SERVICE_CRD",
    "CloudRunApi",
    "CloudRunRefused",
    "Desired",
    "Outcome",
    "canary_revision_name",
    "closed_schema",
    "command",
    "desired_service",
    "problems",
    "service_schema",
]


API_VERSION = "serving.knative.dev/v1"
KIND = "Cloud Run service"
SERVICE_CRD = Path(__file__).parent / "schemas" / "knative-serving-v1.23.0-service.yaml"
PORT = 8080
READY_PATH, LIVE_PATH = "/readyz", "/livez"
SECRETS_DIR = "/secrets"
CANARY_TAG = "canary"
MANAGED_BY, OWNER = "managed-by", "erlmcp"
EXECUTION_ENVIRONMENT = "gen2"
SHUTDOWN_SECONDS = 8  # Cloud Run's SIGKILL comes 10 s after SIGTERM
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

POLL_SECONDS = 3.0  # between two reads while waiting for Ready
READY_TIMEOUT_SECONDS = 900.0
CALL_TIMEOUT_SECONDS = 60.0
CONFLICT_RETRIES = 3

INVOKER_IAM_DISABLED = "run.googleapis.com/invoker-iam-disabled"
NETWORK_INTERFACES = "run.googleapis.com/network-interfaces"
VPC_EGRESS = "run.googleapis.com/vpc-access-egress"
MIN_SCALE, MAX_SCALE = "autoscaling.knative.dev/minScale", "autoscaling.knative.dev/maxScale"

_INGRESS = ("all", "internal", "internal-and-cloud-load-balancing")
_VPC_EGRESS = ("auto", "none", "private-ranges-only", "all-traffic")
_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"})  # Cloud Run sets these
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_NOT_ON_CLOUD_RUN = ("tls-cert", "tls-key", "tls-client-ca")
_TRUE = frozenset({"1", "true", "yes", "on"})

# Cloud Run's CPU and memory table: whole CPUs only (below 1 CPU it needs concurrency 1 and the first generation),
# and per CPU count the memory allowed (MiB).
_MIB = 1024 * 1024
_MEMORY_BY_CPU = {1: (128, 4096), 2: (128, 8192), 4: (2048, 16384), 6: (4096, 24576), 8: (4096, 32768)}
_GEN2_MIN_MEMORY_MIB = 512


class CloudRunRefused(ValuesError):
    """The action does not apply to the service as it is (no canary to promote, one already running...): nothing
    was changed (exit 2)."""


class _Conflict(CloudError):
    """The service changed between our read and our write (a stale ``resourceVersion``)."""


# -- the desired service -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    """The Service as it should be, and what the plan should say about the choices made for it."""

    service: dict[str, Any]
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        name: str = self.service["metadata"]["name"]
        return name

    @property
    def template(self) -> dict[str, Any]:
        template: dict[str, Any] = self.service["spec"]["template"]
        return template


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_env(name: str, secret_id: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_id, "key": "latest"}}}


def _redis_secret(config: GcpConfig) -> str | None:
    if config.cloud_run.redis_url_secret:
        return config.cloud_run.redis_url_secret
    return by_key("redis-url").secret_id(config.name) if "redis-url" in config.secrets.keys else None


def _secret_specs(config: GcpConfig) -> list[SecretSpec]:
    found = []
    for key in config.secrets.keys:
        try:
            found.append(by_key(key))
        except KeyError as exc:
            raise ValuesError(f"secrets.keys: {exc.args[0]}") from exc
    return found


def _check_config(config: GcpConfig) -> None:
    """The configuration errors a Service schema cannot see, named by their key (ValuesError)."""
    _secret_specs(config)  # an unknown secret key first: nothing else can be judged without it
    run = config.cloud_run
    found = []
    if run.ingress not in _INGRESS:
        found.append(f"cloudRun.ingress: {run.ingress!r} is not one of {', '.join(_INGRESS)}")
    if run.vpc_egress not in _VPC_EGRESS:
        found.append(f"cloudRun.vpcEgress: {run.vpc_egress!r} is not one of {', '.join(_VPC_EGRESS)}")
    if not 1 <= run.canary_percent <= 99:
        found.append(f"cloudRun.canaryPercent: {run.canary_percent} must be 1 to 99")
    for key in ("redis_url_secret", "request_state_key_secret"):
        value = getattr(run, key)
        if value is not None and not _SECRET_ID.fullmatch(value):
            camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), key)
            found.append(f"cloudRun.{camel}: {value!r} is not a Secret Manager secret ID (A-Z, a-z, 0-9, - and _)")
    ours = {e["name"] for e in _server_env(config, [])}
    for name in run.env:
        if not _ENV_NAME.fullmatch(name):
            found.append(f"cloudRun.env: {name!r} is not an environment variable name")
        elif name in _RESERVED_ENV:
            found.append(f"cloudRun.env: Cloud Run sets {name} itself")
        elif name in ours or name in {s.env for s in SERVER_SECRETS}:
            found.append(f"cloudRun.env: {name} is set by the deployer (see the README's Cloud Run section)")
    keys, env = set(config.secrets.keys), run.env
    jwt = "jwt-public-key" in keys or bool(env.get("ERLMCP_JWT_JWKS_URL"))
    no_auth = env.get("ERLMCP_NO_AUTH", "").strip().lower() in _TRUE
    if no_auth and not run.invoker_iam_check:
        found.append(
            "cloudRun.env: ERLMCP_NO_AUTH with cloudRun.invokerIamCheck false would publish a server that "
            "anyone can call; turn invokerIamCheck on (Cloud Run then authenticates callers)"
        )
    elif not no_auth and "api-keys" not in keys and not jwt:
        found.append(
            "secrets.keys: the server would refuse to start without credentials to check: add api-keys "
            "or jwt-public-key (or cloudRun.env ERLMCP_JWT_JWKS_URL)"
        )
    if jwt and not env.get("ERLMCP_JWT_ISSUER"):
        found.append("cloudRun.env: JWTs are accepted, so the server needs ERLMCP_JWT_ISSUER")
    if jwt and not (env.get("ERLMCP_JWT_AUDIENCE") or env.get("ERLMCP_RESOURCE_URL")):
        found.append("cloudRun.env: JWTs are accepted, so the server needs ERLMCP_JWT_AUDIENCE or ERLMCP_RESOURCE_URL")
    if found:
        raise ValuesError("the Cloud Run configuration is invalid: " + "; ".join(found))


def _server_env(config: GcpConfig, extra: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The environment every revision gets: the listener, the session mode, the shutdown budget, the project."""
    redis = _redis_secret(config)
    env = [_env("ERLMCP_HOST", "0.0.0.0"), _env("ERLMCP_PORT", str(PORT))]  # noqa: S104 - Cloud Run routes to it
    env.append(_secret_env("ERLMCP_REDIS_URL", redis) if redis else _env("ERLMCP_STATELESS", "true"))
    if config.cloud_run.request_state_key_secret:
        env.append(_secret_env("ERLMCP_REQUEST_STATE_KEY", config.cloud_run.request_state_key_secret))
    env += [
        _env("ERLMCP_SHUTDOWN_TIMEOUT_SECONDS", str(SHUTDOWN_SECONDS)),
        _env("ERLMCP_LOG_FORMAT", "json"),
        _env("GOOGLE_CLOUD_PROJECT", config.project),  # trace-correlated log lines
    ]
    return [*env, *extra]


def desired_service(config: GcpConfig, *, image: str | None = None) -> Desired:
    """The Service the configuration describes (``image`` instead of the configured one), checked: ValuesError
    names every configuration key or Cloud Run limit it breaks. No call is made."""
    _check_config(config)
    run = config.cloud_run
    notes: list[str] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    skipped = []
    for spec in _secret_specs(config):
        if spec.key in _NOT_ON_CLOUD_RUN:
            skipped.append(spec.key)
        elif spec.as_file:  # the server reads it from a file only: a secret volume
            directory = f"{SECRETS_DIR}/{spec.key}"
            volumes.append(
                {
                    "name": spec.key,
                    "secret": {
                        "secretName": spec.secret_id(config.name),
                        "items": [{"key": "latest", "path": spec.key}],
                    },
                }
            )
            mounts.append({"name": spec.key, "mountPath": directory, "readOnly": True})
            files.append(_env(spec.env, f"{directory}/{spec.key}"))
    if skipped:
        notes.append(
            f"secrets {', '.join(skipped)} are not used on Cloud Run: its front end ends TLS and sends "
            "plain HTTP to the container"
        )
    redis = _redis_secret(config)
    template_annotations = {
        MIN_SCALE: str(run.min_instances),
        MAX_SCALE: str(run.max_instances),
        "run.googleapis.com/startup-cpu-boost": "true",
        "run.googleapis.com/execution-environment": EXECUTION_ENVIRONMENT,
    }
    egress = run.vpc_egress if run.vpc_egress != "auto" else "private-ranges-only" if redis else "none"
    if egress != "none":
        interfaces = [{"network": config.network.name, "subnetwork": config.subnet_name}]
        template_annotations[NETWORK_INTERFACES] = json.dumps(interfaces, separators=(",", ":"))
        template_annotations[VPC_EGRESS] = egress
    if redis:
        route = (
            f"Direct VPC egress ({egress}) on {config.network.name}/{config.subnet_name}"
            if egress != "none"
            else "no VPC egress: Redis must be reachable without it"
        )
        notes.append(
            f"sessions: shared in Redis (ERLMCP_REDIS_URL from secret {redis}), any instance serves any "
            f"session; {route}"
        )
    else:
        notes.append(
            "sessions: none (ERLMCP_STATELESS=true): no Redis is configured, so every request stands alone "
            "on whichever instance gets it; set cloudRun.redisUrlSecret (or secrets.keys redis-url) to keep "
            "sessions"
        )
    if not run.request_state_key_secret and run.max_instances > 1:
        notes.append(
            "no cloudRun.requestStateKeySecret: each instance seals 2026-07-28 requestState with its own "
            "key, so a multi-round request retried on another instance is refused"
        )
    if not run.invoker_iam_check:
        notes.append("invoker IAM check off: the URL is reachable by anyone and the server's API keys or JWTs decide")
    container: dict[str, Any] = {
        "name": "server",
        "image": image or config.server_image(),
        "ports": [{"name": "http1", "containerPort": PORT}],
        "env": _server_env(config, [*files, *({"name": k, "value": v} for k, v in sorted(run.env.items()))]),
        "resources": {"limits": {"cpu": run.cpu, "memory": run.memory}},
        "startupProbe": {
            "httpGet": {"path": READY_PATH},
            "periodSeconds": 2,
            "timeoutSeconds": 1,
            "failureThreshold": 30,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVE_PATH},
            "periodSeconds": 15,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
    }
    if mounts:
        container["volumeMounts"] = mounts
    revision: dict[str, Any] = {
        "containerConcurrency": run.concurrency,
        "timeoutSeconds": run.timeout_seconds,
        "serviceAccountName": config.service_account_email,
        "containers": [container],
    }
    if volumes:
        revision["volumes"] = volumes
    annotations = {"run.googleapis.com/ingress": run.ingress}
    if not run.invoker_iam_check:
        annotations[INVOKER_IAM_DISABLED] = "true"
    service = {
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": {
            "name": run.service,
            "namespace": config.project,
            "labels": {MANAGED_BY: OWNER},
            "annotations": annotations,
        },
        "spec": {
            "template": {"metadata": {"annotations": template_annotations}, "spec": revision},
            "traffic": [{"percent": 100, "latestRevision": True}],
        },
    }
    found = problems(service)
    if found:
        raise ValuesError(f"the Cloud Run service {run.service} would be refused: " + "; ".join(found))
    return Desired(service, tuple(notes))


def canary_revision_name(service: str, template: Mapping[str, Any]) -> str:
    """``<service>-<8 hex>``: a hash of the template (its name aside), so equal templates get equal names."""
    content = {
        "metadata": {k: v for k, v in template.get("metadata", {}).items() if k != "name"},
        "spec": template.get("spec", {}),
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{service}-{digest[:8]}"


# -- checks ------------------------------------------------------------------------------------------------------


def closed_schema(schema: Any) -> Any:
    """The schema with every object that lists its properties closed (``additionalProperties: false``) unless it
    says ``x-kubernetes-preserve-unknown-fields``: the API server would prune an unknown field, Cloud Run refuses
    it, and a misspelt field must fail a check either way."""
    if isinstance(schema, list):
        return [closed_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    found = {
        key: closed_schema(value)
        if key not in ("properties",)
        else {name: closed_schema(sub) for name, sub in value.items()}
        for key, value in schema.items()
    }
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        found["additionalProperties"] = False
    return found


@cache
def service_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of Knative's Service CRD (v1), closed (:func:`closed_schema`)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the 116 kB CRD ten times faster
    crd = yaml.load(SERVICE_CRD.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = closed_schema(version["schema"]["openAPIV3Schema"])
    return schema


def quantity(text: str) -> Decimal | None:
    """A Kubernetes resource quantity (``1``, ``1000m``, ``512Mi``, ``2G``) as a number, or None."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]*)", str(text).strip())
    factors = {
        "": Decimal(1),
        "m": Decimal("0.001"),
        "k": Decimal(10**3),
        "M": Decimal(10**6),
        "G": Decimal(10**9),
        "T": Decimal(10**12),
        "Ki": Decimal(2**10),
        "Mi": Decimal(2**20),
        "Gi": Decimal(2**30),
        "Ti": Decimal(2**40),
    }
    if match is None or match.group(2) not in factors:
        return None
    try:
        return Decimal(match.group(1)) * factors[match.group(2)]
    except InvalidOperation:
        return None


def _limits(service: Mapping[str, Any]) -> list[str]:
    """Cloud Run's own limits on what the deployer sets."""
    found = []
    name = service.get("metadata", {}).get("name", "")
    if not _SERVICE_NAME.fullmatch(name) or len(name) >= 50:
        found.append(
            f"metadata.name {name!r}: a service name is a-z, 0-9 and -, starts with a letter, ends with a "
            "letter or digit and has fewer than 50 characters"
        )
    template = service.get("spec", {}).get("template", {})
    revision_name = template.get("metadata", {}).get("name")
    if revision_name is not None and (not revision_name.startswith(f"{name}-") or len(revision_name) > 63):
        found.append(
            f"spec.template.metadata.name {revision_name!r}: a revision name is the service name, a dash "
            "and a suffix, 63 characters at most"
        )
    spec = template.get("spec", {})
    annotations = template.get("metadata", {}).get("annotations", {})
    concurrency, timeout = spec.get("containerConcurrency", 80), spec.get("timeoutSeconds", 300)
    if not 1 <= concurrency <= 1000:
        found.append(f"containerConcurrency {concurrency}: Cloud Run takes 1 to 1000 (cloudRun.concurrency)")
    if not 1 <= timeout <= 3600:
        found.append(f"timeoutSeconds {timeout}: Cloud Run takes 1 to 3600 (cloudRun.timeoutSeconds)")
    low, high = annotations.get(MIN_SCALE, "0"), annotations.get(MAX_SCALE, "100")
    if not (low.isdigit() and high.isdigit()) or int(high) < 1 or int(low) > int(high):
        found.append(
            f"minScale {low} / maxScale {high}: instances are whole numbers, at least 1 at most, and the "
            "minimum is not above the maximum (cloudRun.minInstances, maxInstances)"
        )
    for container in spec.get("containers", []):
        limits = container.get("resources", {}).get("limits", {})
        cpu, memory = quantity(limits.get("cpu", "1")), quantity(limits.get("memory", "512Mi"))
        if cpu is None or cpu != cpu.to_integral_value() or int(cpu) not in _MEMORY_BY_CPU:
            found.append(
                f"cpu {limits.get('cpu')!r}: Cloud Run takes 1, 2, 4, 6 or 8 here (below 1 CPU it needs "
                "concurrency 1 and the first-generation environment) (cloudRun.cpu)"
            )
        elif memory is None:
            found.append(f"memory {limits.get('memory')!r} is not a quantity such as 512Mi (cloudRun.memory)")
        else:
            least, most = _MEMORY_BY_CPU[int(cpu)]
            if annotations.get("run.googleapis.com/execution-environment") == "gen2":
                least = max(least, _GEN2_MIN_MEMORY_MIB)
            if not least * _MIB <= memory <= most * _MIB:
                found.append(
                    f"memory {limits.get('memory')}: with {int(cpu)} CPU Cloud Run takes {least}Mi to "
                    f"{most}Mi here (cloudRun.memory)"
                )
        names = [e.get("name") for e in container.get("env", [])]
        for duplicate in sorted({n for n in names if names.count(n) > 1}):
            found.append(f"env {duplicate} is set twice")
    return found


@cache
def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(service_schema())


def problems(service: Mapping[str, Any]) -> list[str]:
    """What is wrong with a Service body: the Knative schema's findings (path: message), then Cloud Run's limits."""
    errors = sorted(_validator().iter_errors(service), key=lambda e: list(map(str, e.absolute_path)))
    found = [f"{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}" for e in errors]
    return found or _limits(service)


# -- the API -----------------------------------------------------------------------------------------------------


class CloudRunApi:
    """The namespaces.services methods of the Cloud Run Admin API v1, over REST."""

    def __init__(self, session: requests.Session, base_url: str, project: str, region: str) -> None:
        self._session, self._base, self.project, self.region = session, base_url.rstrip("/"), project, region

    @classmethod
    def connect(cls, project: str, region: str, endpoint: str | None = None, *, insecure: bool = False) -> CloudRunApi:
        """Google's regional endpoint with Application Default Credentials; ``insecure``: plain HTTP to
        ``endpoint`` without credentials (a local server of the API, for tests)."""
        if insecure:
            if not endpoint:
                raise ValuesError("--insecure needs --endpoint HOST:PORT")
            return cls(requests.Session(), rest_root(endpoint, insecure=True), project, region)
        from google.auth.transport.requests import AuthorizedSession

        credentials = default_credentials(SCOPES)
        base = rest_root(endpoint or f"{region}-run.googleapis.com", insecure=False)
        session: requests.Session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
        return cls(session, base, project, region)

    def close(self) -> None:
        self._session.close()

    def _url(self, name: str | None = None) -> str:
        url = f"{self._base}/apis/{API_VERSION}/namespaces/{self.project}/services"
        return f"{url}/{name}" if name else url

    def _call(
        self, method: str, what: str, name: str, url: str, body: Any = None, dry_run: bool = False
    ) -> dict[str, Any] | None:
        from google.auth.exceptions import GoogleAuthError

        where = f"Cloud Run service {name} (project {self.project}, region {self.region})"
        try:
            response = self._session.request(
                method, url, json=body, params={"dryRun": "all"} if dry_run else None, timeout=CALL_TIMEOUT_SECONDS
            )
        except GoogleAuthError as exc:
            raise CloudError(f"cannot {what} {where}: the credentials were refused: {exc}") from exc
        except requests.RequestException as exc:
            raise CloudError(f"cannot {what} {where}: {self._base} cannot be reached: {exc}") from exc
        if response.status_code == 404 and method == "GET":
            return None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code >= 400:
            error = document.get("error", {}) if isinstance(document, dict) else {}
            status = error.get("status") or response.reason
            message = error.get("message") or response.text[:300] or "(no message)"
            text = f"cannot {what} {where}: HTTP {response.status_code} {status}: {message}"
            if response.status_code == 409 and method == "PUT" and status == "ABORTED":
                raise _Conflict(text)
            raise CloudError(text)
        if not isinstance(document, dict):
            raise CloudError(f"cannot {what} {where}: the answer is not a JSON object")
        return document

    def get(self, name: str) -> dict[str, Any] | None:
        """The service, or None when there is none."""
        return self._call("GET", "read", name, self._url(name))

    def create(self, body: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        name = body["metadata"]["name"]
        created = self._call("POST", "create", name, self._url(), body, dry_run)
        assert created is not None
        return created

    def replace(self, body: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        name = body["metadata"]["name"]
        replaced = self._call("PUT", "replace", name, self._url(name), body, dry_run)
        assert replaced is not None
        return replaced


# -- reading a live service --------------------------------------------------------------------------------------


def _condition(service: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for condition in service.get("status", {}).get("conditions", []):
        if condition.get("type") == kind:
            found: dict[str, Any] = condition
            return found
    return {"type": kind, "status": "Unknown"}


def _describe(condition: Mapping[str, Any]) -> str:
    detail = ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
    return f"{condition['type']} {condition.get('status', 'Unknown')}" + (f" ({detail})" if detail else "")


def _canary(service: Mapping[str, Any]) -> dict[str, Any] | None:
    """The traffic entry tagged canary, if one is in the spec."""
    for entry in service.get("spec", {}).get("traffic", []):
        if entry.get("tag") == CANARY_TAG:
            found: dict[str, Any] = entry
            return found
    return None


def _serving(service: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(revision, percent) of every revision that gets traffic now, from the status."""
    return [
        (str(e.get("revisionName")), int(e.get("percent", 0)))
        for e in service.get("status", {}).get("traffic", [])
        if e.get("percent")
    ]


def _image(template: Mapping[str, Any]) -> str:
    containers = template.get("spec", {}).get("containers") or [{}]
    return str(containers[0].get("image", "?"))


# -- comparing and replacing -------------------------------------------------------------------------------------

_OWNED_ANNOTATIONS = (INVOKER_IAM_DISABLED,)  # removed when not desired (the others are only ever set)
_OWNED_REVISION_FIELDS = ("containers", "volumes", "containerConcurrency", "timeoutSeconds", "serviceAccountName")


def _compared(service: Mapping[str, Any]) -> dict[str, Any]:
    """The fields compared: labels, annotations and the spec (the namespace comes back as the project number)."""
    metadata = service["metadata"]
    return {"metadata": {k: metadata[k] for k in ("labels", "annotations") if k in metadata}, "spec": service["spec"]}


def _normalized(actual: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """``actual`` with CPU and memory written as desired where they are the same quantity (Cloud Run gives
    ``1000m`` back for ``1``)."""
    found = copy.deepcopy(dict(actual))
    wanted = desired.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    have = found.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    for want, container in zip(wanted, have, strict=False):
        limits = container.get("resources", {}).get("limits", {})
        for key, value in want.get("resources", {}).get("limits", {}).items():
            if key in limits and quantity(limits[key]) is not None and quantity(limits[key]) == quantity(value):
                limits[key] = value
    return found


def _traffic(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Traffic targets as compared: what routes (revision or latest, percent, tag), unset and false left out."""
    keys = ("revisionName", "latestRevision", "percent", "tag")
    return [{k: e[k] for k in keys if e.get(k) not in (None, False, "")} for e in entries]


def _differences(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(path, actual, desired) where the live service differs from the desired one on the fields it sets; the
    traffic block as a whole (a pinned revision the desired block does not name is a difference too)."""
    want, have = _compared(desired), _normalized(actual, desired)
    want["spec"] = {k: v for k, v in want["spec"].items() if k != "traffic"}
    found = differences(want, have)
    traffic = (_traffic(actual["spec"].get("traffic", [])), _traffic(desired["spec"]["traffic"]))
    if traffic[0] != traffic[1]:
        found.append(("spec.traffic", *traffic))
    annotations = actual["metadata"].get("annotations", {}), desired["metadata"].get("annotations", {})
    found += [
        (f"metadata.annotations.{k}", annotations[0][k], None)
        for k in _OWNED_ANNOTATIONS
        if k in annotations[0] and k not in annotations[1]
    ]
    return found


def _template_changes(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    return [d for d in _differences(desired, actual) if d[0].startswith("spec.template")]


def _merge(base: Any, overlay: Any) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _merge(base.get(key), value)
        return merged
    return copy.deepcopy(overlay)


def _replacement(actual: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The body of the PUT: the live service (its metadata, ``resourceVersion`` included, and every field the
    deployer does not set) with the desired fields laid over it; the revision fields the deployer owns are its
    own. A changed template loses the live revision name unless the desired one names it (Cloud Run refuses a
    new template under an existing revision's name)."""
    body = {key: copy.deepcopy(value) for key, value in actual.items() if key != "status"}
    body["apiVersion"], body["kind"] = API_VERSION, "Service"
    body["metadata"] = _merge(body.get("metadata", {}), {k: desired["metadata"][k] for k in ("labels", "annotations")})
    annotations = body["metadata"]["annotations"]
    for key in _OWNED_ANNOTATIONS:
        if key not in desired["metadata"]["annotations"]:
            annotations.pop(key, None)
    template = _merge(body.get("spec", {}).get("template", {}), desired["spec"]["template"])
    for key in _OWNED_REVISION_FIELDS:
        if key in desired["spec"]["template"]["spec"]:
            template["spec"][key] = copy.deepcopy(desired["spec"]["template"]["spec"][key])
        else:
            template["spec"].pop(key, None)
    if _template_changes(desired, actual) and "name" not in desired["spec"]["template"].get("metadata", {}):
        template.get("metadata", {}).pop("name", None)
    body["spec"] = {**body.get("spec", {}), "template": template, "traffic": copy.deepcopy(desired["spec"]["traffic"])}
    return body


# -- the actions -------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What an action did (or would do): its plan line, remarks for the operator, and the service as it ended."""

    change: Change
    notes: list[str] = field(default_factory=list)
    service: dict[str, Any] | None = None
    wrote: bool = False


def _with_traffic(
    service: Mapping[str, Any], traffic: list[dict[str, Any]], template: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``service`` with another traffic block (and template): a desired Service for one rollout step."""
    found = copy.deepcopy(dict(service))
    found["spec"] = {**found["spec"], "traffic": traffic}
    if template is not None:
        found["spec"]["template"] = copy.deepcopy(dict(template))
    return found


def _ours(actual: Mapping[str, Any], name: str) -> None:
    if actual.get("metadata", {}).get("labels", {}).get(MANAGED_BY) != OWNER:
        raise CloudRunRefused(
            f"the Cloud Run service {name} exists but is not managed by erlmcp (no label "
            f"{MANAGED_BY}={OWNER}): choose another cloudRun.service, or adopt it with `gcloud run "
            f"services update {name} --update-labels {MANAGED_BY}={OWNER}`"
        )


@dataclass(frozen=True)
class _Step:
    """One action as a function of the live service: the desired Service, the plan note, which condition to wait
    for once written, and remarks for the operator."""

    desired: dict[str, Any]
    note: str = ""
    wait_for: str = "Ready"
    notes: tuple[str, ...] = ()
    if_failed: str = "Cloud Run keeps serving the revisions that were ready; fix the cause and apply again"


def _apply_step(desired: Desired, actual: Mapping[str, Any] | None) -> _Step:
    if actual is not None:
        running = _canary(actual)
        if running is not None:
            raise CloudRunRefused(
                f"a canary runs on {desired.name} (revision {running.get('revisionName')} at "
                f"{running.get('percent', 0)}%): promote or rollback first; apply would send it "
                "all the traffic"
            )
    return _Step(desired.service)


def _canary_step(desired: Desired, actual: Mapping[str, Any] | None, percent: int) -> _Step:
    name = desired.name
    if actual is None:
        raise CloudRunRefused(f"there is no Cloud Run service {name} yet: run `cloudrun apply` first")
    template = copy.deepcopy(desired.template)
    revision = canary_revision_name(name, template)
    template["metadata"]["name"] = revision
    running = _canary(actual)
    if running is not None:
        if running.get("revisionName") != revision:
            raise CloudRunRefused(
                f"a canary already runs on {name} (revision {running.get('revisionName')}): "
                "promote or rollback it first"
            )
        stable = [
            str(e["revisionName"])
            for e in actual["spec"].get("traffic", [])
            if e.get("tag") != CANARY_TAG and e.get("revisionName")
        ]
        if len(stable) != 1:
            raise CloudRunRefused(
                f"the traffic of {name} does not name one revision besides the canary {revision}: "
                "set it by hand (gcloud run services update-traffic)"
            )
    else:
        serving = _serving(actual)
        routes = _condition(actual, "RoutesReady")
        if len(serving) != 1 or routes.get("status") != "True":
            shares = ", ".join(f"{r} {p}%" for r, p in serving) or "none"
            raise CloudRunRefused(
                f"a canary starts from one revision serving 100% of {name}; its routes are "
                f"{_describe(routes)}, traffic: {shares}"
            )
        stable = [serving[0][0]]
        if revision == stable[0] or (
            not _template_changes(desired.service, actual)
            and actual.get("status", {}).get("latestCreatedRevisionName") == stable[0]
        ):
            raise CloudRunRefused(
                f"{name} already serves this image and these settings (revision {stable[0]}): nothing to canary"
            )
    traffic = [
        {"revisionName": stable[0], "percent": 100 - percent},
        {"revisionName": revision, "percent": percent, "tag": CANARY_TAG},
    ]
    return _Step(
        _with_traffic(desired.service, traffic, template),
        f"canary {revision} ({_image(template)}) at {percent}%, {stable[0]} at {100 - percent}%",
        if_failed=f"Traffic stays on {stable[0]}; `cloudrun rollback` drops the canary",
    )


def _promote_step(desired: Desired, actual: Mapping[str, Any] | None) -> _Step:
    name = desired.name
    running = _canary(actual) if actual is not None else None
    if actual is None or running is None:
        raise CloudRunRefused(
            f"no canary runs on {name}: nothing to promote (start one with `cloudrun canary --image IMAGE`)"
        )
    revision = str(running.get("revisionName"))
    status = actual.get("status", {})
    ready = _condition(actual, "Ready")
    if ready.get("status") != "True" or status.get("latestReadyRevisionName") != revision:
        raise CloudRunRefused(
            f"the canary {revision} of {name} is not ready ({_describe(ready)}): not promoted; "
            "`cloudrun rollback` sends all traffic back"
        )
    if status.get("latestCreatedRevisionName") != revision:
        raise CloudRunRefused(
            f"the latest revision of {name} is {status.get('latestCreatedRevisionName')}, not "
            f"the canary {revision}: promote would not send traffic to the canary"
        )
    template = actual["spec"]["template"]
    image = _image(template)
    notes = []
    if image != _image(desired.template):
        notes.append(
            f"the configuration names the image {_image(desired.template)}: set `image: {image}` (the "
            "promoted one), or the next apply deploys the configured image again"
        )
    return _Step(
        _with_traffic(desired.service, [{"latestRevision": True, "percent": 100}], template),
        f"promote {revision} ({image}) to 100%",
        notes=tuple(notes),
    )


def _rollback_step(desired: Desired, actual: Mapping[str, Any] | None) -> _Step:
    name = desired.name
    running = _canary(actual) if actual is not None else None
    if actual is None or running is None:
        raise CloudRunRefused(f"no canary runs on {name}: nothing to roll back")
    revision = running.get("revisionName")
    previous = [e for e in actual["spec"].get("traffic", []) if e.get("tag") != CANARY_TAG and e.get("revisionName")]
    if len(previous) != 1:
        raise CloudRunRefused(
            f"the traffic of {name} does not name one revision besides the canary {revision}: "
            "set it by hand (gcloud run services update-traffic)"
        )
    stable = str(previous[0]["revisionName"])
    template = actual["spec"]["template"]
    notes = []
    if _template_changes(desired.service, actual):
        notes.append(
            f"the service's template still describes the canary ({_image(template)}); the next apply "
            "deploys the configuration as a new revision"
        )
    return _Step(
        _with_traffic(desired.service, [{"revisionName": stable, "percent": 100}], template),
        f"roll back to {stable}, dropping the canary {revision}",
        wait_for="RoutesReady",
        notes=tuple(notes),
    )


def _wait(
    api: CloudRunApi, name: str, generation: int, condition: str, log: Log, if_failed: str = ""
) -> dict[str, Any]:
    """Read the service until it has seen ``generation`` and ``condition`` is True (CloudError when it is False,
    with ``if_failed`` as advice, or when the time is up), logging each new state."""
    started = time.monotonic()
    last = ""
    while True:
        service = api.get(name)
        if service is None:
            raise CloudError(f"the Cloud Run service {name} disappeared while it was being deployed")
        observed = int(service.get("status", {}).get("observedGeneration") or 0)
        state = _condition(service, condition)
        current = observed >= generation
        if current and state.get("status") == "True":
            return service
        if current and state.get("status") == "False":
            ready = _condition(service, "Ready")
            detail = _describe(ready) if condition != "Ready" and ready.get("status") == "False" else _describe(state)
            raise CloudError(
                f"the Cloud Run service {name} did not become ready: {detail}" + (f". {if_failed}" if if_failed else "")
            )
        text = _describe(state) + ("" if current else f"; generation {generation} not yet reconciled")
        if text != last:
            log(f"waiting for Cloud Run service {name}: {text}")
            last = text
        elapsed = time.monotonic() - started
        if elapsed > READY_TIMEOUT_SECONDS:
            raise CloudError(f"the Cloud Run service {name} is not ready after {elapsed:.0f} s: {text}")
        time.sleep(POLL_SECONDS)


def _run(
    api: CloudRunApi,
    desired: Desired,
    step_of: Callable[[Mapping[str, Any] | None], _Step],
    *,
    write: bool,
    dry_run: bool,
    log: Log,
) -> Outcome:
    """Read, plan the step, and (``write``) perform it and wait; a concurrent change is read and planned again
    (:func:`~deployer.gcp.conflicts.again_on_conflict`)."""
    name = desired.name

    def attempt() -> Outcome:
        actual = api.get(name)
        if actual is not None:
            _ours(actual, name)
        step = step_of(actual)
        notes = [*desired.notes, *step.notes]
        if actual is None:
            change = Change(CREATE, KIND, name, desired=step.desired, note=step.note)
        else:
            found = _differences(step.desired, actual)
            change = Change(UPDATE if found else NO_CHANGE, KIND, name, found, step.desired, actual, step.note)
        if change.action == NO_CHANGE:
            if write and actual is not None:
                actual = _settled(api, actual, step.wait_for, log, step.if_failed)
            return Outcome(change, notes, actual)
        body = step.desired if actual is None else _replacement(actual, step.desired)
        if dry_run:
            try:
                (api.create if actual is None else api.replace)(body, dry_run=True)
            except _Conflict as exc:  # a dry run is not planned again: its conflict fails the command
                raise CloudError(str(exc)) from exc
            notes.append("Cloud Run checked the change (dryRun=all) and wrote nothing")
            return Outcome(change, notes, actual)
        if not write:
            return Outcome(change, notes, actual)
        written: list[dict[str, Any]] = []

        def make() -> str:
            written.append(api.create(body) if actual is None else api.replace(body))
            verb = "created" if actual is None else "updated"
            fields = ", ".join(p for p, _, _ in change.differences)
            return f"{verb} Cloud Run service {name}" + (f": {fields}" if fields else "")

        converge.apply([converge.Step(change, make)], log=log)
        generation = int(written[0].get("metadata", {}).get("generation") or 1)
        return Outcome(change, notes, _wait(api, name, generation, step.wait_for, log, step.if_failed), wrote=True)

    def retrying(exc: Exception) -> None:
        log(f"{name} changed since it was read ({exc}); reading it again")

    return again_on_conflict(attempt, conflict=_Conflict, attempts=CONFLICT_RETRIES, retrying=retrying)


def _settled(api: CloudRunApi, actual: dict[str, Any], condition: str, log: Log, if_failed: str) -> dict[str, Any]:
    """Nothing to write: still wait if a deployment is in progress, and fail if the service is not ready."""
    generation = int(actual.get("metadata", {}).get("generation") or 0)
    return _wait(api, actual["metadata"]["name"], generation, condition, log, if_failed)


# -- the command -------------------------------------------------------------------------------------------------


def _report(service: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if service is None:
        return None
    status = service.get("status", {})
    return {
        "name": service["metadata"]["name"],
        "url": status.get("url"),
        "ready": _condition(service, "Ready"),
        "latestReadyRevision": status.get("latestReadyRevisionName"),
        "latestCreatedRevision": status.get("latestCreatedRevisionName"),
        "traffic": [
            {k: e[k] for k in ("revisionName", "percent", "tag", "url", "latestRevision") if k in e}
            for e in status.get("traffic", [])
        ],
    }


def _print_report(report: Mapping[str, Any], out: TextIO) -> None:
    print(
        f"  {_describe(report['ready'])}; latest ready revision {report['latestReadyRevision']}; URL {report['url']}",
        file=out,
    )
    for entry in report["traffic"]:
        tag = f"  tag {entry['tag']}: {entry.get('url')}" if entry.get("tag") else ""
        latest = " (latest)" if entry.get("latestRevision") else ""
        print(f"    {entry.get('percent', 0):>3}%  {entry.get('revisionName')}{latest}{tag}", file=out)


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``cloudrun plan|apply|render|canary|promote|rollback``: 0 when done (render: offline, no credentials);
    ValuesError (exit 2) for bad input or an action that does not apply, CloudError (exit 1) when Cloud Run refuses
    or the service does not become ready."""
    if args.action == "canary" and not args.image:
        raise ValuesError("cloudrun canary needs --image IMAGE: the image of the new revision")
    config = config_from(args)
    desired = desired_service(config)
    out = out or sys.stdout
    if args.action == "render":  # offline: the Knative Service `gcloud run services replace` takes
        emit_desired(desired.service, out=out, as_json=args.json)
        return 0
    mode = run_mode(args.action, args.dry_run)
    write = mode == "apply"
    steps: dict[str, Callable[[Mapping[str, Any] | None], _Step]] = {
        "plan": lambda _: _Step(desired.service),
        "apply": lambda actual: _apply_step(desired, actual),
        "canary": lambda actual: _canary_step(desired, actual, config.cloud_run.canary_percent),
        "promote": lambda actual: _promote_step(desired, actual),
        "rollback": lambda actual: _rollback_step(desired, actual),
    }
    api = CloudRunApi.connect(config.project, config.region, args.endpoint, insecure=args.insecure)
    try:
        outcome = _run(api, desired, steps[args.action], write=write, dry_run=mode == "dry-run", log=log)
    finally:
        api.close()
    if args.action == "plan" and outcome.service is not None and _canary(outcome.service) is not None:
        outcome.notes.append("a canary runs: apply refuses until `cloudrun promote` or `cloudrun rollback`")
    what = "" if args.action in ("plan", "apply") else f"{args.action} "
    title = f"Cloud Run {what}({config.project}, {config.region})"
    report = _report(outcome.service)
    if args.json:
        heading = {"title": title, "action": args.action}
        trailer = {"notes": outcome.notes, "service": report, "desired": desired.service}
        render(title, [outcome.change], mode=mode, out=out, as_json=True, heading=heading, trailer=trailer)
        return 0
    render(title, [outcome.change], mode=mode, out=out)
    for note in outcome.notes:
        print(f"  note: {note}", file=out)
    if report is not None and report.get("url") is not None:
        _print_report(report, out)
    return 0
