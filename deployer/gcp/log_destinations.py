"""The log sinks' destinations, made by ``python -m deployer logging`` (:mod:`deployer.gcp.log_router`): the
BigQuery dataset and the Cloud Storage bucket, and each sink's writer identity granted on its own destination.
Both through the APIs' REST protocols (BigQuery API v2, Cloud Storage JSON API v1) with ``requests`` and
Application Default Credentials (``google.auth``'s ``AuthorizedSession``), as :mod:`deployer.gcp.cloudrun` calls
Cloud Run: erlmcp's dependencies have no BigQuery or Storage client library, and four methods of each API do
not need one.

* **The dataset** ``projects/P/datasets/D`` (``datasets.get``, else ``datasets.insert`` in the configuration's
  ``region``). **The bucket** ``B`` (``buckets.get``, else ``buckets.insert`` in ``region``, with uniform
  bucket-level access on and public access prevention enforced: only IAM decides who reads the logs, and
  nothing in it is ever public).
* **An existing dataset or bucket is used as it is**: never deleted, never changed but for the grant. One in
  another location, or a bucket without uniform bucket-level access or public access prevention, is said on its
  NO CHANGE line, not changed (a dataset or bucket cannot move; its other settings are its owner's).
* **The grants**, additive and optimistic, as :mod:`deployer.gcp.iam` makes project ones. BigQuery: a dataset's
  IAM policy is its ``access`` list (the API documents no dataset ``setIamPolicy`` in v2), so the sink's writer
  identity gets an entry ``{"role": "roles/bigquery.dataEditor", "userByEmail": ...}`` (the API keeps it as
  ``WRITER``, its legacy name, and either form counts as held) through ``datasets.patch`` carrying the whole
  list read, every other entry as it was, with ``If-Match`` the dataset's etag. Storage: the bucket's IAM
  policy (``buckets.getIamPolicy``/``setIamPolicy``, the policy's etag in the body): the member added to the
  unconditional ``roles/storage.objectCreator`` binding, every other binding as it was. A concurrent change
  (412) is read again and retried (:data:`~deployer.gcp.iam.ETAG_ATTEMPTS` in all).
* **New writer identities.** A sink created by this apply has its writer identity from the create's answer;
  the grant's write takes it then (from the plan's identities), and waits out IAM's propagation of the new
  service account (a 400 "does not exist" is retried for about a minute, :data:`~deployer.gcp.iam.PROPAGATION_DELAYS`).
* **Refusals** are :class:`DestinationError` naming the dataset or bucket, what was attempted and the IAM
  permission it takes (``bigquery.datasets.create``, ``storage.buckets.setIamPolicy``...). A bucket name is
  global: a 403 on reading it usually means another project owns it.
* ``--insecure`` with ``--bigquery-endpoint URL`` and ``--storage-endpoint URL``: plain HTTP without credentials,
  for local servers of the two APIs (the tests' ``tests/bigquery_rest.py`` and ``tests/storage_rest.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from deployer.errors import CloudError, ValuesError
from deployer.gcp import iam
from deployer.gcp.changes import CREATE, NO_CHANGE, UPDATE, Change
from deployer.gcp.converge import Step
from deployer.gcp.credentials import default_credentials, rest_root

__all__ = [
    "BIGQUERY_ROLE",
    "BIGQUERY_ROOT",
    "STORAGE_ROLE",
    "STORAGE_ROOT",
    "Dataset",
    "DestinationError",
    "Destinations",
    "RestApi",
    "StorageBucket",
    "dataset_steps",
    "storage_steps",
]

BIGQUERY_ROOT = "https://bigquery.googleapis.com"
STORAGE_ROOT = "https://storage.googleapis.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
CALL_TIMEOUT = 60.0  # seconds one call may take
BIGQUERY_ROLE, STORAGE_ROLE = "roles/bigquery.dataEditor", "roles/storage.objectCreator"
_HELD = {BIGQUERY_ROLE, "WRITER"}  # the role as sent, and as the API keeps it (its legacy name)
KIND_DATASET, KIND_BUCKET, KIND_GRANT = "BigQuery dataset", "storage bucket", "IAM grant"


class DestinationError(CloudError):
    """BigQuery or Cloud Storage refused a call or cannot be reached; the message names the object."""


class _Stale(DestinationError):
    """412: the etag sent is not the current one (someone else wrote in between)."""


class _Unknown(DestinationError):
    """400: IAM does not know the member yet (a service account made moments ago)."""


class RestApi:
    """One Google REST API over an HTTP session: JSON in and out, errors as :class:`DestinationError`."""

    def __init__(self, session: requests.Session, root: str, title: str) -> None:
        self._session, self.root, self.title = session, root.rstrip("/"), title

    def close(self) -> None:
        self._session.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        permission: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        missing: bool = False,
    ) -> dict[str, Any] | None:
        """The answer of ``method path``; None on 404 when ``missing`` (a read of what may not exist). A refusal
        is a :class:`DestinationError` saying ``cannot {what}``, the API's status and message, and on 403 the
        ``permission`` the call takes."""
        from google.auth.exceptions import GoogleAuthError

        try:
            response = self._session.request(
                method, self.root + path, json=body, params=params, headers=headers, timeout=CALL_TIMEOUT
            )
        except GoogleAuthError as exc:
            raise DestinationError(f"cannot {what}: the credentials were refused ({exc}); run `gcloud auth "
                                   "application-default login`") from exc  # fmt: skip
        except requests.RequestException as exc:
            raise DestinationError(f"cannot {what}: the {self.title} API at {self.root} cannot be reached "
                                   f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        if response.status_code == 404 and missing:
            return None
        try:
            document = response.json() if response.content else {}
        except ValueError:
            document = None
        if response.status_code >= 400:
            error = document.get("error", {}) if isinstance(document, dict) else {}
            message = error.get("message") or response.text[:300] or response.reason
            text = f"cannot {what}: HTTP {response.status_code}: {message}"
            if response.status_code == 403:
                raise DestinationError(f"{text} (it takes the IAM permission {permission})")
            if response.status_code == 412:
                raise _Stale(text)
            if response.status_code == 400 and "does not exist" in message:
                raise _Unknown(text)
            raise DestinationError(text)
        if not isinstance(document, dict):
            raise DestinationError(f"cannot {what}: the {self.title} API's answer is not a JSON object")
        return document


@dataclass
class Destinations:
    """The BigQuery and Cloud Storage APIs; :meth:`connect` makes them, tests may pass their own."""

    bigquery: RestApi
    storage: RestApi

    @classmethod
    def connect(
        cls, bigquery_endpoint: str | None = None, storage_endpoint: str | None = None, *, insecure: bool = False
    ) -> Destinations:
        """Google's endpoints (or the given ones, over TLS) with Application Default Credentials; ``insecure``:
        plain HTTP to both endpoints, no credentials (local servers of the APIs)."""
        if insecure:
            if not bigquery_endpoint or not storage_endpoint:
                raise ValuesError(
                    "--insecure needs --bigquery-endpoint and --storage-endpoint too: logging makes the sinks' "
                    "destinations through the BigQuery and Cloud Storage REST APIs"
                )
            return cls(
                RestApi(requests.Session(), rest_root(bigquery_endpoint, insecure=True), "BigQuery"),
                RestApi(requests.Session(), rest_root(storage_endpoint, insecure=True), "Cloud Storage"),
            )
        from google.auth.transport.requests import AuthorizedSession

        credentials = default_credentials([CLOUD_PLATFORM])

        def session() -> requests.Session:
            made: requests.Session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
            return made

        return cls(
            RestApi(session(), rest_root(bigquery_endpoint or BIGQUERY_ROOT, insecure=False), "BigQuery"),
            RestApi(session(), rest_root(storage_endpoint or STORAGE_ROOT, insecure=False), "Cloud Storage"),
        )

    def close(self) -> None:
        self.bigquery.close()
        self.storage.close()


# -- what is wanted ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """The BigQuery dataset a sink writes to, and the sink."""

    project: str
    dataset_id: str
    location: str
    sink: str

    @property
    def target(self) -> str:
        return f"{self.project}:{self.dataset_id}"

    @property
    def path(self) -> str:
        return f"/bigquery/v2/projects/{self.project}/datasets/{self.dataset_id}"

    def body(self) -> dict[str, Any]:
        """The ``datasets.insert`` body (no ``access``: the API's default entries, then the grant)."""
        return {
            "datasetReference": {"projectId": self.project, "datasetId": self.dataset_id},
            "location": self.location,
            "description": "erlmcp's logs, from the Cloud Logging sink "
            f"{self.sink} (made by `python -m deployer logging`)",
        }


@dataclass(frozen=True)
class StorageBucket:
    """The Cloud Storage bucket a sink writes to, its project, and the sink."""

    project: str
    name: str
    location: str
    sink: str

    @property
    def target(self) -> str:
        return f"gs://{self.name}"

    def body(self) -> dict[str, Any]:
        """The ``buckets.insert`` body."""
        return {
            "name": self.name,
            "location": self.location,
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "enforced"},
        }


