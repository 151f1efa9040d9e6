"""``python -m deployer memorystore plan|apply|render`` against a local server of the real Memorystore for Redis API
(``google.cloud.redis.v1.CloudRedis`` and ``google.longrunning.Operations``, the client library's own messages)
holding instances in memory: create and its operation waited for, re-apply, in-place drift with an exact update
mask, drift that needs a new instance refused, dry runs, offline render, the connection written for a Kubernetes
Secret without the AUTH string ever shown, refusals and bad configurations."""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import yaml
from google.cloud import redis_v1
from google.longrunning import operations_pb2  # type: ignore[import-untyped]
from google.protobuf import any_pb2  # type: ignore[import-untyped]
from google.rpc import status_pb2  # type: ignore[import-untyped]

from deployer.cli import build_parser, main
from deployer.gcp import memorystore
from deployer.gcp.config import load_config
from tests.gcp import Refused, serve, unary

PROJECT, REGION = "demo-project", "us-central1"
LOCATION = f"projects/{PROJECT}/locations/{REGION}"
INSTANCE = f"{LOCATION}/instances/erlmcp-sessions"
NETWORK = f"projects/{PROJECT}/global/networks/erlmcp-vpc"
HOST = "10.121.0.4"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfakeServerCaForTheTestsOnly\n-----END CERTIFICATE-----\n"
READY: Any = redis_v1.Instance.State.READY
# What UpdateInstance takes in its mask (the API's documentation and gcloud's update command together).
UPDATABLE = {"display_name", "labels", "memory_size_gb", "redis_configs", "replica_count", "auth_enabled",
             "maintenance_policy", "persistence_config", "read_replicas_mode", "secondary_ip_range",
             "maintenance_version"}  # fmt: skip
REDIS_CONFIG_KEYS = {"maxmemory-policy", "notify-keyspace-events", "activedefrag", "lfu-decay-time",
                     "lfu-log-factor", "maxmemory-gb", "stream-node-max-bytes", "stream-node-max-entries"}  # fmt: skip
VERSIONS = ["REDIS_3_2", "REDIS_4_0", "REDIS_5_0", "REDIS_6_X", "REDIS_7_0", "REDIS_7_2"]


class Pb:
    """A plain protobuf message class (the long-running operations' messages) as :func:`tests.gcp.unary` takes it."""

    def __init__(self, message_type: Any) -> None:
        self.deserialize = message_type.FromString
        self.serialize = message_type.SerializeToString


