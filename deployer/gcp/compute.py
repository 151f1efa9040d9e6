"""``python -m deployer gce plan|apply|render [--dry-run]``: erlmcp on Compute Engine (the seed design's section 3), a
regional managed instance group behind a global external Application Load Balancer, converged with
:mod:`deployer.gcp.compute_api`. It needs the network (``python -m deployer network apply``) and, for the secrets
it reads, ``python -m deployer secrets apply``.

What it makes, in this order (each refers only to what comes before it):

* the HTTP health check ``erlmcp-health``: ``GET /health`` on port 8080 every 10 s (2 successes healthy,
  3 failures unhealthy), used both for autohealing and by the load balancer. It is global, as a global load
  balancer's backend service needs; regional with ``compute.loadBalancingScheme: INTERNAL_MANAGED``;
* the instance template ``erlmcp-template-<content hash>``: ``e2-standard-4``, Container-Optimized OS (it has
  Docker, systemd and a read-only, verified root; ``compute.sourceImage``), a Shielded VM (secure boot, vTPM,
  integrity monitoring), no external address (egress through Cloud NAT, Google APIs through Private Google
  Access), the network tag ``erlmcp-server`` that the health-check and HTTPS firewall rules target, the service
  account of the configuration (``serviceAccount``, the one ``secrets apply`` lets read the secrets) with the
  seed's scopes, OS Login instead of metadata SSH keys (SSH through IAP, checked by IAM), and the startup script
  (:func:`startup_script`). Templates cannot change: a changed one is a new name (see :mod:`compute_api`);
* the regional managed instance group ``erlmcp-mig`` over the configuration's zones (default the region's a, b and
  c, evenly), VMs ``erlmcp-vm-*``, named port ``http:8080``, autohealing on the health check after 300 s, and a
  proactive update policy: a new template replaces the VMs one zone-width at a time (surge = number of zones,
  none unavailable);
* the regional autoscaler ``erlmcp-autoscaler``: 2 to 10 VMs at 70 % CPU, 60 s cool-down. It owns the group's
  size, so the group's ``targetSize`` is set at creation only and never compared;
* with the frontend (``compute.frontend.enabled``), the Cloud Armor security policy ``erlmcp-armor``: a rule per
  client IP (``throttle``, or ``rate_based_ban`` for ``banDurationSec``) that answers 429 past
  ``rateLimitCount`` requests in ``rateLimitIntervalSec`` (default 600 in 60 s), and the default rule (priority
  2147483647) that allows the rest. Its rules change through their own methods (addRule, patchRule, removeRule);
* the backend service ``erlmcp-backend``: HTTP to the named port, the group as its backend (utilization
  balancing), the health check, session affinity NONE, 30 s timeout. ``EXTERNAL_MANAGED`` (the default) makes it
  global, the global external Application Load Balancer's; with the frontend its ``securityPolicy`` is
  ``erlmcp-armor`` (set through ``setSecurityPolicy``: the field is output only). ``INTERNAL_MANAGED`` keeps it
  regional (a regional internal Application Load Balancer's), as earlier versions made it; that load balancer's
  frontend (proxy-only subnet, internal forwarding rule) is not made here, and the frontend below refuses it.
  Earlier versions made a regional backend service and health check for ``EXTERNAL_MANAGED`` too: a plan with
  the global ones deletes those (by name, after the group has moved to the global check);
* with the frontend, the global external Application Load Balancer (``EXTERNAL_MANAGED``, PREMIUM tier): the
  reserved global address ``erlmcp-ip`` (point the domains' DNS A records at it), the Google-managed certificate
  ``erlmcp-cert-<content hash>`` for ``compute.frontend.domains`` (required; a new domain list is a new
  certificate the HTTPS proxy moves to; the old one is left, as templates are; Google provisions it once the
  domains resolve to the address), the URL map ``erlmcp-url-map`` (every request to the backend service), the
  target HTTPS proxy ``erlmcp-https-proxy`` and the forwarding rule ``erlmcp-https`` on port 443; then port 80:
  the URL map ``erlmcp-http-redirect`` (a 301 to https for every request), the target HTTP proxy
  ``erlmcp-http-proxy`` and the forwarding rule ``erlmcp-http``. Drift: a forwarding rule pointed at another
  target is an UPDATE (``setTarget``); one on another IP address, protocol, port range or scheme, and an address
  of another type, IP version or tier, are replaced (DELETE, then CREATE, the plan line naming the field: no
  method changes them), an address replaced with the rules on it (a new IP: point DNS at it again); a rule still
  on the IP of an address reserved again is replaced too. Descriptions are not compared.

Turning the frontend off (``compute.frontend.enabled: false`` with EXTERNAL_MANAGED) deletes what it made, by
name, each after what uses it: the forwarding rules, the proxies, the certificates (every one named
``erlmcp-cert-<hash>``, those of earlier domain lists too: listed with that name filter), the URL maps, the
security policy (the backend service's plan line first takes it off, if it is the one set there), the address
last; the address's IP is released, so DNS must point elsewhere. A security policy someone else put on the
backend service, and anything not named as we name it, is left alone. Left in place: all of it when the scheme
is INTERNAL_MANAGED (the global load balancer is then no longer read).

The startup script is ``startup.sh`` next to this module, with the settings (project, image, ports, the secrets)
written in as shell-quoted assignments. It runs the server container with the same hardening as the chart (read-only
root, UID 1000, no capabilities, tmpfs /tmp and /var/run) and hands it the secrets as read-only files on tmpfs
and, for ``redis-url``, an env file: see the script's header.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any, TextIO

from google.cloud import compute_v1

from deployer.errors import ValuesError
from deployer.gcp.compute_api import (
    AUTOSCALER,
    BACKEND_SERVICE,
    GLOBAL_ADDRESS,
    GLOBAL_BACKEND_SERVICE,
    GLOBAL_FORWARDING_RULE,
    GLOBAL_HEALTH_CHECK,
    HEALTH_CHECK,
    INSTANCE_GROUP_MANAGER,
    INSTANCE_TEMPLATE,
    NETWORK,
    SECURITY_POLICY,
    SSL_CERTIFICATE,
    SUBNETWORK,
    TARGET_HTTP_PROXY,
    TARGET_HTTPS_PROXY,
    URL_MAP,
    Absent,
    Kind,
    Location,
    Log,
    Platform,
    Requirement,
    Resource,
    Setter,
    check_name,
    immutable,
    run,
)
from deployer.gcp.config import GcpConfig
from deployer.gcp.network import SERVER_TAG
from deployer.gcp.server_secrets import SecretSpec, by_key

__all__ = ["SCOPES", "STARTUP_SCRIPT", "absent", "check", "command", "desired", "names", "startup_script"]

STARTUP_SCRIPT = Path(__file__).with_name("startup.sh")
SETTINGS_MARK = "# @@SETTINGS@@"
SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring.write",
)
PORT_NAME = "http"
SCHEMES = ("EXTERNAL_MANAGED", "INTERNAL_MANAGED")
RATE_LIMIT_ACTIONS = ("throttle", "rate_based_ban")
RATE_INTERVALS = (10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600)  # Cloud Armor's intervalSec
DEFAULT_RULE = 2147483647  # a security policy's default rule: the lowest priority
FRONTEND_KEYS = frozenset(
    {"policy", "address", "certificate", "url_map", "https_proxy", "https_rule", "redirect", "http_proxy", "http_rule"}
)  # the names (keys of names()) of the frontend's resources
MAX_DOMAINS = 100  # a Google-managed certificate's
_DOMAIN = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")
SECURITY_POLICY_SETTER = Setter(
    "security_policy",
    "set_security_policy_unary",
    "security_policy_reference_resource",
    lambda link: (
        compute_v1.SecurityPolicyReference(security_policy=link) if link else compute_v1.SecurityPolicyReference()
    ),
)
TARGET_SETTER = Setter(
    "target",
    "set_target_unary",
    "target_reference_resource",
    lambda link: compute_v1.TargetReference(target=link),
    in_insert=True,
)
CERTIFICATE_HASH = "-[0-9a-f]{10}"  # after the certificate's base name: the hash of its content (immutable)
_IMAGE = re.compile(
    r"[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(@sha256:[0-9a-f]{64})?"
)
_TYPE = re.compile(r"[a-z][a-z0-9-]*")
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # a Compute Engine name (compute_api.check_name)


def names(config: GcpConfig) -> dict[str, str]:
    """The resources' names (the template's is a base: its content hash follows)."""
    base = config.name
    return {
        "health": f"{base}-health",
        "template": f"{base}-template",
        "mig": f"{base}-mig",
        "autoscaler": f"{base}-autoscaler",
        "backend": f"{base}-backend",
        "vm": f"{base}-vm",
        "policy": f"{base}-armor",
        "address": f"{base}-ip",
        "certificate": f"{base}-cert",
        "url_map": f"{base}-url-map",
        "https_proxy": f"{base}-https-proxy",
        "https_rule": f"{base}-https",
        "redirect": f"{base}-http-redirect",
        "http_proxy": f"{base}-http-proxy",
        "http_rule": f"{base}-http",
    }


def _group_names(config: GcpConfig) -> dict[str, str]:
    """The names of what is made without the frontend."""
    return {key: name for key, name in names(config).items() if key not in FRONTEND_KEYS}


def _global(config: GcpConfig) -> bool:
    """A global backend service and health check (the global external Application Load Balancer's), or the
    regional ones of an internal Application Load Balancer."""
    return config.compute.load_balancing_scheme == "EXTERNAL_MANAGED"


def _health_kind(config: GcpConfig) -> Kind:
    return GLOBAL_HEALTH_CHECK if _global(config) else HEALTH_CHECK


def _backend_kind(config: GcpConfig) -> Kind:
    return GLOBAL_BACKEND_SERVICE if _global(config) else BACKEND_SERVICE


# -- the configuration's checks --------------------------------------------------------------------------------


def _secret_specs(config: GcpConfig) -> list[SecretSpec]:
    try:
        return [by_key(key) for key in config.secrets.keys]
    except KeyError as exc:
        raise ValuesError(f"secrets.keys: {exc.args[0]}") from exc


def _check_sizes(config: GcpConfig) -> None:
    c = config.compute
    if not 1 <= c.min_replicas <= c.max_replicas <= 1000:
        raise ValuesError(
            f"compute.minReplicas {c.min_replicas} and compute.maxReplicas {c.max_replicas}: need "
            "1 <= minReplicas <= maxReplicas <= 1000"
        )
    if not 0 < c.cpu_target <= 1:
        raise ValuesError(f"compute.cpuTarget: {c.cpu_target} is a fraction of a CPU, in (0, 1] (0.7 = 70 %)")
    for key, value, low in (
        ("cooldownSeconds", c.cooldown_seconds, 0),
        ("bootDiskGb", c.boot_disk_gb, 10),
        ("autohealingDelaySeconds", c.autohealing_delay_seconds, 0),
        ("backendTimeoutSeconds", c.backend_timeout_seconds, 1),
    ):
        if value < low:
            raise ValuesError(f"compute.{key}: {value} is below {low}")
    for key, port in (("port", c.port), ("metricsPort", c.metrics_port)):
        if not 1 <= port <= 65535:
            raise ValuesError(f"compute.{key}: {port} is not a TCP port")
    if c.port == c.metrics_port:
        raise ValuesError("compute.port and compute.metricsPort must differ")


def _check_names(config: GcpConfig) -> None:
    c = config.compute
    if not c.health_check_path.startswith("/") or any(ch.isspace() for ch in c.health_check_path):
        raise ValuesError(f"compute.healthCheckPath: {c.health_check_path!r} must be a path such as /health")
    if c.load_balancing_scheme not in SCHEMES:
        raise ValuesError(f"compute.loadBalancingScheme: {c.load_balancing_scheme!r} is not one of {SCHEMES}")
    for key, value in (("machineType", c.machine_type), ("bootDiskType", c.boot_disk_type)):
        if not _TYPE.fullmatch(value):
            raise ValuesError(f"compute.{key}: {value!r} is not a Compute Engine type name (e.g. e2-standard-4)")
    if not c.source_image or any(ch.isspace() for ch in c.source_image):
        raise ValuesError(f"compute.sourceImage: {c.source_image!r} is not an image (projects/P/global/images/...)")
    image = config.server_image()
    if not _IMAGE.fullmatch(image):
        raise ValuesError(f"image: {image!r} is not a container image reference (REGISTRY/PATH[:TAG][@sha256:...])")
    for zone in config.zone_list:
        if not re.fullmatch(re.escape(config.region) + r"-[a-z]", zone):
            raise ValuesError(f"zones: {zone!r} is not a zone of region {config.region} (e.g. {config.region}-a)")
    made = names(config) if config.compute.frontend.enabled else _group_names(config)
    for name in made.values():
        check_name(name + "-0123456789", "a resource name made from `name`")


def _check_domains(domains: tuple[str, ...]) -> None:
    if not domains:
        raise ValuesError(
            "compute.frontend.domains: the Google-managed certificate needs at least one domain (e.g. "
            "[mcp.example.com]) when compute.frontend.enabled is true"
        )
    if len(domains) > MAX_DOMAINS or len(set(domains)) != len(domains):
        raise ValuesError(f"compute.frontend.domains: at most {MAX_DOMAINS} distinct domains")
    for domain in domains:
        if not _DOMAIN.fullmatch(domain):
            raise ValuesError(
                f"compute.frontend.domains: {domain!r} is not a fully qualified lower-case domain name "
                "(a managed certificate takes no wildcard, IP address or trailing dot)"
            )


def _check_frontend(config: GcpConfig) -> None:
    f = config.compute.frontend
    if not f.enabled:
        return
    if not _global(config):
        raise ValuesError(
            "compute.frontend: the frontend is a global external Application Load Balancer: it needs "
            "compute.loadBalancingScheme EXTERNAL_MANAGED"
        )
    _check_domains(f.domains)
    if f.rate_limit_action not in RATE_LIMIT_ACTIONS:
        raise ValuesError(
            f"compute.frontend.rateLimitAction: {f.rate_limit_action!r} is not one of {RATE_LIMIT_ACTIONS}"
        )
    if f.rate_limit_count < 1:
        raise ValuesError(f"compute.frontend.rateLimitCount: {f.rate_limit_count} is below 1")
    if f.rate_limit_interval_sec not in RATE_INTERVALS:
        raise ValuesError(
            f"compute.frontend.rateLimitIntervalSec: {f.rate_limit_interval_sec} is not one of Cloud Armor's "
            f"intervals {RATE_INTERVALS}"
        )
    if f.ban_duration_sec < 1:
        raise ValuesError(f"compute.frontend.banDurationSec: {f.ban_duration_sec} is below 1")
    if not 0 <= f.rate_limit_priority < DEFAULT_RULE:
        raise ValuesError(
            f"compute.frontend.rateLimitPriority: {f.rate_limit_priority} is not in 0..{DEFAULT_RULE - 1}"
        )


def check(config: GcpConfig) -> None:
    """Raises :class:`ValuesError`, naming the key, for a configuration that cannot describe the group."""
    _check_sizes(config)
    _check_names(config)
    _check_frontend(config)
    _secret_specs(config)
    if config.standby is not None and not _global(config):
        raise ValuesError(
            "standby: a second region's group sits behind the global load balancer, and compute.loadBalancingScheme "
            f"{config.compute.load_balancing_scheme} is a regional one: use EXTERNAL_MANAGED"
        )


# -- the desired resources -------------------------------------------------------------------------------------


def startup_script(config: GcpConfig) -> str:
    """``startup.sh`` with this configuration's settings written in (shell-quoted)."""
    entries = [
        f"{s.secret_id(config.name)}|{s.key}|{s.env}|{'file' if s.as_file else 'env'}" for s in _secret_specs(config)
    ]
    settings = "\n".join(
        [
            f"readonly PROJECT={shlex.quote(config.project)}",
            f"readonly IMAGE={shlex.quote(config.server_image())}",
            f"readonly PORT={config.compute.port}",
            f"readonly METRICS_PORT={config.compute.metrics_port}",
            "readonly SECRETS=(" + " ".join(shlex.quote(entry) for entry in entries) + ")",
        ]
    )
    template = STARTUP_SCRIPT.read_text(encoding="utf-8")
    if template.count(SETTINGS_MARK) != 1:
        raise AssertionError(f"{STARTUP_SCRIPT} must hold {SETTINGS_MARK!r} once")
    return template.replace(SETTINGS_MARK, settings)


def _health_check(config: GcpConfig) -> Any:
    c = config.compute
    return compute_v1.HealthCheck(
        name=names(config)["health"],
        description="erlmcp: GET the health path of every VM (autohealing and the load balancer)",
        type_="HTTP",
        http_health_check=compute_v1.HTTPHealthCheck(port=c.port, request_path=c.health_check_path),
        check_interval_sec=10,
        timeout_sec=5,
        healthy_threshold=2,
        unhealthy_threshold=3,
    )


def _metadata(config: GcpConfig) -> Any:
    items = {
        "startup-script": startup_script(config),
        "enable-oslogin": "TRUE",  # SSH users and keys from IAM, not from metadata
        "block-project-ssh-keys": "TRUE",
        "google-logging-enabled": "true",  # Container-Optimized OS ships the container's logs to Cloud Logging
        "google-monitoring-enabled": "true",
    }
    return compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in items.items()])


