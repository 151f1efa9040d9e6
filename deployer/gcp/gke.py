"""The seed design's regional GKE cluster as code: ``python -m deployer cluster plan|apply|check [--dry-run]``.

The desired cluster is a ``container_v1.CreateClusterRequest`` built from the configuration alone
(:func:`desired_request`), so what ``plan`` shows, what ``apply`` sends and what the tests compare are one object:

* **Regional** (``projects/P/locations/REGION``), nodes in the configuration's zones (default the region's a, b and
  c): the control plane is replicated across zones (the seed's 99.95 % SLA is for regional clusters).
* **Private**: nodes without public addresses, the control plane on its private endpoint only, in the seed's
  ``172.16.0.0/28``; master authorized networks always on, with the configuration's internal ranges (the node
  subnet can always reach the private endpoint). Consequence for operators: ``kubectl``, ``helm`` and
  ``python -m deployer install`` must run from inside the VPC (a bastion, Cloud Build private pool, or a VPN).
* **Dataplane V2** (``datapath_provider=ADVANCED_DATAPATH``). The seed asks for "Calico for zero-trust", but GKE
  refuses the Calico network policy add-on together with Dataplane V2: Dataplane V2 (eBPF, Cilium) enforces
  Kubernetes NetworkPolicy itself, always on, with no add-on to enable. So the seed's intent, the chart's
  default-deny NetworkPolicy enforced, is met by the datapath, and ``network_policy`` is deliberately left unset.
* **VPC-native** on the network's subnet (``config.subnet_name``) and its two secondary ranges, by the names the
  network section gives them (``network.podsRangeName``, ``network.servicesRangeName``).
* **Workload Identity** (``PROJECT.svc.id.goog``), and every node pool on the GKE metadata server: pods never
  see a node's credentials; the app reads Secret Manager as its own Google service account.
* GKE's **Secret Manager add-on** (for the chart's ``secretManager``) with **rotation** on
  (``secretManagerConfig.rotationConfig``): the add-on re-reads the secrets it mounts every
  ``cluster.secretManagerRotationSeconds`` (default 120, the API's documented default of 2 minutes), so a new
  version of a secret mounted as ``latest`` reaches the pods' files; ``cluster.secretManagerRotation: false`` turns
  it off. Rotation turned off or another interval set out of band is drift, put back by the add-on's own update.
* **Shielded nodes**, and every node with secure boot and integrity monitoring.
* The **release channel** of the configuration (REGULAR), node auto-repair and auto-upgrade.
* The cluster autoscaler with the **BALANCED** profile (node auto-provisioning off: only our two pools exist).
* Pool ``primary`` (``e2-standard-4``): autoscaled between the seed's 3 and 10 nodes **in total** across the
  zones (``total_min/max_node_count``, location policy BALANCED). The seed's diagram draws "3x e2-std-4" per zone
  but its text says "3-10 nodes"; the totals are the reading that fits both the text and the cost figure: at
  least one node per zone, so losing a zone leaves two serving. It starts with one node per zone.
* Pool ``spot`` (``e2-standard-2``, spot VMs): 0 to ``spotMaxNodes`` (5) in total, location policy ANY (spot
  capacity is found where it is). It is **tainted** ``cloud.google.com/gke-spot=true:NoSchedule`` (the taint
  Google documents for spot pools), so only pods that tolerate it land there. erlmcp holds long-lived MCP
  sessions (SSE streams) and a spot VM can be reclaimed with 30 seconds' notice, so the server's own pods stay
  on the primary pool by default; batch work, tests and burst capacity that accept the loss opt in with a
  toleration. ``spotMaxNodes: 0`` leaves the pool out.
* Cloud Logging of system components **and workloads** (the server's JSON logs) and Cloud Monitoring of system
  components plus pods, deployments and HPAs, with **Managed Service for Prometheus** on: the chart's
  PodMonitoring needs it, and its CRD exists only then.
* The nodes run as their **own** Google service account (``cluster.nodeServiceAccount``, default
  ``erlmcp-gke-nodes@PROJECT.iam.gserviceaccount.com``), not the app's: with Workload Identity the node account
  is used only by the node's own agents, so it needs only ``roles/logging.logWriter``,
  ``roles/monitoring.metricWriter``, ``roles/monitoring.viewer``, ``roles/stackdriver.resourceMetadata.writer``
  and ``roles/artifactregistry.reader``; the app's account (which may read secrets) is never a node's, and the
  Compute Engine default account (Editor on the project) is never used. ``apply`` makes the account and grants
  those roles before anything else (:mod:`deployer.gcp.node_account`); ``plan`` lists them first.

``plan`` reads the cluster: none → CREATE (with its node pools); found → the fields this module sets are compared
(:func:`cluster_view`, :func:`pool_view`; server-set fields are not) and each difference is classified:

* changed **in place** by ``apply``, one operation at a time, each awaited: node locations, master authorized
  networks, release channel, cluster autoscaling, Workload Identity, shielded nodes, logging and monitoring
  (``update_cluster``); a pool's autoscaling (``set_node_pool_autoscaling``), auto-repair/upgrade
  (``set_node_pool_management``), metadata server, taints, machine and image type (``update_node_pool``, a
  rolling replacement of its nodes); a missing pool is created (``create_node_pool``).
* **REPLACE**: the network, subnet, secondary ranges, private nodes and endpoint, the control plane's range and
  the datapath cannot be changed on a running cluster (or, for the private endpoint, not without cutting off
  whoever runs the tool from outside the VPC), nor a pool's spot setting, node service account, OAuth scopes
  and shielded-instance settings. ``apply`` never recreates anything silently: it refuses before writing
  anything and lists those fields. Delete the pool (``apply`` creates it again) or the cluster, or change the
  configuration to match.

Node pools that are not ours (another name) are left alone and never deleted.

``check`` reads an existing cluster and reports every difference from this design that matters for erlmcp, each
with a severity (high, medium, low) and why it matters: exit 0 when there is none, 1 when there are (``--json``:
one document with every finding).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TextIO

from google.api_core.exceptions import GoogleAPICallError, NotFound, PermissionDenied, RetryError
from google.cloud import container_v1, iam_admin_v1, resourcemanager_v3
from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport
from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport
from google.cloud.resourcemanager_v3.services.projects.transports import ProjectsGrpcTransport

from deployer.errors import CloudError, ValuesError
from deployer.gcp import converge, node_account
from deployer.gcp.changes import (
    ACTIONS,
    CREATE,
    NO_CHANGE,
    REPLACE,
    UPDATE,
    Change,
    differences,
    emit_desired,
    render,
    rest_fields,
    run_mode,
)
from deployer.gcp.config import GcpConfig, config_from
from deployer.gcp.grpc_clients import Connected, connect
from deployer.log import Log

__all__ = [
    "HIGH",
    "LOW",
    "MEDIUM",
    "PRIMARY_POOL",
    "REPLACE",
    "SPOT_POOL",
    "SPOT_TAINT",
    "Clients",
    "Finding",
    "Plan",
    "apply_plan",
    "check",
    "cluster_view",
    "command",
    "desired_cluster",
    "desired_request",
    "plan",
    "pool_view",
    "wait",
]

KIND_CLUSTER, KIND_POOL = "GKE cluster", "node pool"
PRIMARY_POOL, SPOT_POOL = "primary", "spot"
SPOT_TAINT = ("cloud.google.com/gke-spot", "true", "NO_SCHEDULE")
HIGH, MEDIUM, LOW = "high", "medium", "low"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"  # IAM, not scopes, limits what nodes may do
IMAGE_TYPE = "COS_CONTAINERD"
LOGGING_COMPONENTS = ("SYSTEM_COMPONENTS", "WORKLOADS")
MONITORING_COMPONENTS = ("SYSTEM_COMPONENTS", "POD", "DEPLOYMENT", "HPA")
OPERATION_TIMEOUT = 45 * 60.0  # seconds an operation may take: a regional cluster takes 10-20 minutes
POLL_SECONDS = 10.0  # between two reads of a running operation
PROGRESS_SECONDS = 60.0  # between two progress lines while waiting
_CLUSTER_NAME = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
_SEVERITIES = (HIGH, MEDIUM, LOW)
_BUSY = ("PROVISIONING", "RECONCILING", "STOPPING")  # GKE refuses a write until the running operation ends


# -- the desired state -------------------------------------------------------------------------------------------


def _enum_name(value: Any) -> str:
    """An enum field's name (proto-plus gives enum members; a raw int from an unknown value stays a number)."""
    return str(getattr(value, "name", value))


