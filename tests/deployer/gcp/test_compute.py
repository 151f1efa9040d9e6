"""``python -m deployer gce``: the instance template, regional managed instance group, autoscaler, health check and
load balancer backend, planned offline and applied through the real google-cloud-compute clients against a local
server of the Compute Engine REST protocol (:mod:`tests.compute_rest`); and the VMs' startup script, checked by
shellcheck and run with bash against a local stand-in for the metadata server and Secret Manager's REST API."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployer.cli import main
from deployer.gcp import compute, network
from deployer.gcp.compute_api import (
    AUTOSCALER,
    BACKEND_SERVICE,
    HEALTH_CHECK,
    INSTANCE_GROUP_MANAGER,
    INSTANCE_TEMPLATE,
)
from deployer.gcp.config import GcpConfig
from tests.compute_rest import LINK, ComputeRest
from tests.conftest import ROOT

PROJECT = "demo-project"
REGION = "us-central1"
IMAGE = "us-docker.pkg.dev/demo-project/erlmcp/erlmcp:1.2.3"
SHELLCHECK = ROOT / ".venv" / "bin" / "shellcheck"
SECRET_VALUES = {
    "erlmcp-api-keys": b"key-one-0123456789abcdef\nkey-two-fedcba9876543210\n",
    "erlmcp-tls-key": b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
    "erlmcp-redis-url": b"redis://:s3cret-redis-password@10.0.0.5:6379/0\n",
}


def config(**sections: Any) -> GcpConfig:
    return GcpConfig(project=PROJECT, image=IMAGE, **sections)


def by_kind(cfg: GcpConfig) -> dict[str, Any]:
    return {r.kind.title: r for r in compute.desired(cfg)}


@pytest.fixture
def api() -> Iterator[ComputeRest]:
    server = ComputeRest(PROJECT).start()
    yield server
    server.stop()


def cli(server: ComputeRest, capsys: Any, platform: str, *argv: str, config_file: Path | None = None
        ) -> tuple[int, str, str]:  # fmt: skip
    extra = ["--config", str(config_file)] if config_file else []
    code = main([platform, *argv, "--project", PROJECT, "--insecure", "--endpoint", server.endpoint, *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def vpc(api: ComputeRest, capsys: Any) -> ComputeRest:
    """The project with the network applied."""
    assert cli(api, capsys, "network", "apply")[0] == 0
    return api


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "erlmcp-gcp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the plan, offline ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sections",
    [{}, {"secrets": {"keys": ["api-keys", "tls-key", "redis-url"]}},
     {"compute": {"loadBalancingScheme": "INTERNAL_MANAGED", "minReplicas": 1}}, {"zones": ["us-central1-f"]}],
)  # fmt: skip
def test_every_resource_is_a_valid_compute_v1_message_that_survives_a_strict_json_round_trip(sections: Any) -> None:
    for resource in compute.desired(config(**sections)):
        kind = type(resource.message)
        assert kind is resource.kind.message
        assert kind.from_json(kind.to_json(resource.message), ignore_unknown_fields=False) == resource.message


def test_the_template_is_a_shielded_vm_without_external_address_running_as_the_configured_account() -> None:
    cfg = config()
    properties = by_kind(cfg)["instance template"].message.properties
    shielded = properties.shielded_instance_config
    assert (shielded.enable_secure_boot, shielded.enable_vtpm, shielded.enable_integrity_monitoring) == (True,) * 3
    (account,) = properties.service_accounts
    assert account.email == f"erlmcp@{PROJECT}.iam.gserviceaccount.com" == cfg.service_account_email
    assert {s.rsplit("/", 1)[1] for s in account.scopes} == {"cloud-platform", "logging.write", "monitoring.write"}
    (interface,) = properties.network_interfaces
    assert not interface.access_configs  # no external address: egress through Cloud NAT
    assert interface.subnetwork == f"{LINK}projects/{PROJECT}/regions/{REGION}/subnetworks/erlmcp-subnet-{REGION}"
    (disk,) = properties.disks
    assert disk.boot
    assert disk.initialize_params.source_image == "projects/cos-cloud/global/images/family/cos-stable"
    assert properties.machine_type == "e2-standard-4"


def test_the_template_carries_the_startup_script_os_login_and_the_tag_the_firewall_targets() -> None:
    cfg = config()
    properties = by_kind(cfg)["instance template"].message.properties
    metadata = {item.key: item.value for item in properties.metadata.items}
    assert metadata["startup-script"] == compute.startup_script(cfg)
    assert metadata["enable-oslogin"] == "TRUE"
    assert metadata["block-project-ssh-keys"] == "TRUE"
    assert list(properties.tags.items) == [network.SERVER_TAG]
    firewall = {r.name: r.message for r in network.desired(cfg)}
    assert network.SERVER_TAG in firewall["erlmcp-vpc-allow-health-checks"].target_tags


def test_the_template_is_named_by_its_content_and_the_group_points_at_that_name() -> None:
    first, same = by_kind(config()), by_kind(config())
    other = by_kind(GcpConfig(project=PROJECT, image=IMAGE.replace("1.2.3", "1.2.4")))
    name = first["instance template"].name
    assert name == same["instance template"].name
    assert name.startswith("erlmcp-template-")
    assert len(name) == 26
    assert other["instance template"].name != name
    (version,) = first["instance group manager"].message.versions
    assert version.instance_template == f"{LINK}projects/{PROJECT}/global/instanceTemplates/{name}"


def test_the_group_spreads_over_the_zones_autoheals_on_the_health_check_and_rolls_out_proactively() -> None:
    group = by_kind(config())["instance group manager"]
    mig = group.message
    assert [z.zone.rsplit("/", 1)[1] for z in mig.distribution_policy.zones] == [f"{REGION}-{z}" for z in "abc"]
    assert [(p.name, p.port) for p in mig.named_ports] == [("http", 8080)]
    (healing,) = mig.auto_healing_policies
    assert healing.health_check.endswith(f"/regions/{REGION}/healthChecks/erlmcp-health")
    assert healing.initial_delay_sec == 300
    update = mig.update_policy
    assert (update.type_, update.max_surge.fixed, update.max_unavailable.fixed) == ("PROACTIVE", 3, 0)
    assert mig.target_size == 2
    assert group.create_only == {"target_size"}


def test_the_autoscaler_is_2_to_10_at_70_percent_cpu_with_a_60_second_cool_down() -> None:
    policy = by_kind(config())["autoscaler"].message.autoscaling_policy
    assert (policy.min_num_replicas, policy.max_num_replicas) == (2, 10)
    assert (policy.cpu_utilization.utilization_target, policy.cool_down_period_sec) == (0.7, 60)


def test_the_health_check_gets_slash_health_on_8080_and_the_backend_has_no_affinity_and_a_30s_timeout() -> None:
    found = by_kind(config())
    check = found["health check"].message
    assert (check.type_, check.http_health_check.request_path, check.http_health_check.port) == ("HTTP", "/health",
                                                                                                  8080)  # fmt: skip
    backend = found["backend service"].message
    assert (backend.session_affinity, backend.timeout_sec, backend.port_name) == ("NONE", 30, "http")
    assert backend.load_balancing_scheme == "EXTERNAL_MANAGED"
    assert backend.backends[0].group == f"{LINK}projects/{PROJECT}/regions/{REGION}/instanceGroups/erlmcp-mig"
    assert [r.kind for r in compute.desired(config())] == [HEALTH_CHECK, INSTANCE_TEMPLATE, INSTANCE_GROUP_MANAGER,
                                                            AUTOSCALER, BACKEND_SERVICE]  # fmt: skip


# -- the startup script ------------------------------------------------------------------------------------------


def rendered(tmp_path: Path, keys: tuple[str, ...] = ("api-keys", "tls-key", "redis-url")) -> Path:
    path = tmp_path / "startup.sh"
    path.write_text(compute.startup_script(config(secrets={"keys": list(keys)})), encoding="utf-8")
    return path


@pytest.mark.parametrize("keys", [(), ("api-keys",), ("api-keys", "tls-key", "redis-url", "otel-ca-cert")])
def test_the_startup_script_passes_shellcheck_at_style_severity(tmp_path: Path, keys: tuple[str, ...]) -> None:
    script = rendered(tmp_path, keys)
    found = subprocess.run([str(SHELLCHECK), "--severity=style", "--shell=bash", str(script)], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert found.returncode == 0, found.stdout
    assert script.read_text().startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script.read_text()


def test_the_settings_are_shell_quoted_so_a_value_cannot_become_code() -> None:
    text = compute.startup_script(config(secrets={"keys": ["api-keys", "redis-url"]}))
    assert f"readonly IMAGE={IMAGE}\n" in text
    assert "readonly PROJECT=demo-project\n" in text
    assert ("readonly SECRETS=('erlmcp-api-keys|api-keys|ERLMCP_API_KEY_FILE|file' "
            "'erlmcp-redis-url|redis-url|ERLMCP_REDIS_URL|env')") in text  # fmt: skip
    assert "http://metadata.google.internal/computeMetadata/v1" in text
    assert "https://secretmanager.googleapis.com/v1" in text  # the production defaults


def test_the_unit_runs_the_hardened_container_restarted_always_with_the_secret_files_mounted(tmp_path: Path) -> None:
    unit = subprocess.run(["bash", str(rendered(tmp_path)), "unit"], capture_output=True, text=True, check=True).stdout
    (start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    words = start.removeprefix("ExecStart=").split()
    assert words[:2] == ["/usr/bin/docker", "run"]
    assert words[-1] == IMAGE
    for flag in ("--read-only", "--user 1000:1000", "--cap-drop ALL", "--tmpfs /tmp", "--tmpfs /var/run",
                 "--publish 8080:8080", "--env-file /run/erlmcp/env",
                 "--volume /run/erlmcp/secrets:/run/secrets/erlmcp:ro",
                 "--env ERLMCP_API_KEY_FILE=/run/secrets/erlmcp/api-keys",
                 "--env ERLMCP_TLS_KEY_FILE=/run/secrets/erlmcp/tls-key"):  # fmt: skip
        assert f" {flag} " in f" {' '.join(words)} ", flag
    assert "ERLMCP_REDIS_URL" not in start  # it comes from the env file, never the command line
    assert "Restart=always" in unit.splitlines()
    assert "ExecStartPre=-/usr/bin/docker-credential-gcr configure-docker --registries=us-docker.pkg.dev" in unit


@dataclass
class GoogleStandIn:
    """The metadata server's token endpoint and Secret Manager's ``versions/latest:access``, as they answer."""

    token: str = "ya29.local-test-token-7f3a9c"
    secrets: dict[str, bytes] = field(default_factory=lambda: dict(SECRET_VALUES))
    answer_first: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses to answer before the real one
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (path, Metadata-Flavor, Authorization)

    def answer(self, path: str, headers: Any) -> tuple[int, dict[str, Any]]:
        self.seen.append((path, headers.get("Metadata-Flavor", ""), headers.get("Authorization", "")))
        queued = self.answer_first.get(path)
        if queued:
            return queued.pop(0), {"error": {"code": 503, "message": "try again"}}
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if headers.get("Metadata-Flavor") != "Google" or headers.get("X-Forwarded-For"):
                return 403, {"error": "Missing Metadata-Flavor:Google header."}
            return 200, {"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"}
        prefix, suffix = f"/v1/projects/{PROJECT}/secrets/", "/versions/latest:access"
        if not (path.startswith(prefix) and path.endswith(suffix)):
            return 404, {"error": {"code": 404, "message": f"no route {path}"}}
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": {"code": 401, "message": "Request had invalid authentication credentials."}}
        secret = path.removeprefix(prefix).removesuffix(suffix)
        if secret not in self.secrets:
            return 404, {"error": {"code": 404, "message": f"Secret [{secret}] not found or has no versions."}}
        data = base64.b64encode(self.secrets[secret]).decode()
        return 200, {"name": f"projects/123456/secrets/{secret}/versions/4",
                     "payload": {"data": data, "dataCrc32c": "1234567"}}  # fmt: skip


@pytest.fixture
def google() -> Iterator[tuple[GoogleStandIn, str]]:
    stand_in = GoogleStandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = stand_in.answer(self.path, self.headers)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield stand_in, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def fetch_secrets(script: Path, base: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(ERLMCP_METADATA_URL=f"{base}/computeMetadata/v1", ERLMCP_SECRET_MANAGER_URL=f"{base}/v1",
               ERLMCP_RUN_DIR=str(run_dir))  # fmt: skip
    return subprocess.run(["bash", str(script), "secrets"], capture_output=True, text=True, env=env, timeout=60,
                          check=False)  # fmt: skip


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the script gives the files to UID 1000: needs root")


@needs_root
def test_the_script_reads_each_secret_into_a_0400_file_of_uid_1000_and_the_redis_url_into_the_env_file(
    tmp_path: Path, google: tuple[GoogleStandIn, str]
) -> None:
    stand_in, base = google
    run_dir = tmp_path / "run"
    done = fetch_secrets(rendered(tmp_path), base, run_dir)
    assert done.returncode == 0, done.stderr
    for key, secret in (("api-keys", "erlmcp-api-keys"), ("tls-key", "erlmcp-tls-key")):
        path = run_dir / "secrets" / key
        assert path.read_bytes() == SECRET_VALUES[secret]  # byte for byte, final newline included
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o400, 1000, 1000)
    folder = (run_dir / "secrets").stat()
    assert (stat.S_IMODE(folder.st_mode), folder.st_uid) == (0o500, 1000)
    assert (run_dir / "env").read_text() == "ERLMCP_REDIS_URL=redis://:s3cret-redis-password@10.0.0.5:6379/0\n"
    assert stat.S_IMODE((run_dir / "env").stat().st_mode) == 0o400
    assert sorted(p.name for p in (run_dir / "secrets").iterdir()) == ["api-keys", "tls-key"]  # no leftovers
    output = done.stdout + done.stderr
    for value in [stand_in.token, "s3cret-redis-password", "key-one", "MIIEvQ"]:
        assert value not in output
    assert stand_in.seen[0][1] == "Google"  # the metadata server is asked with its header
    assert all(auth == f"Bearer {stand_in.token}" for path, _, auth in stand_in.seen[1:])


@needs_root
def test_the_script_retries_an_unavailable_metadata_server_and_secret_manager_with_backoff(
    tmp_path: Path, google: tuple[GoogleStandIn, str]
) -> None:
    stand_in, base = google
    token_path = "/computeMetadata/v1/instance/service-accounts/default/token"
    secret_path = f"/v1/projects/{PROJECT}/secrets/erlmcp-api-keys/versions/latest:access"
    stand_in.answer_first = {token_path: [503], secret_path: [429]}
    done = fetch_secrets(rendered(tmp_path, ("api-keys",)), base, tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert [p for p, _, _ in stand_in.seen] == [token_path, token_path, secret_path, secret_path]
    assert "HTTP 503; retrying in 1s" in done.stderr
    assert "HTTP 429; retrying in 1s" in done.stderr
    assert (tmp_path / "run" / "secrets" / "api-keys").read_bytes() == SECRET_VALUES["erlmcp-api-keys"]


@needs_root
def test_a_missing_secret_stops_the_script_naming_it_and_what_to_do(
    tmp_path: Path, google: tuple[GoogleStandIn, str]
) -> None:
    stand_in, base = google
    del stand_in.secrets["erlmcp-tls-key"]
    done = fetch_secrets(rendered(tmp_path), base, tmp_path / "run")
    assert done.returncode == 1
    assert "cannot read secret erlmcp-tls-key" in done.stderr
    assert "roles/secretmanager.secretAccessor" in done.stderr
    assert "HTTP 404" in done.stderr
    assert "retrying" not in done.stderr
    assert not (tmp_path / "run" / "secrets" / "tls-key").exists()


# -- against the API ---------------------------------------------------------------------------------------------


def test_gce_apply_before_the_network_exits_1_saying_which_command_makes_it(api: ComputeRest, capsys: Any) -> None:
    code, out, err = cli(api, capsys, "gce", "apply")
    assert code == 1
    assert out == ""
    assert "the network erlmcp-vpc does not exist: run `python -m deployer network apply` first" in err
    assert api.writes == []
    code, out, err = cli(api, capsys, "gce", "plan")
    assert code == 0
    assert "5 to create" in out
    assert "warning: the network erlmcp-vpc does not exist" in err


def test_apply_creates_the_group_and_applying_again_writes_nothing(vpc: ComputeRest, capsys: Any) -> None:
    before = len(vpc.writes)
    code, out, err = cli(vpc, capsys, "gce", "apply", "--image", IMAGE)
    assert code == 0, err
    assert "applied: 5 created, 0 updated, 0 deleted, 0 unchanged" in out
    collections = [w.path.split("/")[-1].split("?")[0] for w in vpc.writes[before:]]
    assert collections == ["healthChecks", "instanceTemplates", "instanceGroupManagers", "autoscalers",
                           "backendServices"]  # fmt: skip
    mig = vpc.get("instanceGroupManagers", "erlmcp-mig", REGION)
    assert mig["targetSize"] == 2
    assert mig["versions"][0]["instanceTemplate"].endswith(vpc.names("instanceTemplates")[0])
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", "--image", IMAGE, "--json")
    assert code == 0
    assert json.loads(out)["summary"]["NO CHANGE"] == 5
    assert len(vpc.writes) == writes


def test_the_group_size_the_autoscaler_moved_is_not_drift(vpc: ComputeRest, capsys: Any) -> None:
    assert cli(vpc, capsys, "gce", "apply")[0] == 0
    vpc.edit("instanceGroupManagers", "erlmcp-mig", lambda m: m.update(targetSize=7), REGION)
    assert "5 unchanged" in cli(vpc, capsys, "gce", "plan")[1]


def test_an_autoscaler_maximum_changed_by_someone_is_an_update_and_apply_puts_it_back(vpc: ComputeRest,
                                                                                     capsys: Any) -> None:  # fmt: skip
    assert cli(vpc, capsys, "gce", "apply")[0] == 0
    vpc.edit("autoscalers", "erlmcp-autoscaler", lambda a: a["autoscalingPolicy"].update(maxNumReplicas=3), REGION)
    code, out, _ = cli(vpc, capsys, "gce", "plan")
    assert code == 0
    assert "UPDATE     autoscaler              erlmcp-autoscaler" in out
    assert "autoscaling_policy.max_num_replicas: 3 -> 10" in out
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply")
    assert code == 0
    assert "1 updated" in out
    (patch,) = vpc.writes[writes:]
    assert patch.method == "PATCH"
    assert patch.path.endswith(f"/regions/{REGION}/autoscalers")
    assert vpc.get("autoscalers", "erlmcp-autoscaler", REGION)["autoscalingPolicy"]["maxNumReplicas"] == 10
    assert "5 unchanged" in cli(vpc, capsys, "gce", "plan")[1]


def test_backend_drift_is_patched_with_the_fingerprint(vpc: ComputeRest, capsys: Any) -> None:
    assert cli(vpc, capsys, "gce", "apply")[0] == 0
    vpc.edit("backendServices", "erlmcp-backend", lambda b: b.update(sessionAffinity="CLIENT_IP", timeoutSec=5),
             REGION)  # fmt: skip
    code, out, _ = cli(vpc, capsys, "gce", "apply")
    assert code == 0
    assert 'session_affinity: "CLIENT_IP" -> "NONE"' in out
    assert "timeout_sec: 5 -> 30" in out
    stored = vpc.get("backendServices", "erlmcp-backend", REGION)
    assert (stored["sessionAffinity"], stored["timeoutSec"]) == ("NONE", 30)
    assert vpc.writes[-1].body is not None
    assert "fingerprint" in vpc.writes[-1].body


def test_a_new_image_is_a_new_template_the_group_is_pointed_at_and_the_old_one_stays(vpc: ComputeRest,
                                                                                    capsys: Any) -> None:  # fmt: skip
    assert cli(vpc, capsys, "gce", "apply", "--image", IMAGE)[0] == 0
    (old,) = vpc.names("instanceTemplates")
    newer = IMAGE.replace("1.2.3", "1.3.0")
    code, out, _ = cli(vpc, capsys, "gce", "plan", "--image", newer, "--json")
    changes = {c["kind"]: c for c in json.loads(out)["changes"]}
    assert changes["instance template"]["action"] == "CREATE"
    assert changes["instance template"]["name"] != old
    group = changes["instance group manager"]
    assert group["action"] == "UPDATE"
    assert [d["field"] for d in group["differences"]] == ["versions[0].instance_template"]
    assert group["differences"][0]["actual"].endswith(old)
    assert {c["action"] for k, c in changes.items() if k not in ("instance template", "instance group manager")} == {
        "NO CHANGE"
    }
    assert cli(vpc, capsys, "gce", "apply", "--image", newer)[0] == 0
    new = changes["instance template"]["name"]
    assert sorted(vpc.names("instanceTemplates")) == sorted([old, new])
    mig = vpc.get("instanceGroupManagers", "erlmcp-mig", REGION)
    assert mig["versions"][0]["instanceTemplate"].endswith(f"/instanceTemplates/{new}")
    assert newer in vpc.get("instanceTemplates", new)["properties"]["metadata"]["items"][0]["value"]


def test_apply_dry_run_prints_the_plan_and_writes_nothing(vpc: ComputeRest, capsys: Any) -> None:
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", "--dry-run")
    assert code == 0
    assert "plan (dry run: nothing written): 5 to create" in out
    assert len(vpc.writes) == writes


def test_an_api_refusal_exits_1_naming_the_resource(vpc: ComputeRest, capsys: Any) -> None:
    vpc.refuse("POST", "instanceGroupManagers", 403)
    code, out, err = cli(vpc, capsys, "gce", "apply")
    assert code == 1
    assert out == ""
    assert "cannot create instance group manager erlmcp-mig" in err
    assert "(HTTP 403)" in err
    assert vpc.names("instanceGroupManagers") == []
    assert vpc.names("autoscalers") == []
    code, out, _ = cli(vpc, capsys, "gce", "apply")
    assert code == 0
    assert "3 created, 0 updated, 0 deleted, 2 unchanged" in out


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("secrets:\n  keys: [erlang-cookie]\n", "secrets.keys: no erlmcp secret 'erlang-cookie'; known: api-keys"),
        ("image: 'gcr.io/x/y:1; rm -rf /'\n", "image: 'gcr.io/x/y:1; rm -rf /' is not a container image reference"),
        ("compute:\n  minReplicas: 5\n  maxReplicas: 2\n", "need 1 <= minReplicas <= maxReplicas <= 1000"),
        ("compute:\n  cpuTarget: 70\n", "compute.cpuTarget: 70.0 is a fraction of a CPU"),
        ("zones: [europe-west1-b]\n", "zones: 'europe-west1-b' is not a zone of region us-central1"),
        ("compute:\n  metricsPort: 8080\n", "compute.port and compute.metricsPort must differ"),
        ("compute:\n  loadBalancingScheme: EXTERNAL\n", "compute.loadBalancingScheme: 'EXTERNAL' is not one of"),
        ("compute:\n  healthCheckPath: health\n", "compute.healthCheckPath: 'health' must be a path"),
        ("compute:\n  replicas: 3\n", "compute.replicas: Extra inputs are not permitted"),
    ],
)
def test_a_bad_configuration_exits_2_naming_the_key_and_calls_nothing(
    api: ComputeRest, capsys: Any, tmp_path: Path, yaml_text: str, message: str
) -> None:
    code, out, err = cli(api, capsys, "gce", "apply", config_file=write_config(tmp_path, yaml_text))
    assert code == 2
    assert out == ""
    assert message in err
    assert api.calls == []