def _instance_properties(config: GcpConfig, where: Location) -> Any:
    c = config.compute
    disk = compute_v1.AttachedDisk(
        boot=True,
        auto_delete=True,
        type_="PERSISTENT",
        mode="READ_WRITE",
        initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image=c.source_image, disk_size_gb=c.boot_disk_gb, disk_type=c.boot_disk_type
        ),
    )
    interface = compute_v1.NetworkInterface(
        network=where.link(NETWORK, config.network.name), subnetwork=where.link(SUBNETWORK, config.subnet_name)
    )
    return compute_v1.InstanceProperties(
        machine_type=c.machine_type,
        disks=[disk],
        network_interfaces=[interface],  # no access config: no external address
        tags=compute_v1.Tags(items=[SERVER_TAG]),
        labels={"managed-by": "erlmcp"},
        service_accounts=[compute_v1.ServiceAccount(email=config.service_account_email, scopes=list(SCOPES))],
        shielded_instance_config=compute_v1.ShieldedInstanceConfig(
            enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
        ),
        scheduling=compute_v1.Scheduling(
            automatic_restart=True, on_host_maintenance="MIGRATE", provisioning_model="STANDARD"
        ),
        metadata=_metadata(config),
    )


def _template(config: GcpConfig, where: Location) -> Resource:
    message = compute_v1.InstanceTemplate(
        description=f"erlmcp {config.server_image()} on Container-Optimized OS",
        properties=_instance_properties(config, where),
    )
    surge = len(config.zone_list)
    return immutable(
        INSTANCE_TEMPLATE,
        names(config)["template"],
        message,
        note=f"new content: the group replaces its VMs with it ({surge} at a time, none unavailable)",
    )