def _packed(message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(type(message).pb(message))
    return packed


@dataclass
class FakeMemorystore:
    """CloudRedis over one in-memory project: checks what Memorystore checks on what we send, fills in what it fills
    in, and runs each write as a long-running operation that completes after ``polls`` reads; one at a time."""

    instances: dict[str, Any] = field(default_factory=dict)
    auth_strings: dict[str, str] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Any] = field(default_factory=list)  # every write request, as received
    writes: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    refuse: dict[str, Refused] = field(default_factory=dict)  # method name -> the error of its next call
    psa_networks: set[str] = field(default_factory=lambda: {NETWORK})  # VPCs with private services access
    polls: int = 2
    fail_next: str | None = None  # the error the next operation ends with
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def handler(self, method: Callable[[Any], Any]) -> Any:
        name = "".join(part.title() for part in method.__name__.split("_"))

        def call(request: Any, context: Any) -> Any:
            self.calls.append(name)
            try:
                if name in self.refuse:
                    raise self.refuse.pop(name)
                return method(request)
            except Refused as exc:
                context.abort(exc.code, str(exc))

        return call

    def services(self) -> dict[str, dict[str, Any]]:
        r = redis_v1
        methods = {
            "GetInstance": (self.get_instance, r.GetInstanceRequest, r.Instance),
            "CreateInstance": (self.create_instance, r.CreateInstanceRequest, Pb(operations_pb2.Operation)),
            "UpdateInstance": (self.update_instance, r.UpdateInstanceRequest, Pb(operations_pb2.Operation)),
            "UpgradeInstance": (self.upgrade_instance, r.UpgradeInstanceRequest, Pb(operations_pb2.Operation)),
            "GetInstanceAuthString": (self.get_instance_auth_string, r.GetInstanceAuthStringRequest,
                                      r.InstanceAuthString),
        }  # fmt: skip
        operations = {"GetOperation": unary(self.handler(self.get_operation), Pb(operations_pb2.GetOperationRequest),
                                            Pb(operations_pb2.Operation))}  # fmt: skip
        return {
            "google.cloud.redis.v1.CloudRedis": {name: unary(self.handler(behaviour), request, response)
                                                 for name, (behaviour, request, response) in methods.items()},
            "google.longrunning.Operations": operations,
        }  # fmt: skip

    # -- operations

    def _operation(self, verb: str, name: str, finish: Callable[[], None]) -> Any:
        if any(o["target"] == name and not o["op"].done for o in self.operations.values()):
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"an operation is in progress on {name}")
        op_name = f"{LOCATION}/operations/operation-{next(self.ids)}-{uuid.uuid4().hex[:8]}"
        metadata = redis_v1.OperationMetadata(create_time=datetime.now(UTC), target=name, verb=verb,
                                              api_version="v1")  # fmt: skip
        op = operations_pb2.Operation(name=op_name, done=False, metadata=_packed(metadata))
        self.operations[op_name] = {"op": op, "target": name, "left": self.polls, "finish": finish,
                                    "error": self.fail_next}  # fmt: skip
        self.fail_next = None
        self.writes.append(f"{verb} {name}")
        return op

    def get_operation(self, request: Any) -> Any:
        entry = self.operations.get(request.name)
        if entry is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
        op = entry["op"]
        if not op.done:
            entry["left"] -= 1
            if entry["left"] <= 0:
                op.done = True
                if entry["error"]:
                    op.error.CopyFrom(status_pb2.Status(code=9, message=entry["error"]))
                else:
                    entry["finish"]()
                    op.response.CopyFrom(_packed(self.instances[entry["target"]]))
        return op

    # -- instances

    def _instance(self, name: str) -> Any:
        if name not in self.instances:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Resource '{name}' was not found")
        return self.instances[name]

    def get_instance(self, request: Any) -> Any:
        return redis_v1.Instance(self._instance(request.name))

    def get_instance_auth_string(self, request: Any) -> Any:
        instance = self._instance(request.name)
        if not instance.auth_enabled:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "AUTH is not enabled on the instance")
        return redis_v1.InstanceAuthString(auth_string=self.auth_strings[request.name])

    @staticmethod
    def _check(instance: Any) -> None:
        tier, replicas = instance.tier.name, instance.read_replicas_mode.name
        if tier not in ("BASIC", "STANDARD_HA"):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "tier is required")
        if not 1 <= instance.memory_size_gb <= 300:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "memory_size_gb must be 1 to 300")
        if instance.redis_version not in VERSIONS:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported redis_version {instance.redis_version}")
        if tier == "BASIC" and (instance.alternative_location_id or replicas == "READ_REPLICAS_ENABLED"):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a BASIC instance has no replica zone or read replicas")
        if instance.alternative_location_id and instance.alternative_location_id == instance.location_id:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "alternative_location_id must differ from location_id")
        for zone in (instance.location_id, instance.alternative_location_id):
            if zone and not zone.startswith(f"{REGION}-"):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"zone {zone} is not in {REGION}")
        if replicas == "READ_REPLICAS_ENABLED":
            if instance.memory_size_gb < 5 or not 1 <= instance.replica_count <= 5:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "read replicas need 5 GB and 1-5 replicas")
        elif tier == "STANDARD_HA" and instance.replica_count not in (0, 1):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "replica_count must be 1 without read replicas")
        for key, value in instance.labels.items():
            if not memorystore._LABEL_KEY.fullmatch(key) or not memorystore._LABEL_VALUE.fullmatch(value):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid label {key}={value}")
        unknown = set(instance.redis_configs) - REDIS_CONFIG_KEYS
        if unknown:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported redis_configs {sorted(unknown)}")

    def create_instance(self, request: Any) -> Any:
        if request.parent != LOCATION:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent}")
        name = f"{request.parent}/instances/{request.instance_id}"
        if not memorystore._INSTANCE_ID.fullmatch(request.instance_id):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid instance_id {request.instance_id}")
        if name in self.instances:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{name}' already exists")
        wanted = request.instance
        self._check(wanted)
        network = wanted.authorized_network or f"projects/{PROJECT}/global/networks/default"
        psa = wanted.connect_mode.name == "PRIVATE_SERVICE_ACCESS"
        if psa and network not in self.psa_networks:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"Failed to find a private service access "
                          f"connection in network {network}; set one up before creating the instance")  # fmt: skip
        self.requests.append(redis_v1.CreateInstanceRequest(request))
        stored: Any = redis_v1.Instance(wanted)
        tls = wanted.transit_encryption_mode.name == "SERVER_AUTHENTICATION"
        stored.name = name
        stored.authorized_network = network
        stored.state = redis_v1.Instance.State.CREATING
        stored.create_time = datetime.now(UTC)
        stored.location_id = wanted.location_id or f"{REGION}-b"
        stored.current_location_id = stored.location_id
        stored.persistence_iam_identity = "serviceAccount:service-1@cloud-redis.iam.gserviceaccount.com"
        stored.reserved_ip_range = wanted.reserved_ip_range or ("google-managed-services-erlmcp-vpc" if psa
                                                                else "10.121.0.0/29")  # fmt: skip
        if not wanted.connect_mode:
            stored.connect_mode = redis_v1.Instance.ConnectMode.DIRECT_PEERING
        if not wanted.transit_encryption_mode:
            stored.transit_encryption_mode = redis_v1.Instance.TransitEncryptionMode.DISABLED
        if not wanted.read_replicas_mode:
            stored.read_replicas_mode = redis_v1.Instance.ReadReplicasMode.READ_REPLICAS_DISABLED
        if stored.tier.name == "STANDARD_HA" and not stored.replica_count:
            stored.replica_count = 1
        if "maintenance_policy" in wanted:
            stored.maintenance_policy.create_time = stored.maintenance_policy.update_time = datetime.now(UTC)
        self.instances[name] = stored

        def finish() -> None:
            stored.state = READY
            stored.host, stored.port = HOST, 6378 if tls else 6379
            if tls:
                stored.server_ca_certs = [redis_v1.TlsCertificate(serial_number="0", cert=CA_PEM,
                                                                  sha1_fingerprint="ab12")]  # fmt: skip
            if stored.auth_enabled:
                self.auth_strings[name] = str(uuid.uuid4())
            stored.nodes = [redis_v1.NodeInfo(id="node-0", zone=stored.location_id)]

        return self._operation("create", name, finish)

    def _ready(self, name: str) -> Any:
        instance = self._instance(name)
        if instance.state != READY:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"instance {name} is {instance.state.name}")
        return instance

    def update_instance(self, request: Any) -> Any:
        name = request.instance.name
        instance = self._ready(name)
        paths = list(request.update_mask.paths)
        if not paths or not set(paths) <= UPDATABLE:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"update_mask {paths}: only {sorted(UPDATABLE)}")
        wanted = request.instance
        if "read_replicas_mode" in paths:
            mode = wanted.read_replicas_mode.name
            if mode != "READ_REPLICAS_ENABLED" and instance.read_replicas_mode.name == "READ_REPLICAS_ENABLED":
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "read replicas cannot be disabled")
            if mode == "READ_REPLICAS_ENABLED" and "secondary_ip_range" not in paths:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "secondary_ip_range is required to enable read "
                              "replicas")  # fmt: skip
        updated: Any = redis_v1.Instance(instance)
        for path in paths:
            setattr(updated, path, getattr(wanted, path))
        self._check(updated)
        self.requests.append(redis_v1.UpdateInstanceRequest(request))
        instance.state = redis_v1.Instance.State.UPDATING

        def finish() -> None:
            updated.state = READY
            if "auth_enabled" in paths and updated.auth_enabled:
                self.auth_strings[name] = str(uuid.uuid4())
            self.instances[name] = updated

        return self._operation("update", name, finish)

    def upgrade_instance(self, request: Any) -> Any:
        instance = self._ready(request.name)
        if request.redis_version not in VERSIONS:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported redis_version {request.redis_version}")
        if VERSIONS.index(request.redis_version) <= VERSIONS.index(instance.redis_version):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "only an upgrade to a newer version is supported")
        self.requests.append(redis_v1.UpgradeInstanceRequest(request))
        instance.state = redis_v1.Instance.State.UPDATING

        def finish() -> None:
            instance.state = READY
            instance.redis_version = request.redis_version

        return self._operation("upgrade", request.name, finish)


