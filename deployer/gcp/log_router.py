"""The seed design's log router (section 7: "Log Router, Log Sinks (BQ, GCS), Log Exclusions") as code:
``python -m deployer logging plan|apply|render [--dry-run] [--json]``, through Cloud Logging's ConfigServiceV2
(gRPC). From the configuration's ``logging`` section (:class:`~deployer.gcp.config.LoggingConfig`) it makes:

* two **log sinks**, ``NAME-logs-bigquery`` to ``bigquery.googleapis.com/projects/P/datasets/erlmcp_logs``
  (``use_partitioned_tables``: one ingestion-time partitioned table per log, not a table per day) and
  ``NAME-logs-storage`` to ``storage.googleapis.com/P-erlmcp-logs`` (hourly JSON files), each created with
  ``unique_writer_identity``: its own service account, which only its destination trusts;
* the **probe exclusion** ``NAME-health-probes``, both as a project exclusion (it keeps the noise out of the
  ``_Default`` sink, and so out of the ``_Default`` log bucket) and inside each of our sinks (a project exclusion
  applies to ``_Default`` only);
* the **log bucket retention**: ``retentionDays`` on ``_Default``; with ``logBucket: ID``, a log bucket of its own
  (``global``) with that retention and a third sink, ``NAME-logs-bucket``, routing erlmcp's entries to it
  (``_Default`` is then left alone).

Which entries are erlmcp's (``logging.filter`` overrides it): the server writes one JSON object per line to stdout
(``app/observability/logging.py``: ``severity``, ``message``, ``time``, ``logger``, the
``logging.googleapis.com/trace`` fields; ``app/observability/access.py``: the access line's ``httpRequest``), which
the platform's agent turns into a LogEntry (``jsonPayload``, with ``httpRequest`` and the trace fields lifted out).
The server names no log and no resource itself, so the entries are chosen by where the platform puts them:

* GKE: ``resource.type="k8s_container"`` in the configured cluster and namespace, container ``server`` (the
  chart's);
* Cloud Run: ``resource.type="cloud_run_revision"`` of the configured service (its stdout and stderr, and Cloud
  Run's own request log of the service);
* Compute Engine: ``resource.type="gce_instance"`` in the log ``cos_containers`` (Container-Optimized OS's agent,
  enabled by the instance template's ``google-logging-enabled``). That log holds every COS container of the
  project, not only erlmcp's: set ``logging.filter`` in a project shared with other COS workloads.

The probe exclusion: the server already writes no access line for its health paths (``app/middleware.py``
``HEALTH_PATHS``: ``/livez``, ``/readyz``, ``/healthz``, ``/health``), so it drops what else records a request:
Cloud Run's and the load balancer's request logs, a proxy in front, an older server; by ``httpRequest.requestUrl``
(a path or a whole URL) on a health path, or ``httpRequest.userAgent`` of the kubelet (``kube-probe/``) or of Google's
health checkers (``GoogleHC/``). Within erlmcp's entries only: nobody else's logs are excluded.

The sinks' **destinations** and their **grants** (:mod:`deployer.gcp.log_destinations`, through the BigQuery and
Cloud Storage REST APIs): the dataset ``projects/P/datasets/erlmcp_logs`` and the bucket ``P-erlmcp-logs`` (uniform
bucket-level access, public access prevention enforced), both in the configuration's ``region``, made when absent
and used as they are when they exist (another location, or other settings, are said on the plan line, never
changed); each sink's writer identity granted on its own destination only, ``roles/bigquery.dataEditor`` as an
entry of the dataset's ``access`` list and ``roles/storage.objectCreator`` in the bucket's IAM policy (additive,
with the etag read: other entries and bindings stay). A project-level grant would reach every dataset or bucket
of the project, so none is made. A new sink's writer identity comes from its create's answer: its grant's step,
planned as CREATE, takes it then, and waits out IAM's propagation of the new service account.

The destinations come first in a plan (a sink never routes to one that is not there), the grants last (they need
the sinks). A sink of ours no longer wanted, ``NAME-logs-bucket`` once ``logBucket`` is ``_Default`` again, is
DELETE (only if its description says it is ours; its log bucket, with the logs it holds, is kept); the
configuration has no switch to turn the BigQuery or the Storage sink off.

``plan`` reads the log bucket, the sinks, the exclusion, the dataset and the bucket (and its IAM policy) by name
and compares the fields it sets (what the API sets itself, the writer identity above all, is not compared);
``apply`` writes each difference with an ``update_mask`` naming exactly the differing fields, so an update keeps
the sink's writer identity. Applying again writes nothing. Nothing else is touched: no sink, exclusion, log
bucket, dataset or bucket of another name, and no other entry of a dataset's access list or binding of a
bucket's policy. ``render`` prints the desired objects offline (no credentials, no call). ``--insecure`` (tests):
plaintext gRPC to ``--endpoint`` and plain HTTP to ``--bigquery-endpoint`` and ``--storage-endpoint``, without
credentials.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TextIO

from google.api_core import exceptions as api
from google.cloud.logging_v2.services.config_service_v2 import ConfigServiceV2Client
from google.cloud.logging_v2.services.config_service_v2.transports import ConfigServiceV2GrpcTransport
from google.cloud.logging_v2.types import logging_config as lc

from deployer.errors import CloudError, ValuesError
from deployer.gcp import converge
from deployer.gcp.changes import CREATE, DELETE, NO_CHANGE, UPDATE, Change, differences, emit_desired, render, run_mode
from deployer.gcp.config import GcpConfig, config_from
from deployer.gcp.grpc_clients import Connected, connect
from deployer.gcp.log_destinations import (
    BIGQUERY_ROLE,
    STORAGE_ROLE,
    Dataset,
    Destinations,
    StorageBucket,
    dataset_steps,
    storage_steps,
)
from deployer.log import Log

__all__ = [
    "HEALTH_PATHS",
    "HEALTH_URLS",
    "MANAGED",
    "PROBE_AGENTS",
    "Clients",
    "Desired",
    "LoggingRouterError",
    "Plan",
    "apply_plan",
    "command",
    "default_filter",
    "desired",
    "plan",
    "rendered",
]

_VERBS = {CREATE: "create", UPDATE: "update", DELETE: "delete"}
KIND_BUCKET, KIND_SINK, KIND_EXCLUSION = "log bucket", "log sink", "log exclusion"
DEFAULT_BUCKET = "_Default"
MANAGED = "managed by `python -m deployer logging`"  # in the description of what is ours (a sink deleted when unwanted)
HEALTH_PATHS = ("/livez", "/readyz", "/healthz", "/health")  # app.middleware.HEALTH_PATHS (a test holds them equal)
HEALTH_URLS = r"^(https?://[^/]+)?/(livez|readyz|healthz|health)/?([?#]|$)"
PROBE_AGENTS = r"^(kube-probe|GoogleHC)/"

_DATASET = re.compile(r"[A-Za-z0-9_]{1,1024}")
_STORAGE_BUCKET = re.compile(r"[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]")
_LOG_BUCKET = re.compile(r"[A-Za-z0-9-][A-Za-z0-9_-]{0,99}")
_LOCATION = re.compile(r"global|[a-z]+(-[a-z]+[0-9]+)?")  # global, a region, or a multi-region (us, eu)
_MAX_FILTER = 20_000  # characters: Cloud Logging's limit on a sink's filter
_SINK_FIELDS = {  # the fields compared and written, REST name -> update_mask path
    "destination": "destination",
    "filter": "filter",
    "description": "description",
    "disabled": "disabled",
    "exclusions": "exclusions",
    "bigqueryOptions": "bigquery_options",
}


class LoggingRouterError(CloudError):
    """Cloud Logging refused a call or cannot be reached; the message names the object."""


@dataclass(frozen=True)
class Desired:
    """Everything the configuration asks for: the log bucket (and whether it is ours to create), the sinks by ID,
    the project exclusion (none when ``exclusions`` is off), the sinks' destinations (each with its sink, whose
    writer identity is granted there) and the sinks of ours that must not exist (``retired``)."""

    project: str
    bucket: lc.LogBucket
    create_bucket: bool
    sinks: dict[str, lc.LogSink]
    exclusion: lc.LogExclusion | None
    exclusion_id: str
    dataset: Dataset
    storage: StorageBucket
    retired: tuple[str, ...] = ()


# -- the desired state -------------------------------------------------------------------------------------------


def _validate(config: GcpConfig) -> None:
    """Raises :class:`ValuesError` naming the key, for a logging section Cloud Logging would refuse."""
    section = config.logging
    if not _DATASET.fullmatch(section.bigquery_dataset):
        raise ValuesError(
            f"logging.bigqueryDataset {section.bigquery_dataset!r} is not a BigQuery dataset ID (letters, digits "
            "and _ only)"
        )
    if section.storage_bucket is not None and (
        not _STORAGE_BUCKET.fullmatch(section.storage_bucket) or section.storage_bucket.startswith("goog")
    ):
        raise ValuesError(
            f"logging.storageBucket {section.storage_bucket!r} is not a Cloud Storage bucket name (3-63 of a-z, "
            "0-9, -, _ and ., starting and ending with a letter or digit, not starting with goog)"
        )
    if section.log_bucket != DEFAULT_BUCKET and not _LOG_BUCKET.fullmatch(section.log_bucket):
        raise ValuesError(
            f"logging.logBucket {section.log_bucket!r}: _Default, or a log bucket ID (1-100 of letters, digits, - "
            "and _, not starting with _: _Required's retention cannot change)"
        )
    if not _LOCATION.fullmatch(section.location):
        raise ValuesError(f"logging.location {section.location!r}: global, or a region such as us-central1")
    if not 1 <= section.retention_days <= 3650:
        raise ValuesError(f"logging.retentionDays {section.retention_days}: 1 to 3650 days")
    if section.filter is not None and not section.filter.strip():
        raise ValuesError("logging.filter is empty: leave it out for erlmcp's entries on GKE, Cloud Run and GCE")
    if section.filter is not None and len(section.filter) > _MAX_FILTER:
        raise ValuesError(f"logging.filter is longer than Cloud Logging's {_MAX_FILTER} characters")


def default_filter(config: GcpConfig) -> str:
    """erlmcp's entries on GKE, Cloud Run and Compute Engine, by where the platforms put them (see above)."""
    gke = (
        f'resource.type="k8s_container" AND resource.labels.cluster_name="{config.cluster.name}" AND '
        f'resource.labels.namespace_name="{config.cluster.namespace}" AND resource.labels.container_name="server"'
    )
    run = f'resource.type="cloud_run_revision" AND resource.labels.service_name="{config.cloud_run.service}"'
    gce = f'resource.type="gce_instance" AND logName="projects/{config.project}/logs/cos_containers"'
    return f"({gke}) OR ({run}) OR ({gce})"