def _validate(config: GcpConfig) -> None:
    """Raises :class:`ValuesError` for a cluster configuration GKE would refuse, before any call."""
    cluster = config.cluster
    if not _CLUSTER_NAME.fullmatch(cluster.name):
        raise ValuesError(
            f"cluster.name {cluster.name!r} is not a GKE cluster name (1-40 of a-z, 0-9 and -, starting with a letter)"
        )
    if not 6 <= len(cluster.node_service_account) <= 30 or not re.fullmatch(
        r"[a-z][-a-z0-9]*[a-z0-9]", cluster.node_service_account
    ):
        raise ValuesError(
            f"cluster.nodeServiceAccount {cluster.node_service_account!r} is not a service account ID "
            "(6-30 of a-z, 0-9 and -)"
        )
    if cluster.release_channel not in ("RAPID", "REGULAR", "STABLE", "EXTENDED"):
        raise ValuesError(
            f"cluster.releaseChannel {cluster.release_channel!r}: one of RAPID, REGULAR, STABLE, EXTENDED"
        )
    if cluster.autoscaling_profile not in ("BALANCED", "OPTIMIZE_UTILIZATION"):
        raise ValuesError(
            f"cluster.autoscalingProfile {cluster.autoscaling_profile!r}: BALANCED or OPTIMIZE_UTILIZATION"
        )
    if not 1 <= cluster.min_nodes <= cluster.max_nodes:
        raise ValuesError(
            f"cluster.minNodes {cluster.min_nodes} and maxNodes {cluster.max_nodes}: need 1 <= minNodes <= maxNodes"
        )
    if cluster.secret_manager_rotation_seconds < 1:
        raise ValuesError(
            f"cluster.secretManagerRotationSeconds {cluster.secret_manager_rotation_seconds}: the Secret Manager "
            "add-on's rotation interval must be a positive number of seconds (GKE's default is 120)"
        )
    if cluster.spot_max_nodes < 0:
        raise ValuesError("cluster.spotMaxNodes must be 0 (no spot pool) or more")
    for option, machine in (("machineType", cluster.machine_type), ("spotMachineType", cluster.spot_machine_type)):
        if not re.fullmatch(r"[a-z][-a-z0-9]*", machine):
            raise ValuesError(f"cluster.{option} {machine!r} is not a machine type (e.g. e2-standard-4)")
    try:
        master = ipaddress.ip_network(cluster.master_cidr)
    except ValueError as exc:
        raise ValuesError(f"cluster.masterCidr {cluster.master_cidr!r} is not a network: {exc}") from exc
    if master.version != 4 or master.prefixlen != 28 or master.is_global:
        raise ValuesError(f"cluster.masterCidr {cluster.master_cidr}: GKE needs a private IPv4 /28")
    for cidr in cluster.master_authorized_networks:
        try:
            network = ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise ValuesError(f"cluster.masterAuthorizedNetworks: {cidr!r} is not a network: {exc}") from exc
        if network.is_global:
            raise ValuesError(
                f"cluster.masterAuthorizedNetworks: {cidr} is a public range, but the control plane "
                "has only a private endpoint: give internal ranges (a bastion's, a VPN's)"
            )
    for zone in config.zone_list:
        if not zone.startswith(f"{config.region}-"):
            raise ValuesError(f"zones: {zone!r} is not a zone of {config.region} (e.g. {config.region}-a)")


def _node_config(config: GcpConfig, machine_type: str, *, spot: bool) -> container_v1.NodeConfig:
    taints = [container_v1.NodeTaint(key=SPOT_TAINT[0], value=SPOT_TAINT[1], effect=SPOT_TAINT[2])] if spot else []
    return container_v1.NodeConfig(
        machine_type=machine_type,
        image_type=IMAGE_TYPE,
        service_account=f"{config.cluster.node_service_account}@{config.project}.iam.gserviceaccount.com",
        oauth_scopes=[CLOUD_PLATFORM],
        shielded_instance_config=container_v1.ShieldedInstanceConfig(
            enable_secure_boot=True, enable_integrity_monitoring=True
        ),
        workload_metadata_config=container_v1.WorkloadMetadataConfig(mode="GKE_METADATA"),
        spot=spot,
        taints=taints,
    )


