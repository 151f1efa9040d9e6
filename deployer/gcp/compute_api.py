"""The Compute Engine API (google-cloud-compute, REST) planned the way of :mod:`deployer.gcp.converge`, shared by
``network`` and ``gce``: each desired resource is a :class:`Kind` (which client, which message, global or
regional) and the ``compute_v1`` message itself; :func:`plan` reads them and answers steps
(:class:`~deployer.gcp.converge.Step`: a plan line and the calls that make it, each waiting for its Compute
operations), which :func:`deployer.gcp.converge.apply` makes in order, idempotently.

Decisions:

* **Read, then compare what we set.** The actual resource is read by name (404: CREATE). It is compared with
  :func:`deployer.gcp.changes.differences` on the fields the desired message sets, as ``to_dict`` views without
  defaults: fields the API fills in (ids, links, timestamps, defaults we leave alone) never show as drift. Links
  are always written as the full ``https://www.googleapis.com/compute/v1/...`` URLs the API answers with, so they
  compare equal. A resource's ``create_only`` fields (a managed instance group's size, which its autoscaler moves)
  are sent on insert and never compared.
* **UPDATE is a PATCH of what differs.** The body carries the name and only the top-level fields that differ
  (Compute Engine's PATCH is a JSON merge patch: nested objects merge, lists are replaced), so fields the API
  allows to change only in some ways (a subnet's range) are never sent when they did not change. Where the kind
  has a ``fingerprint`` (subnetworks, backend services, instance group managers) the one read is sent back: the
  API requires it there, and a change made by someone else in between is refused (412) instead of overwritten.
* **Immutable kinds are named by their content.** An instance template (or a managed SSL certificate) cannot be
  changed, so :func:`immutable` names it ``<base>-<first 10 hex digits of the SHA-256 of its content>``: a changed
  template is a new name, a CREATE, and whatever points at it (the managed instance group; the HTTPS proxy) shows
  an UPDATE to the new link. An existing template of that name is NO CHANGE by construction. Old templates are
  left in place (a rollback is an apply of the old configuration, which finds its template still there); delete
  them with ``gcloud`` when unwanted.
* **Fields no method changes are a replacement.** A kind that keeps its name but has fields the API cannot
  change in place (:attr:`Kind.replaced_on`: a global address's type, IP version and tier; a global forwarding rule's IP
  address, protocol, ports and scheme) is compared like any other; a difference there plans a DELETE (its note
  names the fields: ``replaced: port_range cannot be changed in place``) and a CREATE of the same name. The
  DELETEs come together before the first of those CREATEs, in the reverse order (what uses a resource first). A
  forwarding rule's IPAddress is written as the address's link and read back as its IP
  (:attr:`Kind.resolved`): it is compared with the address's IP, and a rule on an address made anew is
  replaced with it. A field the API answers in a canonical form (a port ``443`` as ``443-443``) is compared in
  that form (:attr:`Kind.canonical`). Fields nothing can change and that are no reason to replace (a
  description) are left out of the comparison with ``create_only``.
* **Fields and lists with methods of their own.** A backend service's ``securityPolicy`` is output only: a
  :class:`Setter` leaves it out of insert and PATCH bodies and writes it with ``setSecurityPolicy``; it is still
  compared, so a policy taken off is drift; ``Resource.unwanted`` names a value that must not be there (our
  policy, once the frontend is off), cleared by the same method (an empty reference). A forwarding rule's
  ``target`` is sent on insert and changed with ``setTarget`` (``Setter.in_insert``). A security policy's
  ``rules`` cannot be patched (:attr:`Kind.by_rule`):
  they are compared as a whole and made right rule by rule, by priority (removeRule, addRule, patchRule).
* **DELETE only by name, only what was ours.** A platform names the resources of its own that must not exist
  (an optional firewall rule turned off, the load balancer's frontend turned off: :class:`Absent`), and those are
  deleted if they exist, in the order named (what uses a resource before it). Resources named by their content
  are found by a list call filtered on our name pattern (``Absent.listed``, e.g.
  ``name eq "erlmcp-cert-[0-9a-f]{10}"``: the API matches the whole name); a collection is never listed whole,
  and whatever else is in the project is never touched.
* **Operations are waited for explicitly.** Writes use the ``*_unary`` calls and the Global/Region Operations
  ``wait`` method until DONE; an operation that ends in error fails the command. (The library's
  ``ExtendedOperation.result()`` polls through a client it builds on Google's default endpoint, which would
  bypass ``--endpoint``.)
* **Connections.** Application Default Credentials normally (``--endpoint`` may point at another API host over
  TLS); ``--insecure --endpoint HOST:PORT`` is plain HTTP with anonymous credentials, for a local server that
  speaks the Compute Engine REST protocol (the tests' ``tests/compute_rest.py``).
* **Errors** from the API, the network or the credentials become :class:`~deployer.errors.CloudError` naming the
  resource and what was attempted; bad input is :class:`~deployer.errors.ValuesError`, raised before any call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TextIO

import requests
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import GoogleAPICallError, NotFound
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import compute_v1

from deployer.errors import CloudError, ValuesError
from deployer.gcp import converge
from deployer.gcp.changes import (
    CREATE,
    DELETE,
    NO_CHANGE,
    UPDATE,
    Change,
    differences,
    emit_desired,
    render,
    rest_fields,
    run_mode,
)
from deployer.gcp.config import GcpConfig, config_from
from deployer.gcp.converge import Step, Write
from deployer.gcp.credentials import default_credentials
from deployer.log import Log

__all__ = [
    "API_ROOT",
    "AUTOSCALER",
    "Absent",
    "BACKEND_SERVICE",
    "FIREWALL",
    "GLOBAL_ADDRESS",
    "GLOBAL_BACKEND_SERVICE",
    "GLOBAL_FORWARDING_RULE",
    "GLOBAL_HEALTH_CHECK",
    "HEALTH_CHECK",
    "INSTANCE_GROUP_MANAGER",
    "INSTANCE_TEMPLATE",
    "NETWORK",
    "ROUTER",
    "SECURITY_POLICY",
    "SSL_CERTIFICATE",
    "SUBNETWORK",
    "TARGET_HTTPS_PROXY",
    "TARGET_HTTP_PROXY",
    "URL_MAP",
    "ComputeApi",
    "Kind",
    "Location",
    "Log",
    "Platform",
    "Requirement",
    "Resource",
    "Setter",
    "check_name",
    "immutable",
    "plan",
    "run",
    "view",
]

API_ROOT = "https://www.googleapis.com/compute/v1"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
CALL_TIMEOUT = 60.0  # seconds one API call may take
OPERATION_TIMEOUT = 20 * 60.0  # seconds an operation may take to be DONE
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Kind:
    """One kind of Compute Engine resource: its client and message, its URL collection, the request field that
    names it (``firewall``: the body is ``firewall_resource``), global or regional, mutable or not."""

    title: str
    client: type[Any]
    message: type[Any]
    collection: str
    field: str
    regional: bool
    immutable: bool = False
    by_rule: bool = False  # its ``rules`` change only through addRule, patchRule and removeRule (by priority)
    replaced_on: frozenset[str] = frozenset()  # fields no method changes in place: a difference is a replacement
    # Fields written as a link but read back as a field of the linked resource (a forwarding rule's IPAddress:
    # the address's ``address``), as (field, field of the linked resource).
    resolved: tuple[tuple[str, str], ...] = ()
    # Fields the API answers in a canonical form of what was sent (a forwarding rule's port 443 as "443-443"), or
    # may leave out at their default (None: an address's tier, PREMIUM): where the desired message sets the
    # field, both sides are compared in that form.
    canonical: tuple[tuple[str, Callable[[Any], Any]], ...] = ()


NETWORK = Kind("network", compute_v1.NetworksClient, compute_v1.Network, "networks", "network", False)
SUBNETWORK = Kind("subnetwork", compute_v1.SubnetworksClient, compute_v1.Subnetwork, "subnetworks", "subnetwork", True)
ROUTER = Kind("router", compute_v1.RoutersClient, compute_v1.Router, "routers", "router", True)
FIREWALL = Kind("firewall rule", compute_v1.FirewallsClient, compute_v1.Firewall, "firewalls", "firewall", False)
INSTANCE_TEMPLATE = Kind(
    "instance template",
    compute_v1.InstanceTemplatesClient,
    compute_v1.InstanceTemplate,
    "instanceTemplates",
    "instance_template",
    False,
    immutable=True,
)
HEALTH_CHECK = Kind(
    "regional health check",
    compute_v1.RegionHealthChecksClient,
    compute_v1.HealthCheck,
    "healthChecks",
    "health_check",
    True,
)
GLOBAL_HEALTH_CHECK = Kind(
    "health check", compute_v1.HealthChecksClient, compute_v1.HealthCheck, "healthChecks", "health_check", False
)
INSTANCE_GROUP_MANAGER = Kind(
    "instance group manager",
    compute_v1.RegionInstanceGroupManagersClient,
    compute_v1.InstanceGroupManager,
    "instanceGroupManagers",
    "instance_group_manager",
    True,
)
AUTOSCALER = Kind(
    "autoscaler", compute_v1.RegionAutoscalersClient, compute_v1.Autoscaler, "autoscalers", "autoscaler", True
)
BACKEND_SERVICE = Kind(
    "regional backend service",
    compute_v1.RegionBackendServicesClient,
    compute_v1.BackendService,
    "backendServices",
    "backend_service",
    True,
)
GLOBAL_BACKEND_SERVICE = Kind(
    "backend service",
    compute_v1.BackendServicesClient,
    compute_v1.BackendService,
    "backendServices",
    "backend_service",
    False,
)
# The global external Application Load Balancer's frontend. A certificate cannot be changed: it is named by its
# content (a new domain list is a new certificate). A global address has no method that changes it: any compared
# field that differs replaces it. A global forwarding rule changes its target through setTarget (a Setter) and
# its network tier through patch; its address, protocol, ports and scheme only by a replacement.
GLOBAL_ADDRESS = Kind(
    "global address",
    compute_v1.GlobalAddressesClient,
    compute_v1.Address,
    "addresses",
    "address",
    False,
    replaced_on=frozenset({"address_type", "ip_version", "network_tier"}),
    canonical=(
        ("address_type", lambda value: value or "EXTERNAL"),
        ("ip_version", lambda value: value or "IPV4"),
        ("network_tier", lambda value: value or "PREMIUM"),
    ),
)
SSL_CERTIFICATE = Kind(
    "SSL certificate",
    compute_v1.SslCertificatesClient,
    compute_v1.SslCertificate,
    "sslCertificates",
    "ssl_certificate",
    False,
    True,
)
SECURITY_POLICY = Kind(
    "security policy",
    compute_v1.SecurityPoliciesClient,
    compute_v1.SecurityPolicy,
    "securityPolicies",
    "security_policy",
    False,
    by_rule=True,
)
URL_MAP = Kind("URL map", compute_v1.UrlMapsClient, compute_v1.UrlMap, "urlMaps", "url_map", False)
TARGET_HTTPS_PROXY = Kind(
    "target HTTPS proxy",
    compute_v1.TargetHttpsProxiesClient,
    compute_v1.TargetHttpsProxy,
    "targetHttpsProxies",
    "target_https_proxy",
    False,
)
TARGET_HTTP_PROXY = Kind(
    "target HTTP proxy",
    compute_v1.TargetHttpProxiesClient,
    compute_v1.TargetHttpProxy,
    "targetHttpProxies",
    "target_http_proxy",
    False,
)
GLOBAL_FORWARDING_RULE = Kind(
    "global forwarding rule",
    compute_v1.GlobalForwardingRulesClient,
    compute_v1.ForwardingRule,
    "forwardingRules",
    "forwarding_rule",
    False,
    replaced_on=frozenset({"I_p_address", "I_p_protocol", "port_range", "load_balancing_scheme"}),
    resolved=(("I_p_address", "address"),),
    canonical=(
        ("port_range", lambda ports: ports if ports is None or "-" in ports else f"{ports}-{ports}"),
        ("I_p_protocol", lambda value: value or "TCP"),
        ("network_tier", lambda value: value or "PREMIUM"),
    ),
)


@dataclass(frozen=True)
class Location:
    """The project and region resources live in, and the links the API uses for them."""

    project: str
    region: str

    def link(self, kind: Kind, name: str) -> str:
        scope = f"regions/{self.region}" if kind.regional else "global"
        return f"{API_ROOT}/projects/{self.project}/{scope}/{kind.collection}/{name}"

    def zone_link(self, zone: str) -> str:
        return f"{API_ROOT}/projects/{self.project}/zones/{zone}"

    def instance_group_link(self, name: str) -> str:
        """The instance group a regional managed instance group called ``name`` manages."""
        return f"{API_ROOT}/projects/{self.project}/regions/{self.region}/instanceGroups/{name}"


@dataclass(frozen=True)
class Setter:
    """A field the API sets only through a method of its own (a backend service's output-only
    ``security_policy``: ``setSecurityPolicy``; a forwarding rule's ``target``: ``setTarget``): left out of patch
    bodies and set by the client's ``method`` (a ``*_unary`` call), whose body field ``body`` is ``wrap(value)``
    (``wrap("")``: to unset it). It is left out of insert bodies and set after the insert too, unless
    ``in_insert`` (the insert takes it, as a forwarding rule's target)."""

    field: str
    method: str
    body: str
    wrap: Callable[[Any], Any]
    in_insert: bool = False


@dataclass(frozen=True)
class Resource:
    """One resource as it should be: the message (with its name); ``create_only`` fields are sent on insert and
    never compared; ``setters`` fields are compared but written by their own methods; ``note`` is printed next to
    a CREATE or UPDATE. ``unwanted``: (field, value) pairs of setter fields the message leaves unset whose value,
    if the actual one holds it, is drift that the setter clears (a backend service's link to our security policy
    once the frontend is off); any other value there is someone else's and left alone."""

    kind: Kind
    message: Any
    create_only: frozenset[str] = frozenset()
    note: str = ""
    setters: tuple[Setter, ...] = ()
    region: str | None = None  # a regional resource of another region than the API's (a standby region's)
    unwanted: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return str(self.message.name)

    @property
    def shown(self) -> str:
        """The name in plans and renders: with its region when it is not the API's."""
        return _shown(self.name, self.region)


def _shown(name: str, region: str | None) -> str:
    return f"{name} ({region})" if region else name


@dataclass(frozen=True)
class Absent:
    """A resource of ours that must not exist (an optional firewall rule turned off): DELETE if it does. With
    ``listed``, ``name`` is a pattern (RE2, matching the whole name): every resource of ``kind`` whose name
    matches, in name order, found by a list call filtered by name (the certificates named by their content).
    ``note`` is printed next to the DELETE."""

    kind: Kind
    name: str
    region: str | None = None  # as Resource.region
    listed: bool = False
    note: str = "no longer in the configuration"


@dataclass(frozen=True)
class Requirement:
    """A resource another platform makes that this one needs (``hint``: the command that makes it)."""

    kind: Kind
    name: str
    hint: str
    region: str | None = None  # as Resource.region


def check_name(name: str, what: str) -> None:
    """Raises :class:`ValuesError` unless ``name`` is a Compute Engine resource name (RFC 1035, at most 63)."""
    if not _NAME.fullmatch(name):
        raise ValuesError(
            f"{what} {name!r} is not a Compute Engine name: 1-63 of a-z, 0-9 and -, starting with a "
            "letter, not ending with -; shorten or rename it in the configuration"
        )


def view(message: Any, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """The fields ``message`` sets, as a dict (fields at their default that it does not set are left out)."""
    found: dict[str, Any] = type(message).to_dict(
        message, use_integers_for_enums=False, always_print_fields_with_no_presence=False
    )
    for name in leave_out:
        found.pop(name, None)
    return found


def immutable(kind: Kind, base: str, message: Any, *, note: str = "") -> Resource:
    """``message`` named ``<base>-<hash of its content>``: a changed content is a new resource."""
    content = json.dumps(view(message, ("name",)), sort_keys=True, separators=(",", ":"))
    named = type(message)(message)
    named.name = f"{base}-{hashlib.sha256(content.encode()).hexdigest()[:10]}"
    return Resource(kind, named, note=note)


class ComputeApi:
    """The Compute Engine clients of one project and region; :meth:`connect` makes them."""

    def __init__(self, location: Location, make_client: Callable[[type[Any]], Any]) -> None:
        self.location = location
        self._make_client = make_client
        self._clients: dict[type[Any], Any] = {}

    @classmethod
    def connect(cls, location: Location, endpoint: str | None = None, *, insecure: bool = False) -> ComputeApi:
        """Clients with Application Default Credentials on Google's endpoint (or ``endpoint``, over TLS); with
        ``insecure``: plain HTTP to ``endpoint`` and no credentials, for a local server speaking the API."""
        if insecure:
            if not endpoint:
                raise ValuesError("--insecure needs --endpoint HOST:PORT")
            anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]

            def plain(client: type[Any]) -> Any:
                transport = client.get_transport_class("rest")
                return client(transport=transport(host=endpoint, credentials=anonymous, url_scheme="http"))

            return cls(location, plain)
        credentials = default_credentials([CLOUD_PLATFORM])
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None

        def authorized(client: type[Any]) -> Any:
            return client(credentials=credentials, client_options=options)

        return cls(location, authorized)

    def client(self, client: type[Any]) -> Any:
        if client not in self._clients:
            self._clients[client] = self._make_client(client)
        return self._clients[client]

    def close(self) -> None:
        for made in self._clients.values():
            made.transport.close()
        self._clients.clear()

    def _scope(self, kind: Kind, region: str | None = None) -> dict[str, str]:
        """The request's project and, for a regional kind, region (``region``, else the API's own)."""
        regional = {"region": region or self.location.region} if kind.regional else {}
        return {"project": self.location.project, **regional}

    def get(self, kind: Kind, name: str, region: str | None = None) -> Any | None:
        """The resource, or None if there is none of that name (in ``region``, for a regional kind)."""
        request = {**self._scope(kind, region), kind.field: name}

        def read() -> Any | None:
            try:
                return self.client(kind.client).get(request=request, timeout=CALL_TIMEOUT)
            except NotFound:
                return None

        return _call(f"cannot read {kind.title} {_shown(name, region)}", self.location, read)

    def names(self, kind: Kind, pattern: str, region: str | None = None) -> list[str]:
        """The names of the resources of ``kind`` that match ``pattern`` in full (the API's ``name eq`` filter:
        an RE2 regular expression), sorted."""
        request = {**self._scope(kind, region), "filter": f'name eq "{pattern}"'}

        def listed() -> list[str]:
            return sorted(item.name for item in self.client(kind.client).list(request=request, timeout=CALL_TIMEOUT))

        found: list[str] = _call(f"cannot list {kind.title}s named {pattern}", self.location, listed)
        return found

    def insert(self, resource: Resource) -> None:
        """Insert the message without its setter fields, then set those it sets."""
        kind, what = resource.kind, f"cannot create {resource.kind.title} {resource.shown}"
        body = type(resource.message)(resource.message)
        later = [setter for setter in resource.setters if not setter.in_insert]
        for setter in later:
            delattr(body, setter.field)
        request = {**self._scope(kind, resource.region), f"{kind.field}_resource": body}
        operation = _call(
            what, self.location, lambda: self.client(kind.client).insert_unary(request=request, timeout=CALL_TIMEOUT)
        )
        self._wait(kind, operation, what, resource.region)
        for setter in later:
            if getattr(resource.message, setter.field):
                self.set(resource, setter)

    def set(self, resource: Resource, setter: Setter) -> None:
        """Write ``setter``'s field of the desired message with its own method."""
        kind, what = resource.kind, f"cannot set the {setter.field} of {resource.kind.title} {resource.shown}"
        value = setter.wrap(getattr(resource.message, setter.field))
        request = {**self._scope(kind, resource.region), kind.field: resource.name, setter.body: value}
        method = getattr(self.client(kind.client), setter.method)
        operation = _call(what, self.location, lambda: method(request=request, timeout=CALL_TIMEOUT))
        self._wait(kind, operation, what, resource.region)

    def rule(
        self, resource: Resource, verb: str, priority: int, rule: Any | None = None, clear: Sequence[str] = ()
    ) -> None:
        """``verb`` (add, patch, remove) the rule of ``priority`` of a :attr:`Kind.by_rule` resource; a patch also
        clears the fields at the (camelCase) paths ``clear`` (a patch leaves out what it does not name)."""
        kind, what = resource.kind, f"cannot {verb} rule {priority} of {resource.kind.title} {resource.shown}"
        request: dict[str, Any] = {**self._scope(kind, resource.region), kind.field: resource.name}
        if verb != "add":
            request["priority"] = priority
        if rule is not None:
            request[f"{kind.field}_rule_resource"] = rule
        if clear:
            request["update_mask"] = ",".join(clear)
        method = getattr(self.client(kind.client), f"{verb}_rule_unary")
        operation = _call(what, self.location, lambda: method(request=request, timeout=CALL_TIMEOUT))
        self._wait(kind, operation, what, resource.region)

    def patch(self, resource: Resource, fields: Iterable[str], actual: Any) -> None:
        """PATCH ``fields`` (top-level) of the desired message, with the fingerprint of ``actual`` if it has one."""
        kind, what = resource.kind, f"cannot update {resource.kind.title} {resource.shown}"
        body = kind.message(name=resource.name)
        for name in fields:
            setattr(body, name, getattr(resource.message, name))
        if "fingerprint" in kind.message.meta.fields and actual.fingerprint:
            body.fingerprint = actual.fingerprint
        request = {**self._scope(kind, resource.region), kind.field: resource.name, f"{kind.field}_resource": body}
        operation = _call(
            what, self.location, lambda: self.client(kind.client).patch_unary(request=request, timeout=CALL_TIMEOUT)
        )
        self._wait(kind, operation, what, resource.region)

    def delete(self, kind: Kind, name: str, region: str | None = None) -> None:
        what = f"cannot delete {kind.title} {_shown(name, region)}"
        request = {**self._scope(kind, region), kind.field: name}
        operation = _call(
            what, self.location, lambda: self.client(kind.client).delete_unary(request=request, timeout=CALL_TIMEOUT)
        )
        self._wait(kind, operation, what, region)

    def _wait(self, kind: Kind, operation: Any, what: str, region: str | None = None) -> None:
        """Until ``operation`` is DONE; CloudError if it ended in error or took longer than OPERATION_TIMEOUT."""
        operations = self.client(
            compute_v1.RegionOperationsClient if kind.regional else compute_v1.GlobalOperationsClient
        )
        deadline = time.monotonic() + OPERATION_TIMEOUT
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise CloudError(
                    f"{what}: operation {operation.name} not done after {OPERATION_TIMEOUT:.0f} s; "
                    "see it with `gcloud compute operations describe`"
                )
            request = {**self._scope(kind, region), "operation": operation.name}
            operation = _call(
                what, self.location, partial(operations.wait, request=request, timeout=CALL_TIMEOUT + 120)
            )
        if operation.error.errors:
            messages = "; ".join(f"{e.message} ({e.code})" for e in operation.error.errors)
            raise CloudError(f"{what}: {messages}")


def _call(what: str, location: Location, call: Callable[[], Any]) -> Any:
    """``call()``, with the API's, the network's and the credentials' errors as CloudError saying ``what``."""
    try:
        return call()
    except GoogleAPICallError as exc:
        hint = ""
        if exc.code == 403:
            hint = (
                f"; check that the Compute Engine API is enabled in project {location.project} and that your "
                "account may change it (e.g. roles/compute.networkAdmin, roles/compute.instanceAdmin.v1)"
            )
        raise CloudError(f"{what}: {exc.message} (HTTP {exc.code}){hint}") from exc
    except requests.RequestException as exc:
        raise CloudError(f"{what}: the Compute Engine API cannot be reached ({type(exc).__name__}: {exc})") from exc
    except GoogleAuthError as exc:
        raise CloudError(
            f"{what}: the credentials were refused ({exc}); run `gcloud auth application-default login`"
        ) from exc


def _compare(resource: Resource, actual: Any | None, resolved: dict[str, Any] | None = None) -> Change:
    """CREATE, NO CHANGE or UPDATE with the differing fields; ``resolved``: values to compare instead of the
    desired ones (a link read back as the linked resource's field)."""
    kind = resource.kind
    if actual is None:
        return Change(CREATE, kind.title, resource.shown, desired=resource, note=resource.note)
    if kind.immutable:  # named by its content: the same name is the same content
        return Change(NO_CHANGE, kind.title, resource.shown, desired=resource, actual=actual)
    desired, found_view = view(resource.message, resource.create_only), view(actual)
    desired.update(resolved or {})
    for name, form in kind.canonical:
        if name in desired:
            desired[name], found_view[name] = form(desired[name]), form(found_view.get(name))
    found = differences(desired, found_view)
    found += [(name, value, None) for name, value in resource.unwanted
              if name not in desired and found_view.get(name) == value]  # fmt: skip
    return Change(
        UPDATE if found else NO_CHANGE,
        kind.title,
        resource.shown,
        found,
        resource,
        actual,
        resource.note if found else "",
    )


def _link(api: ComputeApi, kind: Kind, name: str, region: str | None) -> str:
    return Location(api.location.project, region or api.location.region).link(kind, name)


def _resolved(
    resource: Resource, planned: dict[str, tuple[Resource, Any]], new: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values a :attr:`Kind.resolved` field reads back as (the linked resource's field, when it exists and
    stays), and why the resource must be replaced for a linked one that is new (created or replaced), by field."""
    values: dict[str, Any] = {}
    why: dict[str, str] = {}
    for name, source in resource.kind.resolved:
        link = getattr(resource.message, name)
        if link in new:
            values[name] = f"(the {new[link]}'s, once made)"
            why[name] = f"its {new[link]} is made anew ({name} cannot be changed in place)"
        elif link in planned and planned[link][1] is not None:
            values[name] = getattr(planned[link][1], source)
    return values, why


def _fields(change: Change) -> list[str]:
    return _top_level(path for path, _, _ in change.differences)


def plan(api: ComputeApi, resources: Sequence[Resource], absent: Sequence[Absent] = ()) -> list[Step]:
    """The steps that make each resource as desired, in order, then delete those of ``absent`` that exist (each
    plan line with its write, for :func:`deployer.gcp.converge.apply`); reads only.

    A resource whose :attr:`Kind.replaced_on` fields differ, or that links through a :attr:`Kind.resolved` field to
    one made anew, is replaced: a DELETE, then a CREATE in its place. The DELETEs of the replaced resources come
    together, in the reverse order, before the first of their CREATEs (what uses a resource goes first)."""
    actuals = [api.get(resource.kind, resource.name, resource.region) for resource in resources]
    planned = {_link(api, r.kind, r.name, r.region): (r, a) for r, a in zip(resources, actuals, strict=True)}
    new: dict[str, str] = {}  # links of the resources this plan creates or replaces: their title and name
    changes: list[Change] = []
    replaced: list[Change] = []
    first = 0
    for resource, actual in zip(resources, actuals, strict=True):
        values, anew = _resolved(resource, planned, new)
        change = _compare(resource, actual, values)
        fixed = [name for name in _fields(change) if name in resource.kind.replaced_on and name not in anew]
        why = [*anew.values(), *([f"{', '.join(fixed)} cannot be changed in place"] if fixed else [])]
        if change.action == UPDATE and why:
            first = first if replaced else len(changes)
            replaced.append(
                Change(
                    DELETE,
                    change.kind,
                    change.name,
                    change.differences,
                    resource,
                    actual,
                    "replaced: " + "; ".join(why),
                )
            )
            again = ["made again (replaced)", *([resource.note] if resource.note else [])]
            change = Change(CREATE, change.kind, change.name, desired=resource, note="; ".join(again))
        if change.action == CREATE:
            new[_link(api, resource.kind, resource.name, resource.region)] = f"{resource.kind.title} {resource.shown}"
        changes.append(change)
    changes[first:first] = reversed(replaced)
    for gone in absent:
        for name in api.names(gone.kind, gone.name, gone.region) if gone.listed else [gone.name]:
            actual = api.get(gone.kind, name, gone.region)
            if actual is not None:
                changes.append(
                    Change(
                        DELETE,
                        gone.kind.title,
                        _shown(name, gone.region),
                        desired=Absent(gone.kind, name, gone.region),
                        actual=actual,
                        note=gone.note,
                    )
                )
    return [Step(change, _write(api, change)) for change in changes]


def _top_level(paths: Iterable[str]) -> list[str]:
    """The top-level fields of difference paths (``allowed[0].ports`` -> ``allowed``), in order, once each."""
    return list(dict.fromkeys(re.split(r"[.\[]", path, maxsplit=1)[0] for path in paths))


def _cleared(desired: dict[str, Any], actual: dict[str, Any], path: str = "") -> list[str]:
    """The paths set in ``actual`` but not in ``desired`` inside objects ``desired`` sets (a rate_based_ban's
    ``rateLimitOptions.banDurationSec`` when the rule is a throttle again): what a patch must clear."""
    found: list[str] = []
    for name, value in actual.items():
        where = f"{path}.{name}" if path else name
        if name not in desired:
            found += [where] if path else []
        elif isinstance(value, dict) and isinstance(desired[name], dict):
            found += _cleared(desired[name], value, where)
    return found


def _sync_rules(api: ComputeApi, resource: Resource, actual: Any) -> None:
    """Make the rules of a :attr:`Kind.by_rule` resource the desired ones, rule by rule (by priority)."""
    desired = {rule.priority: rule for rule in resource.message.rules}
    found = {rule.priority: rule for rule in actual.rules}
    for priority in sorted(found.keys() - desired.keys()):
        api.rule(resource, "remove", priority)
    for priority, rule in desired.items():
        if priority not in found:
            api.rule(resource, "add", priority, rule)
        elif differences(view(rule), view(found[priority])):
            api.rule(resource, "patch", priority, rule, _cleared(rest_fields(rule), rest_fields(found[priority])))


def _update(api: ComputeApi, change: Change) -> None:
    """PATCH what differs; the rules and the setter fields each through their own methods."""
    resource: Resource = change.desired
    fields = _top_level(path for path, _, _ in change.differences)
    setters = [setter for setter in resource.setters if setter.field in fields]
    separate = {setter.field for setter in setters} | ({"rules"} if resource.kind.by_rule else set())
    patched = [name for name in fields if name not in separate]
    if patched:
        api.patch(resource, patched, change.actual)
    if resource.kind.by_rule and "rules" in fields:
        _sync_rules(api, resource, change.actual)
    for setter in setters:
        api.set(resource, setter)


def _write(api: ComputeApi, change: Change) -> Write | None:
    """What makes the plan line so: an insert, the update's calls (:func:`_update`) or a delete, each waiting for
    its operations, returning the line apply logs; None for NO CHANGE."""
    resource = change.desired
    if change.action == CREATE:

        def create() -> str:
            api.insert(resource)
            return f"created {change.kind} {change.name}"

        return create
    if change.action == UPDATE:

        def update() -> str:
            _update(api, change)
            return f"updated {change.kind} {change.name}: " + ", ".join(path for path, _, _ in change.differences)

        return update
    if change.action == DELETE:

        def delete() -> str:
            api.delete(resource.kind, resource.name, resource.region)
            return f"deleted {change.kind} {change.name}"

        return delete
    return None


def _required(api: ComputeApi, requirements: Sequence[Requirement], *, applying: bool, log: Log) -> None:
    for needed in requirements:
        if api.get(needed.kind, needed.name, needed.region) is None:
            message = f"the {needed.kind.title} {_shown(needed.name, needed.region)} does not exist: {needed.hint}"
            if applying:
                raise CloudError(message)
            log(f"warning: {message} (before apply)")


@dataclass(frozen=True)
class Platform:
    """What :func:`run` needs of a platform: a title, the desired resources, what must exist first."""

    title: Callable[[GcpConfig], str]
    desired: Callable[[GcpConfig], Sequence[Resource]]
    requirements: Callable[[GcpConfig], Sequence[Requirement]] = field(default=lambda _: ())
    absent: Callable[[GcpConfig], Sequence[Absent]] = field(default=lambda _: ())


def rendered(title: str, resources: Sequence[Resource]) -> dict[str, Any]:
    """The desired resources as plain data, offline: each one's kind, name and request body (the REST API's
    camelCase field names), in the order apply creates them."""
    return {
        "title": title,
        "resources": [
            {"kind": resource.kind.title, "name": resource.shown, "body": rest_fields(resource.message)}
            for resource in resources
        ],
    }


def run(args: argparse.Namespace, platform: Platform, *, log: Log, out: TextIO | None = None) -> int:
    """``<platform> plan|apply [--dry-run]``: the configuration and the desired resources are built (and refused
    with :class:`ValuesError`) before any call; then plan, apply unless it is a plan or a dry run, print."""
    config = config_from(args)
    resources = platform.desired(config)
    if args.action == "render":
        emit_desired(rendered(platform.title(config), resources), out=out or sys.stdout, as_json=args.json)
        return 0
    if args.insecure and not args.endpoint:
        raise ValuesError("--insecure needs --endpoint HOST:PORT")
    mode = run_mode(args.action, args.dry_run)
    applying = mode == "apply"
    api = ComputeApi.connect(Location(config.project, config.region), args.endpoint, insecure=args.insecure)
    try:
        _required(api, platform.requirements(config), applying=applying, log=log)
        steps = plan(api, resources, platform.absent(config))
        if applying:
            converge.apply(steps, log=log)
    finally:
        api.close()
    render(platform.title(config), converge.changes(steps), mode=mode, out=out or sys.stdout, as_json=args.json)
    return 0
