"""The rendered chart made ready to apply, by the rules of Google's deployer: Helm hooks, labels, the one
Application, ownerReferences by ``componentKinds``, and the tester Pods set apart."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from deployer.errors import InstallError
from deployer.marketplace.cluster import is_cluster_scoped
from deployer.marketplace.manifests import Manifest
from deployer.marketplace.schema import Schema

__all__ = [
    "APPLICATION_API_GROUP",
    "NAME_LABEL",
    "VERIFICATION_ANNOTATION",
    "Prepared",
    "component_kinds",
    "hook_of",
    "owner_reference",
    "prepare",
    "with_owner",
]

APPLICATION_API_GROUP = "app.k8s.io"
NAME_LABEL = "app.kubernetes.io/name"
VERIFICATION_ANNOTATION = "marketplace.cloud.google.com/verification"
DEPLOY_INFO = "marketplace.cloud.google.com/deploy-info"
_HOOK = "helm.sh/hook"
_TEST_HOOKS = {"test", "test-success"}
_FAILURE_HOOK = "test-failure"  # dropped in production; a test run cannot honour it
_NEVER_OWNED = {"Application", "PersistentVolumeClaim"}


@dataclass(frozen=True, slots=True)
class Prepared:
    """The objects to apply: the Application, the rest of the app, and the tester Pods (test mode only)."""

    application: Manifest
    components: list[Manifest]
    testers: list[Manifest]

    @property
    def kinds(self) -> list[str]:
        """The kinds the Application lists as its components."""
        return [kind for _, kind in component_kinds(self.application)]


def component_kinds(application: Manifest) -> list[tuple[str, str]]:
    """``(group, kind)`` of every entry in the Application's ``spec.componentKinds``."""
    kinds = (application.get("spec") or {}).get("componentKinds") or []
    return [(str(entry.get("group", "")), str(entry["kind"])) for entry in kinds if isinstance(entry, dict)]


def owner_reference(application: Manifest, uid: str) -> dict[str, Any]:
    """The ownerReference that ties an object to the Application (deleting the Application deletes it)."""
    return {
        "apiVersion": application["apiVersion"],
        "kind": "Application",
        "name": application["metadata"]["name"],
        "uid": uid,
        "blockOwnerDeletion": True,
    }


def with_owner(manifest: Manifest, reference: dict[str, Any]) -> Manifest:
    """A copy of ``manifest`` owned by ``reference`` (other owners kept, this one not repeated)."""
    owned = copy.deepcopy(manifest)
    metadata = owned.setdefault("metadata", {})
    others = [ref for ref in metadata.get("ownerReferences") or [] if ref.get("uid") != reference["uid"]]
    metadata["ownerReferences"] = [*others, reference]
    return owned


def hook_of(manifest: Manifest) -> str | None:
    """The Helm hook an object carries (``helm.sh/hook``), if any."""
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    hook = annotations.get(_HOOK)
    return str(hook) if hook is not None else None


def _split_hooks(manifests: Sequence[Manifest], *, test: bool) -> tuple[list[Manifest], list[Manifest]]:
    """Objects without a hook are the app; test hooks are testers (kept in test mode, dropped otherwise).

    Raises:
        InstallError: a hook other than a test hook (Marketplace runs no pre-/post-install steps).
    """
    app: list[Manifest] = []
    testers: list[Manifest] = []
    for manifest in manifests:
        hook = hook_of(manifest)
        if hook is None:
            app.append(manifest)
        elif hook == _FAILURE_HOOK and not test:
            continue
        elif hook in _TEST_HOOKS:
            if test:
                tester = copy.deepcopy(manifest)
                annotations = tester["metadata"]["annotations"]
                del annotations[_HOOK]
                annotations[VERIFICATION_ANNOTATION] = "test"
                testers.append(tester)
        else:
            name = manifest.get("metadata", {}).get("name")
            raise InstallError(
                f"Helm hook {hook!r} on {manifest['kind']} {name} is not supported: Marketplace "
                "installs run no hooks except test"
            )
    # Objects the chart marks as verification-only are testers too, whatever their hook.
    for manifest in list(app):
        annotations = (manifest.get("metadata") or {}).get("annotations") or {}
        if annotations.get(VERIFICATION_ANNOTATION) == "test":
            app.remove(manifest)
            if test:
                testers.append(manifest)
    return app, testers


def _check_application(applications: Sequence[Manifest], schema: Schema) -> Manifest:
    if len(applications) != 1:
        raise InstallError(
            f"the chart must render exactly one Application ({APPLICATION_API_GROUP}), not {len(applications)}"
        )
    application = applications[0]
    metadata = application.get("metadata") or {}
    raw = (metadata.get("annotations") or {}).get(DEPLOY_INFO)
    try:
        info = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or not info.get("partner_id") or not info.get("product_id"):
        raise InstallError(f"the Application needs the annotation {DEPLOY_INFO}: JSON with partner_id and product_id")
    if schema.partner_id is not None and (info["partner_id"], info["product_id"]) != (
        schema.partner_id,
        schema.solution_id,
    ):
        raise InstallError(
            f"the Application's deploy-info ({info['partner_id']}/{info['product_id']}) does not match the schema's "
            f"partnerId/solutionId ({schema.partner_id}/{schema.solution_id})"
        )
    version = ((application.get("spec") or {}).get("descriptor") or {}).get("version")
    if version != schema.published_version:
        raise InstallError(
            f"the Application's spec.descriptor.version {version!r} must equal the schema's "
            f"publishedVersion {schema.published_version!r}"
        )
    if not component_kinds(application):
        raise InstallError("the Application lists no componentKinds, so nothing would be owned or checked")
    return application


def prepare(manifests: Sequence[Manifest], *, release: str, schema: Schema, test: bool = False) -> Prepared:
    """Split, label and check the rendered chart (ownerReferences are added once the Application's UID is known).

    Raises:
        InstallError: an unsupported hook, not exactly one Application, a wrong deploy-info or version, or a
            rendered kind the Application does not list (it would never be cleaned up).
    """
    app, testers = _split_hooks(manifests, test=test)
    labelled: list[Manifest] = []
    for manifest in app:
        copy_ = copy.deepcopy(manifest)
        labels = copy_.setdefault("metadata", {}).setdefault("labels", {}) or {}
        labels.setdefault(NAME_LABEL, release)
        copy_["metadata"]["labels"] = labels
        labelled.append(copy_)
    applications = [m for m in labelled if m["kind"] == "Application" and m["apiVersion"].startswith("app.k8s.io/")]
    application = _check_application(applications, schema)
    listed = {kind for _, kind in component_kinds(application)}
    components = [m for m in labelled if m is not application]
    strays = sorted({m["kind"] for m in components if m["kind"] not in listed and not is_cluster_scoped(m["kind"])})
    if strays:
        raise InstallError(
            f"the chart renders {', '.join(strays)} but the Application's componentKinds does not "
            "list it: it would be neither owned nor deleted with the app"
        )
    return Prepared(application, components, testers)


def owned(prepared: Prepared, uid: str) -> tuple[list[Manifest], list[Manifest]]:
    """The components and testers with their ownerReference to the Application of ``uid`` (cluster-scoped kinds,
    PersistentVolumeClaims and Applications stay unowned, as Google's deployer leaves them)."""
    reference = owner_reference(prepared.application, uid)

    def own(manifest: Manifest) -> Manifest:
        kind = manifest["kind"]
        if kind in _NEVER_OWNED or is_cluster_scoped(kind):
            return manifest
        return with_owner(manifest, reference)

    return [own(m) for m in prepared.components], [with_owner(m, reference) for m in prepared.testers]
