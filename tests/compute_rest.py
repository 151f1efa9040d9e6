"""A local server speaking the Compute Engine REST protocol (``/compute/v1/projects/...``), for the real
``google-cloud-compute`` clients to call with ``--insecure --endpoint 127.0.0.1:PORT``.

No emulator exists for Compute Engine. This one is generic over the collections the deployer uses: insert
(POST to the collection), get, patch (JSON merge patch: nested objects merge, lists are replaced), update (PUT)
and delete; writes answer an Operation that is RUNNING until it is read again or waited for
(``operations/NAME/wait``). It refuses what Compute Engine refuses, in Google's error format
(``{"error": {"code", "message", "errors": [{"reason", ...}]}}``):

* every body must parse as the collection's ``compute_v1`` message with ``ignore_unknown_fields=False``;
* names must be RFC 1035; an insert of an existing name is 409, a read of a missing one 404;
* every link to a resource of this project (``https://www.googleapis.com/compute/v1/projects/P/...``) must name
  one that exists (a managed instance group's ``instanceGroups/NAME`` included), as the API checks references;
* a patch of a fingerprinted kind (subnetworks, backend services, instance group managers) must carry the
  current fingerprint (412 otherwise); instance templates cannot be patched or updated;
* a few rules per kind (firewall ranges and protocols, subnet range overlaps, Cloud NAT port settings, autoscaler
  bounds, MIG sizes and zones, backend service references and named ports).

Tests can refuse the next call of a method on a collection (``refuse``), make the next operation end in error
(``fail_operation``), change a resource as someone else would (``edit``: its fingerprint changes), and count
``writes``.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.cloud import compute_v1

__all__ = ["LINK", "Call", "ComputeRest"]

LINK = "https://www.googleapis.com/compute/v1/"
MESSAGES: dict[str, Any] = {
    "networks": compute_v1.Network,
    "firewalls": compute_v1.Firewall,
    "instanceTemplates": compute_v1.InstanceTemplate,
    "subnetworks": compute_v1.Subnetwork,
    "routers": compute_v1.Router,
    "healthChecks": compute_v1.HealthCheck,
    "instanceGroupManagers": compute_v1.InstanceGroupManager,
    "autoscalers": compute_v1.Autoscaler,
    "backendServices": compute_v1.BackendService,
}
GLOBAL = frozenset({"networks", "firewalls", "instanceTemplates"})
FINGERPRINTED = frozenset({"subnetworks", "backendServices", "instanceGroupManagers"})
IMMUTABLE = frozenset({"instanceTemplates"})
SERVER_FIELDS = ("kind", "id", "creationTimestamp", "selfLink", "fingerprint", "region", "instanceGroup", "status")
_ROUTE = re.compile(r"/compute/v1/projects/(?P<project>[^/]+)/(?P<scope>global|regions/(?P<region>[a-z0-9-]+))/"
                    r"(?P<collection>[A-Za-z]+)(?:/(?P<name>[^/]+)(?:/(?P<verb>[A-Za-z]+))?)?")  # fmt: skip
_LINK = re.compile(re.escape(LINK) + r"projects/(?P<project>[^/]+)/(?P<scope>global|regions/[a-z0-9-]+)/"
                   r"(?P<collection>[A-Za-z]+)/(?P<name>[^/]+)")  # fmt: skip
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


class ApiError(Exception):
    """An answer in Google's error format."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict[str, Any]:
        detail = {"message": self.message, "domain": "global", "reason": self.reason}
        return {"error": {"code": self.status, "message": self.message, "errors": [detail]}}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge, anything else (lists too) replaces, null removes."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _links(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _links(item)
    elif isinstance(value, list):
        for item in value:
            yield from _links(item)
    elif isinstance(value, str) and value.startswith(LINK):
        yield value