def _group(config: GcpConfig, where: Location, template: str) -> Any:
    c, n = config.compute, names(config)
    zones = [compute_v1.DistributionPolicyZoneConfiguration(zone=where.zone_link(z)) for z in config.zone_list]
    update = compute_v1.InstanceGroupManagerUpdatePolicy(
        type_="PROACTIVE",
        minimal_action="REPLACE",
        instance_redistribution_type="PROACTIVE",
        replacement_method="SUBSTITUTE",
        max_surge=compute_v1.FixedOrPercent(fixed=len(zones)),
        max_unavailable=compute_v1.FixedOrPercent(fixed=0),
    )
    healing = compute_v1.InstanceGroupManagerAutoHealingPolicy(
        health_check=where.link(_health_kind(config), n["health"]), initial_delay_sec=c.autohealing_delay_seconds
    )
    return compute_v1.InstanceGroupManager(
        name=n["mig"],
        description="erlmcp: the server VMs, across the region's zones",
        base_instance_name=n["vm"],
        versions=[
            compute_v1.InstanceGroupManagerVersion(
                name="erlmcp", instance_template=where.link(INSTANCE_TEMPLATE, template)
            )
        ],
        target_size=c.min_replicas,
        distribution_policy=compute_v1.DistributionPolicy(zones=zones, target_shape="EVEN"),
        named_ports=[compute_v1.NamedPort(name=PORT_NAME, port=c.port)],
        auto_healing_policies=[healing],
        update_policy=update,
    )


