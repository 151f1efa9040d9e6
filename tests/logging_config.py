"""A local server of Cloud Logging's real ``google.logging.v2.ConfigServiceV2`` (gRPC) over one in-memory project,
for the real ``ConfigServiceV2Client`` to call: sinks, project exclusions and log buckets.

What it does as the real API does: the project's ``_Default`` (30 days) and ``_Required`` (400 days, locked) log
buckets exist from the start; a sink, exclusion or bucket created twice is ALREADY_EXISTS, one not there NOT_FOUND;
``LogSink.name`` and ``LogExclusion.name`` come back as the bare ID, ``LogBucket.name`` as the full resource name;
a sink created with ``unique_writer_identity`` gets its own ``serviceAccount:...@gcp-sa-logging`` writer identity,
which updates keep (an update of such a sink without ``unique_writer_identity`` is INVALID_ARGUMENT); a
destination that is not ``bigquery.googleapis.com/projects/P/datasets/D``,
``storage.googleapis.com/BUCKET`` or ``logging.googleapis.com/projects/P/locations/L/buckets/B`` is
INVALID_ARGUMENT, and so is a filter with unbalanced quotes or parentheses, an exclusion without a filter, a
retention outside 1-3650 days, and an update mask naming a field that cannot be updated. Updates change exactly
the fields of their ``update_mask`` (UpdateExclusion and UpdateBucket require one; an empty mask on UpdateSink means
``destination,filter,includeChildren``, the API's backwards-compatible default). A locked bucket refuses updates
(FAILED_PRECONDITION).

What it leaves out: the Logging query language itself (a filter is only checked for balanced quotes and
parentheses, never parsed or evaluated, so no entry is ever routed or excluded), whether a destination exists or
its writer identity may write there, IAM on the config calls, organisation/folder/billing-account parents, page
tokens (every list is one page), CMEK, log views, links and analytics, and the long-running CreateBucketAsync.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.cloud.logging_v2.types import logging_config as lc

from tests.gcp import EMPTY, Refused, refusing, serve, unary

__all__ = ["SERVICE", "FakeLoggingConfig"]

SERVICE = "google.logging.v2.ConfigServiceV2"
_DESTINATIONS = (
    re.compile(r"bigquery\.googleapis\.com/projects/[^/]+/datasets/[A-Za-z0-9_]+"),
    re.compile(r"storage\.googleapis\.com/[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"),
    re.compile(r"logging\.googleapis\.com/projects/[^/]+/locations/[^/]+/buckets/[A-Za-z0-9_-]+"),
)
_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_SINK_FIELDS = {"destination", "filter", "description", "disabled", "exclusions", "include_children",
                "bigquery_options", "output_version_format"}  # fmt: skip
_EXCLUSION_FIELDS = {"filter", "description", "disabled"}
_BUCKET_FIELDS = {"retention_days", "description", "analytics_enabled", "restricted_fields", "index_configs"}


def _invalid(message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, message)


def _check_filter(text: str) -> None:
    """Balanced double quotes and parentheses (outside quotes): all the stand-in knows of the query language."""
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
            if depth < 0:
                break
    if quoted or depth != 0:
        raise _invalid(f"Unparseable filter: {text!r}")


def _masked(paths: Any, allowed: set[str], what: str) -> list[str]:
    found = list(paths)
    for path in found:
        if path not in allowed:
            raise _invalid(f"field {path!r} of a {what} cannot be updated")
    return found


@dataclass
class FakeLoggingConfig:
    """The service over one project; ``writes`` lists every write (``Method name``), ``refuse`` the next call's
    error by method (handler) name."""

    project: str
    project_number: int = 123456789012
    sinks: dict[str, Any] = field(default_factory=dict)  # sink ID -> LogSink
    exclusions: dict[str, Any] = field(default_factory=dict)  # exclusion ID -> LogExclusion
    buckets: dict[str, Any] = field(default_factory=dict)  # full name -> LogBucket
    writes: list[str] = field(default_factory=list)
    refuse: dict[str, Refused] = field(default_factory=dict)
    unique: set[str] = field(default_factory=set)  # the sinks created with unique_writer_identity
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(100001))
    _server: Any = None
    port: int = 0

    def __post_init__(self) -> None:
        for bucket_id, days, locked in (("_Default", 30, False), ("_Required", 400, True)):
            name = f"{self.parent}/locations/global/buckets/{bucket_id}"
            self.buckets[name] = lc.LogBucket(
                name=name, retention_days=days, locked=locked, lifecycle_state=lc.LifecycleState.ACTIVE
            )

    @property
    def parent(self) -> str:
        return f"projects/{self.project}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- helpers

    def _project(self, parent: str) -> None:
        if parent != self.parent:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no such parent {parent}")

    def _id(self, name: str, kind: str) -> str:
        prefix = f"{self.parent}/{kind}/"
        if not name.startswith(prefix):
            raise Refused(grpc.StatusCode.NOT_FOUND, f"{name} is not in {self.parent}")
        return name.removeprefix(prefix)

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)

    def _check_sink(self, sink: Any) -> None:
        if not any(p.fullmatch(sink.destination) for p in _DESTINATIONS):
            raise _invalid(f"Invalid destination {sink.destination!r}")
        _check_filter(sink.filter)
        seen: set[str] = set()
        for exclusion in sink.exclusions:
            self._check_exclusion(exclusion)
            if exclusion.name in seen:
                raise _invalid(f"duplicate exclusion {exclusion.name} in sink {sink.name}")
            seen.add(exclusion.name)

    @staticmethod
    def _check_exclusion(exclusion: Any) -> None:
        if not _ID.fullmatch(exclusion.name):
            raise _invalid(f"invalid exclusion name {exclusion.name!r}")
        if not exclusion.filter:
            raise _invalid("an exclusion needs a filter")
        _check_filter(exclusion.filter)

    @staticmethod
    def _check_retention(days: int) -> None:
        if not 1 <= days <= 3650:
            raise _invalid(f"retention_days {days}: between 1 and 3650")

    # -- sinks

    def create_sink(self, request: Any) -> Any:
        self._project(request.parent)
        sink = lc.LogSink(request.sink)
        if not _ID.fullmatch(sink.name):
            raise _invalid(f"invalid sink name {sink.name!r}")
        if sink.name in self.sinks:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"sink {sink.name} already exists")
        self._check_sink(sink)
        identity = f"p{self.project_number}-{next(self.ids)}" if request.unique_writer_identity else "cloud-logs"
        domain = (
            "gcp-sa-logging.iam.gserviceaccount.com" if request.unique_writer_identity else "system.gserviceaccount.com"
        )
        sink.writer_identity = f"serviceAccount:{identity}@{domain}"
        if request.unique_writer_identity:
            self.unique.add(sink.name)
        sink.create_time = sink.update_time = self._now()
        self.sinks[sink.name] = sink
        self.writes.append(f"CreateSink {sink.name}")
        return sink

    def get_sink(self, request: Any) -> Any:
        sink_id = self._id(request.sink_name, "sinks")
        if sink_id not in self.sinks:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"sink {sink_id} does not exist")
        return self.sinks[sink_id]

    def list_sinks(self, request: Any) -> Any:
        self._project(request.parent)
        return lc.ListSinksResponse(sinks=list(self.sinks.values()))

    def update_sink(self, request: Any) -> Any:
        stored = self.get_sink(lc.GetSinkRequest(sink_name=request.sink_name))
        if stored.name in self.unique and not request.unique_writer_identity:
            raise _invalid(f"sink {stored.name} has a unique writer identity: unique_writer_identity cannot be false")
        paths = _masked(request.update_mask.paths, _SINK_FIELDS, "sink") or [
            "destination",
            "filter",
            "include_children",
        ]
        updated = lc.LogSink(stored)
        for path in paths:
            setattr(updated, path, getattr(request.sink, path))
        self._check_sink(updated)
        updated.update_time = self._now()
        self.sinks[stored.name] = updated
        self.writes.append(f"UpdateSink {stored.name} [{','.join(sorted(paths))}]")
        return updated

    def delete_sink(self, request: Any) -> None:
        sink_id = self.get_sink(lc.GetSinkRequest(sink_name=request.sink_name)).name
        del self.sinks[sink_id]
        self.unique.discard(sink_id)
        self.writes.append(f"DeleteSink {sink_id}")

    # -- project exclusions (the _Default sink's)

    def create_exclusion(self, request: Any) -> Any:
        self._project(request.parent)
        exclusion = lc.LogExclusion(request.exclusion)
        self._check_exclusion(exclusion)
        if exclusion.name in self.exclusions:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"exclusion {exclusion.name} already exists")
        exclusion.create_time = exclusion.update_time = self._now()
        self.exclusions[exclusion.name] = exclusion
        self.writes.append(f"CreateExclusion {exclusion.name}")
        return exclusion

    def get_exclusion(self, request: Any) -> Any:
        exclusion_id = self._id(request.name, "exclusions")
        if exclusion_id not in self.exclusions:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"exclusion {exclusion_id} does not exist")
        return self.exclusions[exclusion_id]

    def list_exclusions(self, request: Any) -> Any:
        self._project(request.parent)
        return lc.ListExclusionsResponse(exclusions=list(self.exclusions.values()))

    def update_exclusion(self, request: Any) -> Any:
        stored = self.get_exclusion(lc.GetExclusionRequest(name=request.name))
        paths = _masked(request.update_mask.paths, _EXCLUSION_FIELDS, "exclusion")
        if not paths:
            raise _invalid("update_mask is required")
        updated = lc.LogExclusion(stored)
        for path in paths:
            setattr(updated, path, getattr(request.exclusion, path))
        self._check_exclusion(updated)
        updated.update_time = self._now()
        self.exclusions[stored.name] = updated
        self.writes.append(f"UpdateExclusion {stored.name} [{','.join(sorted(paths))}]")
        return updated

    def delete_exclusion(self, request: Any) -> None:
        exclusion_id = self.get_exclusion(lc.GetExclusionRequest(name=request.name)).name
        del self.exclusions[exclusion_id]
        self.writes.append(f"DeleteExclusion {exclusion_id}")

    # -- log buckets

    def get_bucket(self, request: Any) -> Any:
        if request.name not in self.buckets:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"bucket {request.name} does not exist")
        return self.buckets[request.name]

    def create_bucket(self, request: Any) -> Any:
        if not request.parent.startswith(f"{self.parent}/locations/"):
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no such parent {request.parent}")
        if not re.fullmatch(r"[A-Za-z0-9-][A-Za-z0-9_-]{0,99}", request.bucket_id):
            raise _invalid(f"invalid bucket id {request.bucket_id!r} (IDs starting with _ are reserved)")
        name = f"{request.parent}/buckets/{request.bucket_id}"
        if name in self.buckets:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"bucket {name} already exists")
        bucket = lc.LogBucket(request.bucket)
        self._check_retention(bucket.retention_days or 30)
        bucket = lc.LogBucket(
            bucket, name=name, retention_days=bucket.retention_days or 30, lifecycle_state=lc.LifecycleState.ACTIVE
        )
        bucket.create_time = bucket.update_time = self._now()
        self.buckets[name] = bucket
        self.writes.append(f"CreateBucket {name}")
        return bucket

    def update_bucket(self, request: Any) -> Any:
        stored = self.get_bucket(lc.GetBucketRequest(name=request.name))
        paths = _masked(request.update_mask.paths, _BUCKET_FIELDS, "bucket")
        if not paths:
            raise _invalid("update_mask is required")
        if stored.locked:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"bucket {request.name} is locked")
        updated = lc.LogBucket(stored)
        for path in paths:
            setattr(updated, path, getattr(request.bucket, path))
        self._check_retention(updated.retention_days)
        updated.update_time = self._now()
        self.buckets[request.name] = updated
        self.writes.append(f"UpdateBucket {request.name} [{','.join(sorted(paths))}]")
        return updated

    # -- the server

    def handler(self, method: Callable[[Any], Any]) -> Any:
        return refusing(method, self.refuse)

    def start(self) -> FakeLoggingConfig:
        h = self.handler
        methods = {
            "CreateSink": unary(h(self.create_sink), lc.CreateSinkRequest, lc.LogSink),
            "GetSink": unary(h(self.get_sink), lc.GetSinkRequest, lc.LogSink),
            "ListSinks": unary(h(self.list_sinks), lc.ListSinksRequest, lc.ListSinksResponse),
            "UpdateSink": unary(h(self.update_sink), lc.UpdateSinkRequest, lc.LogSink),
            "DeleteSink": unary(h(self.delete_sink), lc.DeleteSinkRequest, EMPTY),
            "CreateExclusion": unary(h(self.create_exclusion), lc.CreateExclusionRequest, lc.LogExclusion),
            "GetExclusion": unary(h(self.get_exclusion), lc.GetExclusionRequest, lc.LogExclusion),
            "ListExclusions": unary(h(self.list_exclusions), lc.ListExclusionsRequest, lc.ListExclusionsResponse),
            "UpdateExclusion": unary(h(self.update_exclusion), lc.UpdateExclusionRequest, lc.LogExclusion),
            "DeleteExclusion": unary(h(self.delete_exclusion), lc.DeleteExclusionRequest, EMPTY),
            "GetBucket": unary(h(self.get_bucket), lc.GetBucketRequest, lc.LogBucket),
            "CreateBucket": unary(h(self.create_bucket), lc.CreateBucketRequest, lc.LogBucket),
            "UpdateBucket": unary(h(self.update_bucket), lc.UpdateBucketRequest, lc.LogBucket),
        }
        self._server, self.port = serve({SERVICE: methods})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(None)