# -- the steps ---------------------------------------------------------------------------------------------------

Identities = Mapping[str, str]  # sink ID -> writer identity (``serviceAccount:...``), filled in as sinks are made


def _grant_change(role: str, target: str, sink: str, member: str | None, made: bool, held: bool) -> Change:
    name = f"{role} on {target}"
    note = f"to {member}" if member else f"to sink {sink}'s writer identity, once the sink is created"
    if held:
        return Change(NO_CHANGE, KIND_GRANT, name, note=note)
    if made or member is None:
        return Change(CREATE, KIND_GRANT, name, note=note)
    return Change(UPDATE, KIND_GRANT, name, [("member", "absent", "present")], note=note)


def _member(identities: Identities, sink: str, what: str) -> str:
    member = identities.get(sink)
    if not member:
        raise DestinationError(f"cannot {what}: sink {sink} has no writer identity (was it created?)")
    return member


def _granting(grant: Callable[[], bool], *, fresh: bool) -> bool:
    """``grant()`` (True: written, False: already held), read again on a stale etag and, for a member made
    moments ago (``fresh``), retried while IAM does not know it yet."""
    for delay in (*(iam.PROPAGATION_DELAYS if fresh else ()), None):
        for attempt in range(iam.ETAG_ATTEMPTS):
            try:
                return grant()
            except _Stale:
                if attempt == iam.ETAG_ATTEMPTS - 1:
                    raise
            except _Unknown:
                if delay is None:
                    raise
                break
        if delay is not None:
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _dataset_holds(dataset: Mapping[str, Any], member: str) -> bool:
    email = member.removeprefix("serviceAccount:")
    return any(
        entry.get("role") in _HELD and (entry.get("userByEmail") == email or entry.get("iamMember") == member)
        for entry in dataset.get("access", [])
    )


