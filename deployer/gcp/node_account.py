"""The GKE nodes' own Google service account and its roles on the project: the first part of ``cluster
plan|apply|render`` (:mod:`deployer.gcp.gke`), made before the cluster, which refuses a node account that does not
exist.

The nodes run as ``cluster.nodeServiceAccount`` (default ``erlmcp-gke-nodes@PROJECT.iam.gserviceaccount.com``),
never as the Compute Engine default account (Editor on the project) nor as the app's (which reads secrets). With
Workload Identity only the node's own agents act as it (logging, metrics, resource metadata, image pulls), so it
holds :data:`NODE_ROLES` on the project and nothing else.

``plan`` reads the account and the project's IAM policy; each is a plan line:

* the **service account**: CREATE when missing; an existing one is never changed (it may be shared), and a disabled
  one is said to be (nodes cannot run as it until it is enabled);
* one **project role binding** per role of :data:`NODE_ROLES`: CREATE while the account is new, UPDATE when an
  existing policy lacks it (someone removed it: drift, granted again by apply), NO CHANGE when held. Grants are
  additive (:mod:`deployer.gcp.iam`): roles the account holds beyond these are left as they are, and so is every
  other member of the policy.

The caller needs ``roles/iam.serviceAccountAdmin`` (the account) and ``roles/resourcemanager.projectIamAdmin`` (the
grants); ``plan`` needs only to read both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as api
from google.auth.exceptions import GoogleAuthError
from google.cloud import iam_admin_v1, resourcemanager_v3

from deployer.errors import CloudError
from deployer.gcp.changes import CREATE, NO_CHANGE, Change
from deployer.gcp.config import GcpConfig
from deployer.gcp.converge import Step, grant_step
from deployer.gcp.iam import Policy, create_account, read_account

__all__ = ["KIND_ACCOUNT", "KIND_ROLE", "NODE_ROLES", "email", "plan", "rendered"]

NODE_ROLES = (
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
)
KIND_ACCOUNT, KIND_ROLE = "node service account", "project role binding"
DISPLAY_NAME = "erlmcp GKE nodes"
DESCRIPTION = "The erlmcp cluster's nodes run as this account (python -m deployer cluster): logs, metrics, pulls"
_NEEDS = {KIND_ACCOUNT: "roles/iam.serviceAccountAdmin", KIND_ROLE: "roles/resourcemanager.projectIamAdmin"}
T = TypeVar("T")


def email(config: GcpConfig) -> str:
    """The nodes' service account."""
    return f"{config.cluster.node_service_account}@{config.project}.iam.gserviceaccount.com"


def _member(config: GcpConfig) -> str:
    return f"serviceAccount:{email(config)}"


def rendered(config: GcpConfig) -> dict[str, Any]:
    """What apply makes in an empty project, as the REST APIs write it: the account and its project roles."""
    return {
        "serviceAccount": {
            "name": f"projects/{config.project}",
            "accountId": config.cluster.node_service_account,
            "serviceAccount": {"displayName": DISPLAY_NAME, "description": DESCRIPTION},
        },
        "projectRoles": {
            "resource": f"projects/{config.project}",
            "bindings": [{"role": role, "members": [_member(config)]} for role in NODE_ROLES],
        },
    }


def _call(what: str, kind: str, call: Callable[[], T]) -> T:
    """``call()``, its refusal as :class:`CloudError` saying ``what`` failed (and the role it takes)."""
    try:
        return call()
    except api.PermissionDenied as exc:
        raise CloudError(f"{what}: permission denied ({exc.message}); the caller needs {_NEEDS[kind]}") from exc
    except api.GoogleAPICallError as exc:
        raise CloudError(f"{what}: {exc.message or exc}") from exc
    except (api.GoogleAPIError, GoogleAuthError) as exc:
        raise CloudError(f"{what}: {exc}") from exc


def plan(iam: iam_admin_v1.IAMClient, projects: resourcemanager_v3.ProjectsClient, config: GcpConfig) -> list[Step]:
    """What apply would do for the nodes' account and roles (:func:`deployer.gcp.converge.apply` does it): reads
    both, writes nothing."""
    found: list[Step] = []
    address = email(config)
    name = f"projects/{config.project}/serviceAccounts/{address}"
    account = _call(f"cannot read service account {address}", KIND_ACCOUNT, lambda: read_account(iam, name))
    if account is None:

        def create() -> str:
            account_id = config.cluster.node_service_account
            what = f"cannot create service account {address}"
            _call(
                what,
                KIND_ACCOUNT,
                lambda: create_account(
                    iam, config.project, account_id, display_name=DISPLAY_NAME, description=DESCRIPTION
                ),
            )
            return f"created service account {address}"

        found.append(Step(Change(CREATE, KIND_ACCOUNT, address, note="the nodes run as it"), create))
    else:
        note = "disabled: nodes cannot run as it until it is enabled" if account.disabled else ""
        found.append(Step(Change(NO_CHANGE, KIND_ACCOUNT, address, note=note)))
    resource = f"projects/{config.project}"
    policy = Policy(resource, projects.get_iam_policy, projects.set_iam_policy)
    existing = _call(f"cannot read the IAM policy of {resource}", KIND_ROLE, policy.read)
    member, fresh = _member(config), account is None
    for role in NODE_ROLES:
        shown = f"{resource} {role}"
        found.append(
            grant_step(
                KIND_ROLE, shown, policy, role, member, existing, new=fresh, fresh=fresh, call=_call, note=member
            )
        )
    return found
