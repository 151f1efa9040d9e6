"""A local server of the Cloud Storage JSON API v1, the bucket methods the log router uses: ``buckets.get``
(``GET /storage/v1/b/{bucket}``), ``buckets.insert`` (``POST /storage/v1/b?project=P``), ``buckets.getIamPolicy``
and ``buckets.setIamPolicy`` (``GET``/``PUT /storage/v1/b/{bucket}/iam``), over one project and a namespace of
bucket names shared with other projects (bucket names are global).

What it does as the API does (https://cloud.google.com/storage/docs/json_api/v1/buckets):

* a bucket answers with ``kind``, ``id``, ``selfLink``, ``name``, ``projectNumber``, ``metageneration``,
  ``location`` in upper case (``US-CENTRAL1``) with its ``locationType``, ``storageClass`` (``STANDARD``),
  ``timeCreated``/``updated``, ``etag``, and ``iamConfiguration`` (``uniformBucketLevelAccess`` with its
  ``lockedTime``, the older ``bucketPolicyOnly`` alias, and ``publicAccessPrevention``, ``inherited`` unless
  set); an insert without a location gets ``US``;
* a bucket name is 3-63 of a-z, 0-9, ``-``, ``_`` and ``.``, starting and ending with a letter or digit, not
  starting with ``goog`` (``400 invalid``); an insert of a name this project owns is ``409 conflict`` (``Your
  previous request to create the named bucket succeeded and you already own it.``), of one another project owns
  (:attr:`StorageRest.foreign`) ``409 conflict`` (``The requested bucket name is not available...``); reading
  another project's bucket is ``403 forbidden`` (no ``storage.buckets.get`` on it), a missing one ``404
  notFound``;
* a new bucket's IAM policy: ``roles/storage.legacyBucketOwner`` for ``projectEditor:P`` and ``projectOwner:P``,
  ``roles/storage.legacyBucketReader`` for ``projectViewer:P`` (and the two legacy object roles too when uniform
  bucket-level access is off); a policy answers with ``kind``, ``resourceId`` (``projects/_/buckets/B``),
  ``version`` and ``etag``;
* ``setIamPolicy`` replaces the bindings with those sent; with an ``etag`` that is not the current one it is
  ``412 conditionNotMet``; a member must be of a known type (``user:``, ``serviceAccount:``, ``group:``,
  ``domain:``, ``projectOwner:``/``projectEditor:``/``projectViewer:``, ``allUsers``,
  ``allAuthenticatedUsers``, ``principal://``, ``principalSet://``) and a role ``roles/...`` (``400 invalid``);
  ``allUsers`` and ``allAuthenticatedUsers`` on a bucket with public access prevention ``enforced`` are ``412
  conditionNotMet``; a service account IAM does not know yet (:attr:`StorageRest.propagating`: how many more
  writes refuse it) is ``400 invalid``, as right after Cloud Logging makes a sink's writer identity.

What it leaves out: objects, buckets.list, patch, update and delete, ACLs and default object ACLs (uniform
bucket-level access or not: ACL calls are not served), IAM conditions (a policy with a ``condition`` is kept as
sent but never evaluated) and the ``optionsRequestedPolicyVersion`` rules, ``userProject``, ``predefinedAcl``
and the other query parameters, retention policies, lifecycle rules, CMEK, autoclass, soft delete, which
locations exist (any region-shaped name, ``US``, ``EU`` or ``ASIA`` is taken), IAM on the calls themselves (a
test makes the next call of a method answer 403 with :meth:`StorageRest.deny`).

Tests change a bucket's policy as someone else would (:meth:`StorageRest.edit_policy`: a new etag; or
:attr:`StorageRest.interfere`, right before the next setIamPolicy: a concurrent write) and read ``writes``.
"""

from __future__ import annotations

import base64
import copy
import itertools
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from tests.json_http import ApiError, JsonServer, Served

__all__ = ["StorageRest"]

_ROUTE = re.compile(r"/storage/v1/b(?:/(?P<bucket>[^/]+)(?P<iam>/iam)?)?")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]")
_LOCATION = re.compile(r"US|EU|ASIA|[A-Z]+-[A-Z]+[0-9]+")
_MEMBER = re.compile(r"(user|serviceAccount|group|domain|projectOwner|projectEditor|projectViewer):.+|allUsers|"
                     r"allAuthenticatedUsers|principal(Set)?://.+")  # fmt: skip