def _autoscaler(config: GcpConfig, where: Location) -> Any:
    c, n = config.compute, names(config)
    policy = compute_v1.AutoscalingPolicy(
        mode="ON",
        min_num_replicas=c.min_replicas,
        max_num_replicas=c.max_replicas,
        cool_down_period_sec=c.cooldown_seconds,
        cpu_utilization=compute_v1.AutoscalingPolicyCpuUtilization(utilization_target=c.cpu_target),
    )
    return compute_v1.Autoscaler(
        name=n["autoscaler"],
        description="erlmcp: the group's size, by CPU",
        target=where.link(INSTANCE_GROUP_MANAGER, n["mig"]),
        autoscaling_policy=policy,
    )


def _backend_service(config: GcpConfig, where: Location) -> Resource:
    c, n = config.compute, names(config)
    backends = [  # each region's group (with standby: both, active-active; the load balancer fails over)
        compute_v1.Backend(
            group=Location(region.project, region.region).instance_group_link(n["mig"]),
            balancing_mode="UTILIZATION",
            max_utilization=0.8,
            capacity_scaler=1.0,
        )
        for region in config.regions()
    ]
    service = compute_v1.BackendService(
        name=n["backend"],
        description="erlmcp: the load balancer's backend, the managed instance group",
        load_balancing_scheme=c.load_balancing_scheme,
        protocol="HTTP",
        port_name=PORT_NAME,
        timeout_sec=c.backend_timeout_seconds,
        session_affinity="NONE",
        health_checks=[where.link(_health_kind(config), n["health"])],
        backends=backends,
    )
    policy = where.link(SECURITY_POLICY, n["policy"])
    if not _global(config):
        return Resource(_backend_kind(config), service)
    if not c.frontend.enabled:  # our policy, if still set, is taken off (before the policy is deleted)
        unwanted = (("security_policy", policy),)
        return Resource(_backend_kind(config), service, setters=(SECURITY_POLICY_SETTER,), unwanted=unwanted)
    service.security_policy = policy
    return Resource(_backend_kind(config), service, setters=(SECURITY_POLICY_SETTER,))


