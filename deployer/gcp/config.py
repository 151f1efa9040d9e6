"""One configuration for every Google Cloud platform (``--config erlmcp-gcp.yaml``; every key has the seed
design's value as its default, so an empty file, or none, describes the seed design in ``us-central1``).

Keys are camelCase, as in the chart's values; unknown keys are refused with their path. The sections name each
other's resources through the properties here (the cluster's subnet and secondary ranges are the network's, the
Cloud Run service reads the secrets' Secret Manager names), so a name changed in one place changes everywhere.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from deployer.errors import ValuesError
from deployer.marketplace.expand import PUBLIC_IMAGE_REPO_PREFIX

__all__ = [
    "CloudRunConfig",
    "ClusterConfig",
    "ComputeConfig",
    "FrontendConfig",
    "GcpConfig",
    "LoggingConfig",
    "MaintenanceWindowConfig",
    "MemorystoreConfig",
    "NetworkConfig",
    "SecretsConfig",
    "config_from",
    "load_config",
]

_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,40}[a-z0-9])?")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class NetworkConfig(_Section):
    """The VPC of the seed design (section 5)."""

    name: str = "erlmcp-vpc"
    subnet_cidr: str = "10.0.0.0/24"
    pods_range: str = "10.1.0.0/16"
    services_range: str = "10.2.0.0/16"
    pods_range_name: str = "pods"  # the subnet's secondary range names, which the GKE cluster names too
    services_range_name: str = "services"
    mtu: int = 1460
    router_asn: int = 65001
    https_public: bool = False  # the seed's optional rule 1003: 443 from anywhere
    deny_all: bool = False  # the seed's optional rule 65534
    internal_ranges: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")  # rule 1000's sources
    ssh_via_iap: bool = True  # SSH from Identity-Aware Proxy's range only; false: no SSH rule at all
    flow_log_sampling: float = 0.5  # the subnet's VPC flow logs (5-second aggregation)
    nat_min_ports_per_vm: int = 64  # Cloud NAT: ports per VM, grown on demand up to 65536


class ClusterConfig(_Section):
    """The regional GKE cluster of the seed design (section 1)."""

    name: str = "erlmcp-cluster"
    master_cidr: str = "172.16.0.0/28"
    release_channel: str = "REGULAR"
    machine_type: str = "e2-standard-4"
    spot_machine_type: str = "e2-standard-2"
    min_nodes: int = 3
    max_nodes: int = 10
    spot_max_nodes: int = 5
    master_authorized_networks: tuple[str, ...] = ()
    namespace: str = "erlmcp"  # where the app is installed: the Workload Identity binding names its KSA
    service_account: str = "erlmcp"  # the app's Kubernetes service account
    node_service_account: str = "erlmcp-gke-nodes"  # the nodes' own least-privilege Google service account ID
    autoscaling_profile: str = "BALANCED"  # the cluster autoscaler's profile
    secret_manager_rotation: bool = True  # the Secret Manager add-on re-reads mounted secrets (new `latest` versions)
    secret_manager_rotation_seconds: int = 120  # ... this often (GKE's documented default: 2 minutes)


class SecretsConfig(_Section):
    """The secrets erlmcp reads, in Secret Manager (section 8); see :mod:`deployer.gcp.server_secrets`."""

    keys: tuple[str, ...] = ("api-keys",)  # which of SERVER_SECRETS this deployment uses
    replication: str = "automatic"  # or "user-managed": replicas in `locations` only
    rotation_days: int = 90
    locations: tuple[str, ...] = ()  # user-managed replication's regions; default: the configuration's region
    rotation_topic: str | None = None  # Pub/Sub topic (ID or projects/P/topics/T) for rotation notices; none: none


class CloudRunConfig(_Section):
    """The Cloud Run service (section 2)."""

    service: str = "erlmcp"
    min_instances: int = 0
    max_instances: int = 100
    concurrency: int = 80
    cpu: str = "1"
    memory: str = "512Mi"
    timeout_seconds: int = 300
    canary_percent: int = 5
    redis_url_secret: str | None = None  # a Secret Manager secret holding the Redis URL: sessions shared
    # Added for deployer.gcp.cloudrun (validated there, naming the key):
    request_state_key_secret: str | None = None  # a secret holding ERLMCP_REQUEST_STATE_KEY, shared by instances
    ingress: str = "all"  # run.googleapis.com/ingress: all, internal or internal-and-cloud-load-balancing
    invoker_iam_check: bool = False  # true: callers also need roles/run.invoker (a Google ID token)
    vpc_egress: str = "auto"  # Direct VPC egress: auto (private ranges when Redis is used), none, private-ranges-only
    env: dict[str, str] = Field(default_factory=dict)  # more server settings, e.g. ERLMCP_JWT_ISSUER


class FrontendConfig(_Section):
    """The global external Application Load Balancer in front of the group (``compute.frontend``); checked, naming
    the key, by :mod:`deployer.gcp.compute`."""

    enabled: bool = False  # off: the backend service only, as before (no address, certificate or proxies)
    domains: tuple[str, ...] = ()  # the Google-managed certificate's domains (DNS A records -> the address)
    rate_limit_action: str = "throttle"  # Cloud Armor's per-client rule: throttle or rate_based_ban
    rate_limit_count: int = 600  # requests per client IP ...
    rate_limit_interval_sec: int = 60  # ... in this many seconds (one of Cloud Armor's intervals), then 429
    ban_duration_sec: int = 600  # rate_based_ban only: how long a client over the limit stays refused
    rate_limit_priority: int = 1000  # the rule's priority in the policy (the default allow rule is 2147483647)


class ComputeConfig(_Section):
    """The Compute Engine managed instance group (section 3)."""

    machine_type: str = "e2-standard-4"
    min_replicas: int = 2
    max_replicas: int = 10
    cpu_target: float = 0.7
    cooldown_seconds: int = 60
    health_check_path: str = "/health"
    port: int = 8080
    metrics_port: int = 9090  # the server's Prometheus listener, open to health checks and the VPC only
    source_image: str = "projects/cos-cloud/global/images/family/cos-stable"  # Container-Optimized OS
    boot_disk_gb: int = 20
    boot_disk_type: str = "pd-balanced"
    autohealing_delay_seconds: int = 300  # a new VM's time to boot and pull the image before health checks count
    backend_timeout_seconds: int = 30
    load_balancing_scheme: str = "EXTERNAL_MANAGED"  # a global backend service; INTERNAL_MANAGED: a regional one
    frontend: FrontendConfig = Field(default_factory=FrontendConfig)


class MaintenanceWindowConfig(_Section):
    """A weekly maintenance window: its day (MONDAY..SUNDAY) and starting hour (0-23, UTC); one hour long."""

    day: str = "SUNDAY"
    hour: int = 3


class MemorystoreConfig(_Section):
    """The Memorystore for Redis instance holding the sessions (``sessions.store: external``); checked, naming the
    key, by :mod:`deployer.gcp.memorystore`."""

    name: str = "erlmcp-sessions"  # the instance ID
    display_name: str = "erlmcp sessions"
    tier: str = "STANDARD_HA"  # a replica in another zone with automatic failover; or BASIC (one node, no SLA)
    redis_version: str = "REDIS_7_2"
    memory_size_gb: int = 1
    connect_mode: str = "PRIVATE_SERVICE_ACCESS"  # needs a private services access connection on the VPC
    reserved_ip_range: str | None = None  # PSA: an allocated range's name; DIRECT_PEERING: a CIDR; none: any
    auth_enabled: bool = True  # Redis AUTH: the URL carries the instance's AUTH string
    transit_encryption_mode: str = "SERVER_AUTHENTICATION"  # TLS (rediss://, port 6378); or DISABLED
    read_replicas: bool = False  # the app reads its own writes from the primary: replicas only for failover
    replica_count: int | None = None  # default: 1 for STANDARD_HA (its failover replica), 0 for BASIC
    redis_configs: dict[str, str] = Field(default_factory=dict)  # over the default maxmemory-policy volatile-lru
    maintenance_window: MaintenanceWindowConfig | None = None  # none: Memorystore picks the time
    labels: dict[str, str] = Field(default_factory=dict)  # more labels; managed-by: erlmcp is always set
    secret_name: str = "erlmcp-memorystore"  # noqa: S105 (a name) the Kubernetes Secret the printed kubectl makes


class LoggingConfig(_Section):
    """The Cloud Logging router (section 7): sinks to BigQuery and Cloud Storage, the probe exclusions and the log
    bucket's retention; checked, naming the key, by :mod:`deployer.gcp.log_router`."""

    bigquery_dataset: str = "erlmcp_logs"  # in the configuration's project; the sink's tables are partitioned
    storage_bucket: str | None = None  # a Cloud Storage bucket name; default: PROJECT-erlmcp-logs
    log_bucket: str = "_Default"  # the log bucket whose retention is set; another ID: created, and routed to
    location: str = "global"  # the log bucket's location (_Default's, unless the organisation chose a region)
    retention_days: int = 30  # the log bucket's retention (1-3650; _Default's own default is 30)
    exclusions: bool = True  # keep health-check and probe requests out of the sinks and the log bucket
    filter: str | None = None  # which entries the sinks route; default: erlmcp's, on GKE, Cloud Run and GCE