@dataclass
class Api:
    fake: FakeMemorystore
    endpoint: str


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setattr(memorystore, "POLL_SECONDS", 0.0)
    fake = FakeMemorystore()
    server, port = serve(fake.services())
    yield Api(fake, f"127.0.0.1:{port}")
    server.stop(None)


def run(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["memorystore", *args, "--project", PROJECT, "--endpoint", api.endpoint, "--insecure"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plan_json(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(api, capsys, "plan", "--json", *args)
    assert code == 0, err
    return dict(json.loads(out))


def rows(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["action"], c["kind"], c["name"]) for c in document["changes"]]


def created(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """Apply on an empty project; returns the stored instance, writes forgotten."""
    code, _, err = run(api, capsys, "apply", *args)
    assert code == 0, err
    api.fake.writes.clear()
    api.fake.requests.clear()
    return api.fake.instances[INSTANCE]


UNCHANGED = [("NO CHANGE", "Memorystore instance", "erlmcp-sessions")]


def test_plan_on_an_empty_project_creates_the_instance_and_writes_nothing(api, capsys) -> None:
    document = plan_json(api, capsys)
    assert rows(document) == [("CREATE", "Memorystore instance", "erlmcp-sessions")]
    assert document["summary"] == {"CREATE": 1, "UPDATE": 0, "DELETE": 0, "NO CHANGE": 0, "REPLACE": 0}
    assert document["changes"][0]["note"] == (
        "STANDARD_HA REDIS_7_2 1 GB in us-central1-a + us-central1-b, on erlmcp-vpc by PRIVATE_SERVICE_ACCESS, AUTH "
        "on, TLS; needs a private services access connection on erlmcp-vpc")  # fmt: skip
    code, out, err = run(api, capsys, "plan")
    assert code == 0, err
    assert out.splitlines()[0] == ("Memorystore erlmcp-sessions in demo-project/us-central1 plan: 1 to create, 0 to "
                                   "update, 0 to delete, 0 unchanged")  # fmt: skip
    assert api.fake.writes == []
    assert "GetInstanceAuthString" not in api.fake.calls


def test_apply_creates_the_designed_instance_and_waits_for_its_operation(api, capsys) -> None:
    code, out, err = run(api, capsys, "apply")
    assert code == 0, err
    assert out.splitlines()[0].endswith("applied: 1 created, 0 updated, 0 deleted, 0 unchanged")
    assert api.fake.writes == [f"create {INSTANCE}"]
    assert "create Memorystore instance erlmcp-sessions: operation operation-1-" in err
    assert "create Memorystore instance erlmcp-sessions: done" in err
    assert api.fake.instances[INSTANCE].state == READY  # the operation was awaited to its end
    assert api.fake.calls.count("GetOperation") == 2

    (request,) = api.fake.requests
    assert request == memorystore.desired_request(load_config(None, project=PROJECT))
    assert (request.parent, request.instance_id) == (LOCATION, "erlmcp-sessions")
    instance = request.instance
    assert instance.tier == redis_v1.Instance.Tier.STANDARD_HA
    assert (instance.location_id, instance.alternative_location_id) == ("us-central1-a", "us-central1-b")
    assert instance.redis_version == "REDIS_7_2"
    assert instance.memory_size_gb == 1
    assert instance.authorized_network == NETWORK
    assert instance.connect_mode == redis_v1.Instance.ConnectMode.PRIVATE_SERVICE_ACCESS
    assert instance.auth_enabled
    assert instance.transit_encryption_mode == redis_v1.Instance.TransitEncryptionMode.SERVER_AUTHENTICATION
    assert dict(instance.redis_configs) == {"maxmemory-policy": "volatile-lru"}
    assert dict(instance.labels) == {"managed-by": "erlmcp"}
    assert instance.display_name == "erlmcp sessions"
    assert "maintenance_policy" not in instance  # none configured: Memorystore's own window
    assert instance.read_replicas_mode == redis_v1.Instance.ReadReplicasMode.READ_REPLICAS_MODE_UNSPECIFIED
    assert not instance.reserved_ip_range


def test_apply_again_changes_nothing_and_writes_nothing(api, capsys) -> None:
    created(api, capsys)
    code, out, err = run(api, capsys, "apply")
    assert code == 0, err
    assert out.splitlines()[0].endswith("applied: 0 created, 0 updated, 0 deleted, 1 unchanged")
    assert f"READY at {HOST}:6378" in out
    assert rows(plan_json(api, capsys)) == UNCHANGED
    assert api.fake.writes == []


def test_in_place_drift_is_fixed_by_one_update_whose_mask_names_exactly_the_differing_fields(
    api, capsys, tmp_path: Path
) -> None:
    instance = created(api, capsys)
    instance.memory_size_gb = 2  # someone in the console
    instance.labels = {"managed-by": "someone", "team": "payments"}
    instance.redis_configs = {"maxmemory-policy": "allkeys-lru", "notify-keyspace-events": "Ex"}
    config = tmp_path / "gcp.yaml"
    config.write_text("memorystore: {maintenanceWindow: {day: SUNDAY, hour: 3}}\n")

    document = plan_json(api, capsys, "--config", str(config))
    (change,) = document["changes"]
    assert (change["action"], change["name"]) == ("UPDATE", "erlmcp-sessions")
    assert {d["field"]: (d["actual"], d["desired"]) for d in change["differences"]} == {
        "labels.managed-by": ("someone", "erlmcp"),
        "memory_size_gb": (2, 1),
        "redis_configs.maxmemory-policy": ("allkeys-lru", "volatile-lru"),
        "maintenance_policy": ([], [{"day": "SUNDAY", "hour": 3, "minutes": 0}]),
    }  # fmt: skip
    assert change["note"] == ("in place: labels, memory_size_gb, redis_configs, maintenance_policy; memory_size_gb: "
                              "scaling fails over: connections reset for a moment")  # fmt: skip
    assert api.fake.writes == []

    code, out, err = run(api, capsys, "apply", "--config", str(config))
    assert code == 0, err
    assert out.splitlines()[0].endswith("applied: 0 created, 1 updated, 0 deleted, 0 unchanged")
    (request,) = api.fake.requests
    assert isinstance(request, redis_v1.UpdateInstanceRequest)
    assert list(request.update_mask.paths) == ["labels", "maintenance_policy", "memory_size_gb", "redis_configs"]
    assert request.instance.name == INSTANCE
    assert dict(request.instance.labels) == {"managed-by": "erlmcp", "team": "payments"}  # theirs kept
    assert dict(request.instance.redis_configs) == {"maxmemory-policy": "volatile-lru", "notify-keyspace-events": "Ex"}
    window = request.instance.maintenance_policy.weekly_maintenance_window[0]
    assert (window.day, window.start_time.hours) == (7, 3)  # google.type.DayOfWeek.SUNDAY
    assert api.fake.writes == [f"update {INSTANCE}"]
    assert "update Memorystore instance erlmcp-sessions: labels, maintenance_policy, memory_size_gb, " \
           "redis_configs: done" in err  # fmt: skip
    stored = api.fake.instances[INSTANCE]
    assert stored.state == READY
    assert (stored.memory_size_gb, stored.tier) == (1, redis_v1.Instance.Tier.STANDARD_HA)  # the rest untouched

    api.fake.writes.clear()
    assert rows(plan_json(api, capsys, "--config", str(config))) == UNCHANGED
    assert api.fake.writes == []


def test_an_older_redis_is_upgraded_and_auth_turned_back_on_in_place(api, capsys) -> None:
    instance = created(api, capsys)
    instance.redis_version = "REDIS_6_X"
    instance.auth_enabled = False
    instance.display_name = "renamed"

    (change,) = plan_json(api, capsys)["changes"]
    assert change["action"] == "UPDATE"
    assert [d["field"] for d in change["differences"]] == ["display_name", "auth_enabled", "redis_version"]
    assert "upgrade to REDIS_7_2 (UpgradeInstance; cannot be undone)" in change["note"]
    assert "auth_enabled: the AUTH string changes: write the Secret again (--secret-out)" in change["note"]

    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    update, upgrade = api.fake.requests
    assert list(update.update_mask.paths) == ["auth_enabled", "display_name"]
    assert (update.instance.auth_enabled, update.instance.display_name) == (True, "erlmcp sessions")
    assert (upgrade.name, upgrade.redis_version) == (INSTANCE, "REDIS_7_2")
    assert api.fake.writes == [f"update {INSTANCE}", f"upgrade {INSTANCE}"]  # one after the other, each awaited
    assert rows(plan_json(api, capsys)) == UNCHANGED


def test_drift_that_needs_a_new_instance_is_refused_with_the_field_list_and_nothing_is_written(api, capsys) -> None:
    instance = created(api, capsys)
    instance.transit_encryption_mode = redis_v1.Instance.TransitEncryptionMode.DISABLED
    instance.connect_mode = redis_v1.Instance.ConnectMode.DIRECT_PEERING
    instance.authorized_network = f"projects/{PROJECT}/global/networks/default"
    instance.alternative_location_id = "us-central1-c"
    instance.redis_version = "REDIS_7_2_NEWER"  # not a version this tool knows: never "downgraded"
    instance.memory_size_gb = 4  # in place, but not while anything is refused

    code, out, err = run(api, capsys, "plan")
    assert code == 0, err
    assert "  REPLACE    Memorystore instance  erlmcp-sessions" in out
    assert ("needs a new instance (alternative_location_id, authorized_network, connect_mode, redis_version, "
            "transit_encryption_mode); apply refuses") in out  # fmt: skip
    assert '      transit_encryption_mode: "DISABLED" -> "SERVER_AUTHENTICATION"' in out
    assert "1 REPLACE: these cannot be changed on an existing instance" in out
    assert plan_json(api, capsys)["summary"]["REPLACE"] == 1

    for args in (("apply",), ("apply", "--json"), ("apply", "--secret-out", "/nonexistent/never-written")):
        code, out, err = run(api, capsys, *args)
        assert (code, out) == (1, ""), err
        assert "apply refused, nothing written" in err
        for path in ("transit_encryption_mode", "connect_mode", "authorized_network", "alternative_location_id",
                     "redis_version"):  # fmt: skip
            assert path in err
        assert "memory_size_gb" not in err
        assert "move to a new instance (another memorystore.name) and delete this one" in err
    assert api.fake.writes == []
    assert "GetInstanceAuthString" not in api.fake.calls
    assert not Path("/nonexistent/never-written").exists()


def test_read_replicas_are_enabled_in_place_but_never_disabled(api, capsys, tmp_path: Path) -> None:
    config = tmp_path / "gcp.yaml"
    config.write_text("memorystore: {memorySizeGb: 5}\n")
    created(api, capsys, "--config", str(config))
    config.write_text("memorystore: {memorySizeGb: 5, readReplicas: true, replicaCount: 2}\n")
    (change,) = plan_json(api, capsys, "--config", str(config))["changes"]
    assert {d["field"]: (d["actual"], d["desired"]) for d in change["differences"]} == {
        "read_replicas_mode": ("READ_REPLICAS_DISABLED", "READ_REPLICAS_ENABLED"), "replica_count": (1, 2)}  # fmt: skip
    assert "read_replicas_mode: read replicas cannot be disabled again" in change["note"]
    code, _, err = run(api, capsys, "apply", "--config", str(config))
    assert code == 0, err
    (request,) = api.fake.requests
    assert list(request.update_mask.paths) == ["read_replicas_mode", "replica_count", "secondary_ip_range"]
    assert (request.instance.secondary_ip_range, request.instance.replica_count) == ("auto", 2)
    assert rows(plan_json(api, capsys, "--config", str(config))) == UNCHANGED

    config.write_text("memorystore: {memorySizeGb: 5}\n")  # back to no read replicas: Memorystore cannot
    api.fake.writes.clear()
    code, out, err = run(api, capsys, "apply", "--config", str(config))
    assert (code, out) == (1, "")
    assert "Memorystore instance erlmcp-sessions: read_replicas_mode" in err
    assert api.fake.writes == []


def test_dry_run_prints_the_plan_and_writes_nothing(api, capsys) -> None:
    code, out, err = run(api, capsys, "apply", "--dry-run")
    assert code == 0, err
    assert "plan (dry run: nothing written): 1 to create" in out.splitlines()[0]
    assert api.fake.writes == []
    assert api.fake.instances == {}

    instance = created(api, capsys)
    instance.memory_size_gb = 3
    code, out, err = run(api, capsys, "apply", "--dry-run", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert (document["mode"], document["summary"]["UPDATE"]) == ("dry-run", 1)
    assert api.fake.writes == []
    assert api.fake.instances[INSTANCE].memory_size_gb == 3


def test_render_prints_the_desired_instance_offline_without_credentials(
    capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application-default credentials either

    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("render must not touch the network")

    def no_client(*_: object, **__: object) -> None:
        raise AssertionError("render must not make an API client")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(redis_v1.CloudRedisClient, "__init__", no_client)

    assert main(["memorystore", "render", "--project", PROJECT]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document == {
        "parent": LOCATION,
        "instanceId": "erlmcp-sessions",
        "instance": {
            "name": INSTANCE,
            "displayName": "erlmcp sessions",
            "labels": {"managed-by": "erlmcp"},
            "locationId": "us-central1-a",
            "alternativeLocationId": "us-central1-b",
            "redisVersion": "REDIS_7_2",
            "redisConfigs": {"maxmemory-policy": "volatile-lru"},
            "tier": "STANDARD_HA",
            "memorySizeGb": 1,
            "authorizedNetwork": NETWORK,
            "connectMode": "PRIVATE_SERVICE_ACCESS",
            "authEnabled": True,
            "transitEncryptionMode": "SERVER_AUTHENTICATION",
        },
    }
    assert main(["memorystore", "render", "--project", PROJECT, "--json", "--region", "europe-west1"]) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert rendered["instance"]["locationId"] == "europe-west1-a"
    assert rendered == memorystore.rendered(load_config(None, project=PROJECT, region="europe-west1"))


def test_secret_out_writes_the_url_and_the_ca_mode_0600_and_never_prints_the_auth_string(
    api, capsys, tmp_path: Path
) -> None:
    out_dir = tmp_path / "conn"
    code, out, err = run(api, capsys, "apply", "--secret-out", str(out_dir))
    assert code == 0, err
    auth = api.fake.auth_strings[INSTANCE]
    url = (out_dir / "redis-url").read_text()
    assert url == f"rediss://:{auth}@{HOST}:6378/0"
    assert (out_dir / "ca.crt").read_text() == CA_PEM
    for name in ("redis-url", "ca.crt"):
        assert stat.S_IMODE((out_dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
    assert sorted(os.listdir(out_dir)) == ["ca.crt", "redis-url"]  # no temporary file left behind
    assert (
        f"kubectl create secret generic erlmcp-memorystore --namespace erlmcp --from-file=redis-url={out_dir}/"
        f"redis-url --from-file=ca.crt={out_dir}/ca.crt --dry-run=client -o yaml | kubectl apply -f -"
    ) in out
    assert (
        "--set sessions.store=external --set sessions.external.secretName=erlmcp-memorystore --set "
        "sessions.external.caCert=true --set sessions.external.port=6378 --set "
        f"'sessions.external.egressTo[0].ipBlock.cidr={HOST}/32'"  # quoted: [0] is a glob in zsh
    ) in out
    # or the Secret Manager route (GKE's add-on): both files as secrets, the chart mounting them
    assert "Or keep them in Secret Manager (redis-url and redis-ca in secrets.keys of the configuration):" in out
    assert (
        f"  python -m deployer secrets apply --project {PROJECT} --value redis-url={out_dir}/redis-url "
        f"--value redis-ca={out_dir}/ca.crt\n"
    ) in out
    assert (
        f"--set secretManager.enabled=true --set secretManager.project={PROJECT} --set "
        "'secretManager.keys={api-keys,redis-url,redis-ca}' --set sessions.store=external --set "
        f"sessions.external.port=6378 --set 'sessions.external.egressTo[0].ipBlock.cidr={HOST}/32'"
    ) in out
    shown = [out, err]

    (out_dir / "redis-url").chmod(0o644)  # a later run puts the mode back
    code, out, err = run(api, capsys, "apply", "--secret-out", str(out_dir), "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["connection"]["files"] == {"redis-url": f"{out_dir}/redis-url", "ca.crt": f"{out_dir}/ca.crt"}
    assert (document["connection"]["host"], document["connection"]["port"]) == (HOST, 6378)
    assert document["connection"]["kubectl"].startswith("kubectl create secret generic erlmcp-memorystore ")
    assert document["connection"]["secret"] == "erlmcp/erlmcp-memorystore"
    assert document["connection"]["secretManager"] == {
        "secrets": f"python -m deployer secrets apply --project {PROJECT} --value redis-url={out_dir}/redis-url "
        f"--value redis-ca={out_dir}/ca.crt",
        "chart": [
            "--set secretManager.enabled=true",
            f"--set secretManager.project={PROJECT}",
            "--set 'secretManager.keys={api-keys,redis-url,redis-ca}'",
            "--set sessions.store=external",
            "--set sessions.external.port=6378",
            f"--set 'sessions.external.egressTo[0].ipBlock.cidr={HOST}/32'",
        ],
    }
    assert stat.S_IMODE((out_dir / "redis-url").stat().st_mode) == 0o600
    assert api.fake.writes == [f"create {INSTANCE}"]  # the second run wrote nothing to Memorystore
    shown += [out, err]
    for text in shown:
        assert auth not in text
        assert auth.replace("-", "") not in text.replace("-", "")
    code, out, err = run(api, capsys, "plan", "--json")
    assert auth not in out + err

    api.fake.instances[INSTANCE].auth_enabled = False  # no AUTH, no TLS: a plain URL and no CA
    api.fake.instances[INSTANCE].transit_encryption_mode = redis_v1.Instance.TransitEncryptionMode.DISABLED
    clients = memorystore.Clients.connect(api.endpoint, insecure=True)
    try:
        plain = memorystore.connection(
            clients.redis, load_config(None, project=PROJECT), tmp_path / "plain", config_file="my conf.yaml"
        )
    finally:
        clients.close()
    assert (tmp_path / "plain" / "redis-url").read_text() == f"redis://{HOST}:6378/0"
    assert plain.ca_file is None
    assert "ca.crt" not in plain.kubectl
    assert "redis-ca" not in plain.secret_manager_command
    assert plain.secret_manager_command.startswith(
        f"python -m deployer secrets apply -c 'my conf.yaml' --project {PROJECT} "
    )
    assert "--set 'secretManager.keys={api-keys,redis-url}'" in plain.as_dict()["secretManager"]["chart"]


def test_secret_out_of_an_instance_still_being_created_fails_and_says_when_to_retry(api, capsys, tmp_path) -> None:
    created(api, capsys)
    api.fake.instances[INSTANCE].state = redis_v1.Instance.State.CREATING
    api.fake.instances[INSTANCE].host = ""
    code, out, err = run(api, capsys, "apply", "--secret-out", str(tmp_path / "conn"))
    assert (code, out) == (1, "")
    assert f"Memorystore instance {INSTANCE} is CREATING: its connection is known once it is READY" in err
    assert not (tmp_path / "conn").exists()


def test_a_failed_refused_or_endless_operation_exits_1_and_says_what_to_do(api, capsys, monkeypatch) -> None:
    api.fake.psa_networks.clear()
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert ("cannot create Memorystore instance erlmcp-sessions: Failed to find a private service access connection "
            f"in network {NETWORK}") in err  # fmt: skip
    assert "gcloud services vpc-peerings connect --service=servicenetworking.googleapis.com" in err
    assert "or memorystore.connectMode: DIRECT_PEERING" in err

    api.fake.psa_networks.add(NETWORK)
    api.fake.fail_next = "Insufficient capacity in zone us-central1-b; try another zone"
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert "create Memorystore instance erlmcp-sessions: operation operation-1-" in err
    assert "failed: Insufficient capacity in zone us-central1-b; try another zone" in err

    api.fake.instances.clear()
    api.fake.polls = 1_000_000
    monkeypatch.setattr(memorystore, "OPERATION_TIMEOUT", 0.3)
    monkeypatch.setattr(memorystore, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(memorystore, "POLL_SECONDS", 0.05)
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert "create Memorystore instance erlmcp-sessions: running, 0 min 0 s so far" in err
    assert "still running after 0 min 0 s; Memorystore carries on with it: follow it with `gcloud redis " \
           "operations describe operation-2-" in err  # fmt: skip
    assert "--region us-central1` and run apply again when it is done" in err


def test_a_busy_instance_is_not_written_to(api, capsys) -> None:
    instance = created(api, capsys)
    instance.state = redis_v1.Instance.State.MAINTENANCE
    instance.memory_size_gb = 2
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert f"Memorystore instance {INSTANCE} is MAINTENANCE: an operation is running on it; apply again when" in err
    assert api.fake.writes == []


def test_a_permission_error_exits_1_naming_the_roles(api, capsys) -> None:
    api.fake.refuse["GetInstance"] = Refused(grpc.StatusCode.PERMISSION_DENIED,
                                             "Permission 'redis.instances.get' denied")  # fmt: skip
    code, out, err = run(api, capsys, "plan")
    assert (code, out) == (1, "")
    assert (
        f"deployer: cannot read Memorystore instance {INSTANCE}: permission denied (Permission "
        "'redis.instances.get' denied). plan needs roles/redis.viewer; apply needs roles/redis.admin"
    ) in err


def test_a_bad_configuration_exits_2_naming_the_key_before_any_call(api, capsys, tmp_path: Path) -> None:
    cases = [
        ("memorystore: {memorySizeGb: 0}", "memorystore.memorySizeGb 0: 1 to 300 (GB)"),
        ("memorystore: {tier: PREMIUM}", "memorystore.tier 'PREMIUM': STANDARD_HA or BASIC"),
        ("memorystore: {redisVersion: REDIS_8_0}", "memorystore.redisVersion 'REDIS_8_0': one of REDIS_3_2"),
        ("memorystore: {name: Sessions_1}", "memorystore.name 'Sessions_1' is not a Memorystore instance ID"),
        ("memorystore: {connectMode: VPC_PEERING}", "memorystore.connectMode 'VPC_PEERING'"),
        ("memorystore: {transitEncryptionMode: MTLS}", "memorystore.transitEncryptionMode 'MTLS'"),
        ("memorystore: {readReplicas: true, replicaCount: 2}", "memorystore.memorySizeGb 1: read replicas need 5 GB"),
        ("memorystore: {replicaCount: 3}", "memorystore.replicaCount 3: a STANDARD_HA instance without read replicas"),
        ("memorystore: {tier: BASIC, readReplicas: true}", "a BASIC instance has no replicas"),
        ("memorystore: {redisConfigs: {maxmemory-policy: lru}}", "memorystore.redisConfigs.maxmemory-policy 'lru'"),
        ("memorystore: {labels: {Team: x}}", "memorystore.labels: Team='x' is not a label"),
        ("memorystore: {labels: {managed-by: me}}", "memorystore.labels: managed-by is erlmcp's own label"),
        ("memorystore: {maintenanceWindow: {day: FUNDAY}}", "memorystore.maintenanceWindow.day 'FUNDAY'"),
        ("memorystore: {maintenanceWindow: {hour: 24}}", "memorystore.maintenanceWindow.hour 24: 0 to 23"),
        ("memorystore: {secretName: Redis_URL}", "memorystore.secretName 'Redis_URL' is not a Kubernetes Secret"),
        ("memorystore: {sizeGb: 2}", "memorystore.sizeGb: Extra inputs are not permitted"),
        ("memorystore: {memorySizeGb: lots}", "memorystore.memorySizeGb: Input should be a valid integer"),
        ("zones: [us-central1-a]", "zones: a STANDARD_HA instance needs two zones"),
    ]
    config = tmp_path / "gcp.yaml"
    for text, message in cases:
        config.write_text(text + "\n")
        for action in ("plan", "apply", "render"):
            code, out, err = run(api, capsys, action, "--config", str(config))
            assert (code, out) == (2, ""), (text, action, err)
            assert message in err, (text, err)
    for args, message in ((["plan", "--secret-out", "d"], "--secret-out goes with apply"),
                          (["apply", "--dry-run", "--secret-out", "d"], "--secret-out goes with apply"),
                          (["render", "--secret-out", "d"], "--secret-out goes with apply")):  # fmt: skip
        code, out, err = run(api, capsys, *args)
        assert (code, out) == (2, ""), args
        assert message in err
    assert main(["memorystore", "plan", "--project", PROJECT, "--insecure"]) == 2
    assert "--insecure needs --endpoint" in capsys.readouterr().err
    assert api.fake.calls == []


def test_the_configuration_shapes_the_instance() -> None:
    config = load_config(None, project=PROJECT, region="europe-west1", zones=["europe-west1-c", "europe-west1-d"],
                         network={"name": "prod-vpc"},
                         memorystore={"name": "prod-sessions", "tier": "BASIC", "memorySizeGb": 4,
                                      "connectMode": "DIRECT_PEERING", "reservedIpRange": "10.9.0.0/29",
                                      "transitEncryptionMode": "DISABLED", "authEnabled": False,
                                      "redisConfigs": {"maxmemory-policy": "allkeys-lru", "activedefrag": "yes"},
                                      "maintenanceWindow": {"day": "TUESDAY", "hour": 22},
                                      "labels": {"env": "prod"}})  # fmt: skip
    instance = memorystore.desired_instance(config)
    assert instance.name == "projects/demo-project/locations/europe-west1/instances/prod-sessions"
    zones = (instance.location_id, instance.alternative_location_id)
    assert (instance.tier.name, zones) == ("BASIC", ("europe-west1-c", ""))
    assert instance.authorized_network == "projects/demo-project/global/networks/prod-vpc"
    assert (instance.connect_mode.name, instance.reserved_ip_range) == ("DIRECT_PEERING", "10.9.0.0/29")
    assert (instance.transit_encryption_mode.name, instance.auth_enabled) == ("DISABLED", False)
    assert dict(instance.redis_configs) == {"maxmemory-policy": "allkeys-lru", "activedefrag": "yes"}
    assert dict(instance.labels) == {"env": "prod", "managed-by": "erlmcp"}
    window = instance.maintenance_policy.weekly_maintenance_window[0]
    assert (window.day, window.start_time.hours) == (2, 22)  # google.type.DayOfWeek.TUESDAY
    view = memorystore.instance_view(instance)
    assert view["maintenance_policy"] == [{"day": "TUESDAY", "hour": 22, "minutes": 0}]
    assert view["reserved_ip_range"] == "10.9.0.0/29"
    assert "replica_count" not in view  # the tier fixes it without read replicas

    replicas = memorystore.desired_instance(load_config(None, project=PROJECT, memorystore={
        "memorySizeGb": 5, "readReplicas": True, "replicaCount": 3}))  # fmt: skip
    assert (replicas.read_replicas_mode.name, replicas.replica_count) == ("READ_REPLICAS_ENABLED", 3)


def test_the_command_line_offers_memorystore_with_its_actions_and_secret_out() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    assert "memorystore" in help_text
    args = parser.parse_args(["memorystore", "apply", "--project", PROJECT, "--secret-out", "conn"])
    assert (args.action, args.secret_out) == ("apply", Path("conn"))
    with pytest.raises(SystemExit):
        parser.parse_args(["memorystore", "check", "--project", PROJECT])
    with pytest.raises(SystemExit):
        parser.parse_args(["cluster", "plan", "--secret-out", "conn"])  # memorystore's option only