def _every_source() -> Any:
    return compute_v1.SecurityPolicyRuleMatcher(
        versioned_expr="SRC_IPS_V1", config=compute_v1.SecurityPolicyRuleMatcherConfig(src_ip_ranges=["*"])
    )


def _security_policy(config: GcpConfig) -> Any:
    f = config.compute.frontend
    limits = compute_v1.SecurityPolicyRuleRateLimitOptions(
        conform_action="allow",
        exceed_action="deny(429)",
        enforce_on_key="IP",
        rate_limit_threshold=compute_v1.SecurityPolicyRuleRateLimitOptionsThreshold(
            count=f.rate_limit_count, interval_sec=f.rate_limit_interval_sec
        ),
    )
    if f.rate_limit_action == "rate_based_ban":
        limits.ban_duration_sec = f.ban_duration_sec
    rate = compute_v1.SecurityPolicyRule(
        priority=f.rate_limit_priority,
        description="erlmcp: requests per client IP; over the limit: 429",
        action=f.rate_limit_action,
        match=_every_source(),
        rate_limit_options=limits,
    )
    default = compute_v1.SecurityPolicyRule(
        priority=DEFAULT_RULE, description="default rule: allow", action="allow", match=_every_source()
    )
    return compute_v1.SecurityPolicy(
        name=names(config)["policy"],
        description="erlmcp: Cloud Armor in front of the backend service",
        type_="CLOUD_ARMOR",
        rules=[rate, default],
    )