def _exclusion_filter(selection: str) -> str:
    probes = f'httpRequest.requestUrl=~"{HEALTH_URLS}" OR httpRequest.userAgent=~"{PROBE_AGENTS}"'
    return f"({selection}) AND ({probes})"


def _storage_bucket(config: GcpConfig) -> str:
    return config.logging.storage_bucket or f"{config.project}-erlmcp-logs"


def desired(config: GcpConfig) -> Desired:
    """The bucket, sinks, exclusion and grants of the configuration (checked first: :class:`ValuesError`)."""
    _validate(config)
    section, project, prefix = config.logging, config.project, config.name
    selection = section.filter or default_filter(config)
    exclusion_id = f"{prefix}-health-probes"
    exclusion = (
        lc.LogExclusion(
            name=exclusion_id,
            description="erlmcp's health-check and probe requests (managed by `python -m deployer logging`)",
            filter=_exclusion_filter(selection),
            disabled=False,
        )
        if section.exclusions
        else None
    )
    managed = f"{MANAGED}; changes made elsewhere are undone by the next apply"

    def sink(suffix: str, destination: str, what: str, **more: Any) -> tuple[str, lc.LogSink]:
        sink_id = f"{prefix}-logs-{suffix}"
        message = lc.LogSink(
            name=sink_id,
            destination=destination,
            filter=selection,
            description=f"erlmcp's logs to {what}; {managed}",
            disabled=False,
            exclusions=[exclusion] if exclusion is not None else [],
            **more,
        )
        return sink_id, message

    dataset, bucket = section.bigquery_dataset, _storage_bucket(config)
    sinks = dict(
        [
            sink(
                "bigquery",
                f"bigquery.googleapis.com/projects/{project}/datasets/{dataset}",
                "BigQuery",
                bigquery_options=lc.BigQueryOptions(use_partitioned_tables=True),
            ),
            sink("storage", f"storage.googleapis.com/{bucket}", "Cloud Storage"),
        ]
    )
    bucket_name = f"projects/{project}/locations/{section.location}/buckets/{section.log_bucket}"
    own_bucket = section.log_bucket != DEFAULT_BUCKET
    if own_bucket:
        sink_id, message = sink(
            "bucket", f"logging.googleapis.com/{bucket_name}", f"the log bucket {section.log_bucket}"
        )
        sinks[sink_id] = message
    log_bucket = lc.LogBucket(name=bucket_name, retention_days=section.retention_days)
    if own_bucket:
        log_bucket.description = f"erlmcp's logs; {managed}"
    return Desired(
        project,
        log_bucket,
        own_bucket,
        sinks,
        exclusion,
        exclusion_id,
        Dataset(project, dataset, config.region, f"{prefix}-logs-bigquery"),
        StorageBucket(project, bucket, config.region, f"{prefix}-logs-storage"),
        retired=() if own_bucket else (f"{prefix}-logs-bucket",),
    )


