"""IAM policy writes as every platform command makes them: additive, optimistic, patient with new accounts.

* **Additive**: read the policy (version 3), add the member to the role's unconditional binding, write it back;
  other members, roles and conditional bindings stay as they were.
* **Optimistic**: the write carries the etag read; a concurrent change (``ABORTED``: stale etag) is re-read and
  retried, :data:`ETAG_ATTEMPTS` times in all (:func:`deployer.gcp.conflicts.again_on_conflict`).
* **Patient**: right after a service account is created, IAM may refuse policies naming it for a while
  (``INVALID_ARGUMENT``/``NOT_FOUND``); such writes are retried for about a minute (:data:`PROPAGATION_DELAYS`).

:class:`Policy` works on any resource whose API has ``GetIamPolicy``/``SetIamPolicy`` (a secret, a service
account, a project): it is given the two calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.cloud import iam_admin_v1
from google.iam.v1 import iam_policy_pb2, options_pb2, policy_pb2  # type: ignore[import-untyped]

from deployer.gcp.conflicts import again_on_conflict

__all__ = [
    "ETAG_ATTEMPTS",
    "PROPAGATION_DELAYS",
    "Policy",
    "create_account",
    "granted",
    "holds",
    "patiently",
    "read_account",
]

ETAG_ATTEMPTS = 3
PROPAGATION_DELAYS: tuple[float, ...] = (1, 2, 4, 8, 15, 30)
"""Seconds to wait before retrying a policy write that names a service account created moments ago."""

T = TypeVar("T")


def patiently(call: Callable[[], T], *, fresh: bool) -> T:
    """``call()``, retried while IAM does not know a service account created moments ago (``fresh``). A missing
    Workload Identity pool is not waited for: it comes only with a cluster."""
    for delay in (*(PROPAGATION_DELAYS if fresh else ()), None):
        try:
            return call()
        except (api.InvalidArgument, api.NotFound) as exc:
            if delay is None or "Identity Pool" in (exc.message or ""):
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def holds(policy: Any, role: str, member: str) -> bool:
    """Whether ``member`` has ``role`` in ``policy`` without a condition."""
    return any(b.role == role and member in b.members and not b.HasField("condition") for b in policy.bindings)


def granted(policy: Any, role: str, member: str) -> Any:
    """A copy of ``policy`` with ``member`` in ``role``'s unconditional binding; everything else as it was."""
    updated = policy_pb2.Policy()
    updated.CopyFrom(policy)
    for binding in updated.bindings:
        if binding.role == role and not binding.HasField("condition"):
            binding.members.append(member)
            return updated
    updated.bindings.add(role=role, members=[member])
    return updated


@dataclass(frozen=True)
class Policy:
    """The IAM policy calls of one resource (``get`` and ``set`` take the request messages)."""

    resource: str
    get: Callable[[Any], Any]
    set: Callable[[Any], Any]

    def read(self) -> Any:
        options = options_pb2.GetPolicyOptions(requested_policy_version=3)
        return self.get(iam_policy_pb2.GetIamPolicyRequest(resource=self.resource, options=options))

    def grant(self, role: str, member: str) -> bool:
        """Adds ``member`` to ``role`` with the etag read (re-read on a concurrent change); False if it was there."""

        def attempt() -> bool:
            policy = self.read()
            if holds(policy, role, member):
                return False
            self.set(iam_policy_pb2.SetIamPolicyRequest(resource=self.resource, policy=granted(policy, role, member)))
            return True

        return again_on_conflict(attempt, conflict=api.Aborted, attempts=ETAG_ATTEMPTS)


def read_account(iam: iam_admin_v1.IAMClient, name: str) -> Any | None:
    """The service account ``name`` (``projects/P/serviceAccounts/EMAIL``), or None when there is none."""
    try:
        return iam.get_service_account(name=name)
    except api.NotFound:
        return None


def create_account(
    iam: iam_admin_v1.IAMClient, project: str, account_id: str, *, display_name: str, description: str
) -> Any:
    """Create the service account ``account_id`` in ``project``; the account made."""
    request = iam_admin_v1.CreateServiceAccountRequest(
        name=f"projects/{project}",
        account_id=account_id,
        service_account=iam_admin_v1.ServiceAccount(display_name=display_name, description=description),
    )
    return iam.create_service_account(request=request)
