"""A local server of Google's IAM admin API (``google.iam.admin.v1.IAM``: service accounts and their policies)
and of the Resource Manager Projects API's IAM policy (``google.cloud.resourcemanager.v3.Projects``
``GetIamPolicy``/``SetIamPolicy``), for one project, in memory, checking what the real services check on what we
send: account ID format, duplicate accounts, unknown accounts (404), stale etags (ABORTED), conditional bindings
below policy version 3, members naming service accounts that do not exist (or not yet: ``lagging``), a missing
Workload Identity pool.

What it leaves out: IAM's own permission checks (any caller may do anything unless ``refuse`` says otherwise),
role names (any role is accepted), deny policies and organisation constraints, keys, disabling, deletion, and the
many other methods of both services. Subclasses add the services of a platform (Secret Manager, GKE) and their
own resources' policies.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.cloud import iam_admin_v1
from google.iam.v1 import iam_policy_pb2, policy_pb2  # type: ignore[import-untyped]

from tests.gcp import Refused, unary

__all__ = ["FakeIam", "Pb"]


class Pb:
    """A plain protobuf message class (the IAM policy messages) as :func:`tests.gcp.unary` takes it."""

    def __init__(self, message_type: Any) -> None:
        self.deserialize = message_type.FromString
        self.serialize = message_type.SerializeToString


@dataclass
class FakeIam:
    """One project's service accounts, their IAM policies and the project's IAM policy (see the module)."""

    project: str = "demo-project"
    accounts: dict[str, Any] = field(default_factory=dict)  # email -> ServiceAccount
    account_policies: dict[str, Any] = field(default_factory=dict)  # email -> Policy
    project_policy: dict[str, Any] = field(default_factory=dict)  # "project" -> Policy (absent: none set yet)
    calls: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    refuse: dict[str, Refused] = field(default_factory=dict)  # method -> the error of its next call
    before: dict[str, Callable[[], None]] = field(default_factory=dict)  # method -> run once before its next call
    workload_pool: bool = True  # a cluster with Workload Identity exists: PROJECT.svc.id.goog
    lagging: int = 0  # the next policy writes that fail as if a new service account were not known yet
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(100000000000000000001))

    def handler(self, method: Callable[[Any], Any]) -> Any:
        name = "".join(part.title() for part in method.__name__.split("_"))

        def call(request: Any, context: Any) -> Any:
            self.calls.append(name)
            try:
                if name in self.before:
                    self.before.pop(name)()
                if name in self.refuse:
                    raise self.refuse.pop(name)
                return method(request)
            except Refused as exc:
                context.abort(exc.code, str(exc))

        return call

    def _write(self, method: str, name: str) -> None:
        self.writes.append(f"{method} {name}")

    # -- IAM policies, of any resource

    def _check_members(self, policy: Any) -> None:
        for binding in policy.bindings:
            for member in binding.members:
                if member.startswith(f"serviceAccount:{self.project}.svc.id.goog[") and not self.workload_pool:
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Identity Pool does not exist "
                                  f"({self.project}.svc.id.goog). Please check that you specified a valid resource "
                                  "name as returned in the `name` attribute in the configuration API.")  # fmt: skip
                email = member.removeprefix("serviceAccount:")
                known = email in self.accounts and not self.lagging
                if member.startswith("serviceAccount:") and email.endswith(".iam.gserviceaccount.com") and not known:
                    self.lagging = max(0, self.lagging - 1)
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Service account {email} does not exist.")

    @staticmethod
    def _policy(store: dict[str, Any], key: str) -> Any:
        found = policy_pb2.Policy(etag=b"ACAB")  # what the API answers for a resource without a policy
        if key in store:
            found.CopyFrom(store[key])
        return found

    def _set_policy(self, store: dict[str, Any], key: str, request: Any, method: str) -> Any:
        current = self._policy(store, key)
        if request.policy.etag and request.policy.etag != current.etag:
            raise Refused(grpc.StatusCode.ABORTED, "There were concurrent policy changes. Please retry the whole "
                          "read-modify-write with exponential backoff.")  # fmt: skip
        if any(b.HasField("condition") for b in request.policy.bindings) and request.policy.version < 3:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "conditional bindings need policy version 3")
        self._check_members(request.policy)
        stored = policy_pb2.Policy()
        stored.CopyFrom(request.policy)
        stored.etag = uuid.uuid4().bytes[:8]
        store[key] = stored
        self._write(method, key)
        return stored

    # -- service accounts

    def _email(self, name: str) -> str:
        match = re.fullmatch(rf"projects/(?:{self.project}|-)/serviceAccounts/([^/]+)", name)
        if match is None:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid service account name {name}")
        if match.group(1) not in self.accounts:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Unknown service account {match.group(1)}")
        return match.group(1)

    def get_service_account(self, request: Any) -> Any:
        return self.accounts[self._email(request.name)]

    def create_service_account(self, request: Any) -> Any:
        if request.name != f"projects/{self.project}":
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no project {request.name}")
        if not re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", request.account_id):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid account_id {request.account_id}")
        email = f"{request.account_id}@{self.project}.iam.gserviceaccount.com"
        if email in self.accounts:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"Service account {request.account_id} already exists")
        account = iam_admin_v1.ServiceAccount(request.service_account)
        account.name, account.email, account.project_id = (
            f"projects/{self.project}/serviceAccounts/{email}",
            email,
            self.project,
        )
        account.unique_id = str(next(self.ids))
        self.accounts[email] = account
        self._write("CreateServiceAccount", email)
        return account

    def get_account_iam_policy(self, request: Any) -> Any:
        return self._policy(self.account_policies, self._email(request.resource))

    def set_account_iam_policy(self, request: Any) -> Any:
        email = self._email(request.resource)
        return self._set_policy(self.account_policies, email, request, "SetServiceAccountIamPolicy")

    # -- the project's policy

    def _project(self, resource: str) -> str:
        if resource != f"projects/{self.project}":
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"The caller does not have permission on {resource}")
        return "project"

    def get_project_iam_policy(self, request: Any) -> Any:
        return self._policy(self.project_policy, self._project(request.resource))

    def set_project_iam_policy(self, request: Any) -> Any:
        key = self._project(request.resource)
        return self._set_policy(self.project_policy, key, request, "SetProjectIamPolicy")

    def services(self) -> dict[str, dict[str, Any]]:
        iam, h = iam_admin_v1, self.handler
        get_policy, set_policy, policy = (Pb(iam_policy_pb2.GetIamPolicyRequest),
                                          Pb(iam_policy_pb2.SetIamPolicyRequest), Pb(policy_pb2.Policy))  # fmt: skip
        return {
            "google.iam.admin.v1.IAM": {
                "GetServiceAccount": unary(h(self.get_service_account), iam.GetServiceAccountRequest,
                                           iam.ServiceAccount),
                "CreateServiceAccount": unary(h(self.create_service_account), iam.CreateServiceAccountRequest,
                                              iam.ServiceAccount),
                "GetIamPolicy": unary(h(self.get_account_iam_policy), get_policy, policy),
                "SetIamPolicy": unary(h(self.set_account_iam_policy), set_policy, policy),
            },
            "google.cloud.resourcemanager.v3.Projects": {
                "GetIamPolicy": unary(h(self.get_project_iam_policy), get_policy, policy),
                "SetIamPolicy": unary(h(self.set_project_iam_policy), set_policy, policy),
            },
        }  # fmt: skip