def _located(actual: str, wanted: str) -> str:
    return "" if actual.lower() == wanted.lower() else f"in {actual}, not {wanted}: used as it is (it cannot move)"


def dataset_steps(api: RestApi, want: Dataset, identities: Identities) -> list[Step]:
    """The dataset's line (CREATE, or NO CHANGE for one that exists: used as it is) and its grant's line, from a
    read of the dataset; the grant's write takes the sink's writer identity from ``identities`` when it runs."""
    what = f"BigQuery dataset {want.target}"
    actual = api.call("GET", want.path, what=f"read {what}", permission="bigquery.datasets.get", missing=True)
    steps: list[Step] = []
    if actual is None:

        def insert() -> str:
            api.call(
                "POST",
                f"/bigquery/v2/projects/{want.project}/datasets",
                what=f"create {what}",
                permission="bigquery.datasets.create",
                body=want.body(),
            )
            return f"created {what} in {want.location}"

        steps.append(Step(Change(CREATE, KIND_DATASET, want.target, note=f"in {want.location}"), insert))
    else:
        note = _located(str(actual.get("location", "")), want.location)
        steps.append(Step(Change(NO_CHANGE, KIND_DATASET, want.target, note=note)))
    member = identities.get(want.sink)
    held = actual is not None and member is not None and _dataset_holds(actual, member)
    change = _grant_change(BIGQUERY_ROLE, want.target, want.sink, member, actual is None, held)
    if held:
        return [*steps, Step(change)]
    fresh = member is None  # the sink is made by this apply: its identity is new to IAM

    def grant() -> str:
        who = _member(identities, want.sink, f"grant {BIGQUERY_ROLE} on {what}")
        change.note = f"to {who}"

        def once() -> bool:
            found = api.call("GET", want.path, what=f"read {what}", permission="bigquery.datasets.get")
            assert found is not None
            if _dataset_holds(found, who):
                return False
            entry = {"role": BIGQUERY_ROLE, "userByEmail": who.removeprefix("serviceAccount:")}
            api.call(
                "PATCH",
                want.path,
                what=f"grant {BIGQUERY_ROLE} on {what} to {who}",
                permission="bigquery.datasets.update",
                body={"access": [*found.get("access", []), entry]},
                headers={"If-Match": str(found.get("etag", ""))},
            )
            return True

        done = _granting(once, fresh=fresh)
        return f"granted {BIGQUERY_ROLE} on {what} to {who}" if done else f"{who} already holds {BIGQUERY_ROLE}"

    return [*steps, Step(change, grant)]