def _cidr(value: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise _invalid(f"Invalid value for field '{where}': '{value}'. Must be a CIDR range.") from exc


def _power_of_two(value: int) -> bool:
    return value > 0 and not value & (value - 1)


# -- the rules of each kind ------------------------------------------------------------------------------------


def _firewall(rule: dict[str, Any]) -> None:
    if bool(rule.get("allowed")) == bool(rule.get("denied")):
        raise _invalid("Exactly one of 'allowed' and 'denied' must be given")
    if not 0 <= int(rule.get("priority", 1000)) <= 65535:
        raise _invalid("Invalid value for field 'resource.priority'")
    if rule.get("direction", "INGRESS") not in ("INGRESS", "EGRESS") or "network" not in rule:
        raise _invalid("Invalid direction or no network")
    for source in rule.get("sourceRanges", []):
        _cidr(source, "resource.sourceRanges")
    for entry in rule.get("allowed", []) + rule.get("denied", []):
        if entry.get("IPProtocol") not in ("tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all"):
            raise _invalid(f"Invalid value for field 'resource.allowed.IPProtocol': {entry.get('IPProtocol')}")
        if entry.get("ports") and entry["IPProtocol"] not in ("tcp", "udp", "sctp"):
            raise _invalid("Ports may only be given for tcp, udp and sctp")


def _network(network: dict[str, Any]) -> None:
    if "autoCreateSubnetworks" not in network:
        raise _invalid("'autoCreateSubnetworks' must be given (a legacy network is not allowed)")
    if not 1300 <= int(network.get("mtu", 1460)) <= 8896:
        raise _invalid("Invalid value for field 'resource.mtu'")
    if network.get("routingConfig", {}).get("routingMode", "REGIONAL") not in ("REGIONAL", "GLOBAL"):
        raise _invalid("Invalid value for field 'resource.routingConfig.routingMode'")


def _subnetwork(subnet: dict[str, Any]) -> None:
    if "network" not in subnet:
        raise _invalid("Invalid value for field 'resource.network': ''")
    ranges = [_cidr(subnet.get("ipCidrRange", ""), "resource.ipCidrRange")]
    names = [r.get("rangeName") for r in subnet.get("secondaryIpRanges", [])]
    if len(set(names)) != len(names) or not all(n and _NAME.fullmatch(n) for n in names):
        raise _invalid("Secondary range names must be unique RFC 1035 names")
    ranges += [_cidr(r.get("ipCidrRange", ""), "resource.secondaryIpRanges") for r in subnet["secondaryIpRanges"]]
    for i, first in enumerate(ranges):
        if any(first.overlaps(second) for second in ranges[i + 1 :]):
            raise _invalid(f"Invalid IPCidrRange: {first} conflicts with another range of the subnetwork")
    log = subnet.get("logConfig", {})
    if not 0 <= float(log.get("flowSampling", 0.5)) <= 1:
        raise _invalid("Invalid value for field 'resource.logConfig.flowSampling'")
    intervals = {f"INTERVAL_{n}" for n in ("5_SEC", "30_SEC", "1_MIN", "5_MIN", "10_MIN", "15_MIN")}
    if log.get("aggregationInterval", "INTERVAL_5_SEC") not in intervals:
        raise _invalid("Invalid value for field 'resource.logConfig.aggregationInterval'")


def _router(router: dict[str, Any]) -> None:
    asn = int(router.get("bgp", {}).get("asn", 64512))
    if not (64512 <= asn <= 65534 or 4_200_000_000 <= asn <= 4_294_967_294):
        raise _invalid(f"Invalid value for field 'resource.bgp.asn': {asn}. Must be a private ASN.")
    for nat in router.get("nats", []):
        if nat.get("natIpAllocateOption") not in ("AUTO_ONLY", "MANUAL_ONLY"):
            raise _invalid("Invalid value for field 'resource.nats[0].natIpAllocateOption'")
        if nat.get("logConfig", {}).get("filter", "ALL") not in ("ALL", "ERRORS_ONLY", "TRANSLATIONS_ONLY"):
            raise _invalid("Invalid value for field 'resource.nats[0].logConfig.filter'")
        if nat.get("enableDynamicPortAllocation"):
            if nat.get("enableEndpointIndependentMapping"):
                raise _invalid("Dynamic port allocation cannot be used with endpoint-independent mapping")
            low, high = int(nat.get("minPortsPerVm", 32)), int(nat.get("maxPortsPerVm", 65536))
            if not (_power_of_two(low) and _power_of_two(high) and 32 <= low < high <= 65536):
                raise _invalid("minPortsPerVm and maxPortsPerVm must be powers of two, 32 <= min < max <= 65536")


def _template(template: dict[str, Any]) -> None:
    properties = template.get("properties", {})
    if not properties.get("machineType") or not properties.get("networkInterfaces"):
        raise _invalid("An instance template needs properties.machineType and a network interface")
    if sum(bool(disk.get("boot")) for disk in properties.get("disks", [])) != 1:
        raise _invalid("An instance template needs exactly one boot disk")


def _health_check(check: dict[str, Any]) -> None:
    kind = check.get("type", "")
    field = {"HTTP": "httpHealthCheck", "HTTPS": "httpsHealthCheck", "TCP": "tcpHealthCheck"}.get(kind)
    if field is None or field not in check:
        raise _invalid(f"Health check type {kind!r} needs its {field or 'type'} settings")
    if int(check.get("timeoutSec", 5)) > int(check.get("checkIntervalSec", 5)):
        raise _invalid("timeoutSec must not be greater than checkIntervalSec")


class ComputeRest:
    """The server and its in-memory project; :meth:`start` it, point the clients at :attr:`endpoint`."""

    def __init__(self, project: str = "demo-project") -> None:
        self.project = project
        self.resources: dict[str, dict[str, Any]] = {}  # "global/firewalls/NAME", "regions/R/routers/NAME"
        self.operations: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self._refusals: dict[tuple[str, str], ApiError] = {}
        self._failures: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1_000_001)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- for the tests --------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() first"
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def writes(self) -> list[Call]:
        """Every call that asked for a change (reads and operation polls are not writes)."""
        return [c for c in self.calls if c.method != "GET" and "/operations/" not in c.path]

    def names(self, collection: str) -> list[str]:
        return sorted(key.rsplit("/", 1)[1] for key in self.resources if key.split("/")[-2] == collection)

    def get(self, collection: str, name: str, region: str | None = None) -> dict[str, Any]:
        return self.resources[self._key(collection, name, region)]

    def edit(self, collection: str, name: str, change: Callable[[dict[str, Any]], None], region: str | None = None):
        """Change a resource behind the deployer's back, as someone with the console would."""
        with self._lock:
            resource = self.resources[self._key(collection, name, region)]
            change(resource)
            if collection in FINGERPRINTED:
                resource["fingerprint"] = self._fingerprint()

    def refuse(self, method: str, collection: str, status: int = 403, message: str | None = None) -> None:
        """The next ``method`` call on ``collection`` is refused (403: as without the permission)."""
        reason = {403: "forbidden", 400: "invalid", 404: "notFound", 409: "alreadyExists"}.get(status, "backendError")
        text = message or f"Required 'compute.{collection}.{method.lower()}' permission for 'projects/{self.project}'"
        self._refusals[(method, collection)] = ApiError(status, reason, text)

    def fail_operation(self, method: str, collection: str, message: str) -> None:
        """The next ``method`` call on ``collection`` is accepted, and its operation ends in error."""
        self._failures[(method, collection)] = message

    def start(self) -> ComputeRest:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                status, answer = fake.handle(self.command, self.path, raw)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the protocol ---------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, raw: str) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        body = json.loads(raw) if raw else None
        with self._lock:
            self.calls.append(Call(method, url.path, body))
            try:
                return 200, self._route(method, url.path, parse_qs(url.query), raw, body)
            except ApiError as exc:
                return exc.status, exc.body()

    def _route(self, method: str, path: str, query: dict[str, list[str]], raw: str, body: Any) -> dict[str, Any]:
        match = _ROUTE.fullmatch(path)
        if match is None:
            raise ApiError(404, "notFound", f"no such method: {method} {path}")
        if match["project"] != self.project:
            raise ApiError(404, "notFound", f"The resource 'projects/{match['project']}' was not found")
        scope, collection, name = match["scope"], match["collection"], match["name"]
        if collection == "operations":
            return self._operation(scope, name, match["verb"], method)
        if collection not in MESSAGES or (collection in GLOBAL) != (scope == "global") or match["verb"]:
            raise ApiError(404, "notFound", f"no such collection: {scope}/{collection}")
        refusal = self._refusals.pop((method, collection), None)
        if refusal is not None:
            raise refusal
        if name is None and method in ("PATCH", "PUT"):  # autoscalers: PATCH .../autoscalers?autoscaler=NAME
            name = next(iter(query.get(collection.rstrip("s"), [])), None) or (body or {}).get("name")
        key = f"{scope}/{collection}/{name}"
        if method == "GET" and name:
            return copy.deepcopy(self._existing(key))
        if method == "POST" and name is None:
            return self._write("insert", scope, collection, lambda: self._insert(scope, collection, raw, body))
        if method in ("PATCH", "PUT") and name:
            return self._write(method.lower() if method == "PATCH" else "update", scope, collection,
                               lambda: self._change(method, key, collection, raw, body))  # fmt: skip
        if method == "DELETE" and name:
            return self._write("delete", scope, collection, lambda: self._delete(key))
        raise ApiError(405, "methodNotAllowed", f"{method} {path} is not supported")

    def _existing(self, key: str) -> dict[str, Any]:
        if key not in self.resources:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/{key}' was not found")
        return self.resources[key]

    def _key(self, collection: str, name: str, region: str | None) -> str:
        return f"{'global' if collection in GLOBAL else f'regions/{region}'}/{collection}/{name}"

    def _fingerprint(self) -> str:
        return f"fp-{next(self._ids)}"

    def _link(self, key: str) -> str:
        return f"{LINK}projects/{self.project}/{key}"

    # -- writes ---------------------------------------------------------------------------------------------

    def _write(self, verb: str, scope: str, collection: str, change: Callable[[], str]) -> dict[str, Any]:
        """Perform ``change`` (it returns the target's key) unless the operation is to fail; its Operation."""
        failure = self._failures.pop(({"insert": "POST", "update": "PUT"}.get(verb, verb.upper()), collection), None)
        key = change() if failure is None else f"{scope}/{collection}/(failed)"
        number = next(self._ids)
        operation: dict[str, Any] = {
            "kind": "compute#operation", "id": str(number), "name": f"operation-{number}", "operationType": verb,
            "targetLink": self._link(key), "status": "RUNNING", "progress": 0, "insertTime": _now(),
            "selfLink": self._link(f"{scope}/operations/operation-{number}"),
        }  # fmt: skip
        if scope != "global":
            operation["region"] = self._link(scope)
        if failure is not None:
            operation["error"] = {"errors": [{"code": "RESOURCE_OPERATION_FAILED", "message": failure}]}
            operation["httpErrorStatusCode"], operation["httpErrorMessage"] = 400, "BAD REQUEST"
        self.operations[f"{scope}/{operation['name']}"] = operation
        return copy.deepcopy(operation)

    def _operation(self, scope: str, name: str | None, verb: str | None, method: str) -> dict[str, Any]:
        operation = self.operations.get(f"{scope}/{name}")
        if operation is None or (method, verb) not in (("GET", None), ("POST", "wait")):
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/{scope}/operations/{name}' was "
                           "not found")  # fmt: skip
        operation.update(status="DONE", progress=100, endTime=_now())
        return copy.deepcopy(operation)

    def _parse(self, collection: str, raw: str) -> None:
        try:
            MESSAGES[collection].from_json(raw, ignore_unknown_fields=False)
        except Exception as exc:  # json_format.ParseError and friends: the API answers 400
            raise _invalid(f"Invalid JSON payload received. {exc}") from exc

    def _insert(self, scope: str, collection: str, raw: str, body: Any) -> str:
        self._parse(collection, raw)
        name = body.get("name", "")
        if not _NAME.fullmatch(name):
            raise _invalid(f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                           "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")  # fmt: skip
        key = f"{scope}/{collection}/{name}"
        if key in self.resources:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{self.project}/{key}' already exists")
        if collection == "instanceGroupManagers" and "targetSize" not in body:
            raise _invalid("Required field 'resource.targetSize' not specified")
        resource = copy.deepcopy(body)
        self._check(scope, collection, resource)
        resource.update(kind=f"compute#{collection[:-1]}", id=str(next(self._ids)), creationTimestamp=_now(),
                        selfLink=self._link(key))  # fmt: skip
        if scope != "global":
            resource["region"] = self._link(scope)
        if collection in FINGERPRINTED:
            resource["fingerprint"] = self._fingerprint()
        if collection == "instanceGroupManagers":
            resource["instanceGroup"] = self._link(f"{scope}/instanceGroups/{name}")
            resource["status"] = {"isStable": True}
        self.resources[key] = resource
        return key

    def _change(self, method: str, key: str, collection: str, raw: str, body: Any) -> str:
        current = self._existing(key)
        if collection in IMMUTABLE:
            raise _invalid(f"The resource '{key}' cannot be changed: create a new one")
        self._parse(collection, raw)
        if body.get("name", key.rsplit("/", 1)[1]) != key.rsplit("/", 1)[1]:
            raise _invalid("The name of a resource cannot be changed")
        if collection in FINGERPRINTED and body.get("fingerprint") != current.get("fingerprint"):
            raise ApiError(412, "conditionNotMet", "Supplied fingerprint does not match current resource fingerprint.")
        if method == "PATCH":
            changed = merge_patch(current, {k: v for k, v in body.items() if k not in SERVER_FIELDS})
        else:
            changed = {**{k: current[k] for k in SERVER_FIELDS if k in current}, **copy.deepcopy(body)}
        self._check(key.rsplit("/", 2)[0], collection, changed)
        if collection in FINGERPRINTED:
            changed["fingerprint"] = self._fingerprint()
        self.resources[key] = changed
        return key

    def _delete(self, key: str) -> str:
        self._existing(key)
        del self.resources[key]
        return key

    # -- checks ---------------------------------------------------------------------------------------------

    def _check(self, scope: str, collection: str, resource: dict[str, Any]) -> None:
        for link in _links({k: v for k, v in resource.items() if k not in SERVER_FIELDS}):
            self._reference(link)
        rules: dict[str, Callable[[dict[str, Any]], None]] = {
            "firewalls": _firewall, "networks": _network, "subnetworks": _subnetwork, "routers": _router,
            "instanceTemplates": _template, "healthChecks": _health_check,
            "instanceGroupManagers": lambda r: self._group(scope, r), "autoscalers": self._autoscaler,
            "backendServices": self._backend_service,
        }  # fmt: skip
        rules[collection](resource)

    def _reference(self, link: str) -> None:
        match = _LINK.fullmatch(link)
        if match is None or match["project"] != self.project:
            return  # zones, images of other projects: not ours to check
        collection = "instanceGroupManagers" if match["collection"] == "instanceGroups" else match["collection"]
        if collection in MESSAGES and f"{match['scope']}/{collection}/{match['name']}" not in self.resources:
            raise ApiError(404, "notFound", f"The resource '{link.removeprefix(LINK)}' was not found")

    def _group(self, scope: str, group: dict[str, Any]) -> None:
        templates: list[Any] = [v.get("instanceTemplate") for v in group.get("versions", [])] or [
            group.get("instanceTemplate")
        ]
        if not all(templates) or not group.get("baseInstanceName"):
            raise _invalid("A managed instance group needs baseInstanceName and an instance template")
        region = scope.removeprefix("regions/")
        for zone in group.get("distributionPolicy", {}).get("zones", []):
            if not zone.get("zone", "").rsplit("/", 1)[-1].startswith(f"{region}-"):
                raise _invalid(f"Zone {zone.get('zone')} is not in region {region}")
        surge = int(group.get("updatePolicy", {}).get("maxSurge", {}).get("fixed", 0))
        zones = len(group.get("distributionPolicy", {}).get("zones", [])) or 3
        if surge and surge < zones:
            raise _invalid(f"Fixed maxSurge for a regional group must be 0 or at least the number of zones ({zones})")

    def _autoscaler(self, autoscaler: dict[str, Any]) -> None:
        policy = autoscaler.get("autoscalingPolicy", {})
        low, high = int(policy.get("minNumReplicas", 1)), int(policy.get("maxNumReplicas", 0))
        if not 0 <= low <= high:
            raise _invalid(f"minNumReplicas ({low}) must not be greater than maxNumReplicas ({high})")
        if not 0 < float(policy.get("cpuUtilization", {}).get("utilizationTarget", 0.6)) <= 1:
            raise _invalid("cpuUtilization.utilizationTarget must be in (0, 1]")
        if "target" not in autoscaler:
            raise _invalid("Required field 'resource.target' not specified")

    def _backend_service(self, service: dict[str, Any]) -> None:
        if service.get("loadBalancingScheme") not in ("EXTERNAL_MANAGED", "INTERNAL_MANAGED", "EXTERNAL", "INTERNAL"):
            raise _invalid("Invalid value for field 'resource.loadBalancingScheme'")
        if service.get("sessionAffinity", "NONE") not in ("NONE", "CLIENT_IP", "GENERATED_COOKIE", "HTTP_COOKIE"):
            raise _invalid("Invalid value for field 'resource.sessionAffinity'")
        if not service.get("healthChecks"):
            raise _invalid("A backend service with instance group backends needs a health check")
        for backend in service.get("backends", []):
            name = backend.get("group", "").rsplit("/", 1)[-1]
            groups = [v for k, v in self.resources.items() if k.endswith(f"/instanceGroupManagers/{name}")]
            ports = {p.get("name") for g in groups for p in g.get("namedPorts", [])}
            if service.get("portName") not in ports:
                raise _invalid(f"The instance group {name} has no named port {service.get('portName')!r}")
