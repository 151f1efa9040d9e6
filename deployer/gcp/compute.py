"""``python -m deployer gce plan|apply [--dry-run]``: erlmcp on Compute Engine (the seed design's section 3), a
regional managed instance group behind a regional load balancer backend, converged with
:mod:`deployer.gcp.compute_api`. It needs the network (``python -m deployer network apply``) and, for the secrets
it reads, ``python -m deployer secrets apply``.

What it makes, in this order (each refers only to what comes before it):

* the regional HTTP health check ``erlmcp-health``: ``GET /health`` on port 8080 every 10 s (2 successes healthy,
  3 failures unhealthy), used both for autohealing and by the load balancer;
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
* the regional backend service ``erlmcp-backend``: HTTP to the named port, the group as its backend (utilization
  balancing), the health check, session affinity NONE, 30 s timeout, ``EXTERNAL_MANAGED`` (a regional external
  Application Load Balancer) unless ``compute.loadBalancingScheme`` says ``INTERNAL_MANAGED``. The frontend (URL
  map, proxy, forwarding rule, proxy-only subnet, certificate) is not made here.

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
    HEALTH_CHECK,
    INSTANCE_GROUP_MANAGER,
    INSTANCE_TEMPLATE,
    NETWORK,
    SUBNETWORK,
    Location,
    Log,
    Platform,
    Requirement,
    Resource,
    check_name,
    immutable,
    run,
)
from deployer.gcp.config import GcpConfig
from deployer.gcp.network import SERVER_TAG
from deployer.gcp.server_secrets import SecretSpec, by_key

__all__ = ["SCOPES", "STARTUP_SCRIPT", "check", "command", "desired", "names", "startup_script"]

STARTUP_SCRIPT = Path(__file__).with_name("startup.sh")
SETTINGS_MARK = "# @@SETTINGS@@"
SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring.write",
)
PORT_NAME = "http"
SCHEMES = ("EXTERNAL_MANAGED", "INTERNAL_MANAGED")
_IMAGE = re.compile(
    r"[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(@sha256:[0-9a-f]{64})?"
)
_TYPE = re.compile(r"[a-z][a-z0-9-]*")


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
    }


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
    for name in names(config).values():
        check_name(name + "-0123456789", "a resource name made from `name`")


def check(config: GcpConfig) -> None:
    """Raises :class:`ValuesError`, naming the key, for a configuration that cannot describe the group."""
    _check_sizes(config)
    _check_names(config)
    _secret_specs(config)


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
        health_check=where.link(HEALTH_CHECK, n["health"]), initial_delay_sec=c.autohealing_delay_seconds
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


def _backend_service(config: GcpConfig, where: Location) -> Any:
    c, n = config.compute, names(config)
    backend = compute_v1.Backend(
        group=where.instance_group_link(n["mig"]),
        balancing_mode="UTILIZATION",
        max_utilization=0.8,
        capacity_scaler=1.0,
    )
    return compute_v1.BackendService(
        name=n["backend"],
        description="erlmcp: the load balancer's backend, the managed instance group",
        load_balancing_scheme=c.load_balancing_scheme,
        protocol="HTTP",
        port_name=PORT_NAME,
        timeout_sec=c.backend_timeout_seconds,
        session_affinity="NONE",
        health_checks=[where.link(HEALTH_CHECK, n["health"])],
        backends=[backend],
    )


def desired(config: GcpConfig) -> list[Resource]:
    """Every resource of the group, in the order they are made; ValuesError for a bad configuration."""
    check(config)
    where = Location(config.project, config.region)
    template = _template(config, where)
    return [
        Resource(HEALTH_CHECK, _health_check(config)),
        template,
        Resource(INSTANCE_GROUP_MANAGER, _group(config, where, template.name), frozenset({"target_size"})),
        Resource(AUTOSCALER, _autoscaler(config, where)),
        Resource(BACKEND_SERVICE, _backend_service(config, where)),
    ]


def _requirements(config: GcpConfig) -> list[Requirement]:
    hint = "run `python -m deployer network apply` first (same configuration)"
    return [Requirement(NETWORK, config.network.name, hint), Requirement(SUBNETWORK, config.subnet_name, hint)]


def _title(config: GcpConfig) -> str:
    return f"Compute Engine group {names(config)['mig']} (project {config.project}, {config.region})"


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``gce plan|apply|render`` (render: offline): 0 when done; ValuesError for a bad configuration, CloudError
    if refused."""
    return run(args, Platform(_title, desired, _requirements), log=log, out=out)
