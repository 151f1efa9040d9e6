"""``python -m deployer cluster plan|apply|check`` against a local server of the real GKE API
(``google.container.v1.ClusterManager``, the client library's own messages) holding clusters in memory, beside
the IAM and Resource Manager APIs (:mod:`tests.iam_server`) for the nodes' service account and its project roles:
create from nothing, re-apply, in-place drift, drift that needs a new cluster, dry runs, the check report,
refusals."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from google.cloud import container_v1, iam_admin_v1
from google.iam.v1 import policy_pb2  # type: ignore[import-untyped]

from deployer.cli import main
from deployer.gcp import gke
from deployer.gcp import iam as iam_policies
from deployer.gcp.config import load_config
from deployer.gcp.node_account import NODE_ROLES
from tests.gcp import Refused, refusing, serve, unary
from tests.iam_server import FakeIam

PROJECT = "demo-project"
REGION = "us-central1"
LOCATION = f"projects/{PROJECT}/locations/{REGION}"
CLUSTER = f"{LOCATION}/clusters/erlmcp-cluster"
NODE_SA = f"erlmcp-gke-nodes@{PROJECT}.iam.gserviceaccount.com"
VERSION = "1.33.5-gke.1080000"
DONE: Any = container_v1.Operation.Status.DONE
RUNNING: Any = container_v1.Operation.Status.RUNNING


def _pb_fields(message: Any) -> list[str]:
    return [f.name for f, _ in type(message).pb(message).ListFields()]


@dataclass
class FakeGke:
    """ClusterManager over one in-memory project: checks what GKE checks on what we send, fills in what GKE fills
    in, and runs each write as an operation that completes after ``polls`` reads; one at a time per cluster.

    The Secret Manager add-on's ``secret_manager_config`` (``enabled`` and ``rotation_config``: ``enabled``,
    ``rotation_interval``) is taken on create and by ``desired_secret_manager_config`` and given back as sent. Left
    out: GKE's 2-minute default interval is not filled in when rotation is on without one, and the interval is not
    range-checked (the API reference gives no range), nor is rotation refused with the add-on off."""

    clusters: dict[str, Any] = field(default_factory=dict)
    created: list[Any] = field(default_factory=list)  # every CreateClusterRequest received, as received
    requests: list[Any] = field(default_factory=list)  # every other write request, as received
    writes: list[str] = field(default_factory=list)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    iam: FakeIam = field(default_factory=lambda: FakeIam(project=PROJECT))  # the accounts GKE knows are IAM's
    regions: tuple[str, ...] = (REGION, "us-east1")  # where clusters may be made
    refuse: dict[str, Refused] = field(default_factory=dict)  # method name -> the error of its next call
    polls: int = 2  # reads of an operation until it is DONE
    fail_next: str | None = None  # the error the next operation ends with
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def handler(self, method: Callable[[Any], Any]) -> Any:
        return refusing(method, self.refuse)

    def services(self) -> dict[str, dict[str, Any]]:
        c = container_v1
        methods = {
            "GetCluster": (self.get_cluster, c.GetClusterRequest, c.Cluster),
            "CreateCluster": (self.create_cluster, c.CreateClusterRequest, c.Operation),
            "GetOperation": (self.get_operation, c.GetOperationRequest, c.Operation),
            "UpdateCluster": (self.update_cluster, c.UpdateClusterRequest, c.Operation),
            "SetNodePoolAutoscaling": (self.set_autoscaling, c.SetNodePoolAutoscalingRequest, c.Operation),
            "SetNodePoolManagement": (self.set_management, c.SetNodePoolManagementRequest, c.Operation),
            "UpdateNodePool": (self.update_node_pool, c.UpdateNodePoolRequest, c.Operation),
            "CreateNodePool": (self.create_node_pool, c.CreateNodePoolRequest, c.Operation),
        }
        handlers = {name: unary(self.handler(behaviour), request, response)
                    for name, (behaviour, request, response) in methods.items()}  # fmt: skip
        return {**self.iam.services(), "google.container.v1.ClusterManager": handlers}

    # -- state

    def _cluster(self, name: str) -> Any:
        if name not in self.clusters:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Not found: {name}.")
        return self.clusters[name]

    def _pool(self, name: str) -> tuple[Any, Any]:
        cluster_name, _, pool_name = name.partition("/nodePools/")
        cluster = self._cluster(cluster_name)
        for pool in cluster.node_pools:
            if pool.name == pool_name:
                return cluster, pool
        raise Refused(grpc.StatusCode.NOT_FOUND, f"Not found: {name}.")

    def _operation(self, kind: str, cluster_name: str, finish: Callable[[], None]) -> Any:
        """A write: refused while another operation runs on the cluster (as GKE does), else a RUNNING operation."""
        if any(o["cluster"] == cluster_name and o["op"].status != DONE for o in self.operations.values()):
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"Cluster is running incompatible operation on "
                          f"{cluster_name}")  # fmt: skip
        op = container_v1.Operation(name=f"operation-{next(self.ids)}", operation_type=kind, status=RUNNING,
                                    target_link=f"https://container.googleapis.com/v1/{cluster_name}",
                                    location=cluster_name.split("/")[3])  # fmt: skip
        self.operations[op.name] = {"op": op, "cluster": cluster_name, "left": self.polls, "finish": finish,
                                    "error": self.fail_next}  # fmt: skip
        self.fail_next = None
        self.writes.append(f"{kind} {cluster_name}")
        return container_v1.Operation(op)

    def get_operation(self, request: Any) -> Any:
        prefix, _, op_name = request.name.rpartition("/operations/")
        if prefix not in self._locations() or op_name not in self.operations:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Not found: {request.name}.")
        entry = self.operations[op_name]
        op = entry["op"]
        if op.status != DONE:
            entry["left"] -= 1
            if entry["left"] <= 0:
                op.status = DONE
                if entry["error"]:
                    op.error = {"code": 8, "message": entry["error"]}
                    op.status_message = entry["error"]
                else:
                    entry["finish"]()
        return container_v1.Operation(op)

    # -- clusters

    def get_cluster(self, request: Any) -> Any:
        return container_v1.Cluster(self._cluster(request.name))

    def _check_pool(self, pool: Any) -> None:
        config, scaling = pool.config, pool.autoscaling
        if config.service_account not in self.iam.accounts:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"service account {config.service_account} does not "
                          "exist")  # fmt: skip
        if config.spot and config.preemptible:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "spot and preemptible are exclusive")
        if (scaling.total_max_node_count or scaling.total_min_node_count) and scaling.max_node_count:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "total and per-zone limits are exclusive")
        if scaling.total_min_node_count > scaling.total_max_node_count:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "total_min_node_count > total_max_node_count")

    def _materialize_pool(self, pool: Any, cluster: Any) -> Any:
        """What GKE gives back for a pool it made: the request plus server-set fields."""
        made: Any = container_v1.NodePool(pool)
        made.status = container_v1.NodePool.Status.RUNNING
        made.version = VERSION
        made.locations = list(cluster.locations)
        made.config.disk_size_gb, made.config.disk_type = 100, "pd-balanced"
        made.config.metadata = {"disable-legacy-endpoints": "true"}
        made.management.upgrade_options = container_v1.AutoUpgradeOptions(description="auto upgrade")
        made.upgrade_settings = container_v1.NodePool.UpgradeSettings(max_surge=1)
        made.instance_group_urls = [f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{z}/"
                                    f"instanceGroupManagers/gke-{pool.name}" for z in cluster.locations]  # fmt: skip
        made.self_link = f"https://container.googleapis.com/v1/{CLUSTER}/nodePools/{pool.name}"
        return made

    def _locations(self) -> set[str]:
        return {f"projects/{PROJECT}/locations/{region}" for region in self.regions}

    def create_cluster(self, request: Any) -> Any:
        if request.parent not in self._locations():
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Not found: {request.parent}")
        wanted = request.cluster
        name = f"{request.parent}/clusters/{wanted.name}"
        if name in self.clusters:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"Already exists: {name}.")
        if not wanted.node_pools:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "at least one node pool")
        if wanted.network_policy.enabled and wanted.network_config.datapath_provider == "ADVANCED_DATAPATH":
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "Calico network policy cannot be used with Dataplane V2")
        if wanted.private_cluster_config.enable_private_nodes and not wanted.ip_allocation_policy.use_ip_aliases:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "private clusters must be VPC-native")
        for pool in wanted.node_pools:
            self._check_pool(pool)
        self.created.append(container_v1.CreateClusterRequest(request))
        cluster: Any = container_v1.Cluster(wanted)
        region = request.parent.rsplit("/", 1)[1]
        cluster.location, cluster.zone = region, region
        cluster.self_link = f"https://container.googleapis.com/v1/{name}"
        cluster.status = container_v1.Cluster.Status.PROVISIONING
        cluster.current_master_version = cluster.current_node_version = VERSION
        cluster.endpoint = cluster.private_cluster_config.private_endpoint = "172.16.0.2"
        cluster.private_cluster_config.peering_name = "gke-n1234-peer"
        cluster.network_config.network = f"projects/{PROJECT}/global/networks/{wanted.network}"
        cluster.network_config.subnetwork = f"projects/{PROJECT}/regions/{region}/subnetworks/{wanted.subnetwork}"
        cluster.ip_allocation_policy.cluster_ipv4_cidr_block = "10.1.0.0/16"
        cluster.ip_allocation_policy.services_ipv4_cidr_block = "10.2.0.0/16"
        cluster.logging_service, cluster.monitoring_service = "logging.googleapis.com/kubernetes", "monitoring."
        cluster.node_pools = [self._materialize_pool(p, cluster) for p in wanted.node_pools]
        self.clusters[name] = cluster

        def finish() -> None:
            cluster.status = container_v1.Cluster.Status.RUNNING

        return self._operation("CREATE_CLUSTER", name, finish)

    _UPDATES = {  # ClusterUpdate field -> the Cluster field it sets
        "desired_locations": "locations",
        "desired_master_authorized_networks_config": "master_authorized_networks_config",
        "desired_release_channel": "release_channel",
        "desired_cluster_autoscaling": "autoscaling",
        "desired_workload_identity_config": "workload_identity_config",
        "desired_shielded_nodes": "shielded_nodes",
        "desired_secret_manager_config": "secret_manager_config",
        "desired_logging_config": "logging_config",
        "desired_monitoring_config": "monitoring_config",
    }

    def update_cluster(self, request: Any) -> Any:
        cluster = self._cluster(request.name)
        fields = _pb_fields(request.update)
        if len(fields) != 1:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"exactly one desired_* field per update, got {fields}")
        if fields[0] not in self._UPDATES:
            raise Refused(grpc.StatusCode.UNIMPLEMENTED, f"the fake does not do {fields[0]}")
        self.requests.append(container_v1.UpdateClusterRequest(request))
        value = getattr(request.update, fields[0])
        return self._operation("UPDATE_CLUSTER", request.name,
                               lambda: setattr(cluster, self._UPDATES[fields[0]], value))  # fmt: skip

    # -- node pools

    def set_autoscaling(self, request: Any) -> Any:
        cluster_name = request.name.partition("/nodePools/")[0]
        _, pool = self._pool(request.name)
        self.requests.append(container_v1.SetNodePoolAutoscalingRequest(request))
        return self._operation("SET_NODE_POOL_SIZE", cluster_name,
                               lambda: setattr(pool, "autoscaling", request.autoscaling))  # fmt: skip

    def set_management(self, request: Any) -> Any:
        cluster_name = request.name.partition("/nodePools/")[0]
        _, pool = self._pool(request.name)
        self.requests.append(container_v1.SetNodePoolManagementRequest(request))

        def finish() -> None:
            pool.management.auto_repair = request.management.auto_repair
            pool.management.auto_upgrade = request.management.auto_upgrade

        return self._operation("SET_NODE_POOL_MANAGEMENT", cluster_name, finish)

    def update_node_pool(self, request: Any) -> Any:
        cluster_name = request.name.partition("/nodePools/")[0]
        _, pool = self._pool(request.name)
        if not request.node_version or not request.image_type:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "node_version and image_type are required")
        self.requests.append(container_v1.UpdateNodePoolRequest(request))

        def finish() -> None:
            pool.version = VERSION if request.node_version == "-" else request.node_version
            pool.config.image_type = request.image_type
            if "workload_metadata_config" in request:
                pool.config.workload_metadata_config = request.workload_metadata_config
            if "taints" in request:
                pool.config.taints = list(request.taints.taints)
            if request.machine_type:
                pool.config.machine_type = request.machine_type

        return self._operation("UPGRADE_NODES", cluster_name, finish)

    def create_node_pool(self, request: Any) -> Any:
        cluster = self._cluster(request.parent)
        if any(p.name == request.node_pool.name for p in cluster.node_pools):
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"Already exists: {request.node_pool.name}")
        self._check_pool(request.node_pool)
        self.requests.append(container_v1.CreateNodePoolRequest(request))
        pool = self._materialize_pool(request.node_pool, cluster)
        return self._operation("CREATE_NODE_POOL", request.parent, lambda: cluster.node_pools.append(pool))


@dataclass
class Api:
    fake: FakeGke
    endpoint: str


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setattr(gke, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(iam_policies, "PROPAGATION_DELAYS", (0.0, 0.0, 0.0))
    fake = FakeGke()
    server, port = serve(fake.services())
    yield Api(fake, f"127.0.0.1:{port}")
    server.stop(None)


def run(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["cluster", *args, "--project", PROJECT, "--endpoint", api.endpoint, "--insecure"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plan_json(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(api, capsys, "plan", "--json", *args)
    assert code == 0, err
    return dict(json.loads(out))


def rows(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["action"], c["kind"], c["name"]) for c in document["changes"]]


def created(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """Apply on an empty project; returns the stored cluster, writes forgotten."""
    code, _, err = run(api, capsys, "apply", *args)
    assert code == 0, err
    api.fake.writes.clear()
    api.fake.requests.clear()
    api.fake.iam.writes.clear()
    return api.fake.clusters[CLUSTER]


def pool(cluster: Any, name: str) -> Any:
    return next(p for p in cluster.node_pools if p.name == name)


ROLES = [f"projects/{PROJECT} {role}" for role in NODE_ROLES]
ACCOUNT_ROWS = [("node service account", NODE_SA), *(("project role binding", role) for role in ROLES)]
UNCHANGED = [*(("NO CHANGE", kind, name) for kind, name in ACCOUNT_ROWS), ("NO CHANGE", "GKE cluster",
             "erlmcp-cluster"), ("NO CHANGE", "node pool", "erlmcp-cluster/primary"), ("NO CHANGE", "node pool",
             "erlmcp-cluster/spot")]  # fmt: skip


ACCOUNT = len(ACCOUNT_ROWS)  # the plan's first rows: the nodes' account and its roles


def project_members(api: Api, role: str) -> set[str]:
    policy = api.fake.iam.project_policy.get("project")
    return {m for b in (policy.bindings if policy else ()) if b.role == role for m in b.members}


def test_plan_on_an_empty_project_creates_the_cluster_and_its_pools_and_writes_nothing(api, capsys) -> None:
    document = plan_json(api, capsys)
    assert rows(document) == [*(("CREATE", kind, name) for kind, name in ACCOUNT_ROWS), ("CREATE", "GKE cluster",
                              "erlmcp-cluster"), ("CREATE", "node pool", "erlmcp-cluster/primary"), ("CREATE",
                              "node pool", "erlmcp-cluster/spot")]  # fmt: skip
    assert document["summary"] == {"CREATE": 9, "UPDATE": 0, "DELETE": 0, "NO CHANGE": 0, "REPLACE": 0}
    notes = [c["note"] for c in document["changes"]][len(ACCOUNT_ROWS) :]
    assert "regional us-central1 (us-central1-a, us-central1-b, us-central1-c)" in notes[0]
    assert "private endpoint 172.16.0.0/28, Dataplane V2, Workload Identity, REGULAR channel" in notes[0]
    assert notes[1] == "e2-standard-4, 3-10 nodes in total"
    assert notes[2] == "spot e2-standard-2, 0-5 nodes in total, taint cloud.google.com/gke-spot=true:NO_SCHEDULE"

    code, out, err = run(api, capsys, "plan")
    assert code == 0, err
    assert out.splitlines()[0] == ("GKE cluster erlmcp-cluster in demo-project/us-central1 plan: 9 to create, 0 to "
                                   "update, 0 to delete, 0 unchanged")  # fmt: skip
    assert re.search(rf"CREATE +node service account +{re.escape(NODE_SA)} +the nodes run as it", out)
    assert api.fake.writes == []
    assert api.fake.iam.writes == []


def test_apply_creates_the_designed_cluster_field_by_field_and_waits_for_it(api, capsys) -> None:
    code, out, err = run(api, capsys, "apply")
    assert code == 0, err
    assert out.splitlines()[0].endswith("applied: 9 created, 0 updated, 0 deleted, 0 unchanged")
    assert api.fake.writes == [f"CREATE_CLUSTER {CLUSTER}"]
    assert api.fake.iam.writes[0] == f"CreateServiceAccount {NODE_SA}"  # (GKE refuses nodes of an unknown account)
    assert "create GKE cluster erlmcp-cluster: operation operation-1 started; a regional cluster takes" in err
    assert "create GKE cluster erlmcp-cluster: done" in err
    assert api.fake.clusters[CLUSTER].status == container_v1.Cluster.Status.RUNNING  # the operation was awaited

    (request,) = api.fake.created
    assert request == gke.desired_request(load_config(None, project=PROJECT))
    assert request.parent == LOCATION
    cluster = request.cluster
    assert cluster.name == "erlmcp-cluster"
    assert list(cluster.locations) == ["us-central1-a", "us-central1-b", "us-central1-c"]
    assert (cluster.network, cluster.subnetwork) == ("erlmcp-vpc", "erlmcp-subnet-us-central1")
    ips = cluster.ip_allocation_policy
    assert (ips.use_ip_aliases, ips.cluster_secondary_range_name, ips.services_secondary_range_name) == (
        True, "pods", "services")  # fmt: skip
    private = cluster.private_cluster_config
    assert (private.enable_private_nodes, private.enable_private_endpoint, private.master_ipv4_cidr_block) == (
        True, True, "172.16.0.0/28")  # fmt: skip
    assert cluster.master_authorized_networks_config.enabled
    assert list(cluster.master_authorized_networks_config.cidr_blocks) == []
    assert cluster.network_config.datapath_provider == container_v1.DatapathProvider.ADVANCED_DATAPATH
    assert "network_policy" not in cluster  # Dataplane V2 enforces NetworkPolicy; Calico would be refused with it
    assert cluster.release_channel.channel == container_v1.ReleaseChannel.Channel.REGULAR
    assert cluster.workload_identity_config.workload_pool == "demo-project.svc.id.goog"
    assert cluster.shielded_nodes.enabled
    assert cluster.autoscaling.autoscaling_profile == container_v1.ClusterAutoscaling.AutoscalingProfile.BALANCED
    assert not cluster.autoscaling.enable_node_autoprovisioning
    assert [c.name for c in cluster.logging_config.component_config.enable_components] == [
        "SYSTEM_COMPONENTS", "WORKLOADS"]  # fmt: skip
    assert {c.name for c in cluster.monitoring_config.component_config.enable_components} >= {"SYSTEM_COMPONENTS",
                                                                                               "POD"}  # fmt: skip
    assert cluster.monitoring_config.managed_prometheus_config.enabled

    primary, spot = cluster.node_pools
    assert (primary.name, spot.name) == ("primary", "spot")
    for node_pool, machine, low, high, policy in ((primary, "e2-standard-4", 3, 10, "BALANCED"),
                                                  (spot, "e2-standard-2", 0, 5, "ANY")):  # fmt: skip
        config, scaling = node_pool.config, node_pool.autoscaling
        assert config.machine_type == machine
        assert config.service_account == NODE_SA
        assert list(config.oauth_scopes) == ["https://www.googleapis.com/auth/cloud-platform"]
        assert config.shielded_instance_config.enable_secure_boot
        assert config.shielded_instance_config.enable_integrity_monitoring
        assert config.workload_metadata_config.mode == container_v1.WorkloadMetadataConfig.Mode.GKE_METADATA
        assert (scaling.enabled, scaling.total_min_node_count, scaling.total_max_node_count) == (True, low, high)
        assert (scaling.min_node_count, scaling.max_node_count) == (0, 0)  # totals, never per-zone limits
        assert scaling.location_policy.name == policy
        assert node_pool.management.auto_repair
        assert node_pool.management.auto_upgrade
    assert (primary.initial_node_count, spot.initial_node_count) == (1, 0)  # per zone: 3 nodes, then none
    assert not primary.config.spot
    assert list(primary.config.taints) == []
    assert spot.config.spot
    assert not spot.config.preemptible
    assert [(t.key, t.value, t.effect.name) for t in spot.config.taints] == [
        ("cloud.google.com/gke-spot", "true", "NO_SCHEDULE")]  # fmt: skip


def test_apply_again_changes_nothing_and_writes_nothing(api, capsys) -> None:
    created(api, capsys)
    code, out, err = run(api, capsys, "apply")
    assert code == 0, err
    assert out.splitlines()[0].endswith("applied: 0 created, 0 updated, 0 deleted, 9 unchanged")
    assert rows(plan_json(api, capsys)) == UNCHANGED
    assert api.fake.writes == []
    assert api.fake.iam.writes == []


def test_in_place_drift_is_planned_then_fixed_one_awaited_operation_at_a_time(api, capsys) -> None:
    cluster = created(api, capsys)
    pool(cluster, "primary").autoscaling.total_max_node_count = 7  # someone in the console
    cluster.release_channel.channel = "STABLE"
    cluster.master_authorized_networks_config.enabled = False
    pool(cluster, "spot").config.workload_metadata_config.mode = "GCE_METADATA"
    pool(cluster, "spot").config.taints = []
    pool(cluster, "spot").management.auto_repair = False

    document = plan_json(api, capsys)
    assert rows(document) == [*UNCHANGED[:ACCOUNT], ("UPDATE", "GKE cluster", "erlmcp-cluster"), ("UPDATE",
                              "node pool", "erlmcp-cluster/primary"), ("UPDATE", "node pool",
                              "erlmcp-cluster/spot")]  # fmt: skip
    found = {c["name"]: {d["field"]: (d["actual"], d["desired"]) for d in c["differences"]}
             for c in document["changes"]}  # fmt: skip
    assert found["erlmcp-cluster"] == {"master_authorized_networks_config.enabled": (False, True),
                                       "release_channel.channel": ("STABLE", "REGULAR")}  # fmt: skip
    assert found["erlmcp-cluster/primary"] == {"autoscaling.total_max_node_count": (7, 10)}
    assert found["erlmcp-cluster/spot"] == {
        "config.workload_metadata_config.mode": ("GCE_METADATA", "GKE_METADATA"),
        "config.taints": ([], ["cloud.google.com/gke-spot=true:NO_SCHEDULE"]),
        "management.auto_repair": (False, True)}  # fmt: skip
    assert api.fake.writes == []

    code, out, err = run(api, capsys, "apply")
    assert code == 0, err
    assert out.splitlines()[0].endswith("applied: 0 created, 3 updated, 0 deleted, 6 unchanged")
    spot_pool = f"{CLUSTER}/nodePools/spot"
    assert [type(r).__name__ for r in api.fake.requests] == [
        "UpdateClusterRequest", "UpdateClusterRequest", "SetNodePoolAutoscalingRequest", "UpdateNodePoolRequest",
        "UpdateNodePoolRequest", "SetNodePoolManagementRequest"]  # fmt: skip
    metadata, taints = api.fake.requests[3:5]
    assert (metadata.name, metadata.node_version, metadata.image_type) == (spot_pool, VERSION, "COS_CONTAINERD")
    assert sorted(_pb_fields(metadata)) == ["image_type", "name", "node_version", "workload_metadata_config"]
    assert "taints" in taints
    assert "workload_metadata_config" not in taints
    assert "update GKE cluster erlmcp-cluster: release_channel.channel: done" in err
    assert rows(plan_json(api, capsys)) == UNCHANGED  # the fake refused any write while another ran: none did
    assert pool(api.fake.clusters[CLUSTER], "primary").autoscaling.total_max_node_count == 10


def test_drift_that_needs_a_new_cluster_is_refused_with_the_field_list_and_nothing_is_written(api, capsys) -> None:
    cluster = created(api, capsys)
    cluster.private_cluster_config.enable_private_endpoint = False
    cluster.private_cluster_config.master_ipv4_cidr_block = "172.16.8.0/28"
    cluster.network_config.datapath_provider = "LEGACY_DATAPATH"
    cluster.ip_allocation_policy.cluster_secondary_range_name = "gke-pods-1234"
    pool(cluster, "spot").config.spot = False  # a pool cannot become spot
    cluster.release_channel.channel = "RAPID"  # in place, but not while anything is refused

    code, out, err = run(api, capsys, "plan")
    assert code == 0, err
    assert re.search(r"\n  REPLACE +GKE cluster +erlmcp-cluster ", out)
    assert "needs a new cluster (ip_allocation_policy, network_config.datapath_provider, private_cluster_config)" in out
    assert "      private_cluster_config.enable_private_endpoint: false -> true" in out
    assert "needs a new node pool (config.spot); apply refuses" in out
    assert "2 REPLACE: these cannot be changed in place" in out
    assert plan_json(api, capsys)["summary"]["REPLACE"] == 2

    for args in (("apply",), ("apply", "--json")):
        code, out, err = run(api, capsys, *args)
        assert (code, out) == (1, "")
        assert "apply refused, nothing written" in err
        for path in ("private_cluster_config.enable_private_endpoint", "private_cluster_config.master_ipv4_cidr_block",
                     "network_config.datapath_provider", "ip_allocation_policy.cluster_secondary_range_name",
                     "GKE cluster erlmcp-cluster:", "node pool erlmcp-cluster/spot: config.spot"):  # fmt: skip
            assert path in err
        assert "release_channel" not in err
        assert "delete that node pool yourself (apply then creates it as designed)" in err
        assert "move the workloads to a new cluster (another cluster.name) and delete this one" in err
    assert api.fake.writes == []


def test_a_missing_pool_is_created_in_place_and_pools_of_others_are_left_alone(api, capsys) -> None:
    cluster = created(api, capsys)
    gpu = container_v1.NodePool(pool(cluster, "primary"))
    gpu.name = "gpu"
    cluster.node_pools = [pool(cluster, "primary"), gpu]

    assert rows(plan_json(api, capsys)) == [*UNCHANGED[: ACCOUNT + 2], ("CREATE", "node pool",
                                            "erlmcp-cluster/spot")]  # fmt: skip
    code, out, err = run(api, capsys, "apply")
    assert code == 0, err
    assert "node pool gpu is not managed by erlmcp: left as is" in err
    assert api.fake.writes == [f"CREATE_NODE_POOL {CLUSTER}"]
    (request,) = api.fake.requests
    assert request.node_pool == gke.desired_cluster(load_config(None, project=PROJECT)).node_pools[1]
    assert [p.name for p in api.fake.clusters[CLUSTER].node_pools] == ["primary", "gpu", "spot"]
    api.fake.writes.clear()
    assert rows(plan_json(api, capsys)) == UNCHANGED
    assert api.fake.writes == []


def test_dry_run_prints_the_plan_and_writes_nothing(api, capsys) -> None:
    code, out, err = run(api, capsys, "apply", "--dry-run")
    assert code == 0, err
    assert "plan (dry run: nothing written): 9 to create" in out.splitlines()[0]
    assert api.fake.writes == []
    assert api.fake.clusters == {}

    cluster = created(api, capsys)
    pool(cluster, "primary").autoscaling.total_min_node_count = 1
    code, out, err = run(api, capsys, "apply", "--dry-run", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["mode"] == "dry-run"
    assert document["summary"]["UPDATE"] == 1
    assert api.fake.writes == []
    assert pool(api.fake.clusters[CLUSTER], "primary").autoscaling.total_min_node_count == 1


def test_check_of_the_designed_cluster_reports_no_difference(api, capsys) -> None:
    created(api, capsys)
    code, out, err = run(api, capsys, "check")
    assert code == 0, err
    assert out == "GKE cluster erlmcp-cluster in demo-project/us-central1 matches the erlmcp design: no differences\n"
    code, out, _ = run(api, capsys, "check", "--json")
    assert code == 0
    assert json.loads(out) == {"cluster": CLUSTER, "differences": 0, "summary": {"high": 0, "medium": 0, "low": 0},
                               "findings": []}  # fmt: skip
    assert api.fake.writes == []


def test_check_reports_every_difference_by_name_with_severity_and_why(api, capsys) -> None:
    cluster = created(api, capsys)
    cluster.workload_identity_config = container_v1.WorkloadIdentityConfig()
    cluster.network_config.datapath_provider = "LEGACY_DATAPATH"  # and no Calico: nothing enforces NetworkPolicy
    cluster.private_cluster_config.enable_private_endpoint = False
    cluster.master_authorized_networks_config.enabled = False
    cluster.shielded_nodes.enabled = False
    cluster.release_channel.channel = "UNSPECIFIED"
    cluster.autoscaling.autoscaling_profile = "OPTIMIZE_UTILIZATION"
    cluster.monitoring_config.managed_prometheus_config.enabled = False
    cluster.secret_manager_config.enabled = False
    primary = pool(cluster, "primary")
    primary.autoscaling.total_min_node_count, primary.autoscaling.total_max_node_count = 1, 20
    primary.config.workload_metadata_config.mode = "GCE_METADATA"
    primary.config.service_account = "123456789-compute@developer.gserviceaccount.com"
    cluster.node_pools = [primary]  # no spot pool

    code, out, err = run(api, capsys, "check", "--json")
    assert code == 1, err
    document = json.loads(out)
    found = {f["name"]: f for f in document["findings"]}
    assert set(found) == {"workload-identity", "network-policy", "public-endpoint", "master-authorized-networks",
                          "shielded-nodes", "release-channel", "autoscaling-profile", "managed-prometheus",
                          "autoscaling", "node-metadata", "node-service-account", "spot-pool",
                          "secret-manager"}  # fmt: skip
    assert document["differences"] == len(found) == 13
    assert document["summary"] == {"high": 5, "medium": 5, "low": 3}
    assert "secretManager" in found["secret-manager"]["why"]
    assert [f["severity"] for f in document["findings"]] == sorted(
        (f["severity"] for f in document["findings"]), key=["high", "medium", "low"].index)  # fmt: skip
    assert found["workload-identity"]["severity"] == "high"
    assert "cannot read its Secret Manager secrets" in found["workload-identity"]["why"]
    assert "NetworkPolicy is not enforced" in found["network-policy"]["why"]
    assert found["public-endpoint"]["severity"] == "high"  # no authorized networks either
    assert found["autoscaling"] == {"name": "autoscaling", "severity": "medium", "field": "node_pools[].autoscaling",
                                    "actual": "1-20 nodes", "expected": "3-10 nodes",
                                    "why": "fewer than 3 nodes at the floor: a zone outage can leave no spare "
                                    "capacity; more nodes than planned: cost above the design"}  # fmt: skip
    assert found["node-metadata"]["field"] == "node_pools[primary].config.workload_metadata_config.mode"
    assert found["release-channel"]["actual"] == "UNSPECIFIED"
    assert all(f["why"] for f in document["findings"])

    code, out, _ = run(api, capsys, "check")
    assert code == 1
    assert out.splitlines()[0] == ("GKE cluster erlmcp-cluster in demo-project/us-central1: 13 differences from the "
                                   "erlmcp design (5 high, 5 medium, 3 low)")  # fmt: skip
    assert "  HIGH    workload-identity           workload_identity_config.workload_pool: (unset) (design: " in out
    assert api.fake.writes == []


def test_check_judges_calico_spot_taints_and_zonal_clusters_too() -> None:
    config = load_config(None, project=PROJECT)
    cluster: Any = container_v1.Cluster(gke.desired_cluster(config))
    cluster.location = "us-central1-a"
    cluster.locations = ["us-central1-a"]
    cluster.network_config.datapath_provider = "LEGACY_DATAPATH"
    cluster.network_policy = container_v1.NetworkPolicy(enabled=True, provider="CALICO")
    cluster.node_pools[1].config.taints = []
    cluster.node_pools[0].autoscaling = container_v1.NodePoolAutoscaling(
        enabled=True, min_node_count=1, max_node_count=3
    )  # per zone, one zone
    found = {f.name: f for f in gke.check(cluster, config)}
    assert set(found) == {"regional", "zones", "dataplane-v2", "spot-taint", "autoscaling"}
    assert (found["dataplane-v2"].severity, found["zones"].severity) == ("low", "medium")
    assert found["autoscaling"].actual == "1-3 nodes"
    assert "lose their sessions" in found["spot-taint"].why


def test_check_of_a_missing_cluster_exits_1(api, capsys) -> None:
    code, out, err = run(api, capsys, "check")
    assert (code, out) == (1, "")
    assert f"there is no GKE cluster {CLUSTER} to check" in err


def test_a_permission_error_exits_1_with_a_clear_message(api, capsys) -> None:
    api.fake.refuse["get_cluster"] = Refused(grpc.StatusCode.PERMISSION_DENIED,
                                             "Required 'container.clusters.get' permission")  # fmt: skip
    code, out, err = run(api, capsys, "plan")
    assert (code, out) == (1, "")
    assert (
        f"deployer: cannot read GKE cluster {CLUSTER}: permission denied (Required 'container.clusters.get' "
        "permission). plan and check need roles/container.viewer; apply needs roles/container.clusterAdmin"
    ) in err

    api.fake.refuse["create_cluster"] = Refused(grpc.StatusCode.PERMISSION_DENIED, "container.clusters.create")
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert "cannot create GKE cluster erlmcp-cluster: permission denied (container.clusters.create)" in err
    assert api.fake.clusters == {}


def test_a_failed_or_endless_operation_exits_1_and_the_message_says_what_to_do(api, capsys, monkeypatch) -> None:
    api.fake.iam.refuse["CreateServiceAccount"] = Refused(grpc.StatusCode.PERMISSION_DENIED,
                                                          "Permission 'iam.serviceAccounts.create' denied")  # fmt: skip
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert (f"cannot create service account {NODE_SA}: permission denied (Permission 'iam.serviceAccounts.create' "
            "denied); the caller needs roles/iam.serviceAccountAdmin") in err  # fmt: skip
    assert api.fake.created == []  # nothing after the account: GKE would refuse nodes of an unknown account

    api.fake.fail_next = "Insufficient regional quota to satisfy request: resource CPUS"
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert ("create GKE cluster erlmcp-cluster: operation operation-1 failed: Insufficient regional quota to satisfy "
            "request") in err  # fmt: skip

    api.fake.clusters.clear()
    api.fake.polls = 1_000_000
    monkeypatch.setattr(gke, "OPERATION_TIMEOUT", 0.3)
    monkeypatch.setattr(gke, "PROGRESS_SECONDS", 0.0)
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert "create GKE cluster erlmcp-cluster: RUNNING, 0 min 0 s so far" in err
    assert (
        "operation operation-2 still RUNNING after 0 min 0 s; GKE carries on with it: follow it with `gcloud "
        "container operations describe operation-2 --location us-central1` and run apply again"
    ) in err


def test_a_bad_configuration_exits_2_before_any_call(api, capsys, tmp_path: Path) -> None:
    cases = [
        ("cluster: {minNodes: 0}", "need 1 <= minNodes <= maxNodes"),
        ("cluster: {minNodes: 11}", "need 1 <= minNodes <= maxNodes"),
        ("cluster: {masterCidr: 172.16.0.0/24}", "GKE needs a private IPv4 /28"),
        ("cluster: {masterAuthorizedNetworks: [8.8.8.0/24]}", "8.8.8.0/24 is a public range"),
        ("cluster: {masterAuthorizedNetworks: [not-a-cidr]}", "'not-a-cidr' is not a network"),
        ("cluster: {releaseChannel: NIGHTLY}", "one of RAPID, REGULAR, STABLE, EXTENDED"),
        ("cluster: {name: Erlmcp_Cluster}", "is not a GKE cluster name"),
        ("cluster: {nodeServiceAccount: sa}", "is not a service account ID"),
        ("zones: [europe-west1-b]", "'europe-west1-b' is not a zone of us-central1"),
        ("cluster: {nodeCount: 3}", "cluster.nodeCount: Extra inputs are not permitted"),
    ]
    config = tmp_path / "gcp.yaml"
    for text, message in cases:
        config.write_text(text + "\n")
        for action in ("plan", "apply", "check"):
            code, out, err = run(api, capsys, action, "--config", str(config))
            assert (code, out) == (2, ""), (text, action, err)
            assert message in err, (text, err)
    assert main(["cluster", "plan", "--project", PROJECT, "--insecure"]) == 2
    assert "--insecure needs --endpoint" in capsys.readouterr().err
    assert main(["cluster", "plan", "--endpoint", api.endpoint, "--insecure"]) == 2
    assert "no project" in capsys.readouterr().err
    assert api.fake.writes == []


def test_the_configuration_shapes_the_cluster() -> None:
    config = load_config(None, project=PROJECT, region="europe-west1", zones=["europe-west1-b", "europe-west1-c"],
                         cluster={"minNodes": 4, "maxNodes": 6, "spotMaxNodes": 0, "releaseChannel": "STABLE",
                                  "masterAuthorizedNetworks": ["10.8.0.0/24"], "nodeServiceAccount": "gke-nodes"},
                         network={"name": "prod-vpc", "podsRangeName": "prod-pods"})  # fmt: skip
    cluster = gke.desired_cluster(config)
    assert list(cluster.locations) == ["europe-west1-b", "europe-west1-c"]
    assert cluster.subnetwork == "prod-subnet-europe-west1"
    assert cluster.ip_allocation_policy.cluster_secondary_range_name == "prod-pods"
    assert [b.cidr_block for b in cluster.master_authorized_networks_config.cidr_blocks] == ["10.8.0.0/24"]
    assert cluster.release_channel.channel.name == "STABLE"
    (primary,) = cluster.node_pools  # spotMaxNodes 0: no spot pool
    assert primary.initial_node_count == 2  # per zone: 4 nodes over two zones
    assert primary.config.service_account == f"gke-nodes@{PROJECT}.iam.gserviceaccount.com"
    assert gke.check(container_v1.Cluster(cluster, location="europe-west1"), config) == []


def test_components_enabled_beyond_ours_are_kept_and_an_unset_profile_is_balanced(api, capsys) -> None:
    cluster = created(api, capsys)
    monitoring = cluster.monitoring_config.component_config
    monitoring.enable_components = [*monitoring.enable_components, "CADVISOR", "KUBELET"]  # as newer GKE versions do
    cluster.logging_config.component_config.enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS", "APISERVER"]
    cluster.autoscaling.autoscaling_profile = "PROFILE_UNSPECIFIED"  # GKE's default is BALANCED
    assert rows(plan_json(api, capsys)) == UNCHANGED

    cluster.logging_config.component_config.enable_components = ["SYSTEM_COMPONENTS", "APISERVER"]
    change = plan_json(api, capsys)["changes"][ACCOUNT]
    assert change["differences"] == [{"field": "logging_config.component_config.enable_components",
                                      "actual": ["SYSTEM_COMPONENTS"],
                                      "desired": ["SYSTEM_COMPONENTS", "WORKLOADS"]}]  # fmt: skip
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    (request,) = api.fake.requests
    sent = request.update.desired_logging_config.component_config.enable_components
    assert sorted(c.name for c in sent) == ["APISERVER", "SYSTEM_COMPONENTS", "WORKLOADS"]  # theirs kept
    code, out, err = run(api, capsys, "check")
    assert code == 0, out + err


def test_a_busy_cluster_is_not_written_to(api, capsys) -> None:
    cluster = created(api, capsys)
    cluster.status = "RECONCILING"
    cluster.release_channel.channel = "STABLE"
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert f"GKE cluster {CLUSTER} is RECONCILING: an operation is running on it; apply again when it is" in err
    assert api.fake.writes == []


def test_the_cluster_runs_the_secret_manager_add_on_and_apply_turns_it_back_on(api, capsys) -> None:
    # The chart's secretManager.enabled mounts the API key file through it (CSI driver secrets-store-gke.csi.k8s.io).
    cluster = created(api, capsys)
    assert api.fake.created[0].cluster.secret_manager_config.enabled is True
    cluster.secret_manager_config.enabled = False  # someone turned it off
    document = plan_json(api, capsys)
    found = {d["field"]: (d["actual"], d["desired"]) for c in document["changes"] for d in c["differences"]}
    assert found == {"secret_manager_config.enabled": (False, True)}
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    assert api.fake.clusters[CLUSTER].secret_manager_config.enabled is True
    assert rows(plan_json(api, capsys)) == UNCHANGED


def test_apply_makes_the_nodes_account_and_grants_its_roles_beside_everything_else_on_the_project(api, capsys) -> None:
    others = policy_pb2.Policy(etag=b"BwX", bindings=[policy_pb2.Binding(role="roles/owner", members=["user:a@b.c"]),
                               policy_pb2.Binding(role=NODE_ROLES[0], members=["group:ops@b.c"])])  # fmt: skip
    api.fake.iam.project_policy["project"] = others
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    account = api.fake.iam.accounts[NODE_SA]
    assert (account.display_name, account.project_id) == ("erlmcp GKE nodes", PROJECT)
    for role in NODE_ROLES:
        assert f"serviceAccount:{NODE_SA}" in project_members(api, role), role
        assert f"granted {role} on projects/{PROJECT} to serviceAccount:{NODE_SA}" in err
    assert project_members(api, "roles/owner") == {"user:a@b.c"}  # additive: nothing else changed
    assert project_members(api, NODE_ROLES[0]) == {"group:ops@b.c", f"serviceAccount:{NODE_SA}"}
    writes = api.fake.iam.writes
    assert writes == [f"CreateServiceAccount {NODE_SA}", *["SetProjectIamPolicy project"] * len(NODE_ROLES)]


def test_a_role_someone_removed_from_the_nodes_account_is_planned_and_granted_again(api, capsys) -> None:
    created(api, capsys)
    policy = api.fake.iam.project_policy["project"]
    (binding,) = [b for b in policy.bindings if b.role == "roles/monitoring.metricWriter"]
    binding.members.remove(f"serviceAccount:{NODE_SA}")  # someone in the console
    document = plan_json(api, capsys)
    (drift,) = [c for c in document["changes"] if c["action"] != "NO CHANGE"]
    assert (drift["action"], drift["kind"], drift["name"]) == (
        "UPDATE", "project role binding", f"projects/{PROJECT} roles/monitoring.metricWriter")  # fmt: skip
    assert drift["differences"] == [{"field": "member", "actual": "absent", "desired": "present"}]
    assert api.fake.iam.writes == []
    code, out, err = run(api, capsys, "apply")
    assert code == 0, err
    assert out.splitlines()[0].endswith("applied: 0 created, 1 updated, 0 deleted, 8 unchanged")
    assert api.fake.iam.writes == ["SetProjectIamPolicy project"]
    assert api.fake.writes == []
    assert rows(plan_json(api, capsys)) == UNCHANGED


def test_an_existing_nodes_account_is_used_as_it_is_and_a_disabled_one_is_said_to_be(api, capsys) -> None:
    api.fake.iam.accounts[NODE_SA] = iam_admin_v1.ServiceAccount(email=NODE_SA, display_name="shared", disabled=True)
    document = plan_json(api, capsys)
    first = document["changes"][0]
    assert (first["action"], first["name"]) == ("NO CHANGE", NODE_SA)
    assert first["note"] == "disabled: nodes cannot run as it until it is enabled"
    assert [c["action"] for c in document["changes"][1:ACCOUNT]] == ["UPDATE"] * len(NODE_ROLES)  # an old account
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    assert api.fake.iam.accounts[NODE_SA].display_name == "shared"  # never changed: it may be shared
    assert "CreateServiceAccount" not in " ".join(api.fake.iam.writes)


def test_grants_to_a_new_account_wait_until_iam_knows_it(api, capsys) -> None:
    api.fake.iam.lagging = 2  # the first two policy writes naming the new account are refused, as IAM does
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    assert all(f"serviceAccount:{NODE_SA}" in project_members(api, role) for role in NODE_ROLES)


def test_a_refused_grant_exits_1_naming_the_role_the_caller_needs_and_no_cluster_is_made(api, capsys) -> None:
    api.fake.iam.refuse["SetProjectIamPolicy"] = Refused(grpc.StatusCode.PERMISSION_DENIED,
                                                         "Policy update access denied.")  # fmt: skip
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert (
        f"cannot grant roles/logging.logWriter on projects/{PROJECT} to serviceAccount:{NODE_SA}: permission "
        "denied (Policy update access denied.); the caller needs roles/resourcemanager.projectIamAdmin"
    ) in err
    assert api.fake.created == []


def test_render_shows_the_nodes_account_and_its_roles_before_the_cluster(capsys) -> None:
    code = main(["cluster", "render", "--json", "--project", PROJECT])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert list(document) == ["nodeServiceAccount", "parent", "cluster"]
    account = document["nodeServiceAccount"]
    assert account["serviceAccount"]["accountId"] == "erlmcp-gke-nodes"
    assert [b["role"] for b in account["projectRoles"]["bindings"]] == list(NODE_ROLES)
    assert {m for b in account["projectRoles"]["bindings"] for m in b["members"]} == {f"serviceAccount:{NODE_SA}"}
    pools = document["cluster"]["nodePools"]
    assert {p["config"]["serviceAccount"] for p in pools} == {NODE_SA}


def test_a_standby_region_gets_its_own_cluster_in_the_same_run_and_again_nothing_is_written(
    api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "erlmcp-gcp.yaml"
    config.write_text("standby:\n  region: us-east1\n", encoding="utf-8")
    standby = f"projects/{PROJECT}/locations/us-east1/clusters/erlmcp-cluster"
    document = plan_json(api, capsys, "--config", str(config))
    assert rows(document)[ACCOUNT:] == [
        ("CREATE", "GKE cluster", "erlmcp-cluster"), ("CREATE", "node pool", "erlmcp-cluster/primary"),
        ("CREATE", "node pool", "erlmcp-cluster/spot"), ("CREATE", "GKE cluster", "erlmcp-cluster (us-east1)"),
        ("CREATE", "node pool", "erlmcp-cluster/primary (us-east1)"),
        ("CREATE", "node pool", "erlmcp-cluster/spot (us-east1)")]  # fmt: skip
    assert document["title"] == f"GKE cluster erlmcp-cluster in {PROJECT}/us-central1, us-east1"
    code, _, err = run(api, capsys, "apply", "--config", str(config))
    assert code == 0, err
    assert api.fake.writes == [f"CREATE_CLUSTER {CLUSTER}", f"CREATE_CLUSTER {standby}"]
    east = api.fake.clusters[standby]
    assert east.private_cluster_config.master_ipv4_cidr_block == "172.16.0.16/28"
    assert east.subnetwork == "erlmcp-subnet-us-east1"
    assert list(east.locations) == ["us-east1-a", "us-east1-b", "us-east1-c"]
    assert east.node_pools[0].config.service_account == NODE_SA  # one node account for both
    api.fake.writes.clear()
    api.fake.iam.writes.clear()
    document = plan_json(api, capsys, "--config", str(config))
    assert {action for action, _, _ in rows(document)} == {"NO CHANGE"}
    code, _, err = run(api, capsys, "check", "--config", str(config))
    assert code == 0, err
    assert api.fake.writes == []
    assert api.fake.iam.writes == []


def test_a_refused_standby_plan_writes_nothing_in_either_region(
    api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    created(api, capsys)
    config = tmp_path / "erlmcp-gcp.yaml"
    config.write_text("standby:\n  region: us-east1\n", encoding="utf-8")
    api.fake.clusters[CLUSTER].network_config.datapath_provider = "LEGACY_DATAPATH"  # needs a new cluster
    code, out, err = run(api, capsys, "apply", "--config", str(config))
    assert (code, out) == (1, "")
    assert "apply refused, nothing written" in err
    assert api.fake.writes == []
    assert api.fake.iam.writes == []


def _rotation(cluster: Any) -> tuple[bool, int]:
    rotation = cluster.secret_manager_config.rotation_config
    return rotation.enabled, int(rotation.rotation_interval.total_seconds())


def test_the_add_on_rotates_mounted_secrets_every_two_minutes_by_default_as_render_shows(api, capsys) -> None:
    # Without rotation a new version of a secret mounted as `latest` never reaches the pods' files.
    cluster = created(api, capsys)
    assert _rotation(api.fake.created[0].cluster) == (True, 120)
    assert _rotation(cluster) == (True, 120)
    assert main(["cluster", "render", "--project", PROJECT, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    rotation = {"enabled": True, "rotationInterval": "120s"}
    assert document["cluster"]["secretManagerConfig"] == {"enabled": True, "rotationConfig": rotation}


@pytest.mark.parametrize(("enabled", "seconds"), [(False, 120), (True, 3600), (False, 0)],
                         ids=["turned-off", "other-interval", "cleared"])  # fmt: skip
def test_rotation_changed_out_of_band_is_an_update_that_apply_puts_back(api, capsys, enabled, seconds) -> None:
    cluster = created(api, capsys)
    cluster.secret_manager_config.rotation_config = container_v1.SecretManagerConfig.RotationConfig(
        enabled=enabled, rotation_interval={"seconds": seconds}
    )
    document = plan_json(api, capsys)
    assert [c["action"] for c in document["changes"] if c["kind"] == "GKE cluster"] == ["UPDATE"]
    found = {d["field"]: (d["actual"], d["desired"]) for c in document["changes"] for d in c["differences"]}
    wanted = {"enabled": (enabled, True), "rotation_interval_seconds": (seconds, 120)}
    assert found == {f"secret_manager_config.rotation_config.{k}": v for k, v in wanted.items() if v[0] != v[1]}
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    (request,) = api.fake.requests  # the add-on's own update call, with its rotation
    assert _pb_fields(request.update) == ["desired_secret_manager_config"]
    assert request.update.desired_secret_manager_config.enabled is True
    assert _rotation(api.fake.clusters[CLUSTER]) == (True, 120)
    assert rows(plan_json(api, capsys)) == UNCHANGED


def test_the_configuration_sets_the_rotation_interval_or_turns_rotation_off() -> None:
    hourly = load_config(None, project=PROJECT, cluster={"secretManagerRotationSeconds": 3600})
    assert _rotation(gke.desired_cluster(hourly)) == (True, 3600)
    off = gke.desired_cluster(load_config(None, project=PROJECT, cluster={"secretManagerRotation": False}))
    assert off.secret_manager_config.enabled is True
    assert _rotation(off) == (False, 0)


@pytest.mark.parametrize("seconds", [0, -5])
def test_a_rotation_interval_that_is_not_positive_is_refused_naming_the_key(api, capsys, tmp_path, seconds) -> None:
    path = tmp_path / "erlmcp-gcp.yaml"
    path.write_text(f"cluster:\n  secretManagerRotationSeconds: {seconds}\n", encoding="utf-8")
    code, out, err = run(api, capsys, "plan", "--config", str(path))
    assert (code, out) == (2, "")
    assert f"cluster.secretManagerRotationSeconds {seconds}" in err
    assert api.fake.writes == []


def test_check_reports_an_add_on_that_does_not_rotate(api, capsys) -> None:
    cluster = created(api, capsys)
    cluster.secret_manager_config.rotation_config.enabled = False
    code, out, err = run(api, capsys, "check", "--json")
    assert code == 1, err
    (finding,) = json.loads(out)["findings"]
    assert (finding["name"], finding["severity"], finding["field"]) == (
        "secret-manager-rotation", "low", "secret_manager_config.rotation_config.enabled")  # fmt: skip
