"""A local server of the Cloud Run Admin API v1 REST protocol: ``namespaces.services`` (get, list, create,
replaceService, delete) at ``/apis/serving.knative.dev/v1/namespaces/{namespace}/services[/{name}]``.

It is a server of the API's protocol, not a stand-in for the deployer's code: it keeps services and their
revisions the way Cloud Run (Knative Serving underneath) does, and answers what Cloud Run answers:

* every body is validated against the Knative Service CRD's ``openAPIV3Schema`` vendored in
  ``deployer/gcp/schemas/`` (objects that list their properties closed: Cloud Run refuses unknown fields), then
  against Cloud Run's own rules (service name under 50 characters, the annotations each resource type accepts
  and their values, one serving port named ``http1`` or ``h2c``, reserved environment names, concurrency up to
  1000, timeout up to 3600 s, whole CPUs with the memory each allows, gen2 at 512 MiB or more, secret volumes and
  mounts that match, traffic that sums to 100 and names known revisions); a refusal is ``400
  INVALID_ARGUMENT``;
* errors in Google's JSON format ``{"error": {"code", "message", "status"}}``: 404 ``NOT_FOUND``, 409
  ``ALREADY_EXISTS`` (a second create, or a template under an existing revision's name with other content), 409
  ``ABORTED`` (a stale ``metadata.resourceVersion``), 412 ``FAILED_PRECONDITION`` (an ``If-Match`` etag that is
  not the current one);
* server-set fields: the namespace given back as the project number, ``uid``, ``generation`` (bumped when the
  spec changes), ``resourceVersion`` (on every write), ``creationTimestamp``, the location label, the creator
  and ingress-status annotations, and defaults (concurrency 80, timeout 300, CPU written in millicores as
  ``1000m``, memory 512Mi, port ``http1`` 8080, traffic 100 % to the latest revision), and fields at zero or
  false left out, as the API's proto3 JSON does;
* a revision per template change, named ``<service>-NNNNN-xyz`` or as ``spec.template.metadata.name`` says;
* ``status``: ``observedGeneration``, ``Ready``/``ConfigurationsReady``/``RoutesReady`` conditions, the latest
  created and ready revisions, ``url`` and ``address.url``, and ``traffic`` resolved to revision names (tagged
  entries with their own ``https://TAG---...`` URL). A change is ``Ready: Unknown`` for ``ready_after`` reads,
  then reconciled: a revision whose image is in ``failing_images`` fails (``RevisionFailed``) and traffic stays
  where it was, as Knative keeps a route on ready revisions only;
* ``?dryRun=all`` validates and answers the object a write would make, without keeping it.

Tests add faults (:meth:`CloudRunRest.fail`), make out-of-band changes the way ``gcloud`` would
(:meth:`CloudRunRest.edit`), and read every request received (:attr:`CloudRunRest.requests`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

__all__ = ["CloudRunRest", "Recorded"]

CRD = Path(__file__).resolve().parent.parent / "deployer" / "gcp" / "schemas" / "knative-serving-v1.23.0-service.yaml"
PREFIX = "/apis/serving.knative.dev/v1/namespaces/"

# The Cloud Run annotations each resource accepts (the API reference's ObjectMeta.annotations list; output-only
# ones are accepted back, as gcloud's read-modify-write sends them).
SERVICE_ANNOTATIONS = frozenset({
    "binary-authorization", "binary-authorization-breakglass", "client-name", "custom-audiences",
    "default-url-disabled", "description", "gc-traffic-tags", "ingress", "ingress-status", "launch-stage",
    "minScale", "invoker-iam-disabled", "operation-id", "urls", "base-images", "scalingMode",
    "manualInstanceCount", "maxScale", "build-base-image", "build-enable-automatic-updates",
    "build-environment-variables", "build-function-target", "build-id", "build-image-uri", "build-name",
    "build-service-account", "build-source-location", "build-worker-pool", "satisfiesPzs",
})  # fmt: skip
REVISION_ANNOTATIONS = frozenset({
    "cloudsql-instances", "container-dependencies", "cpu-throttling", "encryption-key",
    "encryption-key-shutdown-hours", "execution-environment", "gc-traffic-tags", "health-check-disabled",
    "network-interfaces", "post-key-revocation-action", "secrets", "sessionAffinity", "startup-cpu-boost",
    "vpc-access-connector", "vpc-access-egress", "client-name", "base-images", "gpu-zonal-redundancy-disabled",
    "build-function-target",
})  # fmt: skip
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"})
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
CPU_MEMORY_MIB = {1: (128, 4096), 2: (128, 8192), 4: (2048, 16384), 6: (4096, 24576), 8: (4096, 32768)}
STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS",
                412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


class ApiError(Exception):
    """An answer in Google's error format."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or STATUS_NAMES.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


