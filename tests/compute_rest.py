"""A local server speaking the Compute Engine REST protocol (``/compute/v1/projects/...``), for the real
``google-cloud-compute`` clients to call with ``--insecure --endpoint 127.0.0.1:PORT``.

No emulator exists for Compute Engine. This one is generic over the collections the deployer uses: insert
(POST to the collection), get, list (filtered by name only), patch (JSON merge patch: nested objects merge, lists
are replaced), update (PUT) and delete; writes answer an Operation that is RUNNING until it is read again or
waited for (``operations/NAME/wait``). It refuses what Compute Engine refuses, in Google's error format
(``{"error": {"code", "message", "errors": [{"reason", ...}]}}``):

* every body must parse as the collection's ``compute_v1`` message with ``ignore_unknown_fields=False``;
* names must be RFC 1035; an insert of an existing name is 409, a read of a missing one 404;
* every link to a resource of this project (``https://www.googleapis.com/compute/v1/projects/P/...``) must name
  one that exists (a managed instance group's ``instanceGroups/NAME`` included), as the API checks references;
* a patch of a fingerprinted kind (subnetworks, backend services, instance group managers, URL maps, target
  proxies, security policies) must carry the current fingerprint (412 otherwise); instance templates, SSL
  certificates and addresses cannot be patched or updated; a resource another one links to cannot be deleted
  (400 resourceInUseByAnotherResource; an address, while a forwarding rule holds its IP);
* a few rules per kind (firewall ranges and protocols, subnet range overlaps, Cloud NAT port settings, autoscaler
  bounds, MIG sizes and zones, backend service references, named ports and health checks of the same scope);
* the global load balancer's frontend: a managed certificate's domains (1-100, fully qualified, no wildcard); a
  URL map with exactly one of defaultService (a global backend service) and defaultUrlRedirect; a target HTTPS
  proxy with 1-15 global certificates; a global forwarding rule with a target proxy, the PREMIUM tier, a port
  range (one port is read back as a range: ``443-443``), the scheme of the backend service behind it, and an IP
  address and ports no other rule holds; a security
  policy whose rule priorities are unique, with its default rule (2147483647, source ``*``: added at insert if
  missing, never removed), whose rate-based rules (throttle, rate_based_ban) have a threshold of a positive count
  over one of the API's intervals, conformAction allow and a deny(STATUS) exceedAction. As the API, a security
  policy's rules change only through addRule, patchRule and removeRule (a patch carrying ``rules`` is refused),
  and a backend service's ``securityPolicy`` is output only (ignored in bodies), set through
  ``setSecurityPolicy`` (an empty reference takes it off). A global forwarding rule reads back its IPAddress as
  the address (the IP, not the link it was created with); its target changes only through ``setTarget`` (to a
  target proxy that exists and passes the rule's checks), a patch may change only ``networkTier``, and it has no
  update (PUT).

Left out, among others: a managed certificate's provisioning (it stays PROVISIONING: no DNS here), quotas, Cloud
Armor's expression language and its rule limits per policy, the proxies' own custom methods (``setSslCertificates``,
``setUrlMap``: the deployer patches proxies), forwarding rules' ``setLabels``, an address's ``users`` and
``IN_USE`` status (a delete checks the forwarding rules instead), list filters other than ``name eq "RE2"`` and
paging (a list is one page), ``updateMask`` on any method but patchRule, URL maps' host rules and path matchers,
regional frontends (regional addresses, proxies, URL maps, proxy-only subnets), and which fields the API lets a
patch change on each kind other than a global forwarding rule.

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

from tests.json_http import ApiError

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
    "addresses": compute_v1.Address,
    "sslCertificates": compute_v1.SslCertificate,
    "securityPolicies": compute_v1.SecurityPolicy,
    "urlMaps": compute_v1.UrlMap,
    "targetHttpsProxies": compute_v1.TargetHttpsProxy,
    "targetHttpProxies": compute_v1.TargetHttpProxy,
    "forwardingRules": compute_v1.ForwardingRule,
}
# The scopes each collection is served in here (the real API serves most in both; these are the ones the deployer
# uses): health checks and backend services are global (the global load balancer) or regional.
GLOBAL = frozenset({"networks", "firewalls", "instanceTemplates", "healthChecks", "backendServices", "addresses",
                    "sslCertificates", "securityPolicies", "urlMaps", "targetHttpsProxies", "targetHttpProxies",
                    "forwardingRules"})  # fmt: skip
REGIONAL = frozenset({"subnetworks", "routers", "healthChecks", "instanceGroupManagers", "autoscalers",
                      "backendServices"})  # fmt: skip
FINGERPRINTED = frozenset({"subnetworks", "backendServices", "instanceGroupManagers", "urlMaps", "securityPolicies",
                           "targetHttpsProxies", "targetHttpProxies"})  # fmt: skip
IMMUTABLE = frozenset({"instanceTemplates", "sslCertificates", "addresses"})  # no patch or update method
SINGULAR = {"addresses": "address", "securityPolicies": "securityPolicy", "targetHttpProxies": "targetHttpProxy",
            "targetHttpsProxies": "targetHttpsProxy"}  # fmt: skip
DEFAULT_RULE = 2147483647  # a security policy's default rule: the lowest priority, matching every request
SERVER_FIELDS = ("kind", "id", "creationTimestamp", "selfLink", "fingerprint", "region", "instanceGroup", "status",
                 "securityPolicy")  # fmt: skip
_ROUTE = re.compile(r"/compute/v1/projects/(?P<project>[^/]+)/(?P<scope>global|regions/(?P<region>[a-z0-9-]+))/"
                    r"(?P<collection>[A-Za-z]+)(?:/(?P<name>[^/]+)(?:/(?P<verb>[A-Za-z]+))?)?")  # fmt: skip
_LINK = re.compile(re.escape(LINK) + r"projects/(?P<project>[^/]+)/(?P<scope>global|regions/[a-z0-9-]+)/"
                   r"(?P<collection>[A-Za-z]+)/(?P<name>[^/]+)")  # fmt: skip
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


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
        if collection not in MESSAGES or collection not in (GLOBAL if scope == "global" else REGIONAL):
            raise ApiError(404, "notFound", f"no such collection: {scope}/{collection}")
        refusal = self._refusals.pop((method, collection), None)
        if refusal is not None:
            raise refusal
        if name is None and method in ("PATCH", "PUT"):  # autoscalers: PATCH .../autoscalers?autoscaler=NAME
            name = next(iter(query.get(collection.rstrip("s"), [])), None) or (body or {}).get("name")
        key = f"{scope}/{collection}/{name}"
        if match["verb"]:
            return self._verb(method, scope, collection, key, match["verb"], query, raw)
        if method == "GET" and name:
            return copy.deepcopy(self._existing(key))
        if method == "GET":
            return self._list(scope, collection, query)
        if method == "POST" and name is None:
            return self._write("insert", scope, collection, lambda: self._insert(scope, collection, raw, body))
        if method in ("PATCH", "PUT") and name:
            return self._write(method.lower() if method == "PATCH" else "update", scope, collection,
                               lambda: self._change(method, key, collection, raw, body))  # fmt: skip
        if method == "DELETE" and name:
            return self._write("delete", scope, collection, lambda: self._delete(key))
        raise ApiError(405, "methodNotAllowed", f"{method} {path} is not supported")

    def _verb(self, method: str, scope: str, collection: str, key: str, verb: str, query: dict[str, list[str]],
              raw: str) -> dict[str, Any]:  # fmt: skip
        """The custom methods the deployer calls: a backend service's setSecurityPolicy, a security policy's
        addRule, patchRule and removeRule (``?priority=N``), a global forwarding rule's setTarget."""
        verbs: dict[tuple[str, str], Callable[[], str]] = {
            ("backendServices", "setSecurityPolicy"): lambda: self._set_security_policy(key, raw),
            ("forwardingRules", "setTarget"): lambda: self._set_target(scope, key, raw),
            ("securityPolicies", "addRule"): lambda: self._rule("add", key, query, raw),
            ("securityPolicies", "patchRule"): lambda: self._rule("patch", key, query, raw),
            ("securityPolicies", "removeRule"): lambda: self._rule("remove", key, query, raw),
        }  # fmt: skip
        change = verbs.get((collection, verb))
        if method != "POST" or change is None or scope != "global":
            raise ApiError(404, "notFound", f"no such method: {method} {scope}/{collection}/.../{verb}")
        return self._write(verb, scope, collection, change)

    def _set_security_policy(self, key: str, raw: str) -> str:
        service = self._existing(key)
        try:
            reference = compute_v1.SecurityPolicyReference.from_json(raw or "{}", ignore_unknown_fields=False)
            link = reference.security_policy
        except Exception as exc:
            raise _invalid(f"Invalid JSON payload received. {exc}") from exc
        if link:
            self._reference(link)
            if "/global/securityPolicies/" not in link:
                raise _invalid("A global backend service takes a global security policy")
            if service.get("loadBalancingScheme") not in ("EXTERNAL", "EXTERNAL_MANAGED"):
                raise _invalid("Cloud Armor backend security policies apply to external load balancers only")
            service["securityPolicy"] = link
        else:
            service.pop("securityPolicy", None)
        service["fingerprint"] = self._fingerprint()
        return key

    def _set_target(self, scope: str, key: str, raw: str) -> str:
        """A forwarding rule's new target, which must exist and pass the rule's checks (a target proxy of the
        scheme of the backend service behind it); the rule is replaced only when it does."""
        rule = copy.deepcopy(self._existing(key))
        try:
            target = compute_v1.TargetReference.from_json(raw or "{}", ignore_unknown_fields=False).target
        except Exception as exc:
            raise _invalid(f"Invalid JSON payload received. {exc}") from exc
        if not target:
            raise _invalid("Required field 'target' not specified")
        self._reference(target)
        rule["target"] = target
        self._forwarding_rule(scope, rule)
        self.resources[key] = rule
        return key

    def _rule(self, verb: str, key: str, query: dict[str, list[str]], raw: str) -> str:
        """addRule, patchRule (a merge patch; ``updateMask``: the comma-separated paths to clear) and removeRule,
        on a copy that replaces the policy only when the result is valid."""
        policy = copy.deepcopy(self._existing(key))
        rules: list[dict[str, Any]] = policy.setdefault("rules", [])
        wanted = query.get("priority", [None])[0]
        if verb == "add":
            rule = self._parsed_rule(raw)
            if any(int(r.get("priority", 0)) == int(rule.get("priority", 0)) for r in rules):
                raise _invalid(f"A rule with priority {rule.get('priority')} already exists in the policy")
            rules.append(rule)
        else:
            priority = int(wanted) if wanted is not None else 0
            found = [r for r in rules if int(r.get("priority", 0)) == priority]
            if not found:
                raise _invalid(f"No rule with priority {priority} exists in the policy")
            if verb == "remove":
                if priority == DEFAULT_RULE:
                    raise _invalid("The default rule of a security policy cannot be removed")
                rules.remove(found[0])
            else:
                patched = merge_patch(found[0], self._parsed_rule(raw))
                for path in ",".join(query.get("updateMask", [])).split(","):
                    _clear(patched, path.strip())
                rules[rules.index(found[0])] = patched
        _security_policy(policy)
        policy["fingerprint"] = self._fingerprint()
        self.resources[key] = policy
        return key

    def _parsed_rule(self, raw: str) -> dict[str, Any]:
        try:
            compute_v1.SecurityPolicyRule.from_json(raw, ignore_unknown_fields=False)
        except Exception as exc:
            raise _invalid(f"Invalid JSON payload received. {exc}") from exc
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    def _list(self, scope: str, collection: str, query: dict[str, list[str]]) -> dict[str, Any]:
        """A list call, in name order, in one page; ``filter`` may only be ``name eq "RE2"`` (the whole name
        must match), the one the deployer sends; without one, every resource of the collection."""
        wanted = ".*"
        if "filter" in query:
            match = re.fullmatch(r'name eq "([^"]*)"', query["filter"][0])
            if match is None:
                raise _invalid(f'Invalid list filter expression: {query["filter"][0]!r} (this server: name eq "RE")')
            wanted = match[1]
        try:
            pattern = re.compile(wanted)
        except re.error as exc:
            raise _invalid(f"Invalid regular expression in filter: {wanted!r}") from exc
        prefix = f"{scope}/{collection}/"
        names = sorted(key.removeprefix(prefix) for key in self.resources if key.startswith(prefix))
        found = [copy.deepcopy(self.resources[prefix + name]) for name in names if pattern.fullmatch(name)]
        singular = SINGULAR.get(collection, collection[:-1])
        answer: dict[str, Any] = {"kind": f"compute#{singular}List", "id": f"projects/{self.project}/{prefix}",
                                  "selfLink": self._link(prefix.rstrip("/"))}  # fmt: skip
        if found:  # as the API: no items field when none match
            answer["items"] = found
        return answer

    def _existing(self, key: str) -> dict[str, Any]:
        if key not in self.resources:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/{key}' was not found")
        return self.resources[key]

    def _key(self, collection: str, name: str, region: str | None) -> str:
        """A region for a collection served in both scopes means its regional one; none, the global one."""
        regional = collection not in GLOBAL or (region is not None and collection in REGIONAL)
        return f"{f'regions/{region}' if regional else 'global'}/{collection}/{name}"

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
        resource = {k: v for k, v in copy.deepcopy(body).items() if k != "securityPolicy"}  # output only: ignored
        if collection == "securityPolicies":
            _with_default_rule(resource)
        self._check(scope, collection, resource)
        singular = SINGULAR.get(collection, collection[:-1])
        resource.update(kind=f"compute#{singular}", id=str(next(self._ids)), creationTimestamp=_now(),
                        selfLink=self._link(key))  # fmt: skip
        if scope != "global":
            resource["region"] = self._link(scope)
        if collection in FINGERPRINTED:
            resource["fingerprint"] = self._fingerprint()
        if collection == "instanceGroupManagers":
            resource["instanceGroup"] = self._link(f"{scope}/instanceGroups/{name}")
            resource["status"] = {"isStable": True}
        if collection == "forwardingRules" and "-" not in resource["portRange"]:  # read back: one port as a range
            resource["portRange"] = f"{resource['portRange']}-{resource['portRange']}"
        if collection == "forwardingRules" and resource.get("IPAddress", "").startswith(LINK):  # read back: the IP
            resource["IPAddress"] = self.resources[resource["IPAddress"].removeprefix(self._link(""))]["address"]
        if collection == "addresses":  # an address from TEST-NET-3: never contacted
            resource.update(address=f"203.0.113.{next(self._ids) % 254 + 1}", status="RESERVED")
        if collection == "sslCertificates" and resource.get("type") == "MANAGED":  # until DNS points at the proxy
            managed = resource["managed"]
            managed.update(status="PROVISIONING", domainStatus=dict.fromkeys(managed["domains"], "PROVISIONING"))
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
        if collection == "forwardingRules" and (method == "PUT" or set(body) - {"name", "networkTier", "fingerprint"}):
            raise _invalid("A global forwarding rule's patch can change only networkTier; its target changes "
                           "through setTarget, anything else by deleting it and creating it again")  # fmt: skip
        if collection == "securityPolicies" and "rules" in body:
            raise _invalid("The rules of a security policy cannot be changed by patch or update: use addRule, "
                           "patchRule and removeRule")  # fmt: skip
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
        target = self._existing(key)
        link = self._link(key)
        for other, resource in self.resources.items():
            used = (
                key.split("/")[-2] == "addresses"
                and other.split("/")[-2] == "forwardingRules"
                and target.get("address") is not None
                and resource.get("IPAddress") == target["address"]
            )  # a rule holds the address's IP, not its link
            if other != key and (used or link in _links(resource)):
                raise ApiError(400, "resourceInUseByAnotherResource",
                               f"The resource '{key}' is already being used by '{other}'")  # fmt: skip
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
            "backendServices": lambda r: self._backend_service(scope, r), "addresses": _address,
            "sslCertificates": _ssl_certificate, "securityPolicies": _security_policy, "urlMaps": self._url_map,
            "targetHttpsProxies": self._https_proxy, "targetHttpProxies": self._http_proxy,
            "forwardingRules": lambda r: self._forwarding_rule(scope, r),
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

    def _backend_service(self, scope: str, service: dict[str, Any]) -> None:
        if service.get("loadBalancingScheme") not in ("EXTERNAL_MANAGED", "INTERNAL_MANAGED", "EXTERNAL", "INTERNAL"):
            raise _invalid("Invalid value for field 'resource.loadBalancingScheme'")
        if service.get("sessionAffinity", "NONE") not in ("NONE", "CLIENT_IP", "GENERATED_COOKIE", "HTTP_COOKIE"):
            raise _invalid("Invalid value for field 'resource.sessionAffinity'")
        if not service.get("healthChecks"):
            raise _invalid("A backend service with instance group backends needs a health check")
        for check in service["healthChecks"]:  # global load balancers: global checks; regional ones: regional
            if ("/global/healthChecks/" in check) != (scope == "global"):
                raise _invalid(f"A {'global' if scope == 'global' else 'regional'} backend service needs "
                               f"{'global' if scope == 'global' else 'regional'} health checks: {check}")  # fmt: skip
        for backend in service.get("backends", []):
            name = backend.get("group", "").rsplit("/", 1)[-1]
            groups = [v for k, v in self.resources.items() if k.endswith(f"/instanceGroupManagers/{name}")]
            ports = {p.get("name") for g in groups for p in g.get("namedPorts", [])}
            if service.get("portName") not in ports:
                raise _invalid(f"The instance group {name} has no named port {service.get('portName')!r}")

    def _url_map(self, url_map: dict[str, Any]) -> None:
        service, redirect = url_map.get("defaultService"), url_map.get("defaultUrlRedirect")
        if bool(service) == bool(redirect):
            raise _invalid("A URL map needs exactly one of defaultService and defaultUrlRedirect")
        if service and "/global/backendServices/" not in service:
            raise _invalid(f"A global URL map's defaultService must be a global backend service: {service}")
        if redirect:
            code = redirect.get("redirectResponseCode", "MOVED_PERMANENTLY_DEFAULT")
            if code not in ("MOVED_PERMANENTLY_DEFAULT", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT",
                            "PERMANENT_REDIRECT"):  # fmt: skip
                raise _invalid(f"Invalid value for field 'resource.defaultUrlRedirect.redirectResponseCode': {code}")
            if redirect.get("prefixRedirect") and redirect.get("pathRedirect"):
                raise _invalid("prefixRedirect and pathRedirect cannot both be given")

    def _http_proxy(self, proxy: dict[str, Any]) -> None:
        if "/global/urlMaps/" not in proxy.get("urlMap", ""):
            raise _invalid("Required field 'resource.urlMap' not specified (a global URL map)")

    def _https_proxy(self, proxy: dict[str, Any]) -> None:
        self._http_proxy(proxy)
        certificates = proxy.get("sslCertificates", [])
        if not proxy.get("certificateMap") and not 1 <= len(certificates) <= 15:
            raise _invalid("A target HTTPS proxy needs 1 to 15 sslCertificates (or a certificateMap)")
        if any("/global/sslCertificates/" not in c for c in certificates):
            raise _invalid("A global target HTTPS proxy takes global SSL certificates")
        if proxy.get("quicOverride", "NONE") not in ("NONE", "ENABLE", "DISABLE"):
            raise _invalid("Invalid value for field 'resource.quicOverride'")

    def _forwarding_rule(self, scope: str, rule: dict[str, Any]) -> None:
        target = rule.get("target", "")
        if not re.search(r"/global/target(Http|Https)Proxies/", target):
            raise _invalid("A global forwarding rule of an Application Load Balancer needs a target HTTP(S) proxy")
        scheme = rule.get("loadBalancingScheme", "EXTERNAL")
        if scheme not in ("EXTERNAL", "EXTERNAL_MANAGED", "INTERNAL_MANAGED", "INTERNAL_SELF_MANAGED"):
            raise _invalid(f"Invalid value for field 'resource.loadBalancingScheme': {scheme}")
        if scheme.startswith("EXTERNAL") and rule.get("networkTier", "PREMIUM") != "PREMIUM":
            raise _invalid("A global external forwarding rule needs the PREMIUM network tier")
        if not re.fullmatch(r"[0-9]+(-[0-9]+)?", rule.get("portRange", "")):
            raise _invalid("Invalid value for field 'resource.portRange'")
        if rule.get("IPProtocol", "TCP") != "TCP":
            raise _invalid("A target proxy's forwarding rule is TCP")
        self._same_scheme(scheme, target)
        address, ports = self._ip(rule.get("IPAddress", "")), _ports(rule["portRange"])
        for key, other in self.resources.items():  # one IP address and port: one rule
            if (key.startswith(f"{scope}/forwardingRules/") and other["name"] != rule["name"] and address
                    and self._ip(other.get("IPAddress", "")) == address
                    and _overlap(ports, _ports(other.get("portRange", "")))):  # fmt: skip
                raise ApiError(409, "conflict", f"IP {address} and port {rule['portRange']} are used by {key}")

    def _ip(self, value: str) -> str:
        """A forwarding rule's IPAddress: a literal, or the address of the reserved address it links to."""
        if value.startswith(LINK):
            return str(self.resources.get(value.removeprefix(self._link("")), {}).get("address", value))
        return value

    def _same_scheme(self, scheme: str, target: str) -> None:
        """The backend service behind the proxy's URL map must have the forwarding rule's scheme."""
        proxy = self.resources.get(target.removeprefix(f"{LINK}projects/{self.project}/"), {})
        url_map = self.resources.get(proxy.get("urlMap", "").removeprefix(f"{LINK}projects/{self.project}/"), {})
        service = self.resources.get(url_map.get("defaultService", "").removeprefix(f"{LINK}projects/{self.project}/"))
        if service is not None and service.get("loadBalancingScheme") != scheme:
            raise _invalid(f"The forwarding rule's loadBalancingScheme {scheme} differs from its backend service's "
                           f"{service.get('loadBalancingScheme')}")  # fmt: skip