def _pools(config: GcpConfig) -> list[container_v1.NodePool]:
    cluster, zones = config.cluster, len(config.zone_list)
    management = container_v1.NodeManagement(auto_repair=True, auto_upgrade=True)
    pools = [
        container_v1.NodePool(
            name=PRIMARY_POOL,
            config=_node_config(config, cluster.machine_type, spot=False),
            initial_node_count=max(1, -(-cluster.min_nodes // zones)),  # per zone: the floor, spread over the zones
            autoscaling=container_v1.NodePoolAutoscaling(
                enabled=True,
                total_min_node_count=cluster.min_nodes,
                total_max_node_count=cluster.max_nodes,
                location_policy="BALANCED",
            ),
            management=management,
        )
    ]
    if cluster.spot_max_nodes > 0:
        pools.append(
            container_v1.NodePool(
                name=SPOT_POOL,
                config=_node_config(config, cluster.spot_machine_type, spot=True),
                initial_node_count=0,  # nothing runs there until a tolerating pod asks for it
                autoscaling=container_v1.NodePoolAutoscaling(
                    enabled=True,
                    total_min_node_count=0,
                    total_max_node_count=cluster.spot_max_nodes,
                    location_policy="ANY",
                ),
                management=management,
            )
        )
    return pools


def desired_cluster(config: GcpConfig) -> container_v1.Cluster:
    """The cluster of the seed design for ``config`` (see the module's documentation for each choice).

    Raises:
        ValuesError: the cluster section cannot describe a cluster GKE would create.
    """
    _validate(config)
    cluster, network = config.cluster, config.network
    return container_v1.Cluster(
        name=cluster.name,
        description="erlmcp (managed by python -m deployer cluster)",
        locations=list(config.zone_list),
        network=network.name,
        subnetwork=config.subnet_name,
        ip_allocation_policy=container_v1.IPAllocationPolicy(
            use_ip_aliases=True,
            cluster_secondary_range_name=network.pods_range_name,
            services_secondary_range_name=network.services_range_name,
        ),
        private_cluster_config=container_v1.PrivateClusterConfig(
            enable_private_nodes=True, enable_private_endpoint=True, master_ipv4_cidr_block=cluster.master_cidr
        ),
        master_authorized_networks_config=container_v1.MasterAuthorizedNetworksConfig(
            enabled=True,
            cidr_blocks=[
                container_v1.MasterAuthorizedNetworksConfig.CidrBlock(cidr_block=c)
                for c in cluster.master_authorized_networks
            ],
        ),
        network_config=container_v1.NetworkConfig(datapath_provider="ADVANCED_DATAPATH"),
        release_channel=container_v1.ReleaseChannel(channel=cluster.release_channel),
        workload_identity_config=container_v1.WorkloadIdentityConfig(workload_pool=f"{config.project}.svc.id.goog"),
        shielded_nodes=container_v1.ShieldedNodes(enabled=True),
        # GKE's Secret Manager add-on (CSI driver secrets-store-gke.csi.k8s.io): the chart's secretManager.enabled
        # mounts the API key file from Secret Manager through it. With rotation on, the add-on re-reads each mounted
        # secret every rotation interval, so a new version of a secret mounted as `latest` reaches the pods' files.
        secret_manager_config=container_v1.SecretManagerConfig(
            enabled=True,
            rotation_config=container_v1.SecretManagerConfig.RotationConfig(
                enabled=cluster.secret_manager_rotation,
                rotation_interval=timedelta(seconds=cluster.secret_manager_rotation_seconds)
                if cluster.secret_manager_rotation
                else None,
            ),
        ),
        autoscaling=container_v1.ClusterAutoscaling(
            enable_node_autoprovisioning=False, autoscaling_profile=cluster.autoscaling_profile
        ),
        logging_config=container_v1.LoggingConfig(
            component_config=container_v1.LoggingComponentConfig(enable_components=list(LOGGING_COMPONENTS))
        ),
        monitoring_config=container_v1.MonitoringConfig(
            component_config=container_v1.MonitoringComponentConfig(enable_components=list(MONITORING_COMPONENTS)),
            managed_prometheus_config=container_v1.ManagedPrometheusConfig(enabled=True),
        ),
        node_pools=_pools(config),
    )


def location_path(config: GcpConfig) -> str:
    return f"projects/{config.project}/locations/{config.region}"


def cluster_path(config: GcpConfig) -> str:
    return f"{location_path(config)}/clusters/{config.cluster.name}"


def desired_request(config: GcpConfig) -> container_v1.CreateClusterRequest:
    """The request ``apply`` sends when the cluster does not exist."""
    return container_v1.CreateClusterRequest(parent=location_path(config), cluster=desired_cluster(config))


# -- comparing ---------------------------------------------------------------------------------------------------


def _short(name: str) -> str:
    """A network or subnet by name: the API gives names here, but a full path names the same thing."""
    return name.rsplit("/", 1)[-1]


def _profile(cluster: container_v1.Cluster) -> str:
    """The autoscaling profile; unset is GKE's default, BALANCED."""
    profile = _enum_name(cluster.autoscaling.autoscaling_profile)
    return "BALANCED" if profile == "PROFILE_UNSPECIFIED" else profile


def _components(message: Any) -> list[str]:
    return sorted(_enum_name(c) for c in message.component_config.enable_components)


def cluster_view(cluster: container_v1.Cluster) -> dict[str, Any]:
    """The cluster-level fields this module sets, as plain values (enum names, sorted lists), defaults included:
    what ``plan`` compares. Keys are the fields' paths in the API, grouped by how a difference is fixed."""
    private = cluster.private_cluster_config
    return {
        "locations": sorted(cluster.locations),
        "network": _short(cluster.network),
        "subnetwork": _short(cluster.subnetwork),
        "ip_allocation_policy": {
            "use_ip_aliases": cluster.ip_allocation_policy.use_ip_aliases,
            "cluster_secondary_range_name": cluster.ip_allocation_policy.cluster_secondary_range_name,
            "services_secondary_range_name": cluster.ip_allocation_policy.services_secondary_range_name,
        },
        "private_cluster_config": {
            "enable_private_nodes": private.enable_private_nodes,
            "enable_private_endpoint": private.enable_private_endpoint,
            "master_ipv4_cidr_block": private.master_ipv4_cidr_block,
        },
        "network_config.datapath_provider": _enum_name(cluster.network_config.datapath_provider),
        "master_authorized_networks_config": {
            "enabled": cluster.master_authorized_networks_config.enabled,
            "cidr_blocks": sorted(b.cidr_block for b in cluster.master_authorized_networks_config.cidr_blocks),
        },
        "release_channel.channel": _enum_name(cluster.release_channel.channel),
        "autoscaling": {
            "enable_node_autoprovisioning": cluster.autoscaling.enable_node_autoprovisioning,
            "autoscaling_profile": _profile(cluster),
        },
        "workload_identity_config.workload_pool": cluster.workload_identity_config.workload_pool,
        "shielded_nodes.enabled": cluster.shielded_nodes.enabled,
        "secret_manager_config.enabled": cluster.secret_manager_config.enabled,
        "secret_manager_config.rotation_config": {
            "enabled": cluster.secret_manager_config.rotation_config.enabled,
            "rotation_interval_seconds": int(
                cluster.secret_manager_config.rotation_config.rotation_interval.total_seconds()
            ),
        },
        "logging_config.component_config.enable_components": _components(cluster.logging_config),
        "monitoring_config": {
            "component_config.enable_components": _components(cluster.monitoring_config),
            "managed_prometheus_config.enabled": cluster.monitoring_config.managed_prometheus_config.enabled,
        },
    }


def pool_view(pool: container_v1.NodePool) -> dict[str, Any]:
    """A node pool's fields this module sets, as plain values: what ``plan`` compares."""
    config, scaling = pool.config, pool.autoscaling
    return {
        "config.machine_type": config.machine_type,
        "config.image_type": config.image_type.upper(),
        "config.spot": config.spot,
        "config.service_account": config.service_account,
        "config.oauth_scopes": sorted(config.oauth_scopes),
        "config.shielded_instance_config": {
            "enable_secure_boot": config.shielded_instance_config.enable_secure_boot,
            "enable_integrity_monitoring": config.shielded_instance_config.enable_integrity_monitoring,
        },
        "config.workload_metadata_config.mode": _enum_name(config.workload_metadata_config.mode),
        "config.taints": sorted(f"{t.key}={t.value}:{_enum_name(t.effect)}" for t in config.taints),
        "autoscaling": {
            "enabled": scaling.enabled,
            "total_min_node_count": scaling.total_min_node_count,
            "total_max_node_count": scaling.total_max_node_count,
            "location_policy": _enum_name(scaling.location_policy),
        },
        "management": {"auto_repair": pool.management.auto_repair, "auto_upgrade": pool.management.auto_upgrade},
    }


Write = Callable[[container_v1.ClusterManagerClient], container_v1.Operation]


def _cluster_fixes(name: str, desired: container_v1.Cluster, actual: container_v1.Cluster) -> dict[str, Write | None]:
    """For each key of :func:`cluster_view`: the ``update_cluster`` call that makes it so, or None (REPLACE).
    GKE takes one ``desired_*`` field per update, so each is its own operation."""

    def update(**fields: Any) -> Write:
        return lambda c: c.update_cluster(name=name, update=container_v1.ClusterUpdate(**fields))

    # Components are added, never removed: one enabled by someone else (or by GKE) stays.
    logged = sorted({*_components(desired.logging_config), *_components(actual.logging_config)})
    logging = container_v1.LoggingConfig(component_config=container_v1.LoggingComponentConfig(enable_components=logged))
    monitored = sorted({*_components(desired.monitoring_config), *_components(actual.monitoring_config)})
    monitoring = container_v1.MonitoringConfig(desired.monitoring_config)
    monitoring.component_config = container_v1.MonitoringComponentConfig(enable_components=monitored)
    return {
        "locations": update(desired_locations=list(desired.locations)),
        "network": None,
        "subnetwork": None,
        "ip_allocation_policy": None,
        "private_cluster_config": None,
        "network_config.datapath_provider": None,
        "master_authorized_networks_config": update(
            desired_master_authorized_networks_config=desired.master_authorized_networks_config
        ),
        "release_channel.channel": update(desired_release_channel=desired.release_channel),
        "autoscaling": update(desired_cluster_autoscaling=desired.autoscaling),
        "workload_identity_config.workload_pool": update(
            desired_workload_identity_config=desired.workload_identity_config
        ),
        "shielded_nodes.enabled": update(desired_shielded_nodes=desired.shielded_nodes),
        "secret_manager_config.enabled": update(desired_secret_manager_config=desired.secret_manager_config),
        "secret_manager_config.rotation_config": update(desired_secret_manager_config=desired.secret_manager_config),
        "logging_config.component_config.enable_components": update(desired_logging_config=logging),
        "monitoring_config": update(desired_monitoring_config=monitoring),
    }


def _pool_fixes(name: str, desired: container_v1.NodePool, actual: container_v1.NodePool) -> dict[str, Write | None]:
    """For each key of :func:`pool_view`: the call that makes it so in place, or None (REPLACE: GKE cannot change
    it on an existing pool). ``update_node_pool`` requires the node version and image type: the pool's own
    version (never an upgrade on the side) and its image type, except in the call that changes the image type."""

    def update(**fields: Any) -> Write:
        request = container_v1.UpdateNodePoolRequest(
            name=name, node_version=actual.version or "-", image_type=actual.config.image_type or IMAGE_TYPE
        )
        for key, value in fields.items():
            setattr(request, key, value)
        return lambda c: c.update_node_pool(request=request)

    def autoscaling(c: container_v1.ClusterManagerClient) -> container_v1.Operation:
        return c.set_node_pool_autoscaling(
            request=container_v1.SetNodePoolAutoscalingRequest(name=name, autoscaling=desired.autoscaling)
        )

    def management(c: container_v1.ClusterManagerClient) -> container_v1.Operation:
        return c.set_node_pool_management(
            request=container_v1.SetNodePoolManagementRequest(name=name, management=desired.management)
        )

    config = desired.config
    return {
        "config.machine_type": update(machine_type=config.machine_type),
        "config.image_type": update(image_type=config.image_type),
        "config.spot": None,
        "config.service_account": None,
        "config.oauth_scopes": None,
        "config.shielded_instance_config": None,
        "config.workload_metadata_config.mode": update(workload_metadata_config=config.workload_metadata_config),
        "config.taints": update(taints=container_v1.NodeTaints(taints=list(config.taints))),
        "autoscaling": autoscaling,
        "management": management,
    }


def _key_of(path: str, keys: Iterable[str]) -> str:
    """The view key a difference's path falls under (``autoscaling.enabled`` → ``autoscaling``)."""
    for key in keys:
        if path == key or path.startswith((f"{key}.", f"{key}[")):
            return key
    raise AssertionError(f"{path} is no field of the view")  # a view key without a fix: a bug


Step = converge.Operation[container_v1.ClusterManagerClient]  # one write of apply: a GKE operation
Plan = converge.OperationPlan[container_v1.ClusterManagerClient]  # the cluster's lines and the operations


def _classify(
    plan: Plan, kind: str, name: str, diffs: list[tuple[str, Any, Any]], fixes: dict[str, Write | None]
) -> None:
    """One object's differences as a REPLACE change (those with no fix) and an UPDATE change with its steps."""
    replace = [d for d in diffs if fixes[_key_of(d[0], fixes)] is None]
    in_place = [d for d in diffs if fixes[_key_of(d[0], fixes)] is not None]
    if replace:
        keys = ", ".join(sorted({_key_of(d[0], fixes) for d in replace}))
        needs = "a new cluster" if kind == KIND_CLUSTER else "a new node pool"
        plan.changes.append(Change(REPLACE, kind, name, replace, note=f"needs {needs} ({keys}); apply refuses"))
    if in_place:
        fixed = [k for k in fixes if any(_key_of(d[0], fixes) == k for d in in_place)]
        plan.changes.append(Change(UPDATE, kind, name, in_place, note="in place: " + ", ".join(fixed)))
        for key in fixed:
            write = fixes[key]
            assert write is not None
            plan.steps.append(Step(f"update {kind} {name}: {key}", write))
    if not diffs:
        plan.changes.append(Change(NO_CHANGE, kind, name))


def _pool_note(pool: container_v1.NodePool) -> str:
    scaling, config = pool.autoscaling, pool.config
    what = f"{'spot ' if config.spot else ''}{config.machine_type}, {scaling.total_min_node_count}-"
    what += f"{scaling.total_max_node_count} nodes in total"
    if config.taints:
        what += ", taint " + ", ".join(f"{t.key}={t.value}:{_enum_name(t.effect)}" for t in config.taints)
    return what


def _cluster_note(config: GcpConfig, cluster: container_v1.Cluster) -> str:
    return (
        f"regional {config.region} ({', '.join(cluster.locations)}), private endpoint "
        f"{cluster.private_cluster_config.master_ipv4_cidr_block}, Dataplane V2, Workload Identity, "
        f"{config.cluster.release_channel} channel"
    )


def _create_pool(request: container_v1.CreateNodePoolRequest, client: container_v1.ClusterManagerClient) -> Any:
    return client.create_node_pool(request=request)


def _get(client: container_v1.ClusterManagerClient, name: str) -> container_v1.Cluster | None:
    try:
        return client.get_cluster(name=name)
    except NotFound:
        return None
    except (GoogleAPICallError, RetryError) as exc:
        raise _cloud_error(f"cannot read GKE cluster {name}", exc) from exc


def _ignore_extra_components(want: dict[str, Any], have: dict[str, Any]) -> None:
    """Logging and monitoring components enabled beyond ours (by an operator, or by GKE on newer versions) are
    not drift: only a missing one is. ``have`` keeps only the components ``want`` names."""
    key = "logging_config.component_config.enable_components"
    have[key] = sorted(set(have[key]) & set(want[key]))
    wanted, found = want["monitoring_config"], have["monitoring_config"]
    key = "component_config.enable_components"
    found[key] = sorted(set(found[key]) & set(wanted[key]))


def plan(client: container_v1.ClusterManagerClient, config: GcpConfig, *, log: Log = lambda _: None) -> Plan:
    """What ``apply`` would do: read the cluster, compare, classify. Writes nothing."""
    desired, name = desired_cluster(config), cluster_path(config)
    found = Plan(name)
    actual = _get(client, name)
    if actual is None:
        request = container_v1.CreateClusterRequest(parent=location_path(config), cluster=desired)
        found.changes.append(
            Change(CREATE, KIND_CLUSTER, desired.name, desired=request, note=_cluster_note(config, desired))
        )
        found.changes += [
            Change(CREATE, KIND_POOL, f"{desired.name}/{p.name}", desired=p, note=_pool_note(p))
            for p in desired.node_pools
        ]
        found.steps.append(Step(f"create {KIND_CLUSTER} {desired.name}", lambda c: c.create_cluster(request=request)))
        return found
    found.status = _enum_name(actual.status)
    want, have = cluster_view(desired), cluster_view(actual)
    _ignore_extra_components(want, have)
    diffs = differences(want, have)
    _classify(found, KIND_CLUSTER, desired.name, diffs, _cluster_fixes(name, desired, actual))
    pools = {p.name: p for p in actual.node_pools}
    for pool in desired.node_pools:
        pool_name, shown = f"{name}/nodePools/{pool.name}", f"{desired.name}/{pool.name}"
        existing = pools.get(pool.name)
        if existing is None:
            found.changes.append(Change(CREATE, KIND_POOL, shown, desired=pool, note=_pool_note(pool)))
            adding = container_v1.CreateNodePoolRequest(parent=name, node_pool=pool)
            found.steps.append(Step(f"create {KIND_POOL} {shown}", partial(_create_pool, adding)))
            continue
        pool_diffs = differences(pool_view(pool), pool_view(existing))
        _classify(found, KIND_POOL, shown, pool_diffs, _pool_fixes(pool_name, pool, existing))
    for other in sorted(set(pools) - {p.name for p in desired.node_pools}):
        log(f"node pool {other} is not managed by erlmcp: left as is")
    return found


# -- applying ----------------------------------------------------------------------------------------------------


def _cloud_error(what: str, exc: Exception) -> CloudError:
    if isinstance(exc, PermissionDenied):
        return CloudError(
            f"{what}: permission denied ({exc.message}). plan and check need "
            "roles/container.viewer; apply needs roles/container.clusterAdmin, and "
            "roles/iam.serviceAccountUser on the nodes' service account"
        )
    if isinstance(exc, GoogleAPICallError):
        return CloudError(f"{what}: {exc.message or exc}")
    return CloudError(f"{what}: the GKE API cannot be reached ({exc})")


def _call(what: str, call: Callable[[], container_v1.Operation]) -> container_v1.Operation:
    try:
        return call()
    except (GoogleAPICallError, RetryError) as exc:
        raise _cloud_error(f"cannot {what}", exc) from exc


def wait(
    client: container_v1.ClusterManagerClient,
    location: str,
    operation: container_v1.Operation,
    *,
    what: str,
    log: Log,
    timeout: float = OPERATION_TIMEOUT,
) -> container_v1.Operation:
    """Poll ``get_operation`` until the operation is DONE; a progress line every :data:`PROGRESS_SECONDS`.

    Raises:
        CloudError: the operation failed (its error), or is still running after ``timeout`` (GKE goes on with it:
            the message says how to follow it).
    """
    name = f"{location}/operations/{operation.name}"
    read = False  # the operation as started is the first one asked

    def done() -> bool:
        nonlocal operation, read
        if read:
            operation = _call(f"follow operation {operation.name}", lambda: client.get_operation(name=name))
        read = True
        return bool(operation.status == container_v1.Operation.Status.DONE)

    converge.follow_until_done(
        done,
        timeout=timeout,
        poll_seconds=POLL_SECONDS,
        progress_seconds=PROGRESS_SECONDS,
        progress=lambda elapsed: f"{what}: {_enum_name(operation.status)}, {elapsed} so far",
        overdue=lambda elapsed: CloudError(
            f"{what}: operation {operation.name} still {_enum_name(operation.status)} after "
            f"{elapsed}; GKE carries on with it: follow it with `gcloud container "
            f"operations describe {operation.name} --location {location.rsplit('/', 1)[-1]}` "
            "and run apply again when it is done"
        ),
        log=log,
    )
    if operation.error.code or operation.status_message:
        raise CloudError(
            f"{what}: operation {operation.name} failed: {operation.error.message or operation.status_message}"
        )
    return operation


def applicable(found: Plan) -> None:
    """Raises :class:`CloudError` when ``found`` cannot be applied as it is: its cluster is busy with another
    operation, or the plan has REPLACE changes (apply never recreates a cluster or node pool)."""
    if found.steps and found.status in _BUSY:
        raise CloudError(
            f"GKE cluster {found.name} is {found.status}: an operation is running on it; apply "
            "again when it is RUNNING (`gcloud container operations list`)"
        )
    if found.refused:
        lines = converge.replace_lines(found.changes)
        kinds = {c.kind for c in found.refused}
        hints = ["change the configuration to match"]
        if KIND_POOL in kinds:
            hints.append("delete that node pool yourself (apply then creates it as designed)")
        if KIND_CLUSTER in kinds:
            hints.append("move the workloads to a new cluster (another cluster.name) and delete this one")
        raise CloudError(
            "apply refused, nothing written: these differences cannot be changed in place, and erlmcp "
            "never recreates a cluster or node pool by itself:\n"
            + "\n".join(lines)
            + "\nEither "
            + ", or ".join(hints)
            + "."
        )


def apply_plan(
    client: container_v1.ClusterManagerClient,
    config: GcpConfig,
    found: Plan,
    *,
    log: Log,
    timeout: float = OPERATION_TIMEOUT,
    before: Sequence[converge.Step] = (),
) -> None:
    """Make the plan so, one operation at a time (GKE runs one per cluster), each awaited; ``before`` (the nodes'
    account and roles) is applied first, once the plan is known to be applicable.

    Raises:
        CloudError: the plan cannot be applied (:func:`applicable`; nothing is written), or a call or operation
            failed.
    """
    applicable(found)
    converge.apply(before, log=log)

    def started(step: Step, operation: Any) -> str:
        hint = "; a regional cluster takes 10-20 minutes" if step.what.startswith(f"create {KIND_CLUSTER}") else ""
        return f"{step.what}: operation {operation.name} started{hint}"

    def follow(step: Step, operation: Any) -> None:
        wait(client, location_path(config), operation, what=step.what, log=log, timeout=timeout)

    converge.run_operations(client, found.steps, call=_call, started=started, follow=follow, log=log)


# -- checking ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One difference from the design: its stable ``name``, severity, the field, actual and expected values, why
    it matters for erlmcp."""

    name: str
    severity: str
    field: str
    actual: Any
    expected: Any
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "field": self.field,
            "actual": self.actual,
            "expected": self.expected,
            "why": self.why,
        }


def _capacity(cluster: container_v1.Cluster, pools: Sequence[container_v1.NodePool]) -> tuple[int, int]:
    """The autoscaled pools' total floor and ceiling: totals, or per-zone limits times the pool's zones."""
    low = high = 0
    for pool in pools:
        scaling = pool.autoscaling
        if scaling.total_max_node_count:
            low, high = low + scaling.total_min_node_count, high + scaling.total_max_node_count
        else:
            zones = len(pool.locations) or len(cluster.locations) or 1
            low, high = low + scaling.min_node_count * zones, high + scaling.max_node_count * zones
    return low, high


def _check_network(cluster: container_v1.Cluster, config: GcpConfig) -> list[Finding]:
    found: list[Finding] = []
    private, authorized = cluster.private_cluster_config, cluster.master_authorized_networks_config
    if not private.enable_private_nodes:
        found.append(
            Finding(
                "private-nodes",
                HIGH,
                "private_cluster_config.enable_private_nodes",
                False,
                True,
                "nodes have public IP addresses: every node is reachable from the internet, past the "
                "load balancer, and its egress bypasses Cloud NAT",
            )
        )
    if not private.enable_private_endpoint:
        severity = MEDIUM if authorized.enabled else HIGH
        found.append(
            Finding(
                "public-endpoint",
                severity,
                "private_cluster_config.enable_private_endpoint",
                False,
                True,
                "the Kubernetes API has a public endpoint: it can be reached from the internet"
                + (
                    ", limited by master authorized networks"
                    if authorized.enabled
                    else " by anyone who tries credentials"
                ),
            )
        )
    if not authorized.enabled:
        found.append(
            Finding(
                "master-authorized-networks",
                MEDIUM,
                "master_authorized_networks_config.enabled",
                False,
                True,
                "any address that reaches the control plane may try to authenticate; "
                "authorized networks limit it to known ranges",
            )
        )
    else:
        blocks = sorted(b.cidr_block for b in authorized.cidr_blocks)
        if blocks != sorted(config.cluster.master_authorized_networks):
            found.append(
                Finding(
                    "master-authorized-networks",
                    LOW,
                    "master_authorized_networks_config.cidr_blocks",
                    blocks,
                    sorted(config.cluster.master_authorized_networks),
                    "other ranges than the configured ones may reach the control plane",
                )
            )
    if private.enable_private_nodes and private.master_ipv4_cidr_block != config.cluster.master_cidr:
        found.append(
            Finding(
                "master-cidr",
                LOW,
                "private_cluster_config.master_ipv4_cidr_block",
                private.master_ipv4_cidr_block,
                config.cluster.master_cidr,
                "the network's firewall rules and the runbooks assume the seed's control-plane "
                "range; another range must not overlap the VPC's",
            )
        )
    datapath = _enum_name(cluster.network_config.datapath_provider)
    calico = cluster.network_policy.enabled
    if datapath != "ADVANCED_DATAPATH" and not calico:
        found.append(
            Finding(
                "network-policy",
                HIGH,
                "network_config.datapath_provider",
                datapath,
                "ADVANCED_DATAPATH",
                "NetworkPolicy is not enforced: the chart's default-deny policy "
                "is ignored, so any pod in the cluster can reach erlmcp's MCP and metrics ports and "
                "erlmcp can reach anything",
            )
        )
    elif datapath != "ADVANCED_DATAPATH":
        found.append(
            Finding(
                "dataplane-v2",
                LOW,
                "network_config.datapath_provider",
                datapath,
                "ADVANCED_DATAPATH",
                "NetworkPolicy is enforced by the Calico add-on, not Dataplane V2: it works, but "
                "without Dataplane V2's eBPF datapath and policy logging",
            )
        )
    policy = cluster.ip_allocation_policy
    if not policy.use_ip_aliases:
        found.append(
            Finding(
                "vpc-native",
                MEDIUM,
                "ip_allocation_policy.use_ip_aliases",
                False,
                True,
                "a routes-based cluster: pods have no VPC addresses, so container-native load "
                "balancing and private clusters are unavailable",
            )
        )
    elif (policy.cluster_secondary_range_name, policy.services_secondary_range_name) != (
        config.network.pods_range_name,
        config.network.services_range_name,
    ):
        found.append(
            Finding(
                "secondary-ranges",
                LOW,
                "ip_allocation_policy.cluster_secondary_range_name",
                [policy.cluster_secondary_range_name, policy.services_secondary_range_name],
                [config.network.pods_range_name, config.network.services_range_name],
                "pods and services use other ranges than the network section's: its firewall and "
                "NAT rules are written for those",
            )
        )
    return found


def _check_security(cluster: container_v1.Cluster, config: GcpConfig) -> list[Finding]:
    found: list[Finding] = []
    pool_id = f"{config.project}.svc.id.goog"
    if cluster.workload_identity_config.workload_pool != pool_id:
        found.append(
            Finding(
                "workload-identity",
                HIGH,
                "workload_identity_config.workload_pool",
                cluster.workload_identity_config.workload_pool or None,
                pool_id,
                "Workload Identity is off: the app cannot read its Secret Manager secrets or write "
                "metrics as its own service account without a key file, and pods use the node's "
                "account instead",
            )
        )
    if not cluster.shielded_nodes.enabled:
        found.append(
            Finding(
                "shielded-nodes",
                HIGH,
                "shielded_nodes.enabled",
                False,
                True,
                "nodes do not prove their identity and boot integrity to the control plane: a "
                "tampered or impersonated node can join and receive erlmcp's secrets",
            )
        )
    if cluster.legacy_abac.enabled:
        found.append(
            Finding(
                "legacy-abac",
                HIGH,
                "legacy_abac.enabled",
                True,
                False,
                "legacy ABAC grants broad access outside RBAC: the chart's narrow Roles mean nothing",
            )
        )
    for pool in cluster.node_pools:
        where, config_ = f"node_pools[{pool.name}].config", pool.config
        mode = _enum_name(config_.workload_metadata_config.mode)
        if mode != "GKE_METADATA":
            found.append(
                Finding(
                    "node-metadata",
                    HIGH,
                    f"{where}.workload_metadata_config.mode",
                    mode,
                    "GKE_METADATA",
                    f"pods on pool {pool.name} reach the node's credentials through "
                    "the metadata server, and Workload Identity does not apply to them",
                )
            )
        shielded = config_.shielded_instance_config
        if not shielded.enable_secure_boot:
            found.append(
                Finding(
                    "secure-boot",
                    MEDIUM,
                    f"{where}.shielded_instance_config.enable_secure_boot",
                    False,
                    True,
                    f"pool {pool.name}'s nodes boot unsigned kernels and modules: a rootkit survives reboots",
                )
            )
        if not shielded.enable_integrity_monitoring:
            found.append(
                Finding(
                    "integrity-monitoring",
                    LOW,
                    f"{where}.shielded_instance_config.enable_integrity_monitoring",
                    False,
                    True,
                    f"a changed boot sequence on pool {pool.name} goes unnoticed",
                )
            )
        account = config_.service_account
        if account in ("", "default") or account.endswith("-compute@developer.gserviceaccount.com"):
            found.append(
                Finding(
                    "node-service-account",
                    MEDIUM,
                    f"{where}.service_account",
                    account or "default",
                    f"{config.cluster.node_service_account}@{config.project}.iam.gserviceaccount.com",
                    f"pool {pool.name} runs as the Compute Engine default service account, which has "
                    "Editor on the project: a compromised node can change the whole project",
                )
            )
    return found


def _check_operations(cluster: container_v1.Cluster, config: GcpConfig) -> list[Finding]:
    found: list[Finding] = []
    if cluster.location.count("-") != 1:
        found.append(
            Finding(
                "regional",
                HIGH,
                "location",
                cluster.location,
                config.region,
                "a zonal cluster: one zone's outage stops its control plane (and the 99.95 % SLA is "
                "for regional clusters)",
            )
        )
    zones = sorted(cluster.locations)
    if zones != sorted(config.zone_list):
        found.append(
            Finding(
                "zones",
                MEDIUM if len(zones) < 3 else LOW,
                "locations",
                zones,
                sorted(config.zone_list),
                "nodes are not spread over the configured zones"
                + ("; fewer than three zones cannot keep a majority through a zone outage" if len(zones) < 3 else ""),
            )
        )
    channel = _enum_name(cluster.release_channel.channel)
    if channel != config.cluster.release_channel:
        severity, why = {
            "UNSPECIFIED": (
                MEDIUM,
                "no release channel: versions are managed by hand and security patches wait for someone to upgrade",
            ),
            "RAPID": (MEDIUM, "the RAPID channel brings versions before they are proven: not for production"),
        }.get(channel, (LOW, f"the {channel} channel upgrades on another cadence than the configured one"))
        found.append(
            Finding(
                "release-channel", severity, "release_channel.channel", channel, config.cluster.release_channel, why
            )
        )
    profile = _profile(cluster)
    if profile != config.cluster.autoscaling_profile:
        why = (
            "OPTIMIZE_UTILIZATION removes nodes sooner, evicting pods that hold long-lived MCP sessions more often"
            if profile == "OPTIMIZE_UTILIZATION"
            else "the autoscaler's profile is not the configured one"
        )
        found.append(
            Finding(
                "autoscaling-profile",
                LOW,
                "autoscaling.autoscaling_profile",
                profile,
                config.cluster.autoscaling_profile,
                why,
            )
        )
    spot = [p for p in cluster.node_pools if p.config.spot or p.config.preemptible]
    regular = [p for p in cluster.node_pools if not (p.config.spot or p.config.preemptible)]
    fixed = [p.name for p in regular if not p.autoscaling.enabled]
    wanted = (config.cluster.min_nodes, config.cluster.max_nodes)
    if not regular or fixed:
        found.append(
            Finding(
                "autoscaling",
                HIGH,
                "node_pools[].autoscaling.enabled",
                f"off on {', '.join(fixed)}" if fixed else "no on-demand pool",
                f"{wanted[0]}-{wanted[1]} nodes",
                "nodes do not scale: under load the HPA's new erlmcp pods stay Pending",
            )
        )
    else:
        low, high = _capacity(cluster, regular)
        if (low, high) != wanted:
            reasons = []
            if low < wanted[0]:
                reasons.append(f"fewer than {wanted[0]} nodes at the floor: a zone outage can leave no spare capacity")
            if high < wanted[1]:
                reasons.append(f"cannot grow to {wanted[1]} nodes under load")
            if high > wanted[1] or low > wanted[0]:
                reasons.append("more nodes than planned: cost above the design")
            found.append(
                Finding(
                    "autoscaling",
                    MEDIUM if low < wanted[0] or high < wanted[1] else LOW,
                    "node_pools[].autoscaling",
                    f"{low}-{high} nodes",
                    f"{wanted[0]}-{wanted[1]} nodes",
                    "; ".join(reasons),
                )
            )
        for pool in regular:
            if pool.config.machine_type != config.cluster.machine_type:
                found.append(
                    Finding(
                        "machine-type",
                        LOW,
                        f"node_pools[{pool.name}].config.machine_type",
                        pool.config.machine_type,
                        config.cluster.machine_type,
                        "capacity per node differs from the design's sizing (the chart's requests and "
                        "the 3-10 node range assume it)",
                    )
                )
    if config.cluster.spot_max_nodes > 0 and not spot:
        found.append(
            Finding(
                "spot-pool",
                LOW,
                "node_pools[].config.spot",
                None,
                f"a spot pool of 0-{config.cluster.spot_max_nodes} {config.cluster.spot_machine_type}",
                "no spot capacity: work that tolerates preemption runs on full-price nodes",
            )
        )
    for pool in spot:
        taints = {(t.key, t.value, _enum_name(t.effect)) for t in pool.config.taints}
        if not any(effect == "NO_SCHEDULE" for _, _, effect in taints):
            found.append(
                Finding(
                    "spot-taint",
                    MEDIUM,
                    f"node_pools[{pool.name}].config.taints",
                    sorted(taints) or None,
                    f"{SPOT_TAINT[0]}={SPOT_TAINT[1]}:{SPOT_TAINT[2]}",
                    f"erlmcp pods can be scheduled on the spot pool {pool.name} and lose their "
                    "sessions when its VMs are reclaimed (30 s notice)",
                )
            )
    for pool in cluster.node_pools:
        if not pool.management.auto_repair:
            found.append(
                Finding(
                    "auto-repair",
                    MEDIUM,
                    f"node_pools[{pool.name}].management.auto_repair",
                    False,
                    True,
                    f"a broken node in pool {pool.name} stays broken, and its pods",
                )
            )
        if not pool.management.auto_upgrade:
            found.append(
                Finding(
                    "auto-upgrade",
                    MEDIUM,
                    f"node_pools[{pool.name}].management.auto_upgrade",
                    False,
                    True,
                    f"pool {pool.name} falls behind the control plane and misses node security patches",
                )
            )
    return found


def _check_observability(cluster: container_v1.Cluster) -> list[Finding]:
    found: list[Finding] = []
    logged = {_enum_name(c) for c in cluster.logging_config.component_config.enable_components}
    if "WORKLOADS" not in logged:
        found.append(
            Finding(
                "workload-logs",
                MEDIUM,
                "logging_config.component_config.enable_components",
                sorted(logged),
                list(LOGGING_COMPONENTS),
                "the server's JSON logs (and its audit lines) do not reach Cloud Logging",
            )
        )
    if not cluster.monitoring_config.managed_prometheus_config.enabled:
        found.append(
            Finding(
                "managed-prometheus",
                MEDIUM,
                "monitoring_config.managed_prometheus_config.enabled",
                False,
                True,
                "Managed Service for Prometheus is off: the chart's PodMonitoring has no "
                "CRD and the server's /metrics are not collected",
            )
        )
    if not cluster.secret_manager_config.enabled:
        found.append(
            Finding(
                "secret-manager",
                LOW,
                "secret_manager_config.enabled",
                False,
                True,
                "the Secret Manager add-on is off: the chart's secretManager.enabled cannot mount the API key "
                "file from Secret Manager (its CSI driver is not there)",
            )
        )
    elif not cluster.secret_manager_config.rotation_config.enabled:
        found.append(
            Finding(
                "secret-manager-rotation",
                LOW,
                "secret_manager_config.rotation_config.enabled",
                False,
                True,
                "the Secret Manager add-on does not rotate: a new version of a secret mounted as `latest` never "
                "reaches the pods' files until they are recreated",
            )
        )
    return found


def check(cluster: container_v1.Cluster, config: GcpConfig) -> list[Finding]:
    """Every difference of an existing cluster from the design that matters for erlmcp, most severe first. It
    reads what GKE reports, so it judges clusters made by any tool (the pools' names do not matter)."""
    _validate(config)
    found = [
        *_check_operations(cluster, config),
        *_check_network(cluster, config),
        *_check_security(cluster, config),
        *_check_observability(cluster),
    ]
    return sorted(found, key=lambda f: _SEVERITIES.index(f.severity))


# -- the API -----------------------------------------------------------------------------------------------------


@dataclass
class Clients:
    """The GKE, IAM and Resource Manager clients; :meth:`connect` makes them (``endpoint``: one endpoint serving
    the three APIs), tests may pass their own."""

    clusters: container_v1.ClusterManagerClient
    iam: iam_admin_v1.IAMClient
    projects: resourcemanager_v3.ProjectsClient
    _connection: Connected | None = None

    @classmethod
    def connect(cls, endpoint: str | None = None, *, insecure: bool = False) -> Clients:
        """See :func:`deployer.gcp.grpc_clients.connect`."""
        kinds: list[tuple[type[Any], type[Any]]] = [
            (container_v1.ClusterManagerClient, ClusterManagerGrpcTransport),
            (iam_admin_v1.IAMClient, IAMGrpcTransport),
            (resourcemanager_v3.ProjectsClient, ProjectsGrpcTransport),
        ]
        connected = connect(kinds, endpoint, insecure=insecure)
        clusters, iam, projects = connected.clients
        return cls(clusters, iam, projects, _connection=connected)

    def close(self) -> None:
        (self._connection or Connected((self.clusters, self.iam, self.projects))).close()


# -- the command -------------------------------------------------------------------------------------------------


def _render_plan(found: Plan, config: GcpConfig, *, mode: str, as_json: bool, out: TextIO) -> None:
    regions = ", ".join(region.region for region in config.regions())
    title = f"GKE cluster {config.cluster.name} in {config.project}/{regions}"
    heading = {"title": title, "cluster": found.name}
    render(title, found.changes, mode=mode, out=out, as_json=as_json, heading=heading, counted=(*ACTIONS, REPLACE))
    if found.refused and not as_json:
        print(
            f"{len(found.refused)} REPLACE: these cannot be changed in place; apply refuses until the configuration "
            "matches or the pool/cluster is deleted",
            file=out,
        )


def _render_check(findings: Sequence[Finding], config: GcpConfig, name: str, *, as_json: bool, out: TextIO) -> None:
    counts = {s: sum(f.severity == s for f in findings) for s in _SEVERITIES}
    if as_json:
        document = {
            "cluster": name,
            "differences": len(findings),
            "summary": counts,
            "findings": [f.as_dict() for f in findings],
        }
        out.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
        return
    if not findings:
        print(
            f"GKE cluster {config.cluster.name} in {config.project}/{config.region} matches the erlmcp design: "
            "no differences",
            file=out,
        )
        return
    print(
        f"GKE cluster {config.cluster.name} in {config.project}/{config.region}: {len(findings)} differences from "
        "the erlmcp design (" + ", ".join(f"{counts[s]} {s}" for s in _SEVERITIES) + ")",
        file=out,
    )
    width = max(len(f.name) for f in findings)
    for finding in findings:
        shown = [json.dumps(v, default=str) if v is not None else "(unset)" for v in (finding.actual, finding.expected)]
        print(
            f"  {finding.severity.upper():<6}  {finding.name:<{width}}  {finding.field}: {shown[0]} "
            f"(design: {shown[1]})",
            file=out,
        )
        print(f"  {'':<6}  {'':<{width}}  {finding.why}", file=out)


def rendered(config: GcpConfig) -> dict[str, Any]:
    """What apply makes in an empty project, with the REST APIs' (camelCase) field names: the nodes' service
    account and its project roles, then the CreateClusterRequest (and, with ``standby``, the standby region's)."""
    request = desired_request(config)
    found = {"nodeServiceAccount": node_account.rendered(config), "parent": request.parent,
             "cluster": rest_fields(request.cluster)}  # fmt: skip
    for region in config.regions()[1:]:  # the standby region's cluster
        standby = desired_request(region)
        found["standby"] = {"parent": standby.parent, "cluster": rest_fields(standby.cluster)}
    return found


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``cluster plan|apply|check|render``. render: the desired cluster, offline. plan and apply: 0 when done.
    check: 0 when the cluster matches the design, 1 when it differs. :class:`ValuesError` (exit 2) for a bad
    configuration, CloudError (exit 1) when the API refuses, cannot be reached, the cluster to check does not
    exist, or apply would need a new cluster."""
    config = config_from(args)
    regions = config.regions()
    for region in regions:
        desired_cluster(region)  # a bad cluster section is bad input, before any call
    out = out or sys.stdout
    if args.action == "render":  # offline: no credentials, no call
        emit_desired(rendered(config), out=out, as_json=args.json)
        return 0
    clients = Clients.connect(args.endpoint, insecure=args.insecure)
    try:
        if args.action == "check":
            differ = False
            for region in regions:  # each region's cluster (with standby: both)
                name = cluster_path(region)
                actual = _get(clients.clusters, name)
                if actual is None:
                    raise CloudError(
                        f"there is no GKE cluster {name} to check; `cluster plan` shows what apply would create"
                    )
                findings = check(actual, region)
                _render_check(findings, region, name, as_json=args.json, out=out)
                differ = differ or bool(findings)
            return 1 if differ else 0
        mode = run_mode(args.action, args.dry_run)
        account = node_account.plan(clients.iam, clients.projects, config)
        plans = [_regional_plan(clients.clusters, region, standby=index > 0, log=log)
                 for index, region in enumerate(regions)]  # fmt: skip
        if mode == "apply":
            for found in plans:  # every region's plan must be applicable before anything is written
                applicable(found)
            timeout = getattr(args, "timeout", None) or OPERATION_TIMEOUT
            for index, (region, found) in enumerate(zip(regions, plans, strict=True)):
                before = account if index == 0 else ()
                apply_plan(clients.clusters, region, found, log=log, timeout=timeout, before=before)
    finally:
        clients.close()
    every = Plan(plans[0].name, [*converge.changes(account), *(c for found in plans for c in found.changes)])
    _render_plan(every, config, mode=mode, as_json=args.json, out=out)
    return 0


def _regional_plan(client: container_v1.ClusterManagerClient, config: GcpConfig, *, standby: bool, log: Log) -> Plan:
    """:func:`plan` of one region's cluster; a standby region's lines name their region."""
    found = plan(client, config, log=log)
    if standby:
        for change in found.changes:
            change.name = f"{change.name} ({config.region})"
    return found
