"""The session store of the seed's production shape as code: a **Memorystore for Redis** instance
(``python -m deployer memorystore plan|apply|render [--dry-run] [--json] [--secret-out DIR]``), which the chart's
``sessions.store: external`` reads through a Kubernetes Secret.

The desired instance is a ``redis_v1.Instance`` built from the configuration alone (:func:`desired_instance`), so
what ``render`` prints, what ``plan`` compares and what ``apply`` sends are one object:

* ``projects/P/locations/REGION/instances/erlmcp-sessions`` (``memorystore.name``), display name
  ``erlmcp sessions``, labels ``managed-by: erlmcp`` plus ``memorystore.labels`` (other labels on the instance
  are kept).
* **STANDARD_HA**: a primary and a replica with automatic failover. The primary is pinned to the configuration's
  first zone and the replica to its second (``location_id``, ``alternative_location_id``), so one zone's loss
  leaves the sessions. ``tier: BASIC`` (one node, lost on any failure) is for trials.
* **Redis 7.2** (``REDIS_7_2``), **1 GB** (``memorySizeGb``).
* On the seed's VPC (``projects/P/global/networks/<network.name>``) through **private services access**
  (``PRIVATE_SERVICE_ACCESS``): the VPC needs a private services access connection (an allocated range and the
  ``servicenetworking`` peering) before ``apply``; ``network apply`` does not make it (see the README).
  ``connectMode: DIRECT_PEERING`` needs none.
* **AUTH on** and **TLS** (``SERVER_AUTHENTICATION``: ``rediss://`` on port 6378, the instance's own CA): the
  network is private, but the sessions carry principals and client capabilities, and the chart's NetworkPolicy
  cannot stop another workload in the VPC from trying.
* ``redis_configs`` ``maxmemory-policy: volatile-lru``. Every key erlmcp writes expires (session records after
  the idle timeout, event streams after their TTL, rate-limit buckets and the replicas' liveness keys after
  seconds), so when memory runs out the least recently used of them go first: idle sessions, whose clients
  start a new one. ``volatile-lru`` rather than ``allkeys-lru``: a key without a TTL (a bug, or someone else's
  data) is never evicted silently; writes fail instead, and that is visible. Rather than ``volatile-ttl``: that
  would evict the short-lived liveness keys first, and a stream reader would take a live replica for dead.
  Memorystore's own default is the same policy; it is set so that a change shows as drift.
  ``memorystore.redisConfigs`` adds or overrides parameters.
* No read replicas (``readReplicas: false``, ``replica_count`` 1): the app reads its own writes and must see them
  at once, so it uses the primary endpoint only; the replica is there for failover.
* An optional weekly maintenance window (``maintenanceWindow: {day: SUNDAY, hour: 3}``); none: Memorystore's.
* No persistence (RDB/AOF): sessions are short-lived and the replica holds a copy; after losing both nodes clients
  initialize again.

``plan`` reads the instance: none → CREATE; found → the fields above are compared (:func:`instance_view`; what
Memorystore sets itself is not) and each difference is one of:

* changed **in place** by one ``UpdateInstance`` whose ``update_mask`` names exactly the differing fields:
  ``display_name``, ``labels``, ``memory_size_gb`` (scaling a STANDARD_HA instance fails over: connections reset
  for a moment), ``redis_configs``, ``auth_enabled`` (the AUTH string changes what ``--secret-out`` writes),
  ``maintenance_policy``, ``replica_count``, and enabling read replicas (``read_replicas_mode`` with
  ``secondary_ip_range: auto``);
* a newer **Redis version** by ``UpgradeInstance``;
* **REPLACE**: the tier, zones, network, connect mode, reserved range, TLS mode, a Redis downgrade and disabling
  read replicas cannot change on an instance. ``apply`` never recreates it (that would lose every session and
  change its address): it refuses before writing anything, exit 1, naming the fields.

Each write is a long-running operation; ``apply`` waits for it (at most :data:`OPERATION_TIMEOUT`, a progress line
every :data:`PROGRESS_SECONDS`) and reports the operation's error. An instance that is not READY (another
operation runs) is not written to.

``apply --secret-out DIR`` then hands the connection to Kubernetes without printing it: it writes ``DIR/redis-url``
(``rediss://:AUTH@HOST:PORT/0``, the AUTH string from ``GetInstanceAuthString``) and ``DIR/ca.crt`` (the
instance's server CA certificates), both mode 0600, and prints the ``kubectl`` command that makes the Secret
``memorystore.secretName`` from them and the chart settings that read it, and, for GKE's Secret Manager add-on,
the ``python -m deployer secrets apply --value redis-url=... --value redis-ca=...`` that stores them in Secret
Manager instead and the chart's ``secretManager`` settings. The AUTH string is never printed, logged or put in
``--json``.

``render`` prints the desired ``CreateInstanceRequest`` as YAML (``--json``: JSON), offline: no credentials, no
network.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from google.api_core import exceptions as api
from google.cloud import redis_v1
from google.cloud.redis_v1.services.cloud_redis.transports import CloudRedisGrpcTransport
from google.type import dayofweek_pb2, timeofday_pb2  # type: ignore[import-untyped]

from deployer.errors import CloudError, ValuesError
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
from deployer.gcp.config import GcpConfig, MemorystoreConfig, config_from
from deployer.gcp.converge import Operation, OperationPlan, follow_until_done, replace_lines, run_operations
from deployer.gcp.grpc_clients import Connected, connect
from deployer.log import Log

__all__ = [
    "DEFAULT_REDIS_CONFIGS",
    "OPERATION_TIMEOUT",
    "REPLACE",
    "Clients",
    "Connection",
    "MemorystoreError",
    "Plan",
    "apply_plan",
    "command",
    "connection",
    "desired_instance",
    "desired_request",
    "instance_path",
    "instance_view",
    "plan",
    "wait",
    "write_connection",
]

KIND = "Memorystore instance"
MANAGED_BY, OWNER = "managed-by", "erlmcp"
DEFAULT_REDIS_CONFIGS = {"maxmemory-policy": "volatile-lru"}
OPERATION_TIMEOUT = 30 * 60.0  # seconds an operation may take: a STANDARD_HA instance takes 5-15 minutes
POLL_SECONDS = 10.0  # between two reads of a running operation
PROGRESS_SECONDS = 60.0  # between two progress lines while waiting
URL_FILE, CA_FILE = "redis-url", "ca.crt"  # the Secret's keys, as the chart's sessions.external reads them

_TIERS = ("STANDARD_HA", "BASIC")
_VERSIONS = ("REDIS_3_2", "REDIS_4_0", "REDIS_5_0", "REDIS_6_X", "REDIS_7_0", "REDIS_7_2")  # oldest first
_CONNECT_MODES = ("PRIVATE_SERVICE_ACCESS", "DIRECT_PEERING")
_TLS_MODES = ("SERVER_AUTHENTICATION", "DISABLED")
_DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
_EVICTION = (
    "volatile-lru",
    "allkeys-lru",
    "volatile-lfu",
    "allkeys-lfu",
    "volatile-random",
    "allkeys-random",
    "volatile-ttl",
    "noeviction",
)
_INSTANCE_ID = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_CONFIG_KEY = re.compile(r"[a-z][a-z0-9-]*")
_MAX_GB = 300
_READ_REPLICAS_MIN_GB = 5
# In place, by UpdateInstance: the fields its update_mask may name (snake_case: the proto's field names).
_IN_PLACE = (
    "display_name",
    "labels",
    "memory_size_gb",
    "redis_configs",
    "auth_enabled",
    "maintenance_policy",
    "replica_count",
    "read_replicas_mode",
)
# Never in place: set when the instance is created.
_FIXED = (
    "tier",
    "location_id",
    "alternative_location_id",
    "authorized_network",
    "connect_mode",
    "reserved_ip_range",
    "transit_encryption_mode",
)
_BUSY_OK = "READY"


class MemorystoreError(CloudError):
    """Memorystore refused a call, cannot be reached, or apply cannot make a change; the message says which."""


# -- the desired state -------------------------------------------------------------------------------------------


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value))


def _replica_count(section: MemorystoreConfig) -> int:
    if section.replica_count is not None:
        return section.replica_count
    return 0 if section.tier == "BASIC" else 1


def _redis_configs(section: MemorystoreConfig) -> dict[str, str]:
    return {**DEFAULT_REDIS_CONFIGS, **section.redis_configs}


def _labels(section: MemorystoreConfig) -> dict[str, str]:
    return {**section.labels, MANAGED_BY: OWNER}


def _validate(config: GcpConfig) -> None:
    """Raises :class:`ValuesError` naming the key, for a memorystore section Memorystore would refuse."""
    section = config.memorystore
    where = "memorystore"
    if not _INSTANCE_ID.fullmatch(section.name):
        raise ValuesError(
            f"{where}.name {section.name!r} is not a Memorystore instance ID (1-40 of a-z, 0-9 and -, "
            "starting with a letter, not ending with -)"
        )
    if section.tier not in _TIERS:
        raise ValuesError(f"{where}.tier {section.tier!r}: STANDARD_HA or BASIC")
    if section.redis_version not in _VERSIONS:
        raise ValuesError(f"{where}.redisVersion {section.redis_version!r}: one of {', '.join(_VERSIONS)}")
    if section.connect_mode not in _CONNECT_MODES:
        raise ValuesError(f"{where}.connectMode {section.connect_mode!r}: PRIVATE_SERVICE_ACCESS or DIRECT_PEERING")
    if section.transit_encryption_mode not in _TLS_MODES:
        raise ValuesError(
            f"{where}.transitEncryptionMode {section.transit_encryption_mode!r}: SERVER_AUTHENTICATION or DISABLED"
        )
    if not 1 <= section.memory_size_gb <= _MAX_GB:
        raise ValuesError(f"{where}.memorySizeGb {section.memory_size_gb}: 1 to {_MAX_GB} (GB)")
    replicas = _replica_count(section)
    if section.tier == "BASIC":
        if section.read_replicas or replicas != 0:
            raise ValuesError(
                f"{where}.replicaCount {replicas}: a BASIC instance has no replicas (0), and no read replicas"
            )
    elif section.read_replicas:
        if not 1 <= replicas <= 5:
            raise ValuesError(f"{where}.replicaCount {replicas}: 1 to 5 read replicas")
        if section.memory_size_gb < _READ_REPLICAS_MIN_GB:
            raise ValuesError(
                f"{where}.memorySizeGb {section.memory_size_gb}: read replicas need {_READ_REPLICAS_MIN_GB} GB or more"
            )
        if _VERSIONS.index(section.redis_version) < _VERSIONS.index("REDIS_5_0"):
            raise ValuesError(f"{where}.redisVersion {section.redis_version}: read replicas need REDIS_5_0 or newer")
    elif replicas != 1:
        raise ValuesError(
            f"{where}.replicaCount {replicas}: a STANDARD_HA instance without read replicas has "
            "exactly 1 replica (set readReplicas: true for more)"
        )
    for key, value in _redis_configs(section).items():
        if not _CONFIG_KEY.fullmatch(key):
            raise ValuesError(f"{where}.redisConfigs: {key!r} is not a Redis configuration parameter")
        if key == "maxmemory-policy" and value not in _EVICTION:
            raise ValuesError(f"{where}.redisConfigs.maxmemory-policy {value!r}: one of {', '.join(_EVICTION)}")
    for key, value in section.labels.items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ValuesError(
                f"{where}.labels: {key}={value!r} is not a label (a-z, 0-9, _ and -; keys start with a letter)"
            )
        if key == MANAGED_BY:
            raise ValuesError(f"{where}.labels: {MANAGED_BY} is erlmcp's own label")
    window = section.maintenance_window
    if window is not None:
        if window.day not in _DAYS:
            raise ValuesError(f"{where}.maintenanceWindow.day {window.day!r}: one of {', '.join(_DAYS)}")
        if not 0 <= window.hour <= 23:
            raise ValuesError(f"{where}.maintenanceWindow.hour {window.hour}: 0 to 23 (UTC)")
    if not _K8S_NAME.fullmatch(section.secret_name):
        raise ValuesError(f"{where}.secretName {section.secret_name!r} is not a Kubernetes Secret name")
    zones = config.zone_list
    for zone in zones:
        if not zone.startswith(f"{config.region}-"):
            raise ValuesError(f"zones: {zone!r} is not a zone of {config.region} (e.g. {config.region}-a)")
    if section.tier == "STANDARD_HA" and len(set(zones)) < 2:
        raise ValuesError("zones: a STANDARD_HA instance needs two zones (its replica goes to the second)")


def location_path(config: GcpConfig) -> str:
    return f"projects/{config.project}/locations/{config.region}"


def instance_path(config: GcpConfig) -> str:
    return f"{location_path(config)}/instances/{config.memorystore.name}"


def network_path(config: GcpConfig) -> str:
    return f"projects/{config.project}/global/networks/{config.network.name}"


def _maintenance(section: MemorystoreConfig) -> redis_v1.MaintenancePolicy | None:
    window = section.maintenance_window
    if window is None:
        return None
    weekly = redis_v1.WeeklyMaintenanceWindow(
        day=dayofweek_pb2.DayOfWeek.Value(window.day), start_time=timeofday_pb2.TimeOfDay(hours=window.hour)
    )
    return redis_v1.MaintenancePolicy(weekly_maintenance_window=[weekly])


def desired_instance(config: GcpConfig) -> redis_v1.Instance:
    """The instance of the seed's production shape for ``config`` (see the module's documentation for each choice).

    Raises:
        ValuesError: the memorystore section cannot describe an instance Memorystore would create.
    """
    _validate(config)
    section, zones = config.memorystore, config.zone_list
    optional: dict[str, Any] = {}
    if section.read_replicas:  # without them the tier fixes the count: the API's default
        optional.update(read_replicas_mode="READ_REPLICAS_ENABLED", replica_count=_replica_count(section))
    if section.tier == "STANDARD_HA":  # the replica's zone
        optional["alternative_location_id"] = next(z for z in zones if z != zones[0])
    if section.reserved_ip_range:
        optional["reserved_ip_range"] = section.reserved_ip_range
    policy = _maintenance(section)
    if policy is not None:
        optional["maintenance_policy"] = policy
    return redis_v1.Instance(
        name=instance_path(config),
        display_name=section.display_name,
        labels=_labels(section),
        tier=section.tier,
        redis_version=section.redis_version,
        memory_size_gb=section.memory_size_gb,
        location_id=zones[0],
        authorized_network=network_path(config),
        connect_mode=section.connect_mode,
        auth_enabled=section.auth_enabled,
        transit_encryption_mode=section.transit_encryption_mode,
        redis_configs=_redis_configs(section),
        **optional,
    )


def desired_request(config: GcpConfig) -> redis_v1.CreateInstanceRequest:
    """The request ``apply`` sends when the instance does not exist."""
    return redis_v1.CreateInstanceRequest(
        parent=location_path(config), instance_id=config.memorystore.name, instance=desired_instance(config)
    )


# -- comparing ---------------------------------------------------------------------------------------------------


def _short(name: str) -> str:
    """A network by name: ``projects/P/global/networks/N``, a URL or ``N`` name the same network ``N``."""
    return name.rsplit("/", 1)[-1]


def _windows(policy: Any) -> list[dict[str, Any]]:
    return sorted(
        (
            {"day": dayofweek_pb2.DayOfWeek.Name(w.day), "hour": w.start_time.hours, "minutes": w.start_time.minutes}
            for w in policy.weekly_maintenance_window
        ),
        key=lambda w: (w["day"], w["hour"], w["minutes"]),
    )


def instance_view(instance: redis_v1.Instance, desired: redis_v1.Instance | None = None) -> dict[str, Any]:
    """The fields this module sets, as plain values (enum names, unset as the API's default): what ``plan``
    compares. Labels and Redis parameters are compared on the keys ``desired`` sets only; the reserved range, the
    maintenance window and the replica count (read replicas) only when ``desired`` sets them."""
    want = desired if desired is not None else instance
    connect = _enum_name(instance.connect_mode)
    tls = _enum_name(instance.transit_encryption_mode)
    replicas_mode = _enum_name(instance.read_replicas_mode)
    view: dict[str, Any] = {
        "tier": _enum_name(instance.tier),
        "location_id": instance.location_id,
        "alternative_location_id": instance.alternative_location_id,
        "authorized_network": _short(instance.authorized_network or "default"),
        "connect_mode": "DIRECT_PEERING" if connect == "CONNECT_MODE_UNSPECIFIED" else connect,
        "transit_encryption_mode": "DISABLED" if tls == "TRANSIT_ENCRYPTION_MODE_UNSPECIFIED" else tls,
        "redis_version": instance.redis_version,
        "display_name": instance.display_name,
        "labels": {key: instance.labels.get(key) for key in want.labels},
        "memory_size_gb": instance.memory_size_gb,
        "redis_configs": {key: instance.redis_configs.get(key) for key in want.redis_configs},
        "auth_enabled": instance.auth_enabled,
        "read_replicas_mode": "READ_REPLICAS_DISABLED"
        if replicas_mode == "READ_REPLICAS_MODE_UNSPECIFIED"
        else replicas_mode,
    }
    if _enum_name(want.read_replicas_mode) == "READ_REPLICAS_ENABLED":  # else the tier fixes the count (1 or 0)
        view["replica_count"] = instance.replica_count
    if want.reserved_ip_range:
        view["reserved_ip_range"] = instance.reserved_ip_range
    if "maintenance_policy" in want:
        view["maintenance_policy"] = _windows(instance.maintenance_policy)
    return view


def _version_rank(version: str) -> int:
    """Oldest first; a version this module does not know yet is taken as newer than all it knows."""
    return _VERSIONS.index(version) if version in _VERSIONS else len(_VERSIONS)


Step = Operation[redis_v1.CloudRedisClient]  # one write of apply: a long-running operation
Plan = OperationPlan[redis_v1.CloudRedisClient]  # the instance's lines and the operations that make them


def _update_instance(name: str, desired: redis_v1.Instance, actual: redis_v1.Instance, keys: list[str]) -> Step:
    """The one UpdateInstance that sets exactly ``keys`` (others' labels and Redis parameters kept)."""
    patch = redis_v1.Instance(name=name)
    paths: list[str] = []
    for key in keys:
        if key == "labels":
            patch.labels = {**actual.labels, **desired.labels}
        elif key == "redis_configs":
            patch.redis_configs = {**actual.redis_configs, **desired.redis_configs}
        elif key == "read_replicas_mode":  # enabling read replicas: a range for the new nodes and their number
            patch.read_replicas_mode = desired.read_replicas_mode
            patch.secondary_ip_range = "auto"
            patch.replica_count = desired.replica_count
            paths += ["secondary_ip_range", "replica_count"]
        else:
            setattr(patch, key, getattr(desired, key))
        paths.append(key)
    request = redis_v1.UpdateInstanceRequest(update_mask={"paths": sorted(set(paths))}, instance=patch)

    def call(client: redis_v1.CloudRedisClient) -> Any:
        return client.update_instance(request=request)

    return Step(f"update {KIND} {_short(name)}: " + ", ".join(sorted(set(paths))), call)


_CONSEQUENCES = {
    "memory_size_gb": "scaling fails over: connections reset for a moment",
    "auth_enabled": "the AUTH string changes: write the Secret again (--secret-out)",
    "read_replicas_mode": "read replicas cannot be disabled again",
}


def _classify(found: Plan, name: str, desired: redis_v1.Instance, actual: redis_v1.Instance) -> None:
    want, have = instance_view(desired), instance_view(actual, desired)
    diffs = {key: differences(want[key], have[key], key) for key in want}
    diffs = {key: found_ for key, found_ in diffs.items() if found_}
    shown = _short(name)
    if not diffs:
        found.changes.append(Change(NO_CHANGE, KIND, shown, note=_ready_note(actual)))
        return
    fixed = [key for key in diffs if key in _FIXED]
    version = diffs.get("redis_version")
    if version and _version_rank(want["redis_version"]) < _version_rank(have["redis_version"]):
        fixed.append("redis_version")  # Memorystore upgrades, never downgrades
    if "read_replicas_mode" in diffs and want["read_replicas_mode"] == "READ_REPLICAS_DISABLED":
        fixed.append("read_replicas_mode")  # once enabled, read replicas stay
    if fixed:
        note = f"needs a new instance ({', '.join(sorted(fixed))}); apply refuses"
        found.changes.append(Change(REPLACE, KIND, shown, [d for key in fixed for d in diffs[key]], note=note))
    in_place = [key for key in _IN_PLACE if key in diffs and key not in fixed]
    upgrade = "redis_version" in diffs and "redis_version" not in fixed
    if not in_place and not upgrade:
        return
    shown_diffs = [d for key in [*in_place, *(["redis_version"] if upgrade else [])] for d in diffs[key]]
    if "read_replicas_mode" in in_place and "replica_count" in in_place:
        in_place.remove("replica_count")  # enabling read replicas sets the count too
    notes = [f"in place: {', '.join(in_place)}"] if in_place else []
    notes += [f"{key}: {_CONSEQUENCES[key]}" for key in in_place if key in _CONSEQUENCES]
    if in_place:
        found.steps.append(_update_instance(name, desired, actual, in_place))
    if upgrade:
        notes.append(f"upgrade to {desired.redis_version} (UpgradeInstance; cannot be undone)")
        redis_version = desired.redis_version

        def upgrade_call(client: redis_v1.CloudRedisClient) -> Any:
            return client.upgrade_instance(name=name, redis_version=redis_version)

        found.steps.append(Step(f"upgrade {KIND} {shown} to {redis_version}", upgrade_call))
    found.changes.append(Change(UPDATE, KIND, shown, shown_diffs, note="; ".join(notes)))


def _ready_note(instance: redis_v1.Instance) -> str:
    state = _enum_name(instance.state)
    return f"{state} at {instance.host}:{instance.port}" if instance.host else state


def _create_note(config: GcpConfig, instance: redis_v1.Instance) -> str:
    section = config.memorystore
    where = instance.location_id + (
        f" + {instance.alternative_location_id}" if instance.alternative_location_id else ""
    )
    tls = "TLS" if section.transit_encryption_mode == "SERVER_AUTHENTICATION" else "no TLS"
    note = (
        f"{section.tier} {section.redis_version} {section.memory_size_gb} GB in {where}, on {config.network.name} "
        f"by {section.connect_mode}, AUTH {'on' if section.auth_enabled else 'off'}, {tls}"
    )
    if section.connect_mode == "PRIVATE_SERVICE_ACCESS":
        note += f"; needs a private services access connection on {config.network.name}"
    return note


def _get(client: redis_v1.CloudRedisClient, name: str) -> redis_v1.Instance | None:
    try:
        return client.get_instance(name=name)
    except api.NotFound:
        return None
    except (api.GoogleAPICallError, api.RetryError) as exc:
        raise _cloud_error(f"cannot read {KIND} {name}", exc) from exc


def plan(client: redis_v1.CloudRedisClient, config: GcpConfig) -> Plan:
    """What ``apply`` would do: read the instance, compare, classify. Writes nothing."""
    desired, name = desired_instance(config), instance_path(config)
    found = Plan(name)
    actual = _get(client, name)
    if actual is None:
        request = desired_request(config)
        found.changes.append(Change(CREATE, KIND, config.memorystore.name, note=_create_note(config, desired)))

        def create(c: redis_v1.CloudRedisClient) -> Any:
            return c.create_instance(request=request)

        found.steps.append(Step(f"create {KIND} {config.memorystore.name}", create))
        return found
    found.status = _enum_name(actual.state)
    _classify(found, name, desired, actual)
    return found


# -- applying ----------------------------------------------------------------------------------------------------


def _cloud_error(what: str, exc: Exception) -> MemorystoreError:
    if isinstance(exc, api.PermissionDenied):
        return MemorystoreError(
            f"{what}: permission denied ({exc.message}). plan needs roles/redis.viewer; apply "
            "needs roles/redis.admin (--secret-out reads the AUTH string: "
            "redis.instances.getAuthString)"
        )
    if isinstance(exc, api.GoogleAPICallError):
        message = str(exc.message or exc)
        if "private service" in message.lower():
            message += f"; {_NO_PSA}"
        return MemorystoreError(f"{what}: {message}")
    return MemorystoreError(f"{what}: the Memorystore API cannot be reached ({exc})")


_NO_PSA = (
    "the VPC needs a private services access connection first (once per VPC): `gcloud compute addresses create "
    "google-managed-services-NETWORK --global --purpose=VPC_PEERING --prefix-length=16 --network=NETWORK` and `gcloud "
    "services vpc-peerings connect --service=servicenetworking.googleapis.com --ranges=google-managed-services-NETWORK "
    "--network=NETWORK`; or memorystore.connectMode: DIRECT_PEERING"
)


def _call(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (api.GoogleAPICallError, api.RetryError) as exc:
        raise _cloud_error(f"cannot {what}", exc) from exc


def wait(operation: Any, *, what: str, region: str, log: Log, timeout: float = OPERATION_TIMEOUT) -> Any:
    """Poll the long-running ``operation`` (a ``google.api_core.operation.Operation``) until it is done; a progress
    line every :data:`PROGRESS_SECONDS`. Returns its result (the instance).

    Raises:
        MemorystoreError: the operation failed (its error), or still runs after ``timeout`` (Memorystore goes on
            with it: the message says how to follow it).
    """
    name = operation.operation.name
    short = name.rsplit("/", 1)[-1]
    follow_until_done(
        lambda: bool(_call(f"follow operation {name}", operation.done)),
        timeout=timeout,
        poll_seconds=POLL_SECONDS,
        progress_seconds=PROGRESS_SECONDS,
        progress=lambda elapsed: f"{what}: running, {elapsed} so far",
        overdue=lambda elapsed: MemorystoreError(
            f"{what}: operation {short} still running after {elapsed}; "
            "Memorystore carries on with it: follow it with `gcloud redis operations describe "
            f"{short} --region {region}` and run apply again when it is done"
        ),
        log=log,
    )
    done = operation.operation
    if done.HasField("error") and done.error.code:
        reason = done.error.message or f"code {done.error.code}"
        raise MemorystoreError(f"{what}: operation {short} failed: {reason}")
    return operation.result()


def apply_plan(
    client: redis_v1.CloudRedisClient, config: GcpConfig, found: Plan, *, log: Log, timeout: float = OPERATION_TIMEOUT
) -> None:
    """Make the plan so, one operation at a time, each awaited.

    Raises:
        MemorystoreError: the plan has REPLACE changes or the instance is busy (nothing is written), or a call or an
            operation failed.
    """
    if found.refused:
        lines = replace_lines(found.changes)
        raise MemorystoreError(
            "apply refused, nothing written: these differences cannot be changed on an existing "
            "instance, and erlmcp never recreates it by itself (every session would be lost and "
            "its address would change):\n" + "\n".join(lines) + "\nEither change the "
            "configuration to match, or move to a new instance (another memorystore.name) and "
            "delete this one."
        )
    if found.steps and found.status and found.status != _BUSY_OK:
        raise MemorystoreError(
            f"{KIND} {found.name} is {found.status}: an operation is running on it; apply again "
            "when it is READY (`gcloud redis operations list`)"
        )

    def started(step: Step, operation: Any) -> str:
        hint = "; a STANDARD_HA instance takes 5-15 minutes" if step.what.startswith("create") else ""
        return f"{step.what}: operation {operation.operation.name.rsplit('/', 1)[-1]} started{hint}"

    def follow(step: Step, operation: Any) -> None:
        wait(operation, what=step.what, region=config.region, log=log, timeout=timeout)

    run_operations(client, found.steps, call=_call, started=started, follow=follow, log=log)


# -- the connection ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """Where the connection was written and how Kubernetes gets it; the AUTH string is in the file only."""

    host: str
    port: int
    tls: bool
    url_file: Path
    ca_file: Path | None
    secret: str
    namespace: str
    project: str
    secret_keys: tuple[str, ...]  # the configuration's secrets.keys: what the chart mounts from Secret Manager
    config_file: str | None = None  # the configuration file the command was given, for the commands it prints

    @property
    def kubectl(self) -> str:
        files = [f"--from-file={URL_FILE}={shlex.quote(str(self.url_file))}"]
        if self.ca_file is not None:
            files.append(f"--from-file={CA_FILE}={shlex.quote(str(self.ca_file))}")
        return (
            f"kubectl create secret generic {self.secret} --namespace {self.namespace} {' '.join(files)} "
            "--dry-run=client -o yaml | kubectl apply -f -"
        )

    @property
    def chart(self) -> list[str]:
        settings = [
            "sessions.store=external",
            f"sessions.external.secretName={self.secret}",
            f"sessions.external.port={self.port}",
            f"sessions.external.egressTo[0].ipBlock.cidr={self.host}/32",
        ]
        if self.ca_file is not None:
            settings.insert(2, "sessions.external.caCert=true")
        return settings

    @property
    def secret_manager_keys(self) -> list[str]:
        """What the chart takes from Secret Manager: the configuration's keys with ``redis-url`` (and ``redis-ca``
        with TLS) added; ``api-keys`` first, which the chart requires."""
        keys = ["api-keys", *self.secret_keys, "redis-url", *(["redis-ca"] if self.ca_file is not None else [])]
        return list(dict.fromkeys(keys))

    @property
    def secret_manager_command(self) -> str:
        """The ``python -m deployer secrets apply`` that stores the files as new versions of ``redis-url`` and
        ``redis-ca``, with this command's configuration and project."""
        values = [f"--value redis-url={shlex.quote(str(self.url_file))}"]
        if self.ca_file is not None:
            values.append(f"--value redis-ca={shlex.quote(str(self.ca_file))}")
        config = f"-c {shlex.quote(self.config_file)} " if self.config_file else ""
        return f"python -m deployer secrets apply {config}--project {self.project} {' '.join(values)}"

    @property
    def secret_manager_chart(self) -> list[str]:
        """The chart's settings for the Secret Manager route (no Kubernetes Secret; chart README "Secret
        Manager")."""
        return [
            "secretManager.enabled=true",
            f"secretManager.project={self.project}",
            "secretManager.keys={" + ",".join(self.secret_manager_keys) + "}",
            "sessions.store=external",
            f"sessions.external.port={self.port}",
            f"sessions.external.egressTo[0].ipBlock.cidr={self.host}/32",
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "files": {URL_FILE: str(self.url_file), **({CA_FILE: str(self.ca_file)} if self.ca_file else {})},
            "secret": f"{self.namespace}/{self.secret}",
            "kubectl": self.kubectl,
            "chart": [f"--set {shlex.quote(s)}" for s in self.chart],
            "secretManager": {
                "secrets": self.secret_manager_command,
                "chart": [f"--set {shlex.quote(s)}" for s in self.secret_manager_chart],
            },
        }


def _write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` with mode 0600, replaced at once (never a moment world-readable or half written)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def redis_url(instance: redis_v1.Instance, auth: str | None) -> str:
    """``rediss://:AUTH@HOST:PORT/0`` (``redis://`` without TLS, no ``:AUTH@`` without AUTH)."""
    scheme = "rediss" if _enum_name(instance.transit_encryption_mode) == "SERVER_AUTHENTICATION" else "redis"
    credentials = f":{quote(auth, safe='')}@" if auth else ""
    return f"{scheme}://{credentials}{instance.host}:{instance.port}/0"


def connection(
    client: redis_v1.CloudRedisClient, config: GcpConfig, directory: Path, *, config_file: str | None = None
) -> Connection:
    """Reads the READY instance and its AUTH string and writes ``redis-url`` and ``ca.crt`` into ``directory``
    (made 0700 when missing), both 0600. ``config_file``: the configuration the command was given (named in the
    commands the connection prints).

    Raises:
        MemorystoreError: the instance is missing or not READY, or a call is refused.
        ValuesError: ``directory`` cannot be written.
    """
    name = instance_path(config)
    instance = _get(client, name)
    if instance is None:
        raise MemorystoreError(f"there is no {KIND} {name}: apply creates it")
    if _enum_name(instance.state) != _BUSY_OK or not instance.host:
        raise MemorystoreError(
            f"{KIND} {name} is {_enum_name(instance.state)}: its connection is known once it is "
            "READY; run apply --secret-out again then"
        )
    tls = _enum_name(instance.transit_encryption_mode) == "SERVER_AUTHENTICATION"
    auth = None
    if instance.auth_enabled:
        auth = _call(
            f"read the AUTH string of {KIND} {name}", lambda: client.get_instance_auth_string(name=name)
        ).auth_string
        if not auth:
            raise MemorystoreError(f"{KIND} {name} has AUTH on but gave no AUTH string")
    certificates = "".join(c.cert if c.cert.endswith("\n") else c.cert + "\n" for c in instance.server_ca_certs)
    if tls and not certificates:
        raise MemorystoreError(f"{KIND} {name} has TLS on but gave no server CA certificate")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        url_file = directory / URL_FILE
        _write_private(url_file, redis_url(instance, auth))
        ca_file = None
        if tls:
            ca_file = directory / CA_FILE
            _write_private(ca_file, certificates)
    except OSError as exc:
        raise ValuesError(f"--secret-out {directory}: cannot write there: {exc.strerror or exc}") from exc
    return Connection(
        host=instance.host,
        port=instance.port,
        tls=tls,
        url_file=url_file,
        ca_file=ca_file,
        secret=config.memorystore.secret_name,
        namespace=config.cluster.namespace,
        project=config.project,
        secret_keys=tuple(config.secrets.keys),
        config_file=config_file,
    )


def _given(args: argparse.Namespace) -> str | None:
    """The configuration file the command was given (``-c``), if any."""
    given = getattr(args, "config", None)
    return str(given) if given is not None else None


def write_connection(found: Connection, out: TextIO) -> None:
    what = f"{URL_FILE} and {CA_FILE}" if found.ca_file else URL_FILE
    tls = "TLS" if found.tls else "no TLS"
    print(
        f"Connection: {found.host}:{found.port} ({tls}); {what} written to {found.url_file.parent} (mode 0600, "
        "the AUTH string in the file only). Make the Secret:",
        file=out,
    )
    print(f"  {found.kubectl}", file=out)
    print("and install the chart with " + " ".join(f"--set {shlex.quote(s)}" for s in found.chart), file=out)
    both = "redis-url and redis-ca" if found.ca_file is not None else "redis-url"
    print(f"Or keep them in Secret Manager ({both} in secrets.keys of the configuration):", file=out)
    print(f"  {found.secret_manager_command}", file=out)
    chart = " ".join(f"--set {shlex.quote(s)}" for s in found.secret_manager_chart)
    print(f'and install the chart with {chart} (no Kubernetes Secret; chart README "Secret Manager")', file=out)


# -- the API -----------------------------------------------------------------------------------------------------


@dataclass
class Clients:
    """The Memorystore for Redis client; :meth:`connect` makes it, tests may pass their own."""

    redis: redis_v1.CloudRedisClient
    _connection: Connected | None = None

    @classmethod
    def connect(cls, endpoint: str | None = None, *, insecure: bool = False) -> Clients:
        """See :func:`deployer.gcp.grpc_clients.connect`."""
        connected = connect(
            [(redis_v1.CloudRedisClient, CloudRedisGrpcTransport)], endpoint, insecure=insecure, error=MemorystoreError
        )
        return cls(connected.clients[0], _connection=connected)

    def close(self) -> None:
        (self._connection or Connected((self.redis,))).close()


# -- the command -------------------------------------------------------------------------------------------------


def rendered(config: GcpConfig) -> dict[str, Any]:
    """The desired CreateInstanceRequest as plain data, with the REST API's (camelCase) field names."""
    request = desired_request(config)
    return {"parent": request.parent, "instanceId": request.instance_id, "instance": rest_fields(request.instance)}


def _render_plan(
    found: Plan, config: GcpConfig, *, mode: str, as_json: bool, out: TextIO, extra: Mapping[str, Any]
) -> None:
    title = f"Memorystore {config.memorystore.name} in {config.project}/{config.region}"
    heading = {"title": title, "instance": found.name}
    counted = (*ACTIONS, REPLACE)
    render(title, found.changes, mode=mode, out=out, as_json=as_json, heading=heading, trailer=extra, counted=counted)
    if found.refused and not as_json:
        print(
            f"{len(found.refused)} REPLACE: these cannot be changed on an existing instance; apply refuses until the "
            "configuration matches",
            file=out,
        )


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``memorystore plan|apply|render``: 0 when done. :class:`ValuesError` (exit 2) for bad input before any call,
    :class:`MemorystoreError` (exit 1) when the API refuses or apply cannot make a change."""
    config = config_from(args)
    desired_instance(config)  # a bad section is bad input, before any call
    out = out or sys.stdout
    secret_out: Path | None = getattr(args, "secret_out", None)
    if args.action == "render":
        if secret_out is not None:
            raise ValuesError("--secret-out goes with apply: render is offline and reads no instance")
        emit_desired(rendered(config), out=out, as_json=args.json)
        return 0
    mode = run_mode(args.action, args.dry_run)
    if secret_out is not None and mode != "apply":
        raise ValuesError(
            "--secret-out goes with apply (not plan or --dry-run): it reads the AUTH string and writes files"
        )
    clients = Clients.connect(args.endpoint, insecure=args.insecure)
    extra: dict[str, Any] = {}
    try:
        found = plan(clients.redis, config)
        if mode == "apply":
            apply_plan(clients.redis, config, found, log=log, timeout=OPERATION_TIMEOUT)
            if secret_out is not None:
                written = connection(clients.redis, config, secret_out, config_file=_given(args))
                extra["connection"] = written.as_dict()
    finally:
        clients.close()
    _render_plan(found, config, mode=mode, as_json=args.json, out=out, extra=extra)
    if secret_out is not None and not args.json:
        write_connection(written, out)
    return 0