def _ports(ports: str) -> tuple[int, int]:
    """A port range ("443", "8000-8080") as its first and last port ((0, -1) if it is none)."""
    low, _, high = ports.partition("-")
    return (int(low), int(high or low)) if low.isdigit() and (high or low).isdigit() else (0, -1)


def _overlap(first: tuple[int, int], second: tuple[int, int]) -> bool:
    return max(first[0], second[0]) <= min(first[1], second[1])


def _address(address: dict[str, Any]) -> None:
    if address.get("addressType", "EXTERNAL") not in ("EXTERNAL", "INTERNAL"):
        raise _invalid("Invalid value for field 'resource.addressType'")
    if address.get("ipVersion", "IPV4") not in ("IPV4", "IPV6"):
        raise _invalid("Invalid value for field 'resource.ipVersion'")
    if address.get("networkTier", "PREMIUM") != "PREMIUM":
        raise _invalid("A global address is in the PREMIUM network tier")


def _ssl_certificate(certificate: dict[str, Any]) -> None:
    kind = certificate.get("type", "SELF_MANAGED")
    if kind == "MANAGED":
        domains = certificate.get("managed", {}).get("domains", [])
        if not 1 <= len(domains) <= 100 or len(set(domains)) != len(domains):
            raise _invalid("A managed SSL certificate needs 1 to 100 distinct managed.domains")
        if any("*" in d or not re.fullmatch(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,63}", d) for d in domains):
            raise _invalid("managed.domains must be fully qualified domain names, without wildcards")
        if certificate.get("certificate") or certificate.get("privateKey"):
            raise _invalid("A managed SSL certificate takes no certificate or privateKey")
    elif kind == "SELF_MANAGED":
        if not (certificate.get("certificate") or certificate.get("selfManaged")):
            raise _invalid("A self-managed SSL certificate needs its certificate and private key")
    else:
        raise _invalid(f"Invalid value for field 'resource.type': {kind}")


RATE_INTERVALS = (10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600)  # rateLimitThreshold.intervalSec
_ACTION = re.compile(r"allow|deny\((403|404|502)\)|redirect|throttle|rate_based_ban")


def _clear(value: dict[str, Any], path: str) -> None:
    """Remove the field at the dotted camelCase ``path`` (an update mask's entry), if there."""
    *parents, last = path.split(".")
    for name in parents:
        inner = value.get(name)
        value = inner if isinstance(inner, dict) else {}
    value.pop(last, None)


def _with_default_rule(policy: dict[str, Any]) -> None:
    """As the API: a policy inserted without a default rule gets one that allows everything."""
    rules = policy.setdefault("rules", [])
    if not any(int(r.get("priority", 0)) == DEFAULT_RULE for r in rules):
        rules.append({"priority": DEFAULT_RULE, "action": "allow", "description": "default rule",
                      "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}})  # fmt: skip


def _security_policy(policy: dict[str, Any]) -> None:
    if policy.get("type", "CLOUD_ARMOR") not in ("CLOUD_ARMOR", "CLOUD_ARMOR_EDGE", "CLOUD_ARMOR_NETWORK"):
        raise _invalid("Invalid value for field 'resource.type'")
    rules = policy.get("rules", [])
    priorities = [int(r.get("priority", 0)) for r in rules]
    if len(set(priorities)) != len(priorities):
        raise _invalid("Two rules of the security policy have the same priority")
    if not all(0 <= p <= DEFAULT_RULE for p in priorities):
        raise _invalid("A rule's priority is 0 to 2147483647")
    for rule in rules:
        _security_rule(rule)
    default = [r for r in rules if int(r.get("priority", 0)) == DEFAULT_RULE]
    if len(default) != 1 or default[0].get("match", {}).get("config", {}).get("srcIpRanges") != ["*"]:
        raise _invalid("A security policy needs its default rule (priority 2147483647) matching every source ('*')")
    rules.sort(key=lambda r: int(r.get("priority", 0)))  # answered in priority order, as the API does


def _security_rule(rule: dict[str, Any]) -> None:
    action, limits = rule.get("action", ""), rule.get("rateLimitOptions")
    if not _ACTION.fullmatch(action):
        raise _invalid(f"Invalid value for field 'resource.rules.action': {action!r}")
    match = rule.get("match", {})
    if not match.get("expr") and not (match.get("versionedExpr") == "SRC_IPS_V1" and match.get("config", {}).get(
            "srcIpRanges")):  # fmt: skip
        raise _invalid("A rule matches an expression or SRC_IPS_V1 with srcIpRanges")
    if action not in ("throttle", "rate_based_ban"):
        if limits:
            raise _invalid("rateLimitOptions are only for the throttle and rate_based_ban actions")
        return
    if not limits:
        raise _invalid(f"A {action} rule needs rateLimitOptions")
    threshold = limits.get("rateLimitThreshold", {})
    if int(threshold.get("count", 0)) < 1 or int(threshold.get("intervalSec", 0)) not in RATE_INTERVALS:
        raise _invalid(f"rateLimitThreshold needs a positive count and an intervalSec of {RATE_INTERVALS}")
    if limits.get("conformAction") != "allow":
        raise _invalid("rateLimitOptions.conformAction must be allow")
    if not re.fullmatch(r"deny\((403|404|429|502)\)|redirect", limits.get("exceedAction", "")):
        raise _invalid("rateLimitOptions.exceedAction must be deny(STATUS) (403, 404, 429, 502) or redirect")
    if limits.get("enforceOnKey", "ALL") not in ("ALL", "IP", "HTTP_HEADER", "XFF_IP", "HTTP_COOKIE", "HTTP_PATH",
                                                   "SNI", "REGION_CODE", "TLS_JA3_FINGERPRINT", "USER_IP"):  # fmt: skip
        raise _invalid("Invalid value for field 'resource.rules.rateLimitOptions.enforceOnKey'")
    if ("banDurationSec" in limits or "banThreshold" in limits) and action != "rate_based_ban":
        raise _invalid("banDurationSec and banThreshold are only for rate_based_ban")
    if action == "rate_based_ban" and int(limits.get("banDurationSec", 0)) < 1:
        raise _invalid("A rate_based_ban rule needs banDurationSec")
