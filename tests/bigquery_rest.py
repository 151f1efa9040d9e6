"""A local server of the BigQuery API v2 REST protocol, the ``datasets`` methods the log router uses: get, insert
and patch at ``/bigquery/v2/projects/{project}/datasets[/{dataset}]``, over one in-memory project.

What it does as the API does (https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets):

* a dataset answers with ``kind``, ``id`` (``P:D``), ``selfLink``, ``datasetReference``, ``etag`` (a new one on
  every write), ``location`` (``US`` when the insert names none), ``creationTime``/``lastModifiedTime``
  (milliseconds as strings), ``type`` and ``access``;
* an insert without ``access`` gets the default entries (the project's owners, writers and readers by special
  group, and the caller as OWNER); an insert of an existing dataset is ``409 duplicate`` (``Already Exists:
  Dataset P:D``), a read of a missing one ``404 notFound`` (``Not found: Dataset P:D``); a dataset ID is letters,
  digits and ``_`` only;
* ``access`` entries: exactly one of ``userByEmail``, ``groupByEmail``, ``domain``, ``specialGroup``,
  ``iamMember``, ``view``, ``routine``, ``dataset``, and a ``role`` (except for the last three); the roles
  ``roles/bigquery.dataOwner``, ``dataEditor`` and ``dataViewer`` are accepted and kept in their legacy form
  (``OWNER``, ``WRITER``, ``READER``), as the API answers them; a dataset keeps at least one ``OWNER``;
* a patch replaces the top-level fields it carries (``access`` as a whole list: there is no per-entry merge);
  with ``If-Match`` it is ``412 conditionNotMet`` unless the etag is the current one; ``location`` cannot change
  (``400 invalid``);
* a ``userByEmail`` or ``iamMember`` service account IAM does not know yet (:attr:`BigQueryRest.propagating`:
  how many more writes refuse it) is ``400 invalid`` (``IAM setPolicy failed for Dataset P:D: Service account
  ... does not exist``), as right after Cloud Logging makes a sink's writer identity.

What it leaves out: datasets.list, delete, update (PUT) and undelete, tables and every other collection, IAM on
the calls themselves (a test makes the next call of a method answer 403 with :meth:`BigQueryRest.deny`), dataset
options (default expirations, labels, collation, CMEK, tags), ``accessPolicyVersion`` and conditional access
entries, authorized views' checks, the ``datasetView`` and ``updateMode`` parameters, and which locations exist
(any region-shaped name, ``US`` or ``EU`` is taken).

Tests make out-of-band changes with :meth:`BigQueryRest.edit` (a new etag, as any write), or with
:attr:`BigQueryRest.interfere` right before the next patch (a concurrent write), and read ``writes``.
"""

from __future__ import annotations

import base64
import copy
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.json_http import ApiError, JsonServer, Served

__all__ = ["BigQueryRest"]

_ROUTE = re.compile(r"/bigquery/v2/projects/(?P<project>[^/]+)/datasets(?:/(?P<dataset>[^/]+))?")
_DATASET = re.compile(r"[A-Za-z0-9_]{1,1024}")
_LOCATION = re.compile(r"US|EU|[a-z]+-[a-z]+[0-9]+")
_LEGACY = {"roles/bigquery.dataOwner": "OWNER", "roles/bigquery.dataEditor": "WRITER",
           "roles/bigquery.dataViewer": "READER"}  # fmt: skip
_PRINCIPALS = ("userByEmail", "groupByEmail", "domain", "specialGroup", "iamMember", "view", "routine", "dataset")
_SPECIAL = ("projectOwners", "projectWriters", "projectReaders", "allAuthenticatedUsers")
_OUTPUT = ("kind", "id", "selfLink", "etag", "creationTime", "lastModifiedTime", "type")


