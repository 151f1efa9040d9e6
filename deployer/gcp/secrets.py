"""Secret Manager as code: the secrets erlmcp reads, and the identities that let the app read them
(``python -m deployer secrets plan|apply [--dry-run] [--value KEY=FILE ...]``).

What it manages, in this order (each a plan line: CREATE, UPDATE with the differing fields, or NO CHANGE):

1. The **Google service account** ``config.service_account`` (created when missing, never changed when present:
   it may be shared; a disabled one is reported).
2. For each key of ``secrets.keys`` (see :mod:`deployer.gcp.server_secrets`), the **secret**
   ``projects/P/secrets/<name>-<key>``: replication automatic (``secrets.replication: user-managed`` puts the
   replicas in ``secrets.locations``, default the region), labels ``managed-by: erlmcp`` and
   ``erlmcp-key: <key>`` (other labels are kept), and a rotation schedule only with ``secrets.rotationTopic``.
3. Its **version**: a new one only for ``--value KEY=FILE`` whose content differs from the latest version. The
   latest version is accessed and compared by SHA-256; values are never printed, logged or put in ``--json``,
   and without ``--value`` no value is read at all.
4. The **accessor binding**: ``roles/secretmanager.secretAccessor`` for the service account on the secret (the
   secret's own IAM policy, not the project's: the app reads its secrets and nothing else).
5. The **Workload Identity binding**: ``roles/iam.workloadIdentityUser`` for the Kubernetes service account
   ``serviceAccount:P.svc.id.goog[NAMESPACE/KSA]`` on the Google service account, so the pod acts as it.

Decisions:

* **Rotation needs a topic.** Secret Manager rotates nothing itself: at ``next_rotation_time`` it publishes a
  ``SECRET_ROTATE`` message to the secret's Pub/Sub topics, and refuses a rotation without topics. The seed's
  "90 days (automatic)" is therefore only true with a subscriber that adds the new version. So a schedule
  (``rotationDays``, default 90; ``next_rotation_time`` = now + the period) is set only when
  ``rotationTopic`` names a topic; without one, rotation is neither set nor removed and the plan says so. The
  Secret Manager service agent must be allowed to publish to the topic (``roles/pubsub.publisher``).
  ``rotation_period`` is input-only in the API, so the period set is also recorded in the annotation
  ``erlmcp-rotation-period`` and compared from there when the API does not give the period back.
* **Replication cannot change** after creation: a difference is shown as an UPDATE that apply refuses (exit 1,
  before writing anything): recreating the secret would destroy its versions.
* **IAM is additive and optimistic**: read the policy (version 3), add the member to the role's unconditional
  binding, write it back with the etag read; other members, roles and conditional bindings stay. A concurrent
  change (``ABORTED``: stale etag) is re-read and retried.
* **A new service account takes time to appear** in IAM: right after creating it, policy writes naming it may
  be refused (``INVALID_ARGUMENT``/``NOT_FOUND``); they are retried for about a minute
  (:data:`deployer.gcp.iam.PROPAGATION_DELAYS`). A missing Workload Identity pool (no cluster with Workload
  Identity in the project yet) is not retried: the error says to create the cluster first.
* **Values** are read as bytes, before any call (a bad file is bad input: exit 2): a file-mounted secret byte
  for byte; an environment-variable secret (``redis-url``) without the trailing newline an editor adds, since an
  environment variable ending in a newline is not the URL. At most 64 KiB (the API's limit), never empty.

The Kubernetes side is not changed here: the output ends with the annotation the Kubernetes service account
needs (``iam.gke.io/gcp-service-account: EMAIL``) and how the chart sets it (``serviceAccount.gcpServiceAccount``,
on the service account the chart creates).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

from google.api_core import exceptions as api
from google.auth.exceptions import GoogleAuthError
from google.cloud import iam_admin_v1, secretmanager_v1
from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport
from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
    SecretManagerServiceGrpcTransport,
)

from deployer.errors import CloudError, ValuesError
from deployer.gcp.changes import (
    CREATE,
    NO_CHANGE,
    UPDATE,
    Change,
    differences,
    emit_desired,
    render,
    rest_fields,
    run_mode,
)
from deployer.gcp.config import GcpConfig, config_from
from deployer.gcp.converge import Step, changes, grant_step, refusals
from deployer.gcp.converge import apply as apply_steps
from deployer.gcp.grpc_clients import Connected, connect
from deployer.gcp.iam import Policy, create_account, read_account
from deployer.gcp.server_secrets import SERVER_SECRETS, SecretSpec, by_key
from deployer.log import Log

__all__ = [
    "ACCESSOR",
    "ANNOTATION",
    "WORKLOAD_IDENTITY_USER",
    "Clients",
    "SecretsError",
    "Settings",
    "Value",
    "command",
    "converge",
    "read_values",
]

ACCESSOR = "roles/secretmanager.secretAccessor"
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"
ANNOTATION = "iam.gke.io/gcp-service-account"
MANAGED_BY, OWNER, KEY_LABEL = "managed-by", "erlmcp", "erlmcp-key"
PERIOD_ANNOTATION = "erlmcp-rotation-period"
MAX_VALUE_BYTES = 64 * 1024
MAX_ROTATION_DAYS = 36_500  # the API's limit: 100 years

KIND_ACCOUNT, KIND_SECRET, KIND_VERSION = "service account", "secret", "secret version"
KIND_ACCESS, KIND_WORKLOAD = "accessor binding", "workload identity binding"
_ACCOUNT_ID = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_TOPIC_ID = re.compile(r"[A-Za-z][-A-Za-z0-9_.~+%]{2,254}")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_REPLICATION = ("automatic", "user-managed")
T = TypeVar("T")


class SecretsError(CloudError):
    """Secret Manager or IAM refused a call, or cannot be reached; the message names the resource."""


# -- what is wanted ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """The content of ``--value KEY=FILE``: kept in memory only to be sent; its repr shows the file, not the data."""

    key: str
    path: Path
    data: bytes = field(repr=False)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @property
    def source(self) -> str:
        return f"(from {self.path})"


@dataclass(frozen=True)
class Settings:
    """Everything :func:`converge` needs, checked: from the configuration and the ``--value`` options."""

    project: str
    prefix: str
    specs: tuple[SecretSpec, ...]
    replication: str
    locations: tuple[str, ...]
    rotation_days: int
    rotation_topic: str | None
    account_id: str
    namespace: str
    kubernetes_account: str
    values: Mapping[str, Value] = field(default_factory=dict)

    @property
    def email(self) -> str:
        return f"{self.account_id}@{self.project}.iam.gserviceaccount.com"

    @property
    def account_name(self) -> str:
        return f"projects/{self.project}/serviceAccounts/{self.email}"

    @property
    def accessor_member(self) -> str:
        return f"serviceAccount:{self.email}"

    @property
    def workload_member(self) -> str:
        return f"serviceAccount:{self.project}.svc.id.goog[{self.namespace}/{self.kubernetes_account}]"

    @property
    def rotation_period(self) -> timedelta:
        return timedelta(days=self.rotation_days)

    def secret_name(self, spec: SecretSpec) -> str:
        return f"projects/{self.project}/secrets/{spec.secret_id(self.prefix)}"

    @classmethod
    def from_config(cls, config: GcpConfig, values: Sequence[str] = ()) -> Settings:
        """Raises :class:`ValuesError` for a configuration or ``--value`` that cannot describe a setup."""
        section = config.secrets
        specs: list[SecretSpec] = []
        for key in dict.fromkeys(section.keys):
            try:
                specs.append(by_key(key))
            except KeyError as exc:
                raise ValuesError(f"secrets.keys: {exc.args[0]}") from exc
        if section.replication not in _REPLICATION:
            raise ValuesError(f"secrets.replication must be automatic or user-managed, not {section.replication!r}")
        locations = tuple(dict.fromkeys(section.locations)) or (config.region,)
        if section.replication == "automatic" and section.locations:
            raise ValuesError("secrets.locations needs secrets.replication: user-managed")
        for location in locations:
            if not _REGION.fullmatch(location):
                raise ValuesError(f"secrets.locations: {location!r} is not a Google Cloud region")
        if not 1 <= section.rotation_days <= MAX_ROTATION_DAYS:
            raise ValuesError(f"secrets.rotationDays must be 1 to {MAX_ROTATION_DAYS}, not {section.rotation_days}")
        if not _ACCOUNT_ID.fullmatch(config.service_account):
            raise ValuesError(
                f"serviceAccount {config.service_account!r} is not a service account ID (6 to 30 of "
                "a-z, 0-9 and -, starting with a letter)"
            )
        for what, name in (
            ("cluster.namespace", config.cluster.namespace),
            ("cluster.serviceAccount", config.cluster.service_account),
        ):
            if not _K8S_NAME.fullmatch(name):
                raise ValuesError(f"{what} {name!r} is not a Kubernetes name")
        return cls(
            project=config.project,
            prefix=config.name,
            specs=tuple(specs),
            replication=section.replication,
            locations=locations if section.replication == "user-managed" else (),
            rotation_days=section.rotation_days,
            rotation_topic=_topic(section.rotation_topic, config.project),
            account_id=config.service_account,
            namespace=config.cluster.namespace,
            kubernetes_account=config.cluster.service_account,
            values=read_values(values, specs),
        )


def _topic(topic: str | None, project: str) -> str | None:
    if topic is None:
        return None
    full = topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"
    parts = full.split("/")
    if len(parts) != 4 or parts[2] != "topics" or not parts[1] or not _TOPIC_ID.fullmatch(parts[3]):
        raise ValuesError(f"secrets.rotationTopic {topic!r} is not a Pub/Sub topic (TOPIC or projects/P/topics/T)")
    return full


def read_values(pairs: Sequence[str], specs: Sequence[SecretSpec]) -> dict[str, Value]:
    """``--value KEY=FILE`` options, read: KEY must be a configured key, once; the file readable, not empty, at most
    64 KiB. An environment-variable secret loses its trailing line break (see the module's decisions)."""
    configured = {spec.key: spec for spec in specs}
    found: dict[str, Value] = {}
    for pair in pairs:
        key, sep, file = pair.partition("=")
        if not sep or not key or not file:
            raise ValuesError(f"--value takes KEY=FILE, not {pair!r}")
        if key not in configured:
            known = "; known: " + ", ".join(s.key for s in SERVER_SECRETS) if key not in _known_keys() else ""
            raise ValuesError(
                f"--value {key}: not one of this deployment's secrets.keys ({', '.join(configured) or 'none'}){known}"
            )
        if key in found:
            raise ValuesError(f"--value {key} is given twice")
        path = Path(file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValuesError(f"--value {key}: cannot read {path}: {exc.strerror or exc}") from exc
        if not configured[key].as_file:
            data = data.rstrip(b"\r\n")
        if not data:
            raise ValuesError(f"--value {key}: {path} is empty")
        if len(data) > MAX_VALUE_BYTES:
            raise ValuesError(f"--value {key}: {path} holds {len(data)} bytes; a secret version holds at most 64 KiB")
        found[key] = Value(key, path, data)
    return found


def _known_keys() -> set[str]:
    return {spec.key for spec in SERVER_SECRETS}


def _labels(spec: SecretSpec) -> dict[str, str]:
    return {MANAGED_BY: OWNER, KEY_LABEL: spec.key}


def _days(period: timedelta | None) -> str | None:
    if period is None:
        return None
    days, rest = divmod(int(period.total_seconds()), 86_400)
    return f"{days} days" if not rest else f"{int(period.total_seconds())}s"


def _desired_secret(settings: Settings, spec: SecretSpec, now: datetime) -> Any:
    """The secret as created: replication, labels and, with a topic, the rotation schedule."""
    if settings.replication == "automatic":
        replication = secretmanager_v1.Replication(automatic=secretmanager_v1.Replication.Automatic())
    else:
        replicas = [secretmanager_v1.Replication.UserManaged.Replica(location=loc) for loc in settings.locations]
        replication = secretmanager_v1.Replication(
            user_managed=secretmanager_v1.Replication.UserManaged(replicas=replicas)
        )
    secret = secretmanager_v1.Secret(replication=replication, labels=_labels(spec))
    if settings.rotation_topic is not None:
        secret.topics = [secretmanager_v1.Topic(name=settings.rotation_topic)]
        secret.rotation = _rotation(settings, now)
        secret.annotations = {PERIOD_ANNOTATION: _seconds(settings.rotation_period)}
    return secret


def _rotation(settings: Settings, now: datetime) -> Any:
    return secretmanager_v1.Rotation(
        rotation_period=settings.rotation_period, next_rotation_time=now + settings.rotation_period
    )


def _seconds(period: timedelta) -> str:
    return f"{int(period.total_seconds())}s"


def _replication_view(secret: Any) -> str:
    if "user_managed" in secret.replication:
        return "user-managed: " + ", ".join(sorted(r.location for r in secret.replication.user_managed.replicas))
    return "automatic"


def _wanted_replication(settings: Settings) -> str:
    return (
        "automatic" if settings.replication == "automatic" else "user-managed: " + ", ".join(sorted(settings.locations))
    )


def _secret_note(settings: Settings) -> str:
    replication = (
        "automatic replication"
        if settings.replication == "automatic"
        else "replicas in " + ", ".join(settings.locations)
    )
    if settings.rotation_topic is None:
        return f"{replication}; no rotation (Secret Manager rotates only by notifying a topic: secrets.rotationTopic)"
    return f"{replication}; rotation notice every {_days(settings.rotation_period)} to {settings.rotation_topic}"


def _actual_period(secret: Any) -> timedelta | None:
    """The rotation period: from the API when it gives it back (it is documented input-only), else from our
    annotation; None without a schedule."""
    if "rotation" not in secret or secret.rotation.next_rotation_time is None:
        return None
    given: timedelta = secret.rotation.rotation_period
    if given:
        return given
    recorded = secret.annotations.get(PERIOD_ANNOTATION, "")
    return timedelta(seconds=int(recorded[:-1])) if re.fullmatch(r"[0-9]+s", recorded) else None


def _secret_differences(settings: Settings, spec: SecretSpec, actual: Any) -> tuple[list[Any], list[str]]:
    """The differences of an existing secret (path, actual, desired) and the update mask that fixes them."""
    found = differences({"labels": _labels(spec)}, {"labels": dict(actual.labels)})
    mask = ["labels"] if found else []
    if _replication_view(actual) != _wanted_replication(settings):
        found.append(("replication", _replication_view(actual), _wanted_replication(settings)))
    topic = settings.rotation_topic
    if topic is not None:
        topics = [t.name for t in actual.topics]
        if topic not in topics:
            found.append(("topics", topics or None, [*topics, topic]))
            mask.append("topics")
        period = _actual_period(actual)
        if period != settings.rotation_period:
            found.append(("rotation.rotation_period", _days(period), _days(settings.rotation_period)))
            mask += ["rotation", "annotations"]
    return found, mask


# -- the API -----------------------------------------------------------------------------------------------------


@dataclass
class Clients:
    """The Secret Manager and IAM clients; :meth:`connect` makes them (``endpoint``: one endpoint serving both
    APIs), tests may pass their own."""

    secrets: secretmanager_v1.SecretManagerServiceClient
    iam: iam_admin_v1.IAMClient
    _connection: Connected | None = None

    @classmethod
    def connect(cls, endpoint: str | None = None, *, insecure: bool = False) -> Clients:
        """See :func:`deployer.gcp.grpc_clients.connect`."""
        connected = connect(
            [
                (secretmanager_v1.SecretManagerServiceClient, SecretManagerServiceGrpcTransport),
                (iam_admin_v1.IAMClient, IAMGrpcTransport),
            ],
            endpoint,
            insecure=insecure,
            error=SecretsError,
        )
        return cls(connected.clients[0], connected.clients[1], _connection=connected)

    def close(self) -> None:
        (self._connection or Connected((self.secrets, self.iam))).close()


_NEEDS = {
    KIND_ACCOUNT: "roles/iam.serviceAccountAdmin",
    KIND_SECRET: "roles/secretmanager.admin",
    KIND_VERSION: "roles/secretmanager.admin",
    KIND_ACCESS: "roles/secretmanager.admin",
    KIND_WORKLOAD: "roles/iam.serviceAccountAdmin",
}


_NO_POOL = (
    "Workload Identity is not enabled on any GKE cluster of this project yet (its pool PROJECT.svc.id.goog "
    "comes with the first): `python -m deployer cluster apply` first"
)


def _call(what: str, kind: str, call: Callable[[], T]) -> T:
    """``call()``, its refusal as :class:`SecretsError` saying ``what`` failed (and the role it takes)."""
    try:
        return call()
    except api.PermissionDenied as exc:
        raise SecretsError(
            f"{what}: permission denied ({exc.message}); the caller needs {_NEEDS[kind]} on the project"
        ) from exc
    except api.GoogleAPICallError as exc:
        message = exc.message or str(exc)
        if "Identity Pool does not exist" in message:
            message += f"; {_NO_POOL}"
        raise SecretsError(f"{what}: {message}") from exc
    except (api.GoogleAPIError, GoogleAuthError) as exc:
        raise SecretsError(f"{what}: {exc}") from exc


def _maybe(what: str, kind: str, call: Callable[[], T]) -> T | None:
    """``call()``, or None when the object does not exist."""

    def found() -> T | None:
        try:
            return call()
        except api.NotFound:
            return None

    return _call(what, kind, found)


# -- the plan ----------------------------------------------------------------------------------------------------


def _account_step(clients: Clients, settings: Settings) -> tuple[Step, bool]:
    """The service account's step, and whether it exists now."""
    account = _call(
        f"cannot read service account {settings.account_name}",
        KIND_ACCOUNT,
        lambda: read_account(clients.iam, settings.account_name),
    )
    if account is not None:
        note = "disabled: the app cannot authenticate as it until it is enabled" if account.disabled else ""
        return Step(Change(NO_CHANGE, KIND_ACCOUNT, settings.email, note=note)), True

    def create() -> str:
        made = _call(
            f"cannot create service account {settings.email}",
            KIND_ACCOUNT,
            lambda: create_account(
                clients.iam,
                settings.project,
                settings.account_id,
                display_name="erlmcp server",
                description="erlmcp reads its secrets as this account (python -m deployer secrets)",
            ),
        )
        return f"created service account {made.email or settings.email}"

    return Step(Change(CREATE, KIND_ACCOUNT, settings.email, note="display name 'erlmcp server'"), create), False


def _secret_step(clients: Clients, settings: Settings, spec: SecretSpec, actual: Any | None, now: datetime) -> Step:
    name = settings.secret_name(spec)
    desired = _desired_secret(settings, spec, now)
    if actual is None:

        def create() -> str:
            _call(
                f"cannot create secret {name}",
                KIND_SECRET,
                lambda: clients.secrets.create_secret(
                    parent=f"projects/{settings.project}", secret_id=spec.secret_id(settings.prefix), secret=desired
                ),
            )
            return f"created secret {name}"

        return Step(Change(CREATE, KIND_SECRET, name, note=_secret_note(settings)), create)
    found, mask = _secret_differences(settings, spec, actual)
    if not found:
        return Step(Change(NO_CHANGE, KIND_SECRET, name))
    refused = None
    note = ", ".join(dict.fromkeys(path.split(".")[0] for path, _, _ in found))
    if any(path == "replication" for path, _, _ in found):
        refused = (
            f"the replication of secret {name} cannot change (the API does not allow it; recreating the "
            "secret would destroy its versions): change secrets.replication/locations back, or delete the "
            "secret yourself and apply again"
        )
        note += " (replication cannot change: apply refuses)"

    def update() -> str:
        patch = secretmanager_v1.Secret(
            name=name,
            etag=actual.etag,
            labels={**actual.labels, **_labels(spec)},
            topics=[*actual.topics, *(t for t in desired.topics if t.name not in {a.name for a in actual.topics})],
            annotations={**actual.annotations, **desired.annotations},
        )
        if "rotation" in mask:
            patch.rotation = _rotation(settings, datetime.now(UTC))
        _call(
            f"cannot update secret {name}",
            KIND_SECRET,
            lambda: clients.secrets.update_secret(secret=patch, update_mask={"paths": sorted(set(mask))}),
        )
        return f"updated secret {name}: {note}"

    return Step(Change(UPDATE, KIND_SECRET, name, found, note=note), update, refused)


def _latest_digest(clients: Clients, name: str) -> tuple[bytes | None, str]:
    """SHA-256 of the latest version's data (None: no usable latest version, and why). The data is dropped here."""

    def access() -> bytes | None:
        try:
            response = clients.secrets.access_secret_version(name=f"{name}/versions/latest")
        except api.NotFound:
            return None
        except api.FailedPrecondition:  # the latest version is disabled or destroyed
            return b""
        return hashlib.sha256(response.payload.data).digest()

    digest = _call(f"cannot access the latest version of secret {name}", KIND_VERSION, access)
    if digest == b"":
        return None, "the latest version is disabled or destroyed"
    return digest, "" if digest is not None else "no version yet"


def _version_step(clients: Clients, settings: Settings, spec: SecretSpec, exists: bool) -> Step:
    name = settings.secret_name(spec)
    value = settings.values.get(spec.key)
    if value is None:
        note = (
            "no --value given: the secret has no version, and the server cannot read it, until one is added"
            if not exists
            else "no --value given: versions left as they are"
        )
        return Step(Change(NO_CHANGE, KIND_VERSION, name, note=note))
    if exists:
        digest, why = _latest_digest(clients, name)
        if digest is not None and hmac.compare_digest(digest, value.digest):
            return Step(Change(NO_CHANGE, KIND_VERSION, name, note=f"the latest version is {value.path}'s content"))
    note = f"new version {value.source}" + (f"; {why}" if exists and why else "")

    def add() -> str:
        made = _call(
            f"cannot add a version to secret {name}",
            KIND_VERSION,
            lambda: clients.secrets.add_secret_version(
                parent=name, payload=secretmanager_v1.SecretPayload(data=value.data)
            ),
        )
        return f"added {made.name or 'a version'} {value.source}"

    return Step(Change(CREATE, KIND_VERSION, name, note=note), add)


def plan(clients: Clients, settings: Settings) -> list[Step]:
    """Reads the state (no writes) and returns the steps, in the order apply takes them."""
    now = datetime.now(UTC)
    account_step, account_exists = _account_step(clients, settings)
    fresh = not account_exists
    steps = [account_step]
    for spec in settings.specs:
        name = settings.secret_name(spec)
        actual = _maybe(f"cannot read secret {name}", KIND_SECRET, partial(clients.secrets.get_secret, name=name))
        steps.append(_secret_step(clients, settings, spec, actual, now))
        steps.append(_version_step(clients, settings, spec, actual is not None))
        policy = Policy(
            name,
            lambda r: clients.secrets.get_iam_policy(request=r),
            lambda r: clients.secrets.set_iam_policy(request=r),
        )
        existing = (
            None if actual is None else _call(f"cannot read the IAM policy of secret {name}", KIND_ACCESS, policy.read)
        )
        steps.append(
            grant_step(
                KIND_ACCESS,
                name,
                policy,
                ACCESSOR,
                settings.accessor_member,
                existing,
                new=actual is None,
                fresh=fresh,
                call=_call,
                note=f"{ACCESSOR} for {settings.accessor_member}",
            )
        )
    policy = Policy(
        settings.account_name,
        lambda r: clients.iam.get_iam_policy(request=r),
        lambda r: clients.iam.set_iam_policy(request=r),
    )
    existing = None
    if account_exists:
        existing = _call(f"cannot read the IAM policy of service account {settings.email}", KIND_WORKLOAD, policy.read)
    steps.append(
        grant_step(
            KIND_WORKLOAD,
            settings.email,
            policy,
            WORKLOAD_IDENTITY_USER,
            settings.workload_member,
            existing,
            new=not account_exists,
            fresh=fresh,
            call=_call,
            note=f"{WORKLOAD_IDENTITY_USER} for {settings.workload_member}",
        )
    )
    return steps


def converge(clients: Clients, settings: Settings, *, apply: bool, log: Log = lambda _: None) -> list[Change]:
    """The plan (``apply`` False: nothing is written) or its application; returns the changes, in order.

    Raises:
        SecretsError: a call was refused, or apply cannot make a change (then before writing anything).
    """
    steps = plan(clients, settings)
    if apply:
        refused = refusals(steps)
        if refused:
            raise SecretsError("nothing applied: " + "; ".join(refused))
        apply_steps(steps, log=log)
    return changes(steps)


# -- the command -------------------------------------------------------------------------------------------------


def workload_identity(settings: Settings) -> dict[str, Any]:
    """What the Kubernetes side needs, and how the chart provides it (see chart/values.yaml
    ``serviceAccount.gcpServiceAccount``: the chart annotates the service account it creates)."""
    return {
        "kubernetesServiceAccount": f"{settings.namespace}/{settings.kubernetes_account}",
        "annotation": {ANNOTATION: settings.email},
        "chart": f"set by the chart on the service account it creates: --set serviceAccount.gcpServiceAccount="
        f"{settings.email}",
        "existingServiceAccount": f"kubectl annotate serviceaccount --namespace {settings.namespace} "
        f"{settings.kubernetes_account} {ANNOTATION}={settings.email}",
    }


def rendered(settings: Settings, now: datetime) -> dict[str, Any]:
    """Everything apply would make, offline, in its order: the service account, each secret as created (its
    version's content is never shown: only the file it would come from), each secret's accessor binding, and the
    Workload Identity binding with what the Kubernetes side needs."""
    secrets = []
    for spec in settings.specs:
        secret = rest_fields(_desired_secret(settings, spec, now))
        value = settings.values.get(spec.key)
        secrets.append(
            {
                "name": settings.secret_name(spec),
                "secret": secret,
                "version": f"(from {value.path})" if value is not None else "(none: give --value KEY=FILE)",
                "accessor": {"role": ACCESSOR, "member": settings.accessor_member},
            }
        )
    return {
        "project": settings.project,
        "serviceAccount": {"name": settings.account_name, "email": settings.email},
        "secrets": secrets,
        "workloadIdentityBinding": {
            "resource": settings.account_name,
            "role": WORKLOAD_IDENTITY_USER,
            "member": settings.workload_member,
        },
        "workloadIdentity": workload_identity(settings),
    }


def _print_workload_identity(settings: Settings, out: TextIO) -> None:
    wanted = workload_identity(settings)
    print(
        f"Workload Identity: the Kubernetes service account {wanted['kubernetesServiceAccount']} needs the "
        f"annotation\n  {ANNOTATION}: {settings.email}",
        file=out,
    )
    print(
        f"  The chart sets it on the service account it creates: --set serviceAccount.gcpServiceAccount="
        f"{settings.email}",
        file=out,
    )
    print(
        f"  An existing service account (serviceAccount.name, as Marketplace passes) needs: "
        f"{wanted['existingServiceAccount']}",
        file=out,
    )


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``secrets plan|apply|render`` (render: offline): 0 when done; :class:`ValuesError` for bad input (before
    any call), :class:`SecretsError` when an API refuses."""
    config = config_from(args)
    settings = Settings.from_config(config, getattr(args, "value", None) or ())
    out = out or sys.stdout
    if args.action == "render":  # offline: no credentials, no call
        emit_desired(rendered(settings, datetime.now(UTC)), out=out, as_json=args.json)
        return 0
    mode = run_mode(args.action, args.dry_run)
    clients = Clients.connect(args.endpoint, insecure=args.insecure)
    try:
        changes = converge(clients, settings, apply=mode == "apply", log=log)
    finally:
        clients.close()
    title = f"Secret Manager (project {settings.project})"
    if args.json:
        buffer = io.StringIO()
        render(title, changes, mode=mode, out=buffer, as_json=True)
        document = {
            **json.loads(buffer.getvalue()),
            "project": settings.project,
            "workloadIdentity": workload_identity(settings),
        }
        out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        render(title, changes, mode=mode, out=out)
        _print_workload_identity(settings, out)
    return 0