def _is_bigquery(sink: lc.LogSink) -> bool:
    return sink.destination.startswith("bigquery.googleapis.com/")


def _exclusion_view(exclusion: Any) -> dict[str, Any]:
    return {
        "name": exclusion.name,
        "filter": exclusion.filter,
        "description": exclusion.description,
        "disabled": exclusion.disabled,
    }


def _sink_view(sink: Any, bigquery: bool) -> dict[str, Any]:
    """The fields of a sink that are compared (every one, set or not: a sink disabled elsewhere is drift)."""
    found: dict[str, Any] = {
        "destination": sink.destination,
        "filter": sink.filter,
        "description": sink.description,
        "disabled": sink.disabled,
        "exclusions": [_exclusion_view(e) for e in sink.exclusions],
    }
    if bigquery:
        found["bigqueryOptions"] = {"usePartitionedTables": sink.bigquery_options.use_partitioned_tables}
    return found


def _bucket_view(bucket: Any, own: bool) -> dict[str, Any]:
    return {"retentionDays": bucket.retention_days, **({"description": bucket.description} if own else {})}


def rendered(config: GcpConfig) -> dict[str, Any]:
    """What ``render`` prints: every object apply would make or set, offline."""
    want = desired(config)

    def sink(message: lc.LogSink) -> dict[str, Any]:
        view = _sink_view(message, _is_bigquery(message))
        return {"name": message.name, **view, "uniqueWriterIdentity": True}

    return {
        "project": config.project,
        "logBucket": {
            "name": want.bucket.name,
            "retentionDays": want.bucket.retention_days,
            "create": want.create_bucket,
        },
        "sinks": [sink(s) for s in want.sinks.values()],
        "exclusions": [_exclusion_view(want.exclusion)] if want.exclusion is not None else [],
        "bigqueryDataset": {
            "name": want.dataset.target,
            "body": want.dataset.body(),
            "existing": "used as it is",
        },
        "storageBucket": {
            "name": want.storage.target,
            "body": want.storage.body(),
            "existing": "used as it is",
        },
        "grants": [
            {
                "sink": want.dataset.sink,
                "role": BIGQUERY_ROLE,
                "on": want.dataset.target,
                "member": "the sink's writer identity",
                "how": "an access entry (datasets.patch, with its etag)",
            },
            {
                "sink": want.storage.sink,
                "role": STORAGE_ROLE,
                "on": want.storage.target,
                "member": "the sink's writer identity",
                "how": "the bucket's IAM policy (setIamPolicy, with its etag)",
            },
        ],
    }