@dataclass
class BigQueryRest(Served):
    """The server over ``project``; ``writes`` lists every write (``insert P:D``, ``patch P:D [access]``)."""

    project: str
    caller: str = "deployer@example.iam.gserviceaccount.com"  # who the calls come from (the creator, OWNER)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset ID -> the dataset as answered
    writes: list[str] = field(default_factory=list)
    propagating: dict[str, int] = field(default_factory=dict)  # service account email -> writes still refusing it
    # someone else's change, made just before the next patch is checked (that patch's etag is then stale)
    interfere: Callable[[dict[str, Any]], None] | None = None
    _denied: dict[str, ApiError] = field(default_factory=dict)  # HTTP method -> its next answer
    _etags: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: JsonServer | None = None
    server_name: ClassVar[str] = "bigquery-rest"

    def deny(self, method: str, permission: str) -> None:
        """The next ``method`` call (GET, POST, PATCH) answers 403 as the API does without ``permission``."""
        self._denied[method] = ApiError(
            403,
            "accessDenied",
            f"Access Denied: Dataset {self.project}: Permission {permission} denied (or it may not exist).",
        )

    def edit(self, dataset: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Someone else's write (the console, ``bq``): ``change`` the stored dataset; it gets a new etag."""
        with self._lock:
            change(self.datasets[dataset])
            self._touch(self.datasets[dataset])

    # -- the protocol

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any) -> Any:
        route = _ROUTE.fullmatch(path)
        if route is None:
            raise ApiError(404, "notFound", f"Not found: URL {path}")
        if route["project"] != self.project:
            raise ApiError(404, "notFound", f"Not found: Project {route['project']}")
        with self._lock:
            if method in self._denied:
                raise self._denied.pop(method)
            dataset = route["dataset"]
            if method == "GET" and dataset:
                return 200, copy.deepcopy(self._get(dataset))
            if method == "POST" and not dataset:
                return 200, self._insert(body or {})
            if method == "PATCH" and dataset:
                return 200, self._patch(dataset, body or {}, headers.get("if-match"))
        raise ApiError(405, "badRequest", f"{method} is not supported on {path}")

    def _get(self, dataset: str) -> dict[str, Any]:
        if dataset not in self.datasets:
            raise ApiError(404, "notFound", f"Not found: Dataset {self.project}:{dataset}")
        return self.datasets[dataset]

    def _insert(self, body: dict[str, Any]) -> dict[str, Any]:
        reference = body.get("datasetReference") or {}
        dataset = reference.get("datasetId", "")
        if reference.get("projectId", self.project) != self.project:
            raise ApiError(400, "invalid", "The project in the dataset reference differs from the request's")
        if not _DATASET.fullmatch(dataset):
            raise ApiError(400, "invalid", f"Invalid dataset ID \"{dataset}\". Dataset IDs must be alphanumeric "
                                           "(plus underscores) and must be at most 1024 characters long.")  # fmt: skip
        if dataset in self.datasets:
            raise ApiError(409, "duplicate", f"Already Exists: Dataset {self.project}:{dataset}")
        location = body.get("location", "US")
        if not _LOCATION.fullmatch(location):
            raise ApiError(400, "invalid", f"Invalid value for location: {location} is not a valid value")
        unknown = set(body) - {"datasetReference", "location", "description", "friendlyName", "labels", "access"}
        if unknown:
            raise ApiError(400, "invalid", f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}"')
        access = body.get("access")
        if access is None:
            access = [
                {"role": "WRITER", "specialGroup": "projectWriters"},
                {"role": "OWNER", "specialGroup": "projectOwners"},
                {"role": "OWNER", "userByEmail": self.caller},
                {"role": "READER", "specialGroup": "projectReaders"},
            ]
        now = str(int(time.time() * 1000))
        stored = {
            "kind": "bigquery#dataset",
            "id": f"{self.project}:{dataset}",
            "selfLink": f"https://bigquery.googleapis.com/bigquery/v2/projects/{self.project}/datasets/{dataset}",
            "datasetReference": {"datasetId": dataset, "projectId": self.project},
            "location": location,
            "creationTime": now,
            "lastModifiedTime": now,
            "type": "DEFAULT",
            **{k: v for k, v in body.items() if k in ("description", "friendlyName", "labels")},
        }
        stored["access"] = self._access(stored, access)
        self._touch(stored)
        self.datasets[dataset] = stored
        self.writes.append(f"insert {self.project}:{dataset}")
        return copy.deepcopy(stored)

    def _patch(self, dataset: str, body: dict[str, Any], if_match: str | None) -> dict[str, Any]:
        stored = self._get(dataset)
        if self.interfere is not None:
            self.interfere(stored)
            self._touch(stored)
            self.interfere = None
        if if_match is not None and if_match != stored["etag"]:
            raise ApiError(412, "conditionNotMet", "Precondition check failed.")
        if "location" in body and body["location"] != stored["location"]:
            raise ApiError(400, "invalid", f"Cannot change the location of dataset {self.project}:{dataset}")
        updated = copy.deepcopy(stored)
        for name, value in body.items():
            if name in _OUTPUT or name in ("datasetReference", "location"):
                continue  # output only, or the same
            updated[name] = self._access(stored, value) if name == "access" else value
        self._touch(updated)
        self.datasets[dataset] = updated
        self.writes.append(f"patch {self.project}:{dataset} [{','.join(sorted(body))}]")
        return copy.deepcopy(updated)

    def _access(self, dataset: dict[str, Any], entries: Any) -> list[dict[str, Any]]:
        """The entries as the API keeps them (legacy role names), or ApiError for one it refuses."""
        where = f"Dataset {dataset['id']}"
        if not isinstance(entries, list):
            raise ApiError(400, "invalid", "access must be a list of access entries")
        kept: list[dict[str, Any]] = []
        for entry in entries:
            principals = [name for name in _PRINCIPALS if name in entry]
            if len(principals) != 1 or set(entry) - {"role", *_PRINCIPALS}:
                raise ApiError(400, "invalid", f"Invalid access entry {entry} for {where}: one principal, a role")
            principal = principals[0]
            if principal not in ("view", "routine", "dataset") and not entry.get("role"):
                raise ApiError(400, "invalid", f"Access entry {entry} of {where} has no role")
            if principal == "specialGroup" and entry[principal] not in _SPECIAL:
                raise ApiError(400, "invalid", f"Invalid special group {entry[principal]} for {where}")
            email = entry.get("userByEmail") or str(entry.get("iamMember", "")).removeprefix("serviceAccount:")
            if self.propagating.get(email, 0) > 0:
                self.propagating[email] -= 1
                raise ApiError(400, "invalid", f"IAM setPolicy failed for {where}: Service account {email} does "
                                               "not exist.")  # fmt: skip
            role = entry.get("role")
            kept.append({**entry, **({"role": _LEGACY.get(role, role)} if role else {})})
        if not any(entry.get("role") == "OWNER" for entry in kept):
            raise ApiError(400, "invalid", f"{where} must have at least one OWNER")
        return kept

    def _touch(self, dataset: dict[str, Any]) -> None:
        dataset["etag"] = base64.b64encode(f"dataset-{next(self._etags)}".encode()).decode()
        dataset["lastModifiedTime"] = str(int(time.time() * 1000))