def _policy_holds(policy: Mapping[str, Any], role: str, member: str) -> bool:
    return any(
        b.get("role") == role and member in b.get("members", []) and "condition" not in b
        for b in policy.get("bindings", [])
    )


def _bucket_notes(actual: Mapping[str, Any], want: StorageBucket) -> str:
    notes = [_located(str(actual.get("location", "")), want.location)]
    config = actual.get("iamConfiguration", {})
    if not config.get("uniformBucketLevelAccess", {}).get("enabled"):
        notes.append("uniform bucket-level access is off: used as it is")
    if config.get("publicAccessPrevention") != "enforced":
        notes.append("public access prevention is not enforced: used as it is")
    return "; ".join(note for note in notes if note)


def storage_steps(api: RestApi, want: StorageBucket, identities: Identities) -> list[Step]:
    """The bucket's line (CREATE, or NO CHANGE for one that exists: used as it is) and its grant's line, from a
    read of the bucket and its IAM policy; the grant's write takes the sink's writer identity when it runs."""
    what = f"Cloud Storage bucket {want.target}"
    path = f"/storage/v1/b/{want.name}"
    actual = api.call(
        "GET",
        path,
        what=f"read {what} (a bucket name is global: if another project owns it, set logging.storageBucket)",
        permission="storage.buckets.get",
        missing=True,
    )
    steps: list[Step] = []
    policy: dict[str, Any] | None = None
    if actual is None:

        def insert() -> str:
            api.call(
                "POST",
                "/storage/v1/b",
                what=f"create {what}",
                permission="storage.buckets.create",
                body=want.body(),
                params={"project": want.project},
            )
            return f"created {what} in {want.location}"

        note = f"in {want.location}, uniform bucket-level access, public access prevention enforced"
        steps.append(Step(Change(CREATE, KIND_BUCKET, want.target, note=note), insert))
    else:
        steps.append(Step(Change(NO_CHANGE, KIND_BUCKET, want.target, note=_bucket_notes(actual, want))))
        policy = _read_policy(api, path, what)
    member = identities.get(want.sink)
    held = policy is not None and member is not None and _policy_holds(policy, STORAGE_ROLE, member)
    change = _grant_change(STORAGE_ROLE, want.target, want.sink, member, actual is None, held)
    if held:
        return [*steps, Step(change)]
    fresh = member is None

    def grant() -> str:
        who = _member(identities, want.sink, f"grant {STORAGE_ROLE} on {what}")
        change.note = f"to {who}"

        def once() -> bool:
            found = _read_policy(api, path, what)
            if _policy_holds(found, STORAGE_ROLE, who):
                return False
            api.call(
                "PUT",
                f"{path}/iam",
                what=f"grant {STORAGE_ROLE} on {what} to {who}",
                permission="storage.buckets.setIamPolicy",
                body=_granted(found, STORAGE_ROLE, who),
            )
            return True

        done = _granting(once, fresh=fresh)
        return f"granted {STORAGE_ROLE} on {what} to {who}" if done else f"{who} already holds {STORAGE_ROLE}"

    return [*steps, Step(change, grant)]


def _read_policy(api: RestApi, path: str, what: str) -> dict[str, Any]:
    found = api.call(
        "GET",
        f"{path}/iam",
        what=f"read the IAM policy of {what}",
        permission="storage.buckets.getIamPolicy",
        params={"optionsRequestedPolicyVersion": "3"},
    )
    assert found is not None
    return found


def _granted(policy: Mapping[str, Any], role: str, member: str) -> dict[str, Any]:
    """The policy to write: ``member`` added to ``role``'s unconditional binding, everything else (the etag too)
    as read."""
    bindings = [dict(b, members=list(b.get("members", []))) for b in policy.get("bindings", [])]
    for binding in bindings:
        if binding.get("role") == role and "condition" not in binding:
            binding["members"].append(member)
            break
    else:
        bindings.append({"role": role, "members": [member]})
    return {**policy, "bindings": bindings}