_PUBLIC = ("allUsers", "allAuthenticatedUsers")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StorageRest(Served):
    """The server for ``project``; ``writes`` lists every write (``insert B``, ``setIamPolicy B``)."""

    project: str
    project_number: str = "123456789012"
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> the bucket as answered
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> its IAM policy as answered
    foreign: set[str] = field(default_factory=set)  # bucket names other projects own
    writes: list[str] = field(default_factory=list)
    propagating: dict[str, int] = field(default_factory=dict)  # service account email -> writes still refusing it
    # someone else's setIamPolicy, made just before the next one is checked (whose etag is then stale)
    interfere: Callable[[list[dict[str, Any]]], None] | None = None
    _denied: dict[str, ApiError] = field(default_factory=dict)  # method name -> its next answer
    _etags: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: JsonServer | None = None
    server_name: ClassVar[str] = "storage-rest"

    def deny(self, method: str, permission: str) -> None:
        """The next call of ``method`` (``get``, ``insert``, ``getIamPolicy``, ``setIamPolicy``) answers 403 as the
        API does without ``permission``."""
        self._denied[method] = ApiError(
            403,
            "forbidden",
            f"deployer@example.iam.gserviceaccount.com does not have {permission} access to the Google Cloud "
            "Storage bucket. Permission '{permission}' denied on resource (or it may not exist).".replace(
                "{permission}", permission
            ),
        )

    def edit_policy(self, bucket: str, change: Callable[[list[dict[str, Any]]], None]) -> None:
        """Someone else's setIamPolicy: ``change`` the bindings; the policy gets a new etag."""
        with self._lock:
            change(self.policies[bucket]["bindings"])
            self.policies[bucket]["etag"] = self._etag()

    # -- the protocol

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any) -> Any:
        route = _ROUTE.fullmatch(path)
        if route is None:
            raise ApiError(404, "notFound", "Not Found")
        bucket, iam = route["bucket"], bool(route["iam"])
        name = {("GET", False): "get", ("POST", False): "insert", ("GET", True): "getIamPolicy",
                ("PUT", True): "setIamPolicy"}.get((method, iam))  # fmt: skip
        if name is None or (name == "insert") == bool(bucket):
            raise ApiError(405, "badRequest", f"{method} is not supported on {path}")
        with self._lock:
            if name in self._denied:
                raise self._denied.pop(name)
            if name == "insert":
                return 200, self._insert(query.get("project", ""), body or {})
            stored = self._bucket(bucket)
            if name == "get":
                return 200, copy.deepcopy(stored)
            if name == "getIamPolicy":
                return 200, copy.deepcopy(self.policies[bucket])
            return 200, self._set_policy(stored, body or {})

    def _bucket(self, bucket: str) -> dict[str, Any]:
        if bucket in self.foreign:
            raise ApiError(403, "forbidden", f"deployer@example.iam.gserviceaccount.com does not have "
                                             f"storage.buckets.get access to the Google Cloud Storage bucket "
                                             f"{bucket}. Permission 'storage.buckets.get' denied on resource (or "
                                             "it may not exist).")  # fmt: skip
        if bucket not in self.buckets:
            raise ApiError(404, "notFound", "The specified bucket does not exist.")
        return self.buckets[bucket]

    def _insert(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        if project != self.project:
            raise ApiError(400, "invalid", f"Invalid argument: project {project!r}")
        name = body.get("name", "")
        if not _NAME.fullmatch(name) or name.startswith("goog"):
            raise ApiError(400, "invalid", "Invalid bucket name: '" + name + "'")
        if name in self.buckets:
            raise ApiError(409, "conflict", "Your previous request to create the named bucket succeeded and you "
                                            "already own it.")  # fmt: skip
        if name in self.foreign:
            raise ApiError(409, "conflict", "The requested bucket name is not available. The bucket namespace is "
                                            "shared by all users of the system. Please select a different name "
                                            "and try again.")  # fmt: skip
        unknown = set(body) - {"name", "location", "iamConfiguration", "storageClass", "labels"}
        if unknown:
            raise ApiError(400, "invalid", f"Invalid argument: unknown field {sorted(unknown)[0]}")
        location = str(body.get("location", "US")).upper()
        if not _LOCATION.fullmatch(location):
            raise ApiError(400, "invalid", f"Invalid location: {body.get('location')}")
        config = body.get("iamConfiguration", {})
        uniform = bool(config.get("uniformBucketLevelAccess", {}).get("enabled", False))
        prevention = config.get("publicAccessPrevention", "inherited")
        if prevention not in ("inherited", "enforced", "unspecified"):
            raise ApiError(400, "invalid", f"Invalid argument: publicAccessPrevention {prevention!r}")
        now = _now()
        access: dict[str, Any] = {"enabled": uniform}
        if uniform:
            locked = datetime.now(UTC) + timedelta(days=90)  # until then it may be turned off again
            access["lockedTime"] = locked.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        stored = {
            "kind": "storage#bucket",
            "selfLink": f"https://www.googleapis.com/storage/v1/b/{name}",
            "id": name,
            "name": name,
            "projectNumber": self.project_number,
            "metageneration": "1",
            "location": location,
            "locationType": "region" if "-" in location else "multi-region",
            "storageClass": body.get("storageClass", "STANDARD"),
            "timeCreated": now,
            "updated": now,
            "etag": "CAE=",
            "iamConfiguration": {
                "bucketPolicyOnly": copy.deepcopy(access),
                "uniformBucketLevelAccess": access,
                "publicAccessPrevention": "inherited" if prevention == "unspecified" else prevention,
            },
            **({"labels": body["labels"]} if "labels" in body else {}),
        }
        bindings = [
            {"role": "roles/storage.legacyBucketOwner",
             "members": [f"projectEditor:{self.project}", f"projectOwner:{self.project}"]},
            {"role": "roles/storage.legacyBucketReader", "members": [f"projectViewer:{self.project}"]},
        ]  # fmt: skip
        if not uniform:
            bindings += [
                {"role": "roles/storage.legacyObjectOwner",
                 "members": [f"projectEditor:{self.project}", f"projectOwner:{self.project}"]},
                {"role": "roles/storage.legacyObjectReader", "members": [f"projectViewer:{self.project}"]},
            ]  # fmt: skip
        self.buckets[name] = stored
        self.policies[name] = {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{name}", "version": 1,
                               "etag": self._etag(), "bindings": bindings}  # fmt: skip
        self.writes.append(f"insert {name}")
        return copy.deepcopy(stored)

    def _set_policy(self, bucket: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        name = bucket["name"]
        if self.interfere is not None:
            self.interfere(self.policies[name]["bindings"])
            self.policies[name]["etag"] = self._etag()
            self.interfere = None
        current = self.policies[name]
        if "etag" in body and body["etag"] != current["etag"]:
            raise ApiError(412, "conditionNotMet", "Precondition Failed")
        bindings = body.get("bindings", [])
        enforced = bucket["iamConfiguration"]["publicAccessPrevention"] == "enforced"
        for binding in bindings:
            role, members = binding.get("role", ""), binding.get("members", [])
            if not role.startswith("roles/") or not members:
                raise ApiError(400, "invalid", f"Invalid argument: binding {binding}")
            for member in members:
                if not _MEMBER.fullmatch(member):
                    raise ApiError(400, "invalid", f"Invalid argument: member {member!r}")
                if enforced and member in _PUBLIC:
                    raise ApiError(412, "conditionNotMet", "One or more users named in the policy do not belong "
                                                           "to a permitted customer, perhaps due to an organization "
                                                           "policy.")  # fmt: skip
                email = member.removeprefix("serviceAccount:")
                if member.startswith("serviceAccount:") and self.propagating.get(email, 0) > 0:
                    self.propagating[email] -= 1
                    raise ApiError(400, "invalid", f"Invalid argument: Service account {email} does not exist.")
        self.policies[name] = {**current, "bindings": copy.deepcopy(bindings), "etag": self._etag(),
                               "version": body.get("version", 1)}  # fmt: skip
        self.writes.append(f"setIamPolicy {name}")
        return copy.deepcopy(self.policies[name])

    def _etag(self) -> str:
        return base64.b64encode(f"policy-{next(self._etags)}".encode()).decode()