def _https_frontend(config: GcpConfig, where: Location) -> list[Resource]:
    """The address, the managed certificate, the URL map to the backend, the HTTPS proxy and its rule on 443."""
    n = names(config)
    address = compute_v1.Address(
        name=n["address"],
        description="erlmcp: the load balancer's address (point the domains' DNS A records here)",
        address_type="EXTERNAL",
        ip_version="IPV4",
        network_tier="PREMIUM",
    )
    certificate = _certificate(config)
    url_map = compute_v1.UrlMap(
        name=n["url_map"],
        description="erlmcp: every request to the backend service",
        default_service=where.link(GLOBAL_BACKEND_SERVICE, n["backend"]),
    )
    proxy = compute_v1.TargetHttpsProxy(
        name=n["https_proxy"],
        description="erlmcp: TLS with the managed certificate",
        url_map=where.link(URL_MAP, n["url_map"]),
        ssl_certificates=[where.link(SSL_CERTIFICATE, certificate.name)],
    )
    dns = "a new IP address: point the domains' DNS A records at it"
    return [
        Resource(GLOBAL_ADDRESS, address, frozenset({"description"}), note=dns),
        certificate,
        Resource(URL_MAP, url_map),
        Resource(TARGET_HTTPS_PROXY, proxy),
        _forwarding_rule(config, where, "https_rule", TARGET_HTTPS_PROXY, 443),
    ]