@dataclass(frozen=True)
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == ["all"]

    @property
    def writes(self) -> bool:
        return self.method != "GET" and not self.dry_run


@dataclass
class _Fault:
    error: ApiError
    method: str | None
    times: int | None  # None: every time


@dataclass
class _Revision:
    name: str
    key: str  # the template's content, its name aside
    image: str
    number: int
    ready: bool | None = None  # None: still deploying
    message: str = ""


@dataclass
class _Service:
    namespace: str
    obj: dict[str, Any]  # metadata and spec as stored
    status: dict[str, Any] = field(default_factory=dict)
    pending: int = 0  # reads left before the last change is reconciled
    revisions: list[_Revision] = field(default_factory=list)


def _closed(schema: Any) -> Any:
    """Every object schema that lists properties and does not preserve unknown fields refuses other fields."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    found = {k: ({n: _closed(s) for n, s in v.items()} if k == "properties" else _closed(v)) for k, v in schema.items()}
    preserved = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not preserved:
        found["additionalProperties"] = False
    return found


@cache
def _validator() -> jsonschema.Draft7Validator:
    crd = yaml.load(CRD.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(_closed(schema))


def _quantity(text: Any) -> Decimal | None:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)(m|Ki|Mi|Gi|k|M|G)?", str(text))
    if match is None:
        return None
    factors: dict[str | None, Decimal] = {None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(1000),
                                          "M": Decimal(10**6), "G": Decimal(10**9), "Ki": Decimal(1024),
                                          "Mi": Decimal(2**20), "Gi": Decimal(2**30)}  # fmt: skip
    return Decimal(match.group(1)) * factors[match.group(2)]


def _without_zeros(value: Any) -> Any:
    """As the API's proto3 JSON gives objects back: fields at zero, false or empty are left out."""
    if isinstance(value, dict):
        return {k: _without_zeros(v) for k, v in value.items() if v not in (0, "", None)}  # False == 0 too
    if isinstance(value, list):
        return [_without_zeros(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class CloudRunRest:
    """The server; ``with CloudRunRest() as api:`` starts it on a free loopback port (``api.endpoint``)."""

    def __init__(self, *, region: str = "us-central1", project_number: str = "123456789012", ready_after: int = 1,
                 failing_images: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.region, self.project_number = region, project_number
        self.ready_after = ready_after
        self.failing_images = set(failing_images)
        self.requests: list[Recorded] = []
        self.before_write: Callable[[str, str], None] | None = None  # (method, name), before a write is checked
        self._services: dict[tuple[str, str], _Service] = {}
        self._faults: list[_Fault] = []
        self._versions = itertools.count(1)
        self._lock = threading.RLock()
        self._validator = _validator()
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> CloudRunRest:
        handler = type("Handler", (_Handler,), {"api": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.02,), name="cloudrun-rest", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> CloudRunRest:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._http is not None
        return f"127.0.0.1:{self._http.server_address[1]}"

    # -- what tests use ---------------------------------------------------------------------------------------

    def fail(self, code: int, message: str, *, status: str | None = None, method: str | None = None,
             times: int | None = 1) -> None:  # fmt: skip
        """Answer the next ``times`` requests (of ``method``; None: every one, for ever) with this error."""
        with self._lock:
            self._faults.append(_Fault(ApiError(code, message, status), method, times))

    @property
    def writes(self) -> list[Recorded]:
        """The requests that changed (or would have changed, but for a fault) something: no GET, no dry run."""
        with self._lock:
            return [r for r in self.requests if r.writes]

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The service as a GET would give it, without counting as a read."""
        with self._lock:
            found = self._services.get((namespace, name))
            return None if found is None else self._view(found)

    def revisions(self, namespace: str, name: str) -> list[str]:
        with self._lock:
            found = self._services.get((namespace, name))
            return [] if found is None else [r.name for r in found.revisions]

    def settle(self, namespace: str, name: str) -> dict[str, Any]:
        """Reconcile the service now (as enough reads would) and give it back."""
        with self._lock:
            found = self._services[(namespace, name)]
            found.pending = 0
            self._reconcile(found)
            return self._view(found)

    def edit(self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """An out-of-band replace, as ``gcloud run services update`` makes: read, ``change`` it, write it."""
        with self._lock:
            body = self.settle(namespace, name)
            body.pop("status", None)
            change(body)
            return self._write(namespace, name, body, create=False, dry_run=False, if_match=None)

    # -- the protocol -----------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        with self._lock:
            self.requests.append(Recorded(method, parts.path, query, copy.deepcopy(body)))
            try:
                self._fault(method)
                return 200, self._route(method, parts.path, query, body, headers)
            except ApiError as error:
                return error.code, error.body()

    def _fault(self, method: str) -> None:
        for fault in self._faults:
            if fault.method in (None, method) and fault.times != 0:
                if fault.times is not None:
                    fault.times -= 1
                raise fault.error

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any,
               headers: dict[str, str]) -> Any:  # fmt: skip
        if not path.startswith(PREFIX):
            raise ApiError(404, f"The requested URL {path} was not found on this server.")
        parts = path[len(PREFIX) :].split("/")
        if len(parts) not in (2, 3) or parts[1] != "services" or not parts[0]:
            raise ApiError(404, f"The requested URL {path} was not found on this server.")
        namespace, name = parts[0], parts[2] if len(parts) == 3 else None
        dry_run = query.get("dryRun", [""])[0]
        if dry_run not in ("", "all"):
            raise ApiError(400, f"Invalid value for dryRun: {dry_run!r}; supported values: all")
        if name is None and method == "GET":
            items = [self._read(s) for (ns, _), s in sorted(self._services.items()) if ns == namespace]
            return {"apiVersion": "serving.knative.dev/v1", "kind": "ServiceList", "metadata": {}, "items": items}
        if name is None and method == "POST":
            name = body.get("metadata", {}).get("name") if isinstance(body, dict) else None
            if not name:
                raise ApiError(400, "metadata.name: a service needs a name")
            return self._write(namespace, str(name), body, create=True, dry_run=bool(dry_run), if_match=None)
        if name is not None and method == "GET":
            return self._read(self._existing(namespace, name))
        if name is not None and method == "PUT":
            return self._write(namespace, name, body, create=False, dry_run=bool(dry_run),
                               if_match=headers.get("if-match"))  # fmt: skip
        if name is not None and method == "DELETE":
            found = self._existing(namespace, name)
            if not dry_run:
                del self._services[(namespace, name)]
            return {"apiVersion": "v1", "kind": "Status", "status": "Success",
                    "details": {"name": name, "group": "serving.knative.dev", "kind": "services",
                                "uid": found.obj["metadata"]["uid"]}}  # fmt: skip
        raise ApiError(405, f"Method {method} is not allowed on {path}", status="UNIMPLEMENTED")

    def _existing(self, namespace: str, name: str) -> _Service:
        found = self._services.get((namespace, name))
        if found is None:
            raise ApiError(404, f"Resource '{name}' of kind 'SERVICE' in region '{self.region}' in project "
                                f"'{namespace}' does not exist.")  # fmt: skip
        return found

    def _read(self, service: _Service) -> dict[str, Any]:
        if service.pending > 0:
            service.pending -= 1
        if service.pending == 0:
            self._reconcile(service)
        return self._view(service)

    def _view(self, service: _Service) -> dict[str, Any]:
        return {**copy.deepcopy(service.obj), "status": copy.deepcopy(service.status)}

    # -- writes -----------------------------------------------------------------------------------------------

    def _write(self, namespace: str, name: str, body: Any, *, create: bool, dry_run: bool,
               if_match: str | None) -> dict[str, Any]:  # fmt: skip
        if self.before_write is not None and not dry_run:
            self.before_write("POST" if create else "PUT", name)
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received: the body must be a Service object")
        current = self._services.get((namespace, name))
        if create and current is not None:
            raise ApiError(409, f"Resource '{name}' already exists.")
        if not create and current is None:
            self._existing(namespace, name)
        self._check(namespace, name, body, create=create)
        if current is not None:
            stored_version = current.obj["metadata"]["resourceVersion"]
            if if_match is not None and if_match.strip('"') != stored_version:
                raise ApiError(412, f"Precondition failed for resource '{name}': etag {if_match} is not current.")
            given = body.get("metadata", {}).get("resourceVersion")
            if given and given != stored_version:
                raise ApiError(409, f"Conflict for resource '{name}': version '{given}' was specified but current "
                                    f"version is '{stored_version}'.", status="ABORTED")  # fmt: skip
        service = copy.deepcopy(current) if current is not None else _Service(namespace, {})
        spec = self._defaulted(_without_zeros(copy.deepcopy(body["spec"])))
        old_spec = current.obj["spec"] if current is not None else None
        revision = self._revision(service, name, spec["template"], old_spec)
        self._check_traffic(service, spec, revision)
        metadata = self._metadata(service, name, body["metadata"], spec_changed=spec != old_spec)
        service.obj = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": metadata, "spec": spec}
        if revision is not None:
            service.revisions.append(revision)
        if spec != old_spec:
            service.pending = self.ready_after
            deploying = [{"type": kind, "status": "Unknown", "reason": "Deploying", "lastTransitionTime": _now()}
                         for kind in ("Ready", "ConfigurationsReady", "RoutesReady")]  # fmt: skip
            service.status = {**service.status, "observedGeneration": service.status.get("observedGeneration", 0),
                              "conditions": deploying}  # fmt: skip
            if revision is not None:
                service.status["latestCreatedRevisionName"] = revision.name
        if self.ready_after == 0:
            self._reconcile(service)
        if not dry_run:
            self._services[(namespace, name)] = service
        return self._view(service)

    def _metadata(self, service: _Service, name: str, given: dict[str, Any], *, spec_changed: bool) -> dict[str, Any]:
        old = service.obj.get("metadata", {})
        labels = {**given.get("labels", {}), "cloud.googleapis.com/location": self.region}
        output_only = ("run.googleapis.com/ingress-status", "run.googleapis.com/operation-id")
        annotations = {k: v for k, v in given.get("annotations", {}).items() if k not in output_only}
        annotations.setdefault("serving.knative.dev/creator", old.get("annotations", {}).get(
            "serving.knative.dev/creator", "deployer@example.iam.gserviceaccount.com"))  # fmt: skip
        annotations["serving.knative.dev/lastModifier"] = "deployer@example.iam.gserviceaccount.com"
        annotations["run.googleapis.com/ingress-status"] = annotations.get("run.googleapis.com/ingress", "all")
        annotations["run.googleapis.com/operation-id"] = hashlib.sha256(_now().encode()).hexdigest()[:36]
        generation = int(old.get("generation", 0)) + (1 if spec_changed or not old else 0)
        return {"name": name, "namespace": self.project_number,
                "selfLink": f"/apis/serving.knative.dev/v1/namespaces/{self.project_number}/services/{name}",
                "uid": old.get("uid") or hashlib.sha256(f"{service.namespace}/{name}".encode()).hexdigest()[:32],
                "resourceVersion": f"AA{next(self._versions):08x}", "generation": generation,
                "creationTimestamp": old.get("creationTimestamp") or _now(), "labels": labels,
                "annotations": annotations}  # fmt: skip

    def _defaulted(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The spec with Cloud Run's defaults filled in, CPU in millicores (as Cloud Run gives it back)."""
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {})
        revision = template.setdefault("spec", {})
        revision.setdefault("containerConcurrency", 80)
        revision.setdefault("timeoutSeconds", 300)
        for container in revision.get("containers", []):
            limits = container.setdefault("resources", {}).setdefault("limits", {})
            limits.setdefault("cpu", "1000m")
            limits.setdefault("memory", "512Mi")
            cpu = _quantity(limits["cpu"])
            if cpu is not None:
                limits["cpu"] = f"{int(cpu * 1000)}m"
            if "ports" not in container:
                container["ports"] = [{"name": "http1", "containerPort": 8080}]
        if not spec.get("traffic"):
            spec["traffic"] = [{"latestRevision": True, "percent": 100}]
        return spec

    def _revision(self, service: _Service, name: str, template: dict[str, Any],
                  old_spec: dict[str, Any] | None) -> _Revision | None:  # fmt: skip
        """The revision a write creates (None: the template did not change, or names an identical revision)."""
        if old_spec is not None and template == old_spec["template"]:
            return None
        content = {"metadata": {k: v for k, v in template.get("metadata", {}).items() if k != "name"},
                   "spec": template.get("spec", {})}  # fmt: skip
        key = _canonical(content)
        image = str(template["spec"]["containers"][0].get("image", ""))
        wanted = template.get("metadata", {}).get("name")
        number = len(service.revisions) + 1
        if wanted:
            for existing in service.revisions:
                if existing.name == wanted:
                    if existing.key != key:
                        raise ApiError(409, f"Revision named '{wanted}' with different configuration already "
                                            "exists.")  # fmt: skip
                    return None
            return _Revision(wanted, key, image, number)
        suffix = "".join(chr(ord("a") + int(c, 16) % 26) for c in hashlib.sha256(key.encode()).hexdigest()[:3])
        return _Revision(f"{name}-{number:05d}-{suffix}", key, image, number)

    def _check_traffic(self, service: _Service, spec: dict[str, Any], new: _Revision | None) -> None:
        known = {r.name for r in service.revisions} | ({new.name} if new is not None else set())
        total, tags = 0, set()
        for entry in spec["traffic"]:
            named, latest = entry.get("revisionName"), entry.get("latestRevision")
            if bool(named) == bool(latest):
                raise ApiError(400, "spec.traffic: each target names a revisionName or sets latestRevision: true")
            if named and named not in known:
                raise ApiError(400, f"spec.traffic: Revision '{named}' does not exist.")
            tag = entry.get("tag")
            if tag is not None and (not DNS_LABEL.fullmatch(tag) or tag in tags):
                raise ApiError(400, f"spec.traffic: tag {tag!r} is not a DNS label or is given twice")
            tags.add(tag)
            percent = entry.get("percent", 0)
            if not 0 <= percent <= 100:
                raise ApiError(400, f"spec.traffic: percent {percent} is not 0 to 100")
            total += percent
        if total != 100:
            raise ApiError(400, f"spec.traffic: the percents sum to {total}, not 100")

    # -- reconciling ------------------------------------------------------------------------------------------

    def _url(self, namespace: str, name: str, tag: str | None = None) -> str:
        code = "".join(part[0] for part in self.region.split("-")[:2])
        host = f"{name}-{hashlib.sha256(namespace.encode()).hexdigest()[:10]}-{code}.a.run.app"
        return f"https://{tag}---{host}" if tag else f"https://{host}"

    def _reconcile(self, service: _Service) -> None:
        """What the controllers do once the revision has started (or failed to)."""
        name = service.obj["metadata"]["name"]
        for revision in service.revisions:
            if revision.ready is None:
                failed = revision.image in self.failing_images
                revision.ready = not failed
                if failed:
                    revision.message = (f"Revision '{revision.name}' is not ready and cannot serve traffic. The "
                                        "user-provided container failed to start and listen on the port defined "
                                        "provided by the PORT=8080 environment variable within the allocated "
                                        "timeout.")  # fmt: skip
        by_name = {r.name: r for r in service.revisions}
        template = service.obj["spec"]["template"]
        key = _canonical({"metadata": {k: v for k, v in template.get("metadata", {}).items() if k != "name"},
                          "spec": template.get("spec", {})})  # fmt: skip
        wanted = template.get("metadata", {}).get("name")
        latest = next((r for r in reversed(service.revisions) if (r.name == wanted if wanted else r.key == key)),
                      service.revisions[-1] if service.revisions else None)  # fmt: skip
        ready_ones = [r for r in service.revisions if r.ready]
        latest_ready = ready_ones[-1] if ready_ones else None
        now = _now()
        configurations = {"type": "ConfigurationsReady", "status": "True", "lastTransitionTime": now}
        if latest is not None and not latest.ready:
            configurations = {**configurations, "status": "False", "reason": "RevisionFailed",
                              "message": latest.message}  # fmt: skip
        routes = {"type": "RoutesReady", "status": "True", "lastTransitionTime": now}
        resolved = []
        for entry in service.obj["spec"]["traffic"]:
            target = latest_ready if entry.get("latestRevision") else by_name.get(entry.get("revisionName", ""))
            if target is None or not target.ready:
                missing = entry.get("revisionName") or "the latest ready revision"
                message = target.message if target is not None else f"Revision '{missing}' is not ready."
                routes = {**routes, "status": "False", "reason": "RevisionFailed", "message": message}
                break
            item: dict[str, Any] = {"revisionName": target.name, "percent": entry.get("percent", 0)}
            if entry.get("latestRevision"):
                item["latestRevision"] = True
            if entry.get("tag"):
                item["tag"] = entry["tag"]
                item["url"] = self._url(service.namespace, name, entry["tag"])
            resolved.append(item)
        failing = next((c for c in (configurations, routes) if c["status"] == "False"), None)
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": now}
        if failing is not None:
            ready = {**ready, "status": "False", "reason": failing["reason"], "message": failing["message"]}
        url = self._url(service.namespace, name)
        status = {**service.status, "observedGeneration": service.obj["metadata"]["generation"],
                  "conditions": [ready, configurations, routes], "url": url, "address": {"url": url}}  # fmt: skip
        if latest is not None:
            status["latestCreatedRevisionName"] = latest.name
        if latest_ready is not None:
            status["latestReadyRevisionName"] = latest_ready.name
        if routes["status"] == "True":
            status["traffic"] = resolved
        service.status = status

    # -- Cloud Run's rules ------------------------------------------------------------------------------------

    def _check(self, namespace: str, name: str, body: dict[str, Any], *, create: bool) -> None:
        problems = [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
                    for e in self._validator.iter_errors(body)]  # fmt: skip
        if problems:
            raise ApiError(400, "Invalid Service: " + "; ".join(sorted(problems)[:5]))
        problems = list(self._rules(namespace, name, body, create=create))
        if problems:
            raise ApiError(400, "; ".join(problems))

    def _rules(self, namespace: str, name: str, body: dict[str, Any], *, create: bool) -> Iterator[str]:
        if body.get("apiVersion") != "serving.knative.dev/v1" or body.get("kind") != "Service":
            yield "apiVersion must be serving.knative.dev/v1 and kind Service"
        metadata = body.get("metadata", {})
        if metadata.get("name") != name:
            yield f"metadata.name {metadata.get('name')!r} is not the name in the URL ({name!r})"
        if create and (not DNS_LABEL.fullmatch(name) or len(name) >= 50):
            yield (
                f"metadata.name {name!r}: a service name uses only lowercase alphanumeric characters and "
                "dashes, cannot begin or end with a dash, and must contain fewer than 50 characters"
            )
        if metadata.get("namespace") not in (None, namespace, self.project_number):
            yield f"metadata.namespace {metadata.get('namespace')!r} is not the namespace in the URL"
        yield from self._annotations(metadata.get("annotations", {}), SERVICE_ANNOTATIONS, "metadata.annotations")
        spec = body.get("spec")
        if not isinstance(spec, dict) or "template" not in spec:
            yield "spec.template is required"
            return
        template = spec["template"]
        revision_name = template.get("metadata", {}).get("name")
        if revision_name is not None and (not revision_name.startswith(f"{name}-") or len(revision_name) > 63
                                          or not DNS_LABEL.fullmatch(revision_name)):  # fmt: skip
            yield (
                f"spec.template.metadata.name {revision_name!r}: a revision name is the service name followed "
                "by a dash and a suffix, at most 63 characters"
            )
        annotations = template.get("metadata", {}).get("annotations", {})
        yield from self._annotations(annotations, REVISION_ANNOTATIONS, "spec.template.metadata.annotations")
        yield from self._revision_spec(template["spec"], annotations)

    def _annotations(self, annotations: dict[str, str], accepted: frozenset[str], where: str) -> Iterator[str]:
        for key, value in annotations.items():
            group, _, short = key.partition("/")
            if group == "run.googleapis.com" and short not in accepted:
                yield f"{where}: the annotation {key} is not accepted on this resource"
            if group == "autoscaling.knative.dev" and (accepted is SERVICE_ANNOTATIONS
                                                       or short not in ("minScale", "maxScale")):  # fmt: skip
                yield f"{where}: the annotation {key} is not accepted on this resource"
            if key == "run.googleapis.com/ingress" and value not in (
                "all",
                "internal",
                "internal-and-cloud-load-balancing",
            ):
                yield f"{where}: {key} {value!r} is not all, internal or internal-and-cloud-load-balancing"
            if key in ("run.googleapis.com/startup-cpu-boost", "run.googleapis.com/invoker-iam-disabled") and (
                value not in ("true", "false")
            ):
                yield f"{where}: {key} must be 'true' or 'false'"
            if key == "run.googleapis.com/execution-environment" and value not in ("gen1", "gen2"):
                yield f"{where}: {key} must be gen1 or gen2"
            if key == "run.googleapis.com/vpc-access-egress" and value not in ("all-traffic", "private-ranges-only"):
                yield f"{where}: {key} must be all-traffic or private-ranges-only"
            if key == "run.googleapis.com/network-interfaces":
                try:
                    interfaces = json.loads(value)
                except ValueError:
                    interfaces = None
                if not isinstance(interfaces, list) or not all(
                    isinstance(i, dict) and set(i) <= {"network", "subnetwork", "tags"} and i for i in interfaces
                ):
                    yield f"{where}: {key} must be a JSON list of {{network, subnetwork, tags}}"
        low = annotations.get("autoscaling.knative.dev/minScale")
        high = annotations.get("autoscaling.knative.dev/maxScale")
        for count in (low, high):
            if count is not None and not count.isdigit():
                yield f"{where}: instance counts are whole numbers, not {count!r}"
        if low is not None and high is not None and low.isdigit() and high.isdigit() and int(low) > int(high):
            yield f"{where}: minScale {low} is above maxScale {high}"

    def _revision_spec(self, spec: dict[str, Any], annotations: dict[str, str]) -> Iterator[str]:
        concurrency, timeout = spec.get("containerConcurrency", 80), spec.get("timeoutSeconds", 300)
        if not 0 <= concurrency <= 1000:
            yield f"spec.template.spec.containerConcurrency: {concurrency} is not 0 to 1000"
        if not 1 <= timeout <= 3600:
            yield f"spec.template.spec.timeoutSeconds: {timeout} is not 1 to 3600"
        containers = spec.get("containers", [])
        serving = [c for c in containers if c.get("ports")]
        if not containers or (len(containers) > 1 and len(serving) != 1):
            yield "spec.template.spec.containers: exactly one container serves (has a port)"
        volumes = {v.get("name"): v for v in spec.get("volumes", [])}
        if len(volumes) != len(spec.get("volumes", [])):
            yield "spec.template.spec.volumes: volume names must be unique"
        for volume in volumes.values():
            secret = volume.get("secret")
            if secret is not None and (not secret.get("secretName") or any(
                not i.get("key") or not i.get("path") or i["path"].startswith("/") for i in secret.get("items", [])
            )):  # fmt: skip
                yield f"volume {volume.get('name')}: a secret volume names its secret, and items a key and a path"
        for container in containers:
            ports = container.get("ports", [])
            if len(ports) > 1 or any(p.get("name", "http1") not in ("http1", "h2c") for p in ports):
                yield "a container has at most one port, named http1 or h2c"
            names = [e.get("name") for e in container.get("env", [])]
            for env in container.get("env", []):
                if env.get("name") in RESERVED_ENV:
                    yield f"env: {env['name']} is reserved (Cloud Run sets it)"
                if ("value" in env) == ("valueFrom" in env) and env.get("value") is not None:
                    yield f"env {env.get('name')}: give value or valueFrom, not both"
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if "valueFrom" in env and (ref is None or not ref.get("name") or not ref.get("key")):
                    yield f"env {env.get('name')}: valueFrom.secretKeyRef needs name (the secret) and key (a version)"
            for duplicate in sorted({n for n in names if names.count(n) > 1}):
                yield f"env: {duplicate} is given twice"
            paths = [m.get("mountPath", "") for m in container.get("volumeMounts", [])]
            for mount in container.get("volumeMounts", []):
                if mount.get("name") not in volumes:
                    yield f"volumeMounts: {mount.get('name')} names no volume"
                if not str(mount.get("mountPath", "")).startswith("/"):
                    yield f"volumeMounts: {mount.get('mountPath')!r} is not an absolute path"
            if len(set(paths)) != len(paths):
                yield "volumeMounts: two mounts share a path"
            liveness = container.get("livenessProbe")
            if liveness is not None and "tcpSocket" in liveness:
                yield "livenessProbe: Cloud Run probes liveness with httpGet or grpc only"
            for probe in (container.get("startupProbe"), liveness):
                if probe is not None and probe.get("timeoutSeconds", 1) > probe.get("periodSeconds", 10):
                    yield "a probe's timeoutSeconds must not exceed its periodSeconds"
            limits = container.get("resources", {}).get("limits", {})
            cpu, memory = _quantity(limits.get("cpu", "1")), _quantity(limits.get("memory", "512Mi"))
            if cpu is None or memory is None:
                yield "resources.limits: cpu and memory must be quantities"
                continue
            gen2 = annotations.get("run.googleapis.com/execution-environment") == "gen2"
            if cpu < 1:
                if concurrency != 1 or gen2:
                    yield "resources.limits.cpu below 1 needs containerConcurrency 1 and the gen1 environment"
            elif cpu != int(cpu) or int(cpu) not in CPU_MEMORY_MIB:
                yield f"resources.limits.cpu {limits.get('cpu')}: above 1 CPU only 2, 4, 6 or 8"
            else:
                least, most = CPU_MEMORY_MIB[int(cpu)]
                if not least * 2**20 <= memory <= most * 2**20:
                    yield f"resources.limits.memory {limits.get('memory')}: {int(cpu)} CPU takes {least}Mi to {most}Mi"
            if gen2 and memory < 512 * 2**20:
                yield "the second generation execution environment needs at least 512Mi of memory"


class _Handler(BaseHTTPRequestHandler):
    api: CloudRunRest
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                code, document = 400, ApiError(400, "Content-Type must be application/json").body()
                self._send(code, document)
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, ApiError(400, "Invalid JSON payload received.").body())
                return
        headers = {k.lower(): v for k, v in self.headers.items()}
        code, document = self.api.handle(self.command, self.path, body, headers)
        self._send(code, document)

    def _send(self, code: int, document: Any) -> None:
        data = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer
