"""``python -m deployer secrets`` against a local server of the real Secret Manager and IAM APIs
(``google.cloud.secretmanager.v1.SecretManagerService``, ``google.iam.admin.v1.IAM``) with in-memory state: plan,
apply, re-apply, new versions, drift, concurrent policy changes, dry runs, values never shown, refusals."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import yaml
from google.cloud import iam_admin_v1, secretmanager_v1
from google.iam.v1 import iam_policy_pb2, policy_pb2  # type: ignore[import-untyped]

from deployer.cli import main
from deployer.gcp import iam, secrets
from deployer.gcp.secrets import ACCESSOR, ANNOTATION, WORKLOAD_IDENTITY_USER, Clients
from tests.conftest import ROOT
from tests.gcp import Refused, serve, unary
from tests.iam_server import FakeIam, Pb

PROJECT, NUMBER = "demo-project", "123456789012"
EMAIL = f"erlmcp@{PROJECT}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{EMAIL}"
KSA_MEMBER = f"serviceAccount:{PROJECT}.svc.id.goog[erlmcp/erlmcp]"
ACCOUNT = f"projects/{PROJECT}/serviceAccounts/{EMAIL}"
API_KEYS = f"projects/{PROJECT}/secrets/erlmcp-api-keys"
REDIS_URL = f"projects/{PROJECT}/secrets/erlmcp-redis-url"
KEYS_VALUE = b"mcp-key-0f1e2d3c4b5a69788796a5b4c3d2e1f0\nmcp-key-second-4a4b4c4d4e4f\n"
REDIS_VALUE = b"redis://:hunter2-redis-passw0rd@10.0.0.3:6379/0"
LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
SECRET_NAME = re.compile(rf"projects/(?:{PROJECT}|{NUMBER})/secrets/([A-Za-z0-9_-]{{1,255}})")
MUTABLE = {"labels", "topics", "rotation", "annotations", "expire_time", "ttl", "version_aliases"}


@dataclass
class FakeGoogle(FakeIam):
    """One project's Secret Manager and IAM, in memory, checking what the real services check on what we send."""

    project: str = PROJECT
    secrets: dict[str, Any] = field(default_factory=dict)  # secret ID -> Secret (as stored: period included)
    versions: dict[str, list[tuple[bytes, Any]]] = field(default_factory=dict)  # secret ID -> [(data, state)]
    secret_policies: dict[str, Any] = field(default_factory=dict)  # secret ID -> Policy

    # -- secrets

    def _secret_id(self, name: str) -> str:
        match = SECRET_NAME.fullmatch(name)
        if match is None:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid secret name {name}")
        if match.group(1) not in self.secrets:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Secret [{name}] not found or has no versions.")
        return match.group(1)

    @staticmethod
    def _shown(secret: Any) -> Any:
        """As the API gives it back: rotation_period is input only."""
        shown = secretmanager_v1.Secret(secret)
        if "rotation" in secret:
            shown.rotation = secretmanager_v1.Rotation(next_rotation_time=secret.rotation.next_rotation_time)
        return shown

    @staticmethod
    def _check(secret: Any) -> None:
        for key, value in secret.labels.items():
            if not LABEL.fullmatch(key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid label {key}={value}")
        if ("automatic" in secret.replication) == ("user_managed" in secret.replication):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "replication: exactly one of automatic, user_managed")
        if "user_managed" in secret.replication and not secret.replication.user_managed.replicas:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "user_managed replication needs replicas")
        if "rotation" in secret:
            rotation = secret.rotation
            if not secret.topics:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "A topic must be provided to configure rotation")
            if rotation.rotation_period and rotation.next_rotation_time is None:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "next_rotation_time must be set with rotation_period")
            if rotation.rotation_period and rotation.rotation_period < timedelta(hours=1):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "rotation_period must be at least 3600s")
            if rotation.next_rotation_time < datetime.now(UTC) + timedelta(seconds=300):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "next_rotation_time must be at least 300s ahead")

    def get_secret(self, request: Any) -> Any:
        return self._shown(self.secrets[self._secret_id(request.name)])

    def create_secret(self, request: Any) -> Any:
        if request.parent not in (f"projects/{PROJECT}", f"projects/{NUMBER}"):
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no project {request.parent}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", request.secret_id):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid secret_id {request.secret_id}")
        if request.secret_id in self.secrets:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{request.secret_id}] already exists.")
        secret = secretmanager_v1.Secret(request.secret)
        self._check(secret)
        secret.name = f"projects/{NUMBER}/secrets/{request.secret_id}"
        secret.create_time = datetime.now(UTC)
        secret.etag = f'"{uuid.uuid4().hex[:14]}"'
        self.secrets[request.secret_id] = secret
        self.versions[request.secret_id] = []
        self._write("CreateSecret", request.secret_id)
        return self._shown(secret)

    def update_secret(self, request: Any) -> Any:
        secret_id = self._secret_id(request.secret.name)
        stored = self.secrets[secret_id]
        paths = list(request.update_mask.paths)
        if not paths or not set(paths) <= MUTABLE:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"update_mask {paths}: only {sorted(MUTABLE)} can change")
        if request.secret.etag and request.secret.etag != stored.etag:
            raise Refused(grpc.StatusCode.ABORTED, "etag mismatch: the secret changed since it was read")
        updated = secretmanager_v1.Secret(stored)
        for path in paths:
            setattr(updated, path, getattr(request.secret, path))
        self._check(updated)
        updated.etag = f'"{uuid.uuid4().hex[:14]}"'
        self.secrets[secret_id] = updated
        self._write("UpdateSecret", secret_id)
        return self._shown(updated)

    def add_secret_version(self, request: Any) -> Any:
        secret_id = self._secret_id(request.parent)
        if not 0 < len(request.payload.data) <= 65536:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "payload must be 1 byte to 64 KiB")
        self.versions[secret_id].append((request.payload.data, secretmanager_v1.SecretVersion.State.ENABLED))
        number = len(self.versions[secret_id])
        self._write("AddSecretVersion", secret_id)
        return secretmanager_v1.SecretVersion(name=f"projects/{NUMBER}/secrets/{secret_id}/versions/{number}",
                                              state=secretmanager_v1.SecretVersion.State.ENABLED)  # fmt: skip

    def access_secret_version(self, request: Any) -> Any:
        secret, _, version = request.name.rpartition("/versions/")
        secret_id = self._secret_id(secret)
        versions = self.versions[secret_id]
        number = len(versions) if version == "latest" else int(version)
        if not 1 <= number <= len(versions):
            raise Refused(grpc.StatusCode.NOT_FOUND, f"Secret Version [{request.name}] not found.")
        data, state = versions[number - 1]
        if state != secretmanager_v1.SecretVersion.State.ENABLED:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"Secret Version [{request.name}] is in {state.name}")
        return secretmanager_v1.AccessSecretVersionResponse(
            name=f"projects/{NUMBER}/secrets/{secret_id}/versions/{number}",
            payload=secretmanager_v1.SecretPayload(data=data))  # fmt: skip

    # -- the secrets' IAM policies

    def get_iam_policy(self, request: Any) -> Any:
        return self._policy(self.secret_policies, self._secret_id(request.resource))

    def set_iam_policy(self, request: Any) -> Any:
        return self._set_policy(self.secret_policies, self._secret_id(request.resource), request, "SetIamPolicy")

    def services(self) -> dict[str, dict[str, Any]]:
        sm, h = secretmanager_v1, self.handler
        get_policy, set_policy, policy = (Pb(iam_policy_pb2.GetIamPolicyRequest),
                                          Pb(iam_policy_pb2.SetIamPolicyRequest), Pb(policy_pb2.Policy))  # fmt: skip
        return {
            **super().services(),
            "google.cloud.secretmanager.v1.SecretManagerService": {
                "GetSecret": unary(h(self.get_secret), sm.GetSecretRequest, sm.Secret),
                "CreateSecret": unary(h(self.create_secret), sm.CreateSecretRequest, sm.Secret),
                "UpdateSecret": unary(h(self.update_secret), sm.UpdateSecretRequest, sm.Secret),
                "AddSecretVersion": unary(h(self.add_secret_version), sm.AddSecretVersionRequest, sm.SecretVersion),
                "AccessSecretVersion": unary(h(self.access_secret_version), sm.AccessSecretVersionRequest,
                                             sm.AccessSecretVersionResponse),
                "GetIamPolicy": unary(h(self.get_iam_policy), get_policy, policy),
                "SetIamPolicy": unary(h(self.set_iam_policy), set_policy, policy),
            },
        }  # fmt: skip