def _certificate(config: GcpConfig) -> Resource:
    return immutable(
        SSL_CERTIFICATE,
        names(config)["certificate"],
        compute_v1.SslCertificate(
            description="erlmcp: Google-managed certificate",
            type_="MANAGED",
            managed=compute_v1.SslCertificateManagedSslCertificate(domains=sorted(config.compute.frontend.domains)),
        ),
        note="new domains: a new certificate; Google provisions it once the domains resolve to the address",
    )


def _forwarding_rule(config: GcpConfig, where: Location, key: str, target: Kind, port: int) -> Resource:
    """A rule of the address's port: its description is not compared (no method changes it), its target is
    changed through setTarget, its address, protocol, ports and scheme by a replacement (see compute_api)."""
    n = names(config)
    proxy = n["https_proxy"] if target is TARGET_HTTPS_PROXY else n["http_proxy"]
    rule = compute_v1.ForwardingRule(
        name=n[key],
        description=f"erlmcp: port {port} of the load balancer's address",
        I_p_address=where.link(GLOBAL_ADDRESS, n["address"]),
        I_p_protocol="TCP",
        port_range=str(port),
        target=where.link(target, proxy),
        load_balancing_scheme="EXTERNAL_MANAGED",
        network_tier="PREMIUM",
    )
    return Resource(GLOBAL_FORWARDING_RULE, rule, frozenset({"description"}), setters=(TARGET_SETTER,))


def _http_redirect(config: GcpConfig, where: Location) -> list[Resource]:
    """Port 80: a URL map that answers every request with a 301 to https, its HTTP proxy and its rule."""
    n = names(config)
    redirect = compute_v1.UrlMap(
        name=n["redirect"],
        description="erlmcp: HTTP to HTTPS",
        default_url_redirect=compute_v1.HttpRedirectAction(
            https_redirect=True, redirect_response_code="MOVED_PERMANENTLY_DEFAULT", strip_query=False
        ),
    )
    proxy = compute_v1.TargetHttpProxy(
        name=n["http_proxy"], description="erlmcp: HTTP, redirected", url_map=where.link(URL_MAP, n["redirect"])
    )
    return [
        Resource(URL_MAP, redirect),
        Resource(TARGET_HTTP_PROXY, proxy),
        _forwarding_rule(config, where, "http_rule", TARGET_HTTP_PROXY, 80),
    ]