# -- the API -----------------------------------------------------------------------------------------------------


@dataclass
class Clients:
    """The ConfigServiceV2 client; :meth:`connect` makes it, tests may pass their own."""

    config: ConfigServiceV2Client
    _connection: Connected | None = None

    @classmethod
    def connect(cls, endpoint: str | None = None, *, insecure: bool = False) -> Clients:
        """See :func:`deployer.gcp.grpc_clients.connect`."""
        connected = connect(
            [(ConfigServiceV2Client, ConfigServiceV2GrpcTransport)],
            endpoint,
            insecure=insecure,
            error=LoggingRouterError,
        )
        return cls(connected.clients[0], _connection=connected)

    def close(self) -> None:
        (self._connection or Connected((self.config,))).close()


def _call(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (api.GoogleAPICallError, api.RetryError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise LoggingRouterError(f"cannot {what}: {message}") from exc


def _read(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, or None when the object does not exist."""
    try:
        return call()
    except api.NotFound:
        return None
    except (api.GoogleAPICallError, api.RetryError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise LoggingRouterError(f"cannot read {what}: {message}") from exc


@dataclass
class Plan:
    """What is wanted, the changes in the order apply makes them, and the sinks' writer identities known so far."""

    want: Desired
    steps: list[converge.Step] = field(default_factory=list)
    identities: dict[str, str] = field(default_factory=dict)  # sink ID -> writer identity

    @property
    def changes(self) -> list[Change]:
        return converge.changes(self.steps)

    def add(self, change: Change, call: Callable[[], Any] | None = None) -> None:
        """The plan line and its write: ``call`` (its refusal a :class:`LoggingRouterError`; a new sink's writer
        identity kept for its grant's write), then the line apply logs."""
        if call is None:
            self.steps.append(converge.Step(change))
            return
        verb = _VERBS[change.action]

        def write() -> str:
            written = _call(f"{verb} {change.kind} {change.name}", call)
            if change.kind == KIND_SINK and written is not None:
                self.identities[change.name] = written.writer_identity
            fields = ", ".join(path for path, _, _ in change.differences)
            return f"{verb}d {change.kind} {change.name}" + (f": {fields}" if fields else "")

        self.steps.append(converge.Step(change, write))


def _paths(found: list[tuple[str, Any, Any]], names: dict[str, str]) -> list[str]:
    return sorted({names.get(path.split(".")[0].split("[")[0], path) for path, _, _ in found})


def plan(clients: Clients, config: GcpConfig, destinations: Destinations) -> Plan:
    """Reads the log bucket, our sinks and our exclusion, then the destinations and their IAM; the changes apply
    would make (nothing is written), in the order it makes them: the dataset and the bucket, the log bucket, the
    sinks, the exclusion, then the grants (a new sink's writer identity is known once it is created)."""
    want = desired(config)
    client = clients.config
    parent = f"projects/{want.project}"
    found = Plan(want)

    # the log bucket: its retention (and, for our own, its description)
    actual_bucket = _read(
        f"log bucket {want.bucket.name}", partial(client.get_bucket, request={"name": want.bucket.name})
    )
    if actual_bucket is None and not want.create_bucket:
        raise LoggingRouterError(
            f"log bucket {want.bucket.name} does not exist (is the Logging API enabled? is the project's _Default "
            "bucket in another location: set logging.location)"
        )
    if actual_bucket is None:
        bucket_id = want.bucket.name.rsplit("/", 1)[1]
        bucket_parent = want.bucket.name.rsplit("/buckets/", 1)[0]
        create = lc.CreateBucketRequest(parent=bucket_parent, bucket_id=bucket_id, bucket=lc.LogBucket(want.bucket))
        create.bucket.name = ""
        found.add(
            Change(CREATE, KIND_BUCKET, want.bucket.name, note=f"retention {want.bucket.retention_days} days"),
            partial(client.create_bucket, request=create),
        )
    else:
        diffs = differences(
            _bucket_view(want.bucket, want.create_bucket), _bucket_view(actual_bucket, want.create_bucket)
        )
        write = None
        if diffs:
            mask = {"paths": _paths(diffs, {"retentionDays": "retention_days", "description": "description"})}
            if actual_bucket.locked:
                raise LoggingRouterError(f"log bucket {want.bucket.name} is locked: its retention cannot change")
            write = partial(
                client.update_bucket, request={"name": want.bucket.name, "bucket": want.bucket, "update_mask": mask}
            )
        found.add(Change(UPDATE if diffs else NO_CHANGE, KIND_BUCKET, want.bucket.name, diffs), write)

    # the sinks
    for sink_id, sink in want.sinks.items():
        name = f"{parent}/sinks/{sink_id}"
        actual = _read(f"log sink {sink_id}", partial(client.get_sink, request={"sink_name": name}))
        if actual is None:
            request = {"parent": parent, "sink": sink, "unique_writer_identity": True}
            change = Change(CREATE, KIND_SINK, sink_id, note=f"to {sink.destination}")
            found.add(change, partial(client.create_sink, request=request))
            continue
        found.identities[sink_id] = actual.writer_identity
        bigquery = _is_bigquery(sink)
        diffs = differences(_sink_view(sink, bigquery), _sink_view(actual, bigquery))
        write = None
        if diffs:
            request = {
                "sink_name": name,
                "sink": sink,
                "unique_writer_identity": True,
                "update_mask": {"paths": _paths(diffs, _SINK_FIELDS)},
            }
            write = partial(client.update_sink, request=request)
        found.add(Change(UPDATE if diffs else NO_CHANGE, KIND_SINK, sink_id, diffs), write)

    # the sinks of ours no longer wanted (the log bucket's, once logBucket is _Default again); one of that name
    # that is not ours (its description does not say so) is left alone
    for sink_id in want.retired:
        name = f"{parent}/sinks/{sink_id}"
        actual = _read(f"log sink {sink_id}", partial(client.get_sink, request={"sink_name": name}))
        if actual is not None and MANAGED in actual.description:
            note = f"no longer in the configuration (logging.logBucket is {DEFAULT_BUCKET}); its log bucket is kept"
            found.add(
                Change(DELETE, KIND_SINK, sink_id, note=note),
                partial(client.delete_sink, request={"sink_name": name}),
            )

    # the project exclusion (the _Default sink's)
    exclusion_name = f"{parent}/exclusions/{want.exclusion_id}"
    actual_exclusion = _read(
        f"log exclusion {want.exclusion_id}", partial(client.get_exclusion, request={"name": exclusion_name})
    )
    if want.exclusion is not None and actual_exclusion is None:
        request = {"parent": parent, "exclusion": want.exclusion}
        found.add(Change(CREATE, KIND_EXCLUSION, want.exclusion_id), partial(client.create_exclusion, request=request))
    elif want.exclusion is not None:
        diffs = differences(_exclusion_view(want.exclusion), _exclusion_view(actual_exclusion))
        write = None
        if diffs:
            mask = {"paths": _paths(diffs, {})}
            request = {"name": exclusion_name, "exclusion": want.exclusion, "update_mask": mask}
            write = partial(client.update_exclusion, request=request)
        found.add(Change(UPDATE if diffs else NO_CHANGE, KIND_EXCLUSION, want.exclusion_id, diffs), write)
    elif actual_exclusion is not None:
        found.add(
            Change(DELETE, KIND_EXCLUSION, want.exclusion_id, note="logging.exclusions is off"),
            partial(client.delete_exclusion, request={"name": exclusion_name}),
        )

    # the destinations (first: a sink never routes to one not there) and the grants (last: they need the sinks)
    dataset, dataset_grant = dataset_steps(destinations.bigquery, want.dataset, found.identities)
    bucket, bucket_grant = storage_steps(destinations.storage, want.storage, found.identities)
    found.steps = [dataset, bucket, *found.steps, dataset_grant, bucket_grant]
    return found


def apply_plan(found: Plan, *, log: Log = lambda _: None) -> None:
    """Makes the plan's changes in order, with the calls :func:`plan` bound to the clients (the destinations and
    the log bucket before a sink routes to them, the sinks before their grants)."""
    converge.apply(found.steps, log=log)


# -- the command -------------------------------------------------------------------------------------------------


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``logging plan|apply|render``: 0 when done. :class:`ValuesError` (exit 2) for bad input before any call,
    :class:`LoggingRouterError` (exit 1) when Cloud Logging refuses."""
    config = config_from(args)
    desired(config)  # a bad section is bad input, before any call
    out = out or sys.stdout
    if args.action == "render":
        emit_desired(rendered(config), out=out, as_json=args.json)
        return 0
    mode = run_mode(args.action, args.dry_run)
    destinations = Destinations.connect(
        getattr(args, "bigquery_endpoint", None), getattr(args, "storage_endpoint", None), insecure=args.insecure
    )
    try:
        clients = Clients.connect(args.endpoint, insecure=args.insecure)
        try:
            found = plan(clients, config, destinations)
            if mode == "apply":
                apply_plan(found, log=log)
        finally:
            clients.close()
    finally:
        destinations.close()
    render(f"Cloud Logging router for project {config.project}", found.changes, mode=mode, out=out, as_json=args.json)
    return 0
