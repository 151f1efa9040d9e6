"""``python -m deployer cloudrun`` against a local server of the Cloud Run Admin API v1 REST protocol
(:mod:`tests.cloudrun_rest`): the rendered Service, plan, apply, re-apply, drift, dry runs, the canary and its
promotion or rollback, refusals and API errors, all through ``deployer.cli.main``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml

from app.middleware import HEALTH_PATHS
from app.settings import Settings
from deployer.cli import main
from deployer.gcp import cloudrun
from deployer.gcp.cloudrun import CANARY_TAG, canary_revision_name, desired_service, problems
from deployer.gcp.config import load_config
from tests.cloudrun_rest import CRD, CloudRunRest

PROJECT, NAME = "erlmcp-test", "erlmcp"
IMAGE, NEW_IMAGE = "gcr.io/erlmcp-test/erlmcp:1.0.0", "gcr.io/erlmcp-test/erlmcp:1.1.0"
BROKEN_IMAGE = "gcr.io/erlmcp-test/erlmcp:broken"  # the local server fails its revisions
MAX_SCALE = "autoscaling.knative.dev/maxScale"


@pytest.fixture(autouse=True)
def _quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloudrun, "POLL_SECONDS", 0.001)
    monkeypatch.setattr(cloudrun, "READY_TIMEOUT_SECONDS", 10.0)


@pytest.fixture
def api() -> Iterator[CloudRunRest]:
    with CloudRunRest(ready_after=2, failing_images=(BROKEN_IMAGE,)) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"image": IMAGE})


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "erlmcp-gcp.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run(api: CloudRunRest, capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    code = main(["cloudrun", *args, "--config", str(config), "--project", PROJECT, "--endpoint", api.endpoint,
                 "--insecure"])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def live(api: CloudRunRest) -> dict[str, Any]:
    found = api.service(PROJECT, NAME)
    assert found is not None
    return found


def container(service: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = service["spec"]["template"]["spec"]["containers"][0]
    return found


def env_of(service: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(service)["env"]}


def knative_validator() -> jsonschema.Draft7Validator:
    """The vendored CRD's schema as published, read here on its own (not through the deployer)."""
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def applied(api: CloudRunRest, capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    code, out, err = run(api, capsys, config, "apply", *args)
    assert code == 0, err
    return out


# -- the rendered service ----------------------------------------------------------------------------------------


def test_plan_renders_offline_a_service_that_the_knative_schema_and_cloud_runs_limits_accept() -> None:
    desired = desired_service(load_config(None, project=PROJECT, image=IMAGE))
    service = desired.service
    assert list(knative_validator().iter_errors(service)) == []
    assert problems(service) == []  # the closed schema (no unknown field) and Cloud Run's limits
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service"
    assert service["metadata"]["labels"] == {"managed-by": "erlmcp"}
    assert service["metadata"]["annotations"] == {"run.googleapis.com/ingress": "all",
                                                  "run.googleapis.com/invoker-iam-disabled": "true"}  # fmt: skip
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "autoscaling.knative.dev/minScale": "0", MAX_SCALE: "100", "run.googleapis.com/startup-cpu-boost": "true",
        "run.googleapis.com/execution-environment": "gen2"}  # fmt: skip
    revision = template["spec"]
    assert (revision["containerConcurrency"], revision["timeoutSeconds"]) == (80, 300)
    assert revision["serviceAccountName"] == f"erlmcp@{PROJECT}.iam.gserviceaccount.com"
    server = container(service)
    assert server["image"] == IMAGE
    assert server["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert server["resources"] == {"limits": {"cpu": "1", "memory": "512Mi"}}
    assert server["startupProbe"]["httpGet"] == {"path": "/readyz"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/livez"}
    assert {"/readyz", "/livez"} <= HEALTH_PATHS  # paths the server really serves
    env = env_of(service)
    assert env["ERLMCP_STATELESS"] == "true"
    assert "ERLMCP_REDIS_URL" not in env
    # The API key file: a read-only secret volume of erlmcp-api-keys (latest), the variable pointing into it.
    secret = {"secretName": "erlmcp-api-keys", "items": [{"key": "latest", "path": "api-keys"}]}
    assert revision["volumes"] == [{"name": "api-keys", "secret": secret}]
    assert server["volumeMounts"] == [{"name": "api-keys", "mountPath": "/secrets/api-keys", "readOnly": True}]
    assert env["ERLMCP_API_KEY_FILE"] == "/secrets/api-keys/api-keys"
    assert service["spec"]["traffic"] == [{"percent": 100, "latestRevision": True}]
    assert any("ERLMCP_STATELESS" in note for note in desired.notes)


def settings_from(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The server's settings in an instance of this revision: its environment, secrets filled in."""
    for name in [n for n in os.environ if n.startswith("ERLMCP_")]:
        monkeypatch.delenv(name)
    for entry in container(service)["env"]:
        value = entry.get("value")
        if value is None:  # from Secret Manager
            value = {"ERLMCP_REDIS_URL": "redis://10.0.0.3:6379/0"}.get(entry["name"], "k" * 40)
        monkeypatch.setenv(entry["name"], value)
    return Settings()


def test_the_containers_environment_is_one_the_servers_settings_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    service = desired_service(load_config(None, project=PROJECT)).service
    settings = settings_from(service, monkeypatch)
    # Cloud Run routes to the declared port: the server must listen there, on every address.
    assert settings.port == container(service)["ports"][0]["containerPort"] == 8080
    assert settings.host == "0.0.0.0"
    assert settings.stateless is True
    assert settings.redis_url is None
    assert str(settings.api_key_file) == "/secrets/api-keys/api-keys"
    assert settings.shutdown_timeout_seconds < 10  # Cloud Run kills 10 s after SIGTERM


def test_with_redis_sessions_are_shared_over_direct_vpc_egress_and_file_only_settings_are_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ["api-keys", "jwt-public-key", "redis-url", "tls-cert", "tls-key", "otel-ca-cert"]
    jwt = {"ERLMCP_JWT_ISSUER": "https://issuer.example.com", "ERLMCP_RESOURCE_URL": "https://mcp.example.com/mcp"}
    cloud_run = {"requestStateKeySecret": "erlmcp-request-state-key", "env": jwt}
    path = write_config(tmp_path, {"secrets": {"keys": keys}, "cloudRun": cloud_run})
    desired = desired_service(load_config(path, project=PROJECT))
    service = desired.service
    assert list(knative_validator().iter_errors(service)) == []
    assert problems(service) == []
    env = env_of(service)
    # Values the server can take from a variable come from Secret Manager through secretKeyRef.
    assert env["ERLMCP_REDIS_URL"] == {"secretKeyRef": {"name": "erlmcp-redis-url", "key": "latest"}}
    assert env["ERLMCP_REQUEST_STATE_KEY"] == {"secretKeyRef": {"name": "erlmcp-request-state-key", "key": "latest"}}
    assert "ERLMCP_STATELESS" not in env
    # Settings the server reads only from files are secret volumes; TLS ends at Cloud Run's front end.
    volumes = {v["name"]: v["secret"]["secretName"] for v in service["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"api-keys": "erlmcp-api-keys", "jwt-public-key": "erlmcp-jwt-public-key",
                       "otel-ca-cert": "erlmcp-otel-ca-cert"}  # fmt: skip
    assert env["ERLMCP_JWT_PUBLIC_KEY_FILE"] == "/secrets/jwt-public-key/jwt-public-key"
    assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == "/secrets/otel-ca-cert/otel-ca-cert"
    assert "ERLMCP_TLS_CERT_FILE" not in env
    assert any("tls-cert, tls-key" in n for n in desired.notes)
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert json.loads(annotations["run.googleapis.com/network-interfaces"]) == [
        {"network": "erlmcp-vpc", "subnetwork": "erlmcp-subnet-us-central1"}]  # fmt: skip
    assert annotations["run.googleapis.com/vpc-access-egress"] == "private-ranges-only"
    settings = settings_from(service, monkeypatch)
    assert settings.stateless is False
    assert settings.redis_url is not None
    assert settings.jwt_enabled


def test_the_redis_ca_from_secret_manager_is_a_secret_volume_the_server_reads_as_its_redis_ca(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"secrets": {"keys": ["api-keys", "redis-url", "redis-ca"]}})
    service = desired_service(load_config(path, project=PROJECT)).service
    assert list(knative_validator().iter_errors(service)) == []
    volumes = {v["name"]: v["secret"]["secretName"] for v in service["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"api-keys": "erlmcp-api-keys", "redis-ca": "erlmcp-redis-ca"}
    env = env_of(service)
    assert env["ERLMCP_REDIS_CA_FILE"] == "/secrets/redis-ca/redis-ca"
    assert env["ERLMCP_REDIS_URL"] == {"secretKeyRef": {"name": "erlmcp-redis-url", "key": "latest"}}


@pytest.mark.parametrize(
    ("cloud_run", "secrets", "expected"),
    [
        ({"concurrency": 2000}, None, "containerConcurrency 2000"),
        ({"timeoutSeconds": 3601}, None, "timeoutSeconds 3601"),
        ({"cpu": "0.5"}, None, "cpu '0.5'"),
        ({"memory": "256Mi"}, None, "512Mi to 4096Mi"),
        ({"cpu": "4", "memory": "1Gi"}, None, "2048Mi to 16384Mi"),
        ({"minInstances": 5, "maxInstances": 2}, None, "minScale 5 / maxScale 2"),
        ({"service": "e" * 50}, None, "fewer than 50 characters"),
        ({"ingress": "public"}, None, "cloudRun.ingress"),
        ({"canaryPercent": 0}, None, "cloudRun.canaryPercent"),
        ({"env": {"PORT": "9000"}}, None, "Cloud Run sets PORT"),
        ({"env": {"ERLMCP_STATELESS": "false"}}, None, "set by the deployer"),
        ({"redisUrlSecret": "projects/p/secrets/x"}, None, "cloudRun.redisUrlSecret"),
        ({}, [], "without credentials to check"),
        ({"env": {"ERLMCP_NO_AUTH": "true"}}, None, "anyone can call"),
        ({}, ["jwt-public-key"], "ERLMCP_JWT_ISSUER"),
        ({}, ["no-such-secret"], "no erlmcp secret 'no-such-secret'"),
    ],
)
def test_a_configuration_cloud_run_would_refuse_exits_2_before_any_call(
    api: CloudRunRest, capsys: pytest.CaptureFixture[str], tmp_path: Path, cloud_run: dict[str, Any],
    secrets: list[str] | None, expected: str
) -> None:  # fmt: skip
    data: dict[str, Any] = {"cloudRun": cloud_run}
    if secrets is not None:
        data["secrets"] = {"keys": secrets}
    code, _, err = run(api, capsys, write_config(tmp_path, data), "apply")
    assert code == 2
    assert expected in err
    assert api.requests == []


# -- plan and apply ----------------------------------------------------------------------------------------------


def test_plan_of_a_new_service_says_create_and_writes_nothing(api, capsys, config) -> None:
    code, out, err = run(api, capsys, config, "plan")
    assert code == 0, err
    assert "plan: 1 to create" in out
    assert re.search(r"CREATE\s+Cloud Run service\s+erlmcp", out)
    assert [(r.method, r.path) for r in api.requests] == [
        ("GET", f"/apis/serving.knative.dev/v1/namespaces/{PROJECT}/services/{NAME}")]  # fmt: skip
    assert api.service(PROJECT, NAME) is None


def test_apply_creates_the_service_waits_until_ready_and_reports_the_revision_and_url(api, capsys, config) -> None:
    code, out, err = run(api, capsys, config, "apply")
    assert code == 0, err
    assert "applied: 1 created" in out
    assert "waiting for Cloud Run service erlmcp: Ready Unknown (Deploying)" in err  # progress while it deploys
    service = live(api)
    assert [r.method for r in api.writes] == ["POST"]
    assert re.search(r"Ready True; latest ready revision erlmcp-00001-\w+; URL https://erlmcp-\w+-uc\.a\.run\.app",
                     out)  # fmt: skip
    assert service["status"]["latestReadyRevisionName"] in out
    assert service["status"]["url"] in out
    assert service["metadata"]["labels"]["managed-by"] == "erlmcp"
    assert container(service)["image"] == IMAGE
    assert container(service)["resources"]["limits"]["cpu"] == "1000m"  # as Cloud Run gives it back


def test_applying_again_changes_nothing_and_writes_nothing(api, capsys, config) -> None:
    applied(api, capsys, config)
    version = live(api)["metadata"]["resourceVersion"]
    out = applied(api, capsys, config)
    assert "applied: 0 created, 0 updated, 0 deleted, 1 unchanged" in out
    assert "NO CHANGE" in out
    assert [r.method for r in api.writes] == ["POST"]  # CPU "1" and "1000m" are the same quantity
    assert live(api)["metadata"]["resourceVersion"] == version


def test_drift_is_an_update_naming_the_field_and_apply_puts_it_back(api, capsys, config) -> None:
    applied(api, capsys, config)
    first = live(api)["status"]["latestReadyRevisionName"]

    def someone(body: dict[str, Any]) -> None:  # in the console: max instances 5, and a label of their own
        body["spec"]["template"]["metadata"]["annotations"][MAX_SCALE] = "5"
        body["metadata"]["labels"]["team"] = "platform"

    api.edit(PROJECT, NAME, someone)
    writes = len(api.writes)
    code, out, err = run(api, capsys, config, "plan")
    assert code == 0, err
    assert "1 to update" in out
    assert f'spec.template.metadata.annotations.{MAX_SCALE}: "5" -> "100"' in out
    assert len(api.writes) == writes  # plan wrote nothing
    out = applied(api, capsys, config)
    assert "1 updated" in out
    put = api.writes[-1]
    assert put.method == "PUT"
    assert put.body["metadata"]["resourceVersion"]
    service = live(api)
    assert service["spec"]["template"]["metadata"]["annotations"][MAX_SCALE] == "100"
    assert service["metadata"]["labels"]["team"] == "platform"  # a field the deployer does not set stays
    assert service["status"]["latestReadyRevisionName"] not in (first, None)
    assert "NO CHANGE" in run(api, capsys, config, "plan")[1]


def test_dry_run_asks_cloud_run_to_check_the_write_and_writes_nothing(api, capsys, config) -> None:
    code, out, err = run(api, capsys, config, "apply", "--dry-run")
    assert code == 0, err
    assert "plan (dry run: nothing written): 1 to create" in out
    assert "dryRun=all" in out
    assert [(r.method, r.dry_run) for r in api.requests] == [("GET", False), ("POST", True)]
    assert api.service(PROJECT, NAME) is None
    assert api.writes == []
    applied(api, capsys, config, "--image", NEW_IMAGE)
    writes = len(api.writes)
    code, out, _ = run(api, capsys, config, "apply", "--dry-run")
    assert code == 0
    assert "1 to update" in out
    assert f'"{NEW_IMAGE}" -> "{IMAGE}"' in out
    assert len(api.writes) == writes
    assert container(live(api))["image"] == NEW_IMAGE


def test_json_gives_the_plan_the_notes_and_the_desired_service(api, capsys, config) -> None:
    code, out, err = run(api, capsys, config, "plan", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["summary"]["CREATE"] == 1
    assert document["changes"][0]["name"] == NAME
    assert document["service"] is None
    assert document["notes"]
    assert problems(document["desired"]) == []


# -- the canary --------------------------------------------------------------------------------------------------


def canary(api: CloudRunRest, capsys: pytest.CaptureFixture[str], config: Path) -> tuple[str, str]:
    """Apply, then start a canary of NEW_IMAGE; returns (the stable revision, the canary revision)."""
    applied(api, capsys, config)
    stable = live(api)["status"]["latestReadyRevisionName"]
    code, out, err = run(api, capsys, config, "canary", "--image", NEW_IMAGE)
    assert code == 0, err
    service = live(api)
    return stable, service["spec"]["template"]["metadata"]["name"]


def test_canary_sends_5_percent_to_a_new_tagged_revision_and_pins_the_rest(api, capsys, config) -> None:
    stable, revision = canary(api, capsys, config)
    service = live(api)
    assert service["spec"]["traffic"] == [{"revisionName": stable, "percent": 95},
                                          {"revisionName": revision, "percent": 5, "tag": CANARY_TAG}]  # fmt: skip
    desired = desired_service(load_config(config, project=PROJECT, image=NEW_IMAGE))
    assert revision == canary_revision_name(NAME, desired.template)
    assert re.fullmatch(r"erlmcp-[0-9a-f]{8}", revision)
    assert container(service)["image"] == NEW_IMAGE
    routed = {e["revisionName"]: e for e in service["status"]["traffic"]}
    assert routed[stable]["percent"] == 95
    assert routed[revision]["percent"] == 5
    assert routed[revision]["url"].startswith("https://canary---")
    writes = len(api.writes)
    code, out, _ = run(api, capsys, config, "canary", "--image", NEW_IMAGE)  # the same canary again
    assert code == 0
    assert "NO CHANGE" in out
    assert routed[revision]["url"] in out
    assert len(api.writes) == writes


def test_promote_sends_all_traffic_to_the_canary_and_drops_its_tag(api, capsys, config) -> None:
    _, revision = canary(api, capsys, config)
    code, out, err = run(api, capsys, config, "promote")
    assert code == 0, err
    service = live(api)
    assert service["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]
    assert service["status"]["traffic"] == [{"revisionName": revision, "percent": 100, "latestRevision": True}]
    assert f"set `image: {NEW_IMAGE}`" in out  # the configuration still names the old image
    writes = len(api.writes)
    out = applied(api, capsys, config, "--image", NEW_IMAGE)  # the promoted image is now the configuration's
    assert "NO CHANGE" in out
    assert len(api.writes) == writes


def test_rollback_sends_all_traffic_back_to_the_previous_revision(api, capsys, config) -> None:
    stable, revision = canary(api, capsys, config)
    code, out, err = run(api, capsys, config, "rollback")
    assert code == 0, err
    service = live(api)
    assert service["spec"]["traffic"] == [{"revisionName": stable, "percent": 100}]
    assert service["status"]["traffic"] == [{"revisionName": stable, "percent": 100}]
    assert "still describes the canary" in out
    out = applied(api, capsys, config)  # the configuration's image becomes the latest revision again
    assert "1 updated" in out
    service = live(api)
    assert container(service)["image"] == IMAGE
    assert service["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]


def test_a_failing_canary_is_reported_cannot_be_promoted_and_rolls_back(api, capsys, config) -> None:
    applied(api, capsys, config)
    stable = live(api)["status"]["latestReadyRevisionName"]
    code, _, err = run(api, capsys, config, "canary", "--image", BROKEN_IMAGE)
    assert code == 1
    assert "did not become ready: Ready False (RevisionFailed: Revision 'erlmcp-" in err
    assert f"Traffic stays on {stable}; `cloudrun rollback` drops the canary" in err
    assert live(api)["status"]["traffic"] == [{"revisionName": stable, "percent": 100, "latestRevision": True}]
    code, _, err = run(api, capsys, config, "promote")
    assert code == 2
    assert "is not ready (Ready False" in err
    assert "rollback" in err
    code, out, err = run(api, capsys, config, "rollback")
    assert code == 0, err
    service = live(api)
    assert service["spec"]["traffic"] == [{"revisionName": stable, "percent": 100}]
    assert service["status"]["traffic"] == [{"revisionName": stable, "percent": 100}]
    assert "1 updated" in applied(api, capsys, config)  # the configuration's image replaces the failed template
    assert live(api)["status"]["conditions"][0]["status"] == "True"


def test_canary_without_image_exits_2_before_any_call(api, capsys, config) -> None:
    code, _, err = run(api, capsys, config, "canary")
    assert code == 2
    assert "canary needs --image IMAGE" in err
    assert api.requests == []


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        ([], ["canary", "--image", NEW_IMAGE], "no Cloud Run service erlmcp yet"),
        ([["apply"]], ["promote"], "no canary runs on erlmcp: nothing to promote"),
        ([["apply"]], ["rollback"], "no canary runs on erlmcp: nothing to roll back"),
        ([["apply"]], ["canary", "--image", IMAGE], "already serves this image"),
        ([["apply"], ["canary", "--image", NEW_IMAGE]], ["apply"], "promote or rollback first"),
        ([["apply"], ["canary", "--image", NEW_IMAGE]], ["canary", "--image", "gcr.io/x/y:3"], "already runs"),
    ],
)
def test_an_action_that_does_not_apply_is_refused_with_exit_2_and_changes_nothing(
    api, capsys, config, setup: list[list[str]], args: list[str], expected: str
) -> None:
    for step in setup:
        assert run(api, capsys, config, *step)[0] == 0
    writes = len(api.writes)
    code, _, err = run(api, capsys, config, *args)
    assert code == 2, err
    assert expected in err
    assert len(api.writes) == writes


# -- errors and other owners -------------------------------------------------------------------------------------


def test_an_api_refusal_exits_1_naming_the_service_the_status_and_the_message(api, capsys, config) -> None:
    message = f"Permission 'run.services.get' denied on resource 'namespaces/{PROJECT}/services/{NAME}'"
    api.fail(403, message, times=None)
    code, out, err = run(api, capsys, config, "plan")
    assert code == 1
    assert out == ""
    assert f"Cloud Run service {NAME} (project {PROJECT}, region us-central1)" in err
    assert f"HTTP 403 PERMISSION_DENIED: {message}" in err


def test_a_change_made_between_the_read_and_the_write_is_read_again_and_kept(api, capsys, config) -> None:
    applied(api, capsys, config, "--image", NEW_IMAGE)

    def meanwhile(method: str, name: str) -> None:  # someone else's write lands first, once
        api.before_write = None
        api.edit(PROJECT, name, lambda body: body["metadata"]["labels"].update(team="platform"))

    api.before_write = meanwhile
    code, _, err = run(api, capsys, config, "apply")
    assert code == 0, err
    assert "changed since it was read" in err
    assert "409 ABORTED" in err
    service = live(api)
    assert container(service)["image"] == IMAGE
    assert service["metadata"]["labels"]["team"] == "platform"


def test_a_service_not_managed_by_erlmcp_is_not_taken_over(api, capsys, config) -> None:
    foreign = desired_service(load_config(None, project=PROJECT)).service
    foreign["metadata"]["labels"] = {"owner": "someone-else"}
    url = f"http://{api.endpoint}/apis/serving.knative.dev/v1/namespaces/{PROJECT}/services"
    assert requests.post(url, json=foreign, timeout=10).status_code == 200
    writes = len(api.writes)
    code, _, err = run(api, capsys, config, "apply")
    assert code == 2
    assert "not managed by erlmcp" in err
    assert "--update-labels managed-by=erlmcp" in err
    assert len(api.writes) == writes


# -- the local server --------------------------------------------------------------------------------------------


def test_the_local_server_answers_as_the_cloud_run_admin_api_does(api) -> None:
    """Its refusals, in Google's error format: what the deployer's tests rely on is the API's behaviour."""
    base = f"http://{api.endpoint}/apis/serving.knative.dev/v1/namespaces/{PROJECT}/services"
    body = desired_service(load_config(None, project=PROJECT)).service

    def error(response: requests.Response) -> tuple[int, str]:
        document = response.json()["error"]
        assert document["code"] == response.status_code
        assert document["message"]
        return response.status_code, document["status"]

    assert error(requests.get(f"{base}/{NAME}", timeout=10)) == (404, "NOT_FOUND")
    typo = json.loads(json.dumps(body))
    typo["spec"]["template"]["spec"]["containerconcurrency"] = 80
    response = requests.post(base, json=typo, timeout=10)
    assert error(response) == (400, "INVALID_ARGUMENT")
    assert "containerconcurrency" in response.json()["error"]["message"]
    misplaced = json.loads(json.dumps(body))
    misplaced["metadata"]["annotations"][MAX_SCALE] = "5"  # a revision annotation on the service
    assert error(requests.post(base, json=misplaced, timeout=10)) == (400, "INVALID_ARGUMENT")
    created = requests.post(base, json=body, timeout=10).json()
    assert created["metadata"]["namespace"] == "123456789012"
    assert created["metadata"]["generation"] == 1
    assert error(requests.post(base, json=body, timeout=10)) == (409, "ALREADY_EXISTS")
    stale = {**created, "metadata": {**created["metadata"], "resourceVersion": "AA00000000"}}
    assert error(requests.put(f"{base}/{NAME}", json=stale, timeout=10)) == (409, "ABORTED")
    response = requests.put(f"{base}/{NAME}", json=created, headers={"If-Match": '"other"'}, timeout=10)
    assert error(response) == (412, "FAILED_PRECONDITION")
    split = json.loads(json.dumps(created))
    split["spec"]["traffic"] = [{"latestRevision": True, "percent": 90}]
    assert error(requests.put(f"{base}/{NAME}", json=split, timeout=10)) == (400, "INVALID_ARGUMENT")
    renamed = json.loads(json.dumps(created))  # another template under the existing revision's name
    renamed["spec"]["template"]["metadata"]["name"] = created["status"]["latestCreatedRevisionName"]
    renamed["spec"]["template"]["spec"]["containers"][0]["image"] = NEW_IMAGE
    assert error(requests.put(f"{base}/{NAME}", json=renamed, timeout=10)) == (409, "ALREADY_EXISTS")
    same = requests.put(f"{base}/{NAME}", json=created, timeout=10).json()  # the same spec: no new generation
    assert same["metadata"]["generation"] == 1
    assert same["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    assert requests.delete(f"{base}/{NAME}", timeout=10).json()["status"] == "Success"
    assert api.service(PROJECT, NAME) is None