class StandbyConfig(_Section):
    """A second region (the seed design's section 9, docs/multi-region.md): ``network``, ``cluster`` and ``gce`` make
    its regional pieces beside the primary region's in one run (its subnet, Router and NAT, its GKE cluster, its
    instance group behind the same global load balancer). Its ranges must not overlap the primary's: one VPC."""

    region: str
    zones: tuple[str, ...] = ()  # default: the region's a, b and c
    subnet_cidr: str = "10.4.0.0/24"
    pods_range: str = "10.5.0.0/16"
    services_range: str = "10.6.0.0/16"
    master_cidr: str = "172.16.0.16/28"  # its cluster's control plane (another /28 of the VPC)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.fullmatch(value):
            raise ValueError(f"{value!r} is not a Google Cloud region (e.g. us-east1)")
        return value


class GcpConfig(_Section):
    """Everything :mod:`deployer.gcp` makes, from one file."""

    project: str = ""
    region: str = "us-central1"
    zones: tuple[str, ...] = ()  # default: the region's a, b and c
    name: str = "erlmcp"  # the prefix of every resource name
    image: str = ""  # the server image; default: the Marketplace image of this version
    service_account: str = "erlmcp"  # the Google service account's ID (erlmcp@PROJECT.iam.gserviceaccount.com)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    cloud_run: CloudRunConfig = Field(default_factory=CloudRunConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    memorystore: MemorystoreConfig = Field(default_factory=MemorystoreConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    standby: StandbyConfig | None = None  # a second region: see StandbyConfig

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if value and not _PROJECT.fullmatch(value):
            raise ValueError(f"{value!r} is not a Google Cloud project ID (6-30 of a-z, 0-9 and -)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.fullmatch(value):
            raise ValueError(f"{value!r} is not a Google Cloud region (e.g. us-central1)")
        return value

    @field_validator("name", "service_account")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a resource name (a-z, 0-9 and -, starting with a letter)")
        return value

    @model_validator(mode="after")
    def _standby_elsewhere(self) -> GcpConfig:
        if self.standby is not None and self.standby.region == self.region:
            raise ValueError(f"standby.region must be another region than region ({self.region})")
        return self

    def regions(self) -> tuple[GcpConfig, ...]:
        """The configuration of each region: this one, then (with ``standby``) the standby region's, which is this
        one with the standby's region, zones, subnet ranges and control-plane range (and no standby of its own)."""
        if self.standby is None:
            return (self,)
        standby = self.standby
        ranges = {"subnet_cidr": standby.subnet_cidr, "pods_range": standby.pods_range,
                  "services_range": standby.services_range}  # fmt: skip
        second = self.model_copy(
            update={
                "region": standby.region,
                "zones": standby.zones,
                "network": self.network.model_copy(update=ranges),
                "cluster": self.cluster.model_copy(update={"master_cidr": standby.master_cidr}),
                "standby": None,
            }
        )
        return (self, second)

    @property
    def zone_list(self) -> tuple[str, ...]:
        return self.zones or tuple(f"{self.region}-{z}" for z in "abc")

    @property
    def service_account_email(self) -> str:
        return f"{self.service_account}@{self.project}.iam.gserviceaccount.com"

    @property
    def subnet_name(self) -> str:
        return f"{self.network.name.removesuffix('-vpc')}-subnet-{self.region}"

    def server_image(self) -> str:
        if self.image:
            return self.image
        from app import __version__

        return f"{PUBLIC_IMAGE_REPO_PREFIX}:{__version__}"


def _where(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def config_from(args: argparse.Namespace) -> GcpConfig:
    """The configuration a platform command names: ``--config`` with ``--project``, ``--region`` and ``--image``
    over it (see :func:`load_config`)."""
    return load_config(args.config, project=args.project, region=args.region, image=args.image)


def load_config(path: Path | None, **overrides: Any) -> GcpConfig:
    """The configuration in ``path`` (none: all defaults) with the command line's ``overrides`` (``None`` values
    are not overrides); ``project`` is required.

    Raises:
        ValuesError: the file cannot be read, is not a YAML mapping, or a key is unknown or has a bad value.
    """
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ValuesError(f"cannot read the configuration {path}: {exc.strerror or exc}") from exc
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValuesError(f"the configuration {path} is not valid UTF-8 YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValuesError(f"the configuration {path} must be a YAML mapping")
    data = {**data, **{key: value for key, value in overrides.items() if value is not None}}
    try:
        config = GcpConfig.model_validate(data)
    except ValidationError as exc:
        source = path or "the command line"
        problems = "; ".join(f"{_where(e)}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise ValuesError(f"the configuration {source} is invalid: {problems}") from exc
    if not config.project:
        raise ValuesError("no project: give --project or `project:` in the configuration")
    return config