def desired(config: GcpConfig) -> list[Resource]:
    """Every resource of the group, in the order they are made; ValuesError for a bad configuration."""
    check(config)
    where = Location(config.project, config.region)
    group = [Resource(_health_kind(config), _health_check(config))]
    for index, region in enumerate(config.regions()):  # the primary's group, then the standby region's
        here, other = Location(region.project, region.region), region.region if index else None
        template = _template(region, here)
        group += [
            template,
            Resource(
                INSTANCE_GROUP_MANAGER, _group(region, here, template.name), frozenset({"target_size"}), region=other
            ),
            Resource(AUTOSCALER, _autoscaler(region, here), region=other),
        ]
    if not config.compute.frontend.enabled:
        return [*group, _backend_service(config, where)]
    return [
        *group,
        Resource(SECURITY_POLICY, _security_policy(config)),
        _backend_service(config, where),
        *_https_frontend(config, where),
        *_http_redirect(config, where),
    ]


def absent(config: GcpConfig) -> list[Absent]:
    """With the global backend service, the regional backend service and health check that earlier versions made
    for EXTERNAL_MANAGED (deleted after the group has moved to the global check); and with the frontend off, the
    frontend's resources (:func:`_frontend_absent`)."""
    if not _global(config):
        return []
    n = names(config)
    earlier = [Absent(BACKEND_SERVICE, n["backend"]), Absent(HEALTH_CHECK, n["health"])]
    return earlier if config.compute.frontend.enabled else [*earlier, *_frontend_absent(config)]


def _frontend_absent(config: GcpConfig) -> list[Absent]:
    """The frontend's resources by their names, each after what uses it: the forwarding rules, the proxies, every
    certificate named as ours (``<name>-cert-<10 hex digits>``: listed by that pattern, the current one and those
    of earlier domain lists), the URL maps, the security policy (the backend service's plan line, earlier, takes
    it off), the address last. Names made from a ``name`` too long for the frontend were never made, and are not
    read."""
    n = names(config)
    if any(not _NAME.fullmatch(name + "-0123456789") for key, name in n.items() if key in FRONTEND_KEYS):
        return []
    return [
        Absent(GLOBAL_FORWARDING_RULE, n["http_rule"]),
        Absent(GLOBAL_FORWARDING_RULE, n["https_rule"]),
        Absent(TARGET_HTTP_PROXY, n["http_proxy"]),
        Absent(TARGET_HTTPS_PROXY, n["https_proxy"]),
        Absent(SSL_CERTIFICATE, n["certificate"] + CERTIFICATE_HASH, listed=True),  # a name: no RE2 metacharacter
        Absent(URL_MAP, n["redirect"]),
        Absent(URL_MAP, n["url_map"]),
        Absent(SECURITY_POLICY, n["policy"]),
        Absent(GLOBAL_ADDRESS, n["address"], note="no longer in the configuration: its IP address is released"),
    ]


def _requirements(config: GcpConfig) -> list[Requirement]:
    hint = "run `python -m deployer network apply` first (same configuration)"
    subnets = [Requirement(SUBNETWORK, region.subnet_name, hint, region.region if index else None)
               for index, region in enumerate(config.regions())]  # fmt: skip
    return [Requirement(NETWORK, config.network.name, hint), *subnets]


def _title(config: GcpConfig) -> str:
    regions = ", ".join(region.region for region in config.regions())
    return f"Compute Engine group {names(config)['mig']} (project {config.project}, {regions})"


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``gce plan|apply|render`` (render: offline): 0 when done; ValuesError for a bad configuration, CloudError
    if refused."""
    return run(args, Platform(_title, desired, _requirements, absent), log=log, out=out)