@dataclass
class Api:
    fake: FakeGoogle
    endpoint: str
    clients: Clients
    config: Path
    values: dict[str, Path]


def write_config(path: Path, **secrets_section: Any) -> Path:
    document = {"project": PROJECT, "secrets": {"keys": ["api-keys", "redis-url"], **secrets_section}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    fake = FakeGoogle()
    server, port = serve(fake.services())
    clients = Clients.connect(f"127.0.0.1:{port}", insecure=True)
    keys, redis = tmp_path / "api-keys.txt", tmp_path / "redis-url.txt"
    keys.write_bytes(KEYS_VALUE)
    redis.write_bytes(REDIS_VALUE + b"\n")  # as an editor leaves it
    yield Api(fake, f"127.0.0.1:{port}", clients, write_config(tmp_path / "erlmcp-gcp.yaml"),
              {"api-keys": keys, "redis-url": redis})  # fmt: skip
    clients.close()
    server.stop(None)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iam, "PROPAGATION_DELAYS", (0.0, 0.0, 0.0))


def values(api: Api, *keys: str) -> list[str]:
    return [arg for key in keys for arg in ("--value", f"{key}={api.values[key]}")]


def run(api: Api, capsys: pytest.CaptureFixture[str], *args: str, config: Path | None = None) -> tuple[int, str, str]:
    code = main(["secrets", *args, "--config", str(config or api.config), "--endpoint", api.endpoint, "--insecure"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plan_json(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code, out, err = run(api, capsys, "plan", "--json", *args)
    assert code == 0, err
    return list(json.loads(out)["changes"])


def lines(changes: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["action"], c["kind"], c["name"]) for c in changes]


def members(policy: Any, role: str) -> set[str]:
    return {m for b in policy.bindings if b.role == role and not b.HasField("condition") for m in b.members}


def test_plan_on_an_empty_project_creates_everything_and_writes_nothing(api, capsys) -> None:
    changes = plan_json(api, capsys, *values(api, "api-keys"))
    assert lines(changes) == [
        ("CREATE", "service account", EMAIL),
        ("CREATE", "secret", API_KEYS), ("CREATE", "secret version", API_KEYS),
        ("CREATE", "accessor binding", API_KEYS),
        ("CREATE", "secret", REDIS_URL), ("NO CHANGE", "secret version", REDIS_URL),
        ("CREATE", "accessor binding", REDIS_URL),
        ("CREATE", "workload identity binding", EMAIL),
    ]  # fmt: skip
    notes = {(c["kind"], c["name"]): c["note"] for c in changes}
    assert notes["secret version", API_KEYS] == f"new version (from {api.values['api-keys']})"
    assert notes["secret version", REDIS_URL].startswith("no --value given: the secret has no version")
    assert notes["secret", API_KEYS].startswith("automatic replication; no rotation (Secret Manager rotates only")
    assert notes["accessor binding", API_KEYS] == f"{ACCESSOR} for {MEMBER}"
    assert notes["workload identity binding", EMAIL] == f"{WORKLOAD_IDENTITY_USER} for {KSA_MEMBER}"
    assert api.fake.writes == []
    assert "AccessSecretVersion" not in api.fake.calls  # nothing to compare with: no value is read


def test_apply_creates_the_redis_ca_a_file_kept_byte_for_byte(api, capsys, tmp_path) -> None:
    # Memorystore with in-transit encryption: its server CA (memorystore apply --secret-out DIR writes DIR/ca.crt),
    # for the chart's secretManager.keys redis-ca, read by the server from ERLMCP_REDIS_CA_FILE.
    write_config(api.config, keys=["api-keys", "redis-url", "redis-ca"])
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    code, _, err = run(api, capsys, "apply", *values(api, "api-keys", "redis-url"), "--value", f"redis-ca={ca}")
    assert code == 0, err
    assert api.fake.writes[-4:-1] == ["CreateSecret erlmcp-redis-ca", "AddSecretVersion erlmcp-redis-ca",
                                      "SetIamPolicy erlmcp-redis-ca"]  # fmt: skip
    assert dict(api.fake.secrets["erlmcp-redis-ca"].labels) == {"managed-by": "erlmcp", "erlmcp-key": "redis-ca"}
    assert api.fake.versions["erlmcp-redis-ca"][0][0] == ca.read_bytes()  # a file: its last newline kept
    assert members(api.fake.secret_policies["erlmcp-redis-ca"], ACCESSOR) == {MEMBER}


def test_apply_creates_the_secrets_the_version_the_account_and_both_bindings(api, capsys) -> None:
    code, out, err = run(api, capsys, "apply", *values(api, "api-keys", "redis-url"))
    assert code == 0, err
    assert out.splitlines()[0] == (f"Secret Manager (project {PROJECT}) applied: 8 created, 0 updated, 0 deleted, "
                                   "0 unchanged")  # fmt: skip
    fake = api.fake
    assert fake.writes == [
        f"CreateServiceAccount {EMAIL}",
        "CreateSecret erlmcp-api-keys", "AddSecretVersion erlmcp-api-keys", "SetIamPolicy erlmcp-api-keys",
        "CreateSecret erlmcp-redis-url", "AddSecretVersion erlmcp-redis-url", "SetIamPolicy erlmcp-redis-url",
        f"SetServiceAccountIamPolicy {EMAIL}",
    ]  # fmt: skip
    for key in ("api-keys", "redis-url"):
        secret = fake.secrets[f"erlmcp-{key}"]
        assert dict(secret.labels) == {"managed-by": "erlmcp", "erlmcp-key": key}
        assert "automatic" in secret.replication
        assert "rotation" not in secret
        assert not secret.topics
        assert members(fake.secret_policies[f"erlmcp-{key}"], ACCESSOR) == {MEMBER}
    assert fake.versions["erlmcp-api-keys"] == [(KEYS_VALUE, secretmanager_v1.SecretVersion.State.ENABLED)]
    assert fake.versions["erlmcp-redis-url"][0][0] == REDIS_VALUE  # an environment variable: no trailing newline
    assert members(fake.account_policies[EMAIL], WORKLOAD_IDENTITY_USER) == {KSA_MEMBER}
    assert fake.accounts[EMAIL].display_name == "erlmcp server"
    version = f"projects/{NUMBER}/secrets/erlmcp-api-keys/versions/1"
    assert f"deployer: added {version} (from {api.values['api-keys']})" in err
    assert f"deployer: granted {ACCESSOR} on {API_KEYS} to {MEMBER}" in err
    assert (f"Workload Identity: the Kubernetes service account erlmcp/erlmcp needs the annotation\n"
            f"  {ANNOTATION}: {EMAIL}\n") in out  # fmt: skip
    assert f"--set serviceAccount.gcpServiceAccount={EMAIL}" in out
    assert f"kubectl annotate serviceaccount --namespace erlmcp erlmcp {ANNOTATION}={EMAIL}" in out


def test_apply_again_changes_nothing_and_writes_nothing(api, capsys) -> None:
    options = values(api, "api-keys", "redis-url")
    assert run(api, capsys, "apply", *options)[0] == 0
    writes = list(api.fake.writes)
    code, out, _ = run(api, capsys, "apply", *options)
    assert code == 0
    table = out.splitlines()
    assert table[0].endswith(" applied: 0 created, 0 updated, 0 deleted, 8 unchanged")
    assert all(line.startswith("  NO CHANGE") for line in table[1:9])
    assert api.fake.writes == writes
    assert {c["action"] for c in plan_json(api, capsys)} == {"NO CHANGE"}  # no --value: versions not read
    assert api.fake.writes == writes


def test_a_changed_value_file_adds_one_version_and_an_unchanged_one_none(api, capsys) -> None:
    assert run(api, capsys, "apply", *values(api, "api-keys", "redis-url"))[0] == 0
    api.values["api-keys"].write_bytes(KEYS_VALUE + b"mcp-key-third-added-later\n")
    api.values["redis-url"].write_bytes(REDIS_VALUE)  # the newline gone: the same value
    changes = plan_json(api, capsys, *values(api, "api-keys", "redis-url"))
    assert [(c["action"], c["name"]) for c in changes if c["kind"] == "secret version"] == [
        ("CREATE", API_KEYS), ("NO CHANGE", REDIS_URL)]  # fmt: skip
    writes = len(api.fake.writes)
    code, out, err = run(api, capsys, "apply", *values(api, "api-keys", "redis-url"))
    assert code == 0, err
    assert api.fake.writes[writes:] == ["AddSecretVersion erlmcp-api-keys"]
    stored = [data for data, _ in api.fake.versions["erlmcp-api-keys"]]
    assert stored == [KEYS_VALUE, KEYS_VALUE + b"mcp-key-third-added-later\n"]
    assert out.splitlines()[0].endswith(": 1 created, 0 updated, 0 deleted, 7 unchanged")


def test_a_disabled_latest_version_is_replaced_by_a_new_one(api, capsys) -> None:
    assert run(api, capsys, "apply", *values(api, "api-keys"))[0] == 0
    data, _ = api.fake.versions["erlmcp-api-keys"][0]
    api.fake.versions["erlmcp-api-keys"][0] = (data, secretmanager_v1.SecretVersion.State.DISABLED)
    version = next(c for c in plan_json(api, capsys, *values(api, "api-keys")) if c["kind"] == "secret version")
    assert version["action"] == "CREATE"
    assert version["note"] == f"new version (from {api.values['api-keys']}); the latest version is disabled or " + (
        "destroyed")  # fmt: skip


def test_drift_removed_binding_and_changed_labels_is_updated_and_other_members_and_labels_stay(api, capsys) -> None:
    assert run(api, capsys, "apply")[0] == 0
    # Someone replaces the accessor binding with their own, and edits the labels.
    policy = api.clients.secrets.get_iam_policy(request={"resource": API_KEYS})
    del policy.bindings[:]
    policy.bindings.add(role=ACCESSOR, members=["user:ops@example.com"])
    policy.bindings.add(role="roles/secretmanager.viewer", members=["group:audit@example.com"])
    api.clients.secrets.set_iam_policy(request={"resource": API_KEYS, "policy": policy})
    secret = api.clients.secrets.get_secret(name=API_KEYS)
    secret.labels = {"managed-by": "someone", "team": "platform"}
    api.clients.secrets.update_secret(secret=secret, update_mask={"paths": ["labels"]})

    code, out, _ = run(api, capsys, "plan")
    assert code == 0
    table = out.splitlines()
    assert "2 to update" in table[0]
    at = next(i for i, line in enumerate(table) if line.split()[:2] == ["UPDATE", "secret"])
    assert table[at].split()[2:] == [API_KEYS, "labels"]
    assert table[at + 1 : at + 3] == ['      labels.managed-by: "someone" -> "erlmcp"',
                                      '      labels.erlmcp-key: (unset) -> "api-keys"']  # fmt: skip
    at = next(i for i, line in enumerate(table) if line.split()[:3] == ["UPDATE", "accessor", "binding"])
    assert API_KEYS in table[at]
    assert table[at + 1] == '      member: "absent" -> "present"'

    writes = len(api.fake.writes)
    assert run(api, capsys, "apply")[0] == 0
    assert api.fake.writes[writes:] == ["UpdateSecret erlmcp-api-keys", "SetIamPolicy erlmcp-api-keys"]
    assert dict(api.fake.secrets["erlmcp-api-keys"].labels) == {"managed-by": "erlmcp", "erlmcp-key": "api-keys",
                                                                "team": "platform"}  # fmt: skip
    fixed = api.fake.secret_policies["erlmcp-api-keys"]
    assert members(fixed, ACCESSOR) == {"user:ops@example.com", MEMBER}
    assert members(fixed, "roles/secretmanager.viewer") == {"group:audit@example.com"}
    assert {c["action"] for c in plan_json(api, capsys)} == {"NO CHANGE"}


def test_a_policy_changed_between_read_and_write_is_reread_and_nothing_is_lost(api, capsys) -> None:
    assert run(api, capsys, "apply")[0] == 0
    api.fake.secret_policies["erlmcp-api-keys"] = policy_pb2.Policy(etag=b"v2")  # the binding is gone

    def someone_else_writes() -> None:
        stored = api.fake.secret_policies["erlmcp-api-keys"]
        stored.bindings.add(role="roles/secretmanager.viewer", members=["user:late@example.com"])
        stored.etag = b"v3"

    api.fake.before["SetIamPolicy"] = someone_else_writes
    calls = len(api.fake.calls)
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    assert api.fake.calls[calls:].count("SetIamPolicy") == 2  # the first was refused: ABORTED, stale etag
    policy = api.fake.secret_policies["erlmcp-api-keys"]
    assert members(policy, ACCESSOR) == {MEMBER}
    assert members(policy, "roles/secretmanager.viewer") == {"user:late@example.com"}


def test_conditional_bindings_of_the_role_are_kept_and_do_not_count(api, capsys) -> None:
    assert run(api, capsys, "apply")[0] == 0
    conditional = policy_pb2.Policy(version=3, etag=b"c1")
    binding = conditional.bindings.add(role=ACCESSOR, members=[MEMBER])
    binding.condition.expression = 'request.time < timestamp("2020-01-01T00:00:00Z")'
    api.fake.secret_policies["erlmcp-api-keys"] = conditional
    assert run(api, capsys, "apply")[0] == 0
    policy = api.fake.secret_policies["erlmcp-api-keys"]
    assert policy.version == 3
    assert [(b.role, list(b.members), b.HasField("condition")) for b in policy.bindings] == [
        (ACCESSOR, [MEMBER], True), (ACCESSOR, [MEMBER], False)]  # fmt: skip


def test_apply_dry_run_prints_the_plan_and_writes_nothing(api, capsys) -> None:
    code, out, err = run(api, capsys, "apply", "--dry-run", *values(api, "api-keys", "redis-url"))
    assert code == 0, err
    assert out.splitlines()[0] == (f"Secret Manager (project {PROJECT}) plan (dry run: nothing written): 8 to "
                                   "create, 0 to update, 0 to delete, 0 unchanged")  # fmt: skip
    assert api.fake.writes == []
    assert err == ""


def test_values_never_appear_in_any_output(api, capsys) -> None:
    options = values(api, "api-keys", "redis-url")
    outputs = [run(api, capsys, "plan", *options), run(api, capsys, "plan", "--json", *options),
               run(api, capsys, "apply", "--dry-run", *options), run(api, capsys, "apply", *options)]  # fmt: skip
    api.values["api-keys"].write_bytes(b"mcp-key-rotated-value-99887766\n")
    outputs += [run(api, capsys, "plan", "--json", *options), run(api, capsys, "apply", "--json", *options),
                run(api, capsys, "apply", *options)]  # fmt: skip
    shown = "\n".join(out + err for _, out, err in outputs)
    for value in (KEYS_VALUE, REDIS_VALUE, b"mcp-key-rotated-value-99887766"):
        for part in value.decode().splitlines():
            assert part not in shown
    assert "hunter2" not in shown
    assert all(code == 0 for code, _, _ in outputs)
    assert "data" not in repr(secrets.Value("api-keys", Path("f"), b"s3cr3t-bytes"))


def test_rotation_is_scheduled_only_with_a_topic_and_a_changed_period_is_an_update(api, capsys, tmp_path) -> None:
    config = write_config(tmp_path / "rotating.yaml", rotationTopic="secret-rotation")
    assert run(api, capsys, "apply", config=config)[0] == 0
    secret = api.fake.secrets["erlmcp-api-keys"]
    assert [t.name for t in secret.topics] == [f"projects/{PROJECT}/topics/secret-rotation"]
    assert secret.rotation.rotation_period == timedelta(days=90)
    assert abs(secret.rotation.next_rotation_time - (datetime.now(UTC) + timedelta(days=90))) < timedelta(minutes=1)
    assert secret.annotations["erlmcp-rotation-period"] == "7776000s"
    writes = len(api.fake.writes)
    assert run(api, capsys, "apply", config=config)[0] == 0  # the API does not give the period back: no drift
    assert len(api.fake.writes) == writes

    config = write_config(tmp_path / "rotating.yaml", rotationTopic="secret-rotation", rotationDays=30)
    code, out, _ = run(api, capsys, "plan", config=config)
    assert code == 0
    assert '      rotation.rotation_period: "90 days" -> "30 days"' in out.splitlines()
    assert run(api, capsys, "apply", config=config)[0] == 0
    assert api.fake.writes[writes:] == ["UpdateSecret erlmcp-api-keys", "UpdateSecret erlmcp-redis-url"]
    assert api.fake.secrets["erlmcp-api-keys"].rotation.rotation_period == timedelta(days=30)


def test_a_topic_added_to_an_existing_secret_keeps_its_other_topics(api, capsys, tmp_path) -> None:
    assert run(api, capsys, "apply")[0] == 0
    secret = api.clients.secrets.get_secret(name=API_KEYS)
    secret.topics = [secretmanager_v1.Topic(name=f"projects/{PROJECT}/topics/audit")]
    api.clients.secrets.update_secret(secret=secret, update_mask={"paths": ["topics"]})
    config = write_config(tmp_path / "rotating.yaml", rotationTopic=f"projects/{PROJECT}/topics/rotate")
    code, out, _ = run(api, capsys, "plan", "--json", config=config)
    assert code == 0
    update = next(c for c in json.loads(out)["changes"] if c["kind"] == "secret" and c["name"] == API_KEYS)
    assert [d["field"] for d in update["differences"]] == ["topics", "rotation.rotation_period"]
    assert run(api, capsys, "apply", config=config)[0] == 0
    stored = api.fake.secrets["erlmcp-api-keys"]
    assert [t.name for t in stored.topics] == [f"projects/{PROJECT}/topics/audit", f"projects/{PROJECT}/topics/rotate"]


def test_user_managed_replication_and_a_replication_change_that_apply_refuses(api, capsys, tmp_path) -> None:
    config = write_config(tmp_path / "regional.yaml", replication="user-managed")
    assert run(api, capsys, "apply", config=config)[0] == 0
    replicas = api.fake.secrets["erlmcp-api-keys"].replication.user_managed.replicas
    assert [r.location for r in replicas] == ["us-central1"]  # the configuration's region

    config = write_config(tmp_path / "regional.yaml", replication="user-managed", locations=["europe-west1"])
    writes = list(api.fake.writes)
    code, out, _ = run(api, capsys, "plan", config=config)
    assert code == 0
    assert '      replication: "user-managed: us-central1" -> "user-managed: europe-west1"' in out.splitlines()
    code, out, err = run(api, capsys, "apply", config=config)
    assert (code, out) == (1, "")
    assert f"nothing applied: the replication of secret {API_KEYS} cannot change" in err
    assert api.fake.writes == writes


def test_a_service_account_new_to_iam_is_waited_for(api, capsys) -> None:
    api.fake.lagging = 2  # the first two policy writes naming it are refused: IAM does not know it yet
    code, _, err = run(api, capsys, "apply")
    assert code == 0, err
    assert members(api.fake.secret_policies["erlmcp-api-keys"], ACCESSOR) == {MEMBER}
    assert api.fake.calls.count("SetIamPolicy") == 4  # 2 refused + one per secret


def test_an_existing_disabled_account_is_used_as_is_and_reported(api, capsys) -> None:
    api.fake.accounts[EMAIL] = iam_admin_v1.ServiceAccount(name=ACCOUNT, email=EMAIL, disabled=True,
                                                           display_name="made by hand")  # fmt: skip
    changes = plan_json(api, capsys)
    assert changes[0] == {"action": "NO CHANGE", "kind": "service account", "name": EMAIL, "differences": [],
                          "note": "disabled: the app cannot authenticate as it until it is enabled"}  # fmt: skip
    assert changes[-1]["action"] == "UPDATE"  # the account exists: the binding is added to its policy
    assert run(api, capsys, "apply")[0] == 0
    assert "CreateServiceAccount" not in " ".join(api.fake.writes)
    assert api.fake.accounts[EMAIL].display_name == "made by hand"


def test_the_json_plan_carries_the_annotation_the_kubernetes_account_needs(api, capsys) -> None:
    code, out, _ = run(api, capsys, "plan", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["summary"] == {"CREATE": 6, "UPDATE": 0, "DELETE": 0, "NO CHANGE": 2}
    assert document["workloadIdentity"]["annotation"] == {ANNOTATION: EMAIL}
    assert document["workloadIdentity"]["kubernetesServiceAccount"] == "erlmcp/erlmcp"


def test_the_chart_annotates_the_service_account_it_creates_as_the_output_says() -> None:
    values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text(encoding="utf-8"))
    assert "gcpServiceAccount" in values["serviceAccount"]
    template = (ROOT / "chart" / "templates" / "serviceaccount.yaml").read_text(encoding="utf-8")
    assert "with .Values.serviceAccount.gcpServiceAccount" in template
    assert f"{ANNOTATION}: {{{{ . | quote }}}}" in template


def test_permission_denied_exits_1_naming_the_resource(api, capsys) -> None:
    denied = f"Permission 'secretmanager.secrets.get' denied for resource '{API_KEYS}'"
    api.fake.refuse["GetSecret"] = Refused(grpc.StatusCode.PERMISSION_DENIED, denied)
    code, out, err = run(api, capsys, "plan")
    assert (code, out) == (1, "")
    assert f"deployer: cannot read secret {API_KEYS}: permission denied" in err
    assert "roles/secretmanager.admin" in err

    assert run(api, capsys, "apply")[0] == 0
    api.fake.secret_policies.pop("erlmcp-redis-url")
    api.fake.refuse["SetIamPolicy"] = Refused(grpc.StatusCode.PERMISSION_DENIED, "secretmanager.secrets.setIamPolicy")
    code, out, err = run(api, capsys, "apply")
    assert (code, out) == (1, "")
    assert f"deployer: cannot grant {ACCESSOR} on {REDIS_URL} to {MEMBER}: permission denied" in err


def test_no_workload_identity_pool_exits_1_saying_to_create_the_cluster_first(api, capsys) -> None:
    api.fake.workload_pool = False
    code, _, err = run(api, capsys, "apply")
    assert code == 1
    assert f"cannot grant {WORKLOAD_IDENTITY_USER} on {ACCOUNT} to {KSA_MEMBER}: Identity Pool does not exist" in err
    assert "`python -m deployer cluster apply` first" in err
    assert api.fake.calls.count("SetAccountIamPolicy") == 1  # a missing pool is not waited for


@pytest.mark.parametrize(("config", "extra", "message"), [
    ({"secrets": {"keys": ["api-keys", "db-password"]}}, [], "secrets.keys: no erlmcp secret 'db-password'; known: "),
    ({"secrets": {"keys": ["api-keys"], "replication": "regional"}}, [], "secrets.replication must be automatic or"),
    ({"secrets": {"locations": ["europe-west1"]}}, [], "secrets.locations needs secrets.replication: user-managed"),
    ({"secrets": {"rotationDays": 0}}, [], "secrets.rotationDays must be 1 to 36500"),
    ({"secrets": {"rotationTopic": "projects/x/subscriptions/y"}}, [], "is not a Pub/Sub topic"),
    ({"secrets": {"unknown": 1}}, [], "secrets.unknown: Extra inputs are not permitted"),
    ({"serviceAccount": "erl"}, [], "is not a service account ID"),
    ({}, ["--value", "tls-cert=FILE"], "--value tls-cert: not one of this deployment's secrets.keys (api-keys)"),
    ({}, ["--value", "nope=FILE"], "known: api-keys, jwt-public-key"),
    ({}, ["--value", "api-keys"], "--value takes KEY=FILE, not 'api-keys'"),
    ({}, ["--value", "api-keys=/nonexistent/keys.txt"], "--value api-keys: cannot read /nonexistent/keys.txt"),
    ({}, ["--value", "api-keys=EMPTY"], "is empty"),
    ({}, ["--value", "api-keys=BIG"], "a secret version holds at most 64 KiB"),
    ({}, ["--value", "api-keys=FILE", "--value", "api-keys=FILE"], "--value api-keys is given twice"),
])  # fmt: skip
def test_bad_input_exits_2_before_any_call(api, capsys, tmp_path, config, extra, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"project": PROJECT, **config}), encoding="utf-8")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    files = {"FILE": api.values["api-keys"], "EMPTY": tmp_path / "empty", "BIG": tmp_path / "big"}
    extra = [re.sub(r"=(FILE|EMPTY|BIG)$", lambda m: f"={files[m.group(1)]}", arg) for arg in extra]
    code, out, err = run(api, capsys, "plan", *extra, config=path)
    assert (code, out) == (2, "")
    assert message in err
    assert api.fake.calls == []


def test_a_missing_project_or_configuration_exits_2(api, capsys, tmp_path) -> None:
    assert main(["secrets", "plan", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read the configuration" in capsys.readouterr().err
    assert main(["secrets", "plan"]) == 2
    assert "no project: give --project" in capsys.readouterr().err
    assert main(["secrets", "plan", "--project", PROJECT, "--insecure"]) == 2
    assert "--insecure needs --endpoint" in capsys.readouterr().err
    assert api.fake.calls == []
