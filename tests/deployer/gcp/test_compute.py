"""``python -m deployer gce``: the instance template, regional managed instance group, autoscaler, health check,
load balancer backend and the global external Application Load Balancer's frontend (address, managed certificate,
URL maps, proxies, forwarding rules, Cloud Armor), planned offline and applied through the real
google-cloud-compute clients against a local server of the Compute Engine REST protocol (:mod:`tests.compute_rest`);
and the VMs' startup script, checked by shellcheck and run with bash against a local stand-in for the metadata
server and Secret Manager's REST API."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.cloud import compute_v1

from deployer.cli import main
from deployer.errors import CloudError, ValuesError
from deployer.gcp import compute, network
from deployer.gcp.compute_api import (
    AUTOSCALER,
    BACKEND_SERVICE,
    GLOBAL_ADDRESS,
    GLOBAL_BACKEND_SERVICE,
    GLOBAL_FORWARDING_RULE,
    GLOBAL_HEALTH_CHECK,
    HEALTH_CHECK,
    INSTANCE_GROUP_MANAGER,
    INSTANCE_TEMPLATE,
    SECURITY_POLICY,
    SSL_CERTIFICATE,
    TARGET_HTTP_PROXY,
    TARGET_HTTPS_PROXY,
    URL_MAP,
    ComputeApi,
    Location,
    Resource,
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
     {"compute": {"loadBalancingScheme": "INTERNAL_MANAGED", "minReplicas": 1}}, {"zones": ["us-central1-f"]},
     {"compute": {"frontend": {"enabled": True, "domains": ["a.example.com"], "rateLimitAction": "rate_based_ban"}}}],
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
    assert healing.health_check == f"{LINK}projects/{PROJECT}/global/healthChecks/erlmcp-health"  # the LB's check
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
    assert [r.kind for r in compute.desired(config())] == [GLOBAL_HEALTH_CHECK, INSTANCE_TEMPLATE,
                                                            INSTANCE_GROUP_MANAGER, AUTOSCALER,
                                                            GLOBAL_BACKEND_SERVICE]  # fmt: skip


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
    vpc.edit("backendServices", "erlmcp-backend", lambda b: b.update(sessionAffinity="CLIENT_IP", timeoutSec=5))
    code, out, _ = cli(vpc, capsys, "gce", "apply")
    assert code == 0
    assert 'session_affinity: "CLIENT_IP" -> "NONE"' in out
    assert "timeout_sec: 5 -> 30" in out
    stored = vpc.get("backendServices", "erlmcp-backend")  # global
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


# -- the global external Application Load Balancer in front of the group -----------------------------------------

DOMAIN = "mcp.example.com"
ARMOR = "erlmcp-armor"
FRONTEND_YAML = f"compute:\n  frontend:\n    enabled: true\n    domains: [{DOMAIN}]\n"
FRONTEND_ORDER = [
    ("health check", "erlmcp-health"), ("instance template", None), ("instance group manager", "erlmcp-mig"),
    ("autoscaler", "erlmcp-autoscaler"), ("security policy", "erlmcp-armor"), ("backend service", "erlmcp-backend"),
    ("global address", "erlmcp-ip"), ("SSL certificate", None), ("URL map", "erlmcp-url-map"),
    ("target HTTPS proxy", "erlmcp-https-proxy"), ("global forwarding rule", "erlmcp-https"),
    ("URL map", "erlmcp-http-redirect"), ("target HTTP proxy", "erlmcp-http-proxy"),
    ("global forwarding rule", "erlmcp-http"),
]  # fmt: skip


def frontend(**settings: Any) -> GcpConfig:
    return config(compute={"frontend": {"enabled": True, "domains": [DOMAIN], **settings}})


def frontend_file(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, FRONTEND_YAML + extra)


def link(key: str) -> str:
    return f"{LINK}projects/{PROJECT}/{key}"


def test_without_the_frontend_the_health_check_and_backend_service_are_global_and_nothing_else_is_made() -> None:
    resources = compute.desired(config())
    assert [r.kind for r in resources] == [GLOBAL_HEALTH_CHECK, INSTANCE_TEMPLATE, INSTANCE_GROUP_MANAGER, AUTOSCALER,
                                           GLOBAL_BACKEND_SERVICE]  # fmt: skip
    backend = resources[-1].message
    assert backend.health_checks == [link("global/healthChecks/erlmcp-health")]
    assert "security_policy" not in backend
    (healing,) = resources[2].message.auto_healing_policies
    assert healing.health_check == link("global/healthChecks/erlmcp-health")


def test_internal_managed_keeps_the_regional_backend_service_and_health_check() -> None:
    resources = compute.desired(config(compute={"loadBalancingScheme": "INTERNAL_MANAGED"}))
    assert [r.kind for r in resources] == [HEALTH_CHECK, INSTANCE_TEMPLATE, INSTANCE_GROUP_MANAGER, AUTOSCALER,
                                           BACKEND_SERVICE]  # fmt: skip
    assert resources[-1].message.health_checks == [link(f"regions/{REGION}/healthChecks/erlmcp-health")]
    assert compute.absent(config(compute={"loadBalancingScheme": "INTERNAL_MANAGED"})) == []


def test_the_frontend_resources_come_in_an_order_where_each_refers_only_to_earlier_ones() -> None:
    resources = compute.desired(frontend())
    assert [(r.kind.title, r.name if n else None) for r, (_, n) in zip(resources, FRONTEND_ORDER, strict=True)] == [
        (kind, name) for kind, name in FRONTEND_ORDER
    ]
    where = Location(PROJECT, REGION)
    earlier: set[str] = set()
    for resource in resources:
        body = json.dumps(type(resource.message).to_dict(resource.message))
        referenced = {where.link(r.kind, r.name) for r in resources if r is not resource} & set(
            re.findall(r'"(https://[^"]+)"', body)
        )
        assert referenced <= earlier, resource.name
        earlier.add(where.link(resource.kind, resource.name))
    assert len(earlier) == len(resources)


def test_the_certificate_is_google_managed_for_the_domains_and_named_by_them() -> None:
    found = {r.kind: r for r in compute.desired(frontend(domains=["b.example.com", "a.example.com"]))}
    certificate = found[SSL_CERTIFICATE]
    assert certificate.message.type_ == "MANAGED"
    assert list(certificate.message.managed.domains) == ["a.example.com", "b.example.com"]
    assert certificate.name.startswith("erlmcp-cert-")
    same = {r.kind: r.name for r in compute.desired(frontend(domains=["a.example.com", "b.example.com"]))}
    other = {r.kind: r.name for r in compute.desired(frontend(domains=["a.example.com"]))}
    assert same[SSL_CERTIFICATE] == certificate.name != other[SSL_CERTIFICATE]
    proxy = found[TARGET_HTTPS_PROXY].message
    assert proxy.ssl_certificates == [link(f"global/sslCertificates/{certificate.name}")]
    assert proxy.url_map == link("global/urlMaps/erlmcp-url-map")


def test_the_security_policy_throttles_each_client_ip_with_429_and_allows_the_rest() -> None:
    found = {r.kind: r for r in compute.desired(frontend())}
    policy = found[SECURITY_POLICY].message
    rate, default = policy.rules
    assert (rate.action, rate.priority) == ("throttle", 1000)
    limits = rate.rate_limit_options
    assert (limits.conform_action, limits.exceed_action, limits.enforce_on_key) == ("allow", "deny(429)", "IP")
    assert (limits.rate_limit_threshold.count, limits.rate_limit_threshold.interval_sec) == (600, 60)
    assert list(rate.match.config.src_ip_ranges) == ["*"]
    assert (default.priority, default.action, list(default.match.config.src_ip_ranges)) == (2147483647, "allow",
                                                                                           ["*"])  # fmt: skip
    backend = found[GLOBAL_BACKEND_SERVICE]
    assert backend.message.security_policy == link("global/securityPolicies/erlmcp-armor")
    banned = {r.kind: r for r in compute.desired(frontend(rateLimitAction="rate_based_ban", rateLimitCount=100,
                                                          rateLimitIntervalSec=10, banDurationSec=300))}  # fmt: skip
    rule = banned[SECURITY_POLICY].message.rules[0]
    assert rule.action == "rate_based_ban"
    options = rule.rate_limit_options
    assert (options.rate_limit_threshold.count, options.rate_limit_threshold.interval_sec) == (100, 10)
    assert options.ban_duration_sec == 300


def test_port_443_serves_the_backend_and_port_80_redirects_to_https_both_at_the_reserved_address() -> None:
    resources = compute.desired(frontend())
    maps = {r.name: r.message for r in resources if r.kind is URL_MAP}
    assert maps["erlmcp-url-map"].default_service == link("global/backendServices/erlmcp-backend")
    redirect = maps["erlmcp-http-redirect"].default_url_redirect
    assert (redirect.https_redirect, redirect.redirect_response_code) == (True, "MOVED_PERMANENTLY_DEFAULT")
    rules = {r.name: r.message for r in resources if r.kind is GLOBAL_FORWARDING_RULE}
    for name, port, target in (("erlmcp-https", "443", "targetHttpsProxies/erlmcp-https-proxy"),
                               ("erlmcp-http", "80", "targetHttpProxies/erlmcp-http-proxy")):  # fmt: skip
        rule = rules[name]
        assert (rule.port_range, rule.target) == (port, link(f"global/{target}"))
        assert rule.I_p_address == link("global/addresses/erlmcp-ip")
        assert (rule.load_balancing_scheme, rule.network_tier) == ("EXTERNAL_MANAGED", "PREMIUM")
    http_proxy = next(r.message for r in resources if r.kind is TARGET_HTTP_PROXY)
    assert http_proxy.url_map == link("global/urlMaps/erlmcp-http-redirect")


def test_plan_on_an_empty_project_lists_the_frontend_in_order(vpc: ComputeRest, capsys: Any, tmp_path: Path) -> None:
    code, out, _ = cli(vpc, capsys, "gce", "plan", "--json", config_file=frontend_file(tmp_path))
    assert code == 0
    changes = json.loads(out)["changes"]
    assert {c["action"] for c in changes} == {"CREATE"}
    assert [(c["kind"], c["name"] if n else None) for c, (_, n) in zip(changes, FRONTEND_ORDER, strict=True)] == [
        (kind, name) for kind, name in FRONTEND_ORDER
    ]


def test_apply_creates_the_frontend_and_applying_again_writes_nothing(vpc: ComputeRest, capsys: Any,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    before = len(vpc.writes)
    path = frontend_file(tmp_path)
    code, out, err = cli(vpc, capsys, "gce", "apply", config_file=path)
    assert code == 0, err
    assert "applied: 14 created, 0 updated, 0 deleted, 0 unchanged" in out
    paths = [w.path.split("/compute/v1/projects/demo-project/")[1] for w in vpc.writes[before:]]
    assert paths == ["global/healthChecks", "global/instanceTemplates", f"regions/{REGION}/instanceGroupManagers",
                     f"regions/{REGION}/autoscalers", "global/securityPolicies", "global/backendServices",
                     "global/backendServices/erlmcp-backend/setSecurityPolicy", "global/addresses",
                     "global/sslCertificates", "global/urlMaps", "global/targetHttpsProxies", "global/forwardingRules",
                     "global/urlMaps", "global/targetHttpProxies", "global/forwardingRules"]  # fmt: skip
    assert vpc.get("backendServices", "erlmcp-backend")["securityPolicy"] == link(f"global/securityPolicies/{ARMOR}")
    address = vpc.get("addresses", "erlmcp-ip")["address"]
    assert vpc.get("forwardingRules", "erlmcp-https")["IPAddress"] == address
    assert vpc.get("forwardingRules", "erlmcp-http")["IPAddress"] == address
    (certificate,) = vpc.names("sslCertificates")
    assert vpc.get("sslCertificates", certificate)["managed"]["domains"] == [DOMAIN]
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", "--json", config_file=path)
    assert code == 0
    assert json.loads(out)["summary"]["NO CHANGE"] == 14
    assert len(vpc.writes) == writes


def test_a_rate_limit_edited_by_someone_is_drift_and_apply_patches_that_rule_only(vpc: ComputeRest, capsys: Any,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    vpc.edit("securityPolicies", "erlmcp-armor",
             lambda p: p["rules"][0]["rateLimitOptions"]["rateLimitThreshold"].update(count=5000))  # fmt: skip
    code, out, _ = cli(vpc, capsys, "gce", "plan", config_file=path)
    assert code == 0
    assert "UPDATE     security policy         erlmcp-armor" in out
    assert "rules[0].rate_limit_options.rate_limit_threshold.count: 5000 -> 600" in out
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", config_file=path)
    assert code == 0
    assert "1 updated" in out
    (patch,) = vpc.writes[writes:]
    assert (patch.method, patch.path.rsplit("/", 2)[1:]) == ("POST", ["erlmcp-armor", "patchRule"])
    rules = vpc.get("securityPolicies", "erlmcp-armor")["rules"]
    assert rules[0]["rateLimitOptions"]["rateLimitThreshold"] == {"count": 600, "intervalSec": 60}
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]


def test_rules_added_or_removed_by_someone_are_removed_or_added_back(vpc: ComputeRest, capsys: Any,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    stranger = {
        "priority": 10,
        "action": "deny(403)",
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["198.51.100.0/24"]}},
    }
    vpc.edit("securityPolicies", "erlmcp-armor", lambda p: p.update(rules=[stranger, p["rules"][1]]))  # fmt: skip
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", config_file=path)
    assert code == 0
    assert "1 updated" in out
    assert [w.path.rsplit("/", 1)[1] for w in vpc.writes[writes:]] == ["removeRule", "addRule"]
    assert [r["priority"] for r in vpc.get("securityPolicies", "erlmcp-armor")["rules"]] == [1000, 2147483647]
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]


def test_a_policy_taken_off_the_backend_service_is_drift_and_apply_sets_it_again(vpc: ComputeRest, capsys: Any,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    vpc.edit("backendServices", "erlmcp-backend", lambda b: b.pop("securityPolicy"))
    code, out, _ = cli(vpc, capsys, "gce", "plan", config_file=path)
    assert "UPDATE     backend service         erlmcp-backend" in out
    assert "security_policy: (unset) -> " in out
    writes = len(vpc.writes)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    (call,) = vpc.writes[writes:]
    assert (call.method, call.path.rsplit("/", 1)[1]) == ("POST", "setSecurityPolicy")
    assert vpc.get("backendServices", "erlmcp-backend")["securityPolicy"] == link(f"global/securityPolicies/{ARMOR}")
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]


def test_new_domains_are_a_new_certificate_the_https_proxy_moves_to_and_the_old_one_stays(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    assert cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))[0] == 0
    (old,) = vpc.names("sslCertificates")
    more = write_config(tmp_path, FRONTEND_YAML.replace(f"[{DOMAIN}]", f"[{DOMAIN}, api.example.com]"))
    code, out, _ = cli(vpc, capsys, "gce", "plan", "--json", config_file=more)
    changes = [c for c in json.loads(out)["changes"] if c["action"] != "NO CHANGE"]
    assert [(c["action"], c["kind"]) for c in changes] == [("CREATE", "SSL certificate"),
                                                           ("UPDATE", "target HTTPS proxy")]  # fmt: skip
    assert [d["field"] for d in changes[1]["differences"]] == ["ssl_certificates"]
    assert cli(vpc, capsys, "gce", "apply", config_file=more)[0] == 0
    new = changes[0]["name"]
    assert sorted(vpc.names("sslCertificates")) == sorted([old, new])
    proxy = vpc.get("targetHttpsProxies", "erlmcp-https-proxy")
    assert proxy["sslCertificates"] == [link(f"global/sslCertificates/{new}")]
    assert vpc.get("sslCertificates", new)["managed"]["domains"] == ["api.example.com", DOMAIN]


def test_the_regional_backend_service_and_health_check_of_earlier_versions_are_replaced_by_global_ones(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    internal = write_config(tmp_path, "compute:\n  loadBalancingScheme: INTERNAL_MANAGED\n")
    assert cli(vpc, capsys, "gce", "apply", config_file=internal)[0] == 0
    assert vpc.get("backendServices", "erlmcp-backend", REGION)["loadBalancingScheme"] == "INTERNAL_MANAGED"
    code, out, err = cli(vpc, capsys, "gce", "apply", "--json")
    assert code == 0, err
    changes = [(c["action"], c["kind"]) for c in json.loads(out)["changes"] if c["action"] != "NO CHANGE"]
    assert changes == [("CREATE", "health check"), ("UPDATE", "instance group manager"),
                       ("CREATE", "backend service"), ("DELETE", "regional backend service"),
                       ("DELETE", "regional health check")]  # fmt: skip
    assert not [k for k in vpc.resources if k.startswith(f"regions/{REGION}/backendServices/")]
    assert not [k for k in vpc.resources if k.startswith(f"regions/{REGION}/healthChecks/")]
    mig = vpc.get("instanceGroupManagers", "erlmcp-mig", REGION)
    assert mig["autoHealingPolicies"][0]["healthCheck"] == link("global/healthChecks/erlmcp-health")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("compute:\n  frontend:\n    enabled: true\n",
         "compute.frontend.domains: the Google-managed certificate needs at least one domain"),
        (FRONTEND_YAML.replace(DOMAIN, "'*.example.com'"), "compute.frontend.domains: '*.example.com' is not a fully"),
        (FRONTEND_YAML + "    rateLimitIntervalSec: 45\n", "compute.frontend.rateLimitIntervalSec: 45 is not one of"),
        (FRONTEND_YAML + "    rateLimitAction: deny\n", "compute.frontend.rateLimitAction: 'deny' is not one of"),
        (FRONTEND_YAML + "    rateLimitCount: 0\n", "compute.frontend.rateLimitCount: 0 is below 1"),
        (FRONTEND_YAML + "  loadBalancingScheme: INTERNAL_MANAGED\n",
         "compute.frontend: the frontend is a global external Application Load Balancer"),
        (FRONTEND_YAML + "    certificate: x\n", "compute.frontend.certificate: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_frontend_configuration_exits_2_naming_the_key_and_calls_nothing(
    api: ComputeRest, capsys: Any, tmp_path: Path, yaml_text: str, message: str
) -> None:
    code, out, err = cli(api, capsys, "gce", "plan", config_file=write_config(tmp_path, yaml_text))
    assert code == 2
    assert out == ""
    assert message in err
    assert api.calls == []


# -- the stand-in refuses what Compute Engine refuses (through the real clients) -----------------------------------


def refused(server: ComputeRest, call: Callable[[ComputeApi], object]) -> str:
    api = ComputeApi.connect(Location(PROJECT, REGION), server.endpoint, insecure=True)
    try:
        with pytest.raises(CloudError) as caught:
            call(api)
    finally:
        api.close()
    return str(caught.value)


def rule(priority: int, action: str = "allow") -> Any:
    every = compute_v1.SecurityPolicyRuleMatcher(
        versioned_expr="SRC_IPS_V1", config=compute_v1.SecurityPolicyRuleMatcherConfig(src_ip_ranges=["*"])
    )
    return compute_v1.SecurityPolicyRule(priority=priority, action=action, match=every)


BAD_FRONTENDS: dict[str, tuple[Callable[[], Resource], str]] = {
    "a URL map with neither a service nor a redirect": (
        lambda: Resource(URL_MAP, compute_v1.UrlMap(name="bad-map")), "HTTP 400"),
    "a URL map to a regional backend service": (
        lambda: Resource(URL_MAP, compute_v1.UrlMap(name="bad-map", default_service=link(
            f"regions/{REGION}/backendServices/internal-backend"))), "must be a global backend service"),
    "an HTTPS proxy without a certificate": (
        lambda: Resource(TARGET_HTTPS_PROXY, compute_v1.TargetHttpsProxy(
            name="bad-proxy", url_map=link("global/urlMaps/erlmcp-url-map"))), "needs 1 to 15 sslCertificates"),
    "a forwarding rule to a proxy that does not exist": (
        lambda: Resource(GLOBAL_FORWARDING_RULE, compute_v1.ForwardingRule(
            name="bad-rule", port_range="8443", load_balancing_scheme="EXTERNAL_MANAGED",
            target=link("global/targetHttpsProxies/nothing"))), "HTTP 404"),
    "a second forwarding rule on the address's port 443": (
        lambda: Resource(GLOBAL_FORWARDING_RULE, compute_v1.ForwardingRule(
            name="bad-rule", port_range="443", load_balancing_scheme="EXTERNAL_MANAGED", I_p_protocol="TCP",
            I_p_address=link("global/addresses/erlmcp-ip"),
            target=link("global/targetHttpsProxies/erlmcp-https-proxy"))), "HTTP 409"),
    "a forwarding rule of another scheme than its backend service": (
        lambda: Resource(GLOBAL_FORWARDING_RULE, compute_v1.ForwardingRule(
            name="bad-rule", port_range="8443", load_balancing_scheme="EXTERNAL",
            target=link("global/targetHttpsProxies/erlmcp-https-proxy"))), "differs from its backend service"),
    "a security policy with two rules of one priority": (
        lambda: Resource(SECURITY_POLICY, compute_v1.SecurityPolicy(
            name="bad-policy", rules=[rule(5), rule(5, "deny(403)")])), "same priority"),
    "a throttle rule without rate limit options": (
        lambda: Resource(SECURITY_POLICY, compute_v1.SecurityPolicy(
            name="bad-policy", rules=[rule(5, "throttle")])), "needs rateLimitOptions"),
    "a managed certificate without domains": (
        lambda: Resource(SSL_CERTIFICATE, compute_v1.SslCertificate(name="bad-cert", type_="MANAGED")),
        "1 to 100 distinct managed.domains"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FRONTENDS))
def test_the_stand_in_refuses_a_frontend_the_api_refuses(vpc: ComputeRest, capsys: Any, tmp_path: Path,
                                                         case: str) -> None:  # fmt: skip
    assert cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))[0] == 0
    internal = write_config(tmp_path, "name: internal\ncompute:\n  loadBalancingScheme: INTERNAL_MANAGED\n")
    assert cli(vpc, capsys, "gce", "apply", config_file=internal)[0] == 0  # a regional backend service
    make, message = BAD_FRONTENDS[case]
    assert message in refused(vpc, lambda api: api.insert(make()))


def test_the_stand_in_refuses_rules_in_a_policy_patch_and_deleting_what_is_in_use(vpc: ComputeRest, capsys: Any,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    assert cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))[0] == 0
    policy = next(r for r in compute.desired(frontend()) if r.kind is SECURITY_POLICY)
    actual = compute_v1.SecurityPolicy.from_json(json.dumps(vpc.get("securityPolicies", ARMOR)),
                                                 ignore_unknown_fields=True)  # fmt: skip
    assert "use addRule, patchRule and removeRule" in refused(vpc, lambda api: api.patch(policy, ["rules"], actual))
    assert "already being used by" in refused(vpc, lambda api: api.delete(SECURITY_POLICY, ARMOR))
    assert "already being used by" in refused(vpc, lambda api: api.delete(GLOBAL_HEALTH_CHECK, "erlmcp-health"))
    assert "cannot be removed" in refused(vpc, lambda api: api.rule(policy, "remove", 2147483647))


def test_a_rate_based_ban_is_applied_with_its_ban_duration_and_back_to_throttle_the_duration_is_cleared(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    assert cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))[0] == 0
    ban = frontend_file(tmp_path, "    rateLimitAction: rate_based_ban\n    banDurationSec: 900\n")
    code, out, _ = cli(vpc, capsys, "gce", "apply", config_file=ban)
    assert code == 0
    assert 'rules[0].action: "throttle" -> "rate_based_ban"' in out
    stored = vpc.get("securityPolicies", ARMOR)["rules"][0]
    assert (stored["action"], stored["rateLimitOptions"]["banDurationSec"]) == ("rate_based_ban", 900)
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=ban)[1]
    writes = len(vpc.writes)
    code, out, err = cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))  # a throttle again
    assert code == 0, err
    (patch,) = vpc.writes[writes:]
    assert patch.path.endswith("/patchRule")
    stored = vpc.get("securityPolicies", ARMOR)["rules"][0]
    assert stored["action"] == "throttle"
    assert "banDurationSec" not in stored["rateLimitOptions"]  # cleared: the API refuses it on a throttle rule


def test_the_frontends_longer_names_limit_name_only_when_the_frontend_is_on() -> None:
    long_name = "a" * 40  # as long as the group's names allow: "-autoscaler" and a 10-digit hash still fit in 63
    assert compute.desired(GcpConfig(project=PROJECT, image=IMAGE, name=long_name))
    on = GcpConfig(project=PROJECT, image=IMAGE, name=long_name,
                   compute={"frontend": {"enabled": True, "domains": [DOMAIN]}})  # fmt: skip
    with pytest.raises(ValuesError, match="a resource name made from `name`"):
        compute.desired(on)


def test_a_standby_regions_group_joins_the_same_global_backend_in_one_run_and_again_writes_nothing(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    api = vpc  # the network of the primary region only
    path = write_config(tmp_path, "standby:\n  region: us-east1\n")
    code, _, err = cli(api, capsys, "gce", "apply", config_file=path)
    assert code == 1  # the standby's subnet does not exist yet: network makes it
    assert "the subnetwork erlmcp-subnet-us-east1 (us-east1) does not exist" in err
    assert cli(api, capsys, "network", "apply", config_file=path)[0] == 0
    code, _, err = cli(api, capsys, "gce", "apply", config_file=path)
    assert code == 0, err
    east = api.get("instanceGroupManagers", "erlmcp-mig", "us-east1")
    assert {z["zone"].rsplit("/", 1)[1] for z in east["distributionPolicy"]["zones"]} == {
        "us-east1-a", "us-east1-b", "us-east1-c"}  # fmt: skip
    assert api.get("autoscalers", "erlmcp-autoscaler", "us-east1")["target"].endswith(
        "/regions/us-east1/instanceGroupManagers/erlmcp-mig"
    )
    backends = api.get("backendServices", "erlmcp-backend")["backends"]
    assert [b["group"].split("/regions/")[1] for b in backends] == [
        "us-central1/instanceGroups/erlmcp-mig", "us-east1/instanceGroups/erlmcp-mig"]  # fmt: skip
    templates = {api.get("instanceTemplates", name)["properties"]["networkInterfaces"][0]["subnetwork"].split(
        "/regions/")[1] for name in api.names("instanceTemplates")}  # fmt: skip
    assert templates == {"us-central1/subnetworks/erlmcp-subnet-us-central1",
                         "us-east1/subnetworks/erlmcp-subnet-us-east1"}  # fmt: skip

    before = len(api.writes)
    code, out, err = cli(api, capsys, "gce", "plan", "--json", config_file=path)
    assert code == 0, err
    assert {c["action"] for c in json.loads(out)["changes"]} == {"NO CHANGE"}
    assert len(api.writes) == before


def test_a_standby_region_needs_the_global_load_balancer(api: ComputeRest, capsys: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, "standby:\n  region: us-east1\ncompute:\n  loadBalancingScheme: INTERNAL_MANAGED\n")
    code, out, err = cli(api, capsys, "gce", "plan", config_file=path)
    assert (code, out) == (2, "")
    assert "standby: a second region's group sits behind the global load balancer" in err
    assert api.calls == []


# -- the frontend turned off, and drift of its address and forwarding rules ----------------------------------------

FRONTEND_DELETES = [
    ("global forwarding rule", "erlmcp-http"),
    ("global forwarding rule", "erlmcp-https"),
    ("target HTTP proxy", "erlmcp-http-proxy"),
    ("target HTTPS proxy", "erlmcp-https-proxy"),
    ("SSL certificate", None),
    ("URL map", "erlmcp-http-redirect"),
    ("URL map", "erlmcp-url-map"),
    ("security policy", ARMOR),
    ("global address", "erlmcp-ip"),
]  # fmt: skip  (None: each certificate of ours, in name order)


def deletes(certificates: list[str], start: int = 0) -> list[tuple[str, str, str]]:
    """FRONTEND_DELETES from ``start``, with the certificates in the place of None."""
    return [
        ("DELETE", kind, found)
        for kind, name in FRONTEND_DELETES[start:]
        for found in ([name] if name else certificates)
    ]


FRONTEND_COLLECTIONS = ("forwardingRules", "targetHttpProxies", "targetHttpsProxies", "sslCertificates", "urlMaps",
                        "securityPolicies", "addresses")  # fmt: skip


def strangers(server: ComputeRest) -> None:
    """An address and a certificate someone else made in the project."""
    api = ComputeApi.connect(Location(PROJECT, REGION), server.endpoint, insecure=True)
    try:
        api.insert(Resource(GLOBAL_ADDRESS, compute_v1.Address(name="other-ip")))
        api.insert(Resource(SSL_CERTIFICATE, compute_v1.SslCertificate(
            name="erlmcp-cert-0123456789ab", type_="MANAGED",
            managed=compute_v1.SslCertificateManagedSslCertificate(domains=["other.example.com"]))))  # fmt: skip
    finally:
        api.close()


def not_unchanged(out: str) -> list[tuple[str, str, str]]:
    return [(c["action"], c["kind"], c["name"]) for c in json.loads(out)["changes"] if c["action"] != "NO CHANGE"]


def test_turning_the_frontend_off_deletes_what_it_made_in_dependency_order_and_again_writes_nothing(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    assert cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))[0] == 0
    (old,) = vpc.names("sslCertificates")  # left in place when the domains changed, as templates are
    more = write_config(tmp_path, FRONTEND_YAML.replace(f"[{DOMAIN}]", f"[{DOMAIN}, api.example.com]"))
    assert cli(vpc, capsys, "gce", "apply", config_file=more)[0] == 0
    (certificate,) = set(vpc.names("sslCertificates")) - {old}
    strangers(vpc)
    off = write_config(tmp_path, "compute:\n  frontend:\n    enabled: false\n")
    writes = len(vpc.writes)
    code, out, err = cli(vpc, capsys, "gce", "plan", "--json", config_file=off)
    assert code == 0, err
    assert len(vpc.writes) == writes
    assert not_unchanged(out) == [("UPDATE", "backend service", "erlmcp-backend"), *deletes(sorted([old, certificate]))]
    backend = json.loads(out)["changes"][4]
    assert backend["differences"] == [
        {"field": "security_policy", "actual": link(f"global/securityPolicies/{ARMOR}"), "desired": None}
    ]
    assert json.loads(out)["changes"][-1]["note"] == "no longer in the configuration: its IP address is released"
    code, out, err = cli(vpc, capsys, "gce", "apply", config_file=off)
    assert code == 0, err
    assert "applied: 0 created, 1 updated, 10 deleted, 4 unchanged" in out
    calls = [(w.method, w.path.split("/compute/v1/projects/demo-project/global/")[1]) for w in vpc.writes[writes:]]
    assert calls == [("POST", "backendServices/erlmcp-backend/setSecurityPolicy"),
                     ("DELETE", "forwardingRules/erlmcp-http"), ("DELETE", "forwardingRules/erlmcp-https"),
                     ("DELETE", "targetHttpProxies/erlmcp-http-proxy"),
                     ("DELETE", "targetHttpsProxies/erlmcp-https-proxy"),
                     *[("DELETE", f"sslCertificates/{name}") for name in sorted([old, certificate])],
                     ("DELETE", "urlMaps/erlmcp-http-redirect"), ("DELETE", "urlMaps/erlmcp-url-map"),
                     ("DELETE", f"securityPolicies/{ARMOR}"), ("DELETE", "addresses/erlmcp-ip")]  # fmt: skip
    assert "securityPolicy" not in vpc.get("backendServices", "erlmcp-backend")
    left = {collection: vpc.names(collection) for collection in FRONTEND_COLLECTIONS}
    theirs = {"addresses": ["other-ip"], "sslCertificates": ["erlmcp-cert-0123456789ab"]}
    assert left == dict.fromkeys(FRONTEND_COLLECTIONS, []) | theirs
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", "--json", config_file=off)
    assert code == 0
    assert json.loads(out)["summary"] == {"CREATE": 0, "UPDATE": 0, "DELETE": 0, "NO CHANGE": 5}
    assert len(vpc.writes) == writes
    code, out, _ = cli(vpc, capsys, "gce", "render", "--json", config_file=off)
    assert code == 0
    assert [r["kind"] for r in json.loads(out)["resources"]] == ["health check", "instance template",
                                                                 "instance group manager", "autoscaler",
                                                                 "backend service"]  # fmt: skip
    assert "securityPolicy" not in json.loads(out)["resources"][-1]["body"]


def test_a_turn_off_interrupted_after_the_https_proxy_is_finished_by_the_next_apply_without_the_domains(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    assert cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))[0] == 0
    (certificate,) = vpc.names("sslCertificates")
    off = write_config(tmp_path, "compute:\n  frontend:\n    enabled: false\n")
    vpc.refuse("DELETE", "sslCertificates", 503, "backend error")
    code, _, err = cli(vpc, capsys, "gce", "apply", config_file=off)
    assert code == 1
    assert f"cannot delete SSL certificate {certificate}" in err
    assert vpc.names("targetHttpsProxies") == []  # nothing links to the certificate any more
    code, out, err = cli(vpc, capsys, "gce", "apply", "--json", config_file=off)
    assert code == 0, err
    assert not_unchanged(out) == deletes([certificate], 4)
    assert {collection: vpc.names(collection) for collection in FRONTEND_COLLECTIONS} == dict.fromkeys(
        FRONTEND_COLLECTIONS, []
    )


def test_turning_the_frontend_off_leaves_a_security_policy_someone_else_put_on_the_backend_service(
    vpc: ComputeRest, capsys: Any
) -> None:
    assert cli(vpc, capsys, "gce", "apply")[0] == 0
    api = ComputeApi.connect(Location(PROJECT, REGION), vpc.endpoint, insecure=True)
    try:
        api.insert(Resource(SECURITY_POLICY, compute_v1.SecurityPolicy(name="theirs")))
    finally:
        api.close()
    theirs = link("global/securityPolicies/theirs")
    vpc.edit("backendServices", "erlmcp-backend", lambda b: b.update(securityPolicy=theirs))
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply")
    assert code == 0
    assert "5 unchanged" in out
    assert len(vpc.writes) == writes
    assert vpc.get("backendServices", "erlmcp-backend")["securityPolicy"] == theirs
    assert vpc.names("securityPolicies") == ["theirs"]


def test_a_forwarding_rule_pointed_at_another_proxy_is_an_update_and_apply_sets_its_target_back(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    other = link("global/targetHttpProxies/erlmcp-http-proxy")
    vpc.edit("forwardingRules", "erlmcp-https", lambda r: r.update(target=other))
    code, out, _ = cli(vpc, capsys, "gce", "plan", "--json", config_file=path)
    assert code == 0
    (change,) = [c for c in json.loads(out)["changes"] if c["action"] != "NO CHANGE"]
    assert (change["action"], change["kind"], change["name"]) == ("UPDATE", "global forwarding rule", "erlmcp-https")
    assert change["differences"] == [
        {"field": "target", "actual": other, "desired": link("global/targetHttpsProxies/erlmcp-https-proxy")}
    ]
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", config_file=path)
    assert code == 0
    assert "1 updated" in out
    (call,) = vpc.writes[writes:]
    assert (call.method, call.path.rsplit("/", 2)[1:]) == ("POST", ["erlmcp-https", "setTarget"])
    assert vpc.get("forwardingRules", "erlmcp-https")["target"] == link("global/targetHttpsProxies/erlmcp-https-proxy")
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]


@pytest.mark.parametrize(("edit", "field"), [({"portRange": "8443"}, "port_range"),
                                             ({"IPAddress": "198.51.100.7"}, "I_p_address")])  # fmt: skip
def test_a_forwarding_rule_on_another_port_or_ip_is_replaced_deleted_then_created(
    vpc: ComputeRest, capsys: Any, tmp_path: Path, edit: dict[str, str], field: str
) -> None:
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    vpc.edit("forwardingRules", "erlmcp-https", lambda r: r.update(edit))
    code, out, _ = cli(vpc, capsys, "gce", "plan", "--json", config_file=path)
    assert code == 0
    assert not_unchanged(out) == [("DELETE", "global forwarding rule", "erlmcp-https"),
                                  ("CREATE", "global forwarding rule", "erlmcp-https")]  # fmt: skip
    delete = next(c for c in json.loads(out)["changes"] if c["action"] == "DELETE")
    assert f"replaced: {field} cannot be changed in place" in delete["note"]
    assert [d["field"] for d in delete["differences"]] == [field]
    writes = len(vpc.writes)
    code, out, _ = cli(vpc, capsys, "gce", "apply", config_file=path)
    assert code == 0
    assert "1 created, 0 updated, 1 deleted" in out
    assert [(w.method, w.path.rsplit("/global/", 1)[1]) for w in vpc.writes[writes:]] == [
        ("DELETE", "forwardingRules/erlmcp-https"), ("POST", "forwardingRules")]  # fmt: skip
    stored = vpc.get("forwardingRules", "erlmcp-https")
    assert (stored["portRange"], stored["IPAddress"]) == ("443-443", vpc.get("addresses", "erlmcp-ip")["address"])
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]


@pytest.mark.parametrize(("edit", "field"), [({"addressType": "INTERNAL"}, "address_type"),
                                             ({"networkTier": "STANDARD"}, "network_tier")])  # fmt: skip
def test_an_address_of_another_type_or_tier_is_replaced_with_the_forwarding_rules_on_it(
    vpc: ComputeRest, capsys: Any, tmp_path: Path, edit: dict[str, str], field: str
) -> None:
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    old = vpc.get("addresses", "erlmcp-ip")["address"]
    vpc.edit("addresses", "erlmcp-ip", lambda a: a.update(edit))
    code, out, _ = cli(vpc, capsys, "gce", "plan", "--json", config_file=path)
    assert code == 0
    assert not_unchanged(out) == [
        ("DELETE", "global forwarding rule", "erlmcp-http"), ("DELETE", "global forwarding rule", "erlmcp-https"),
        ("DELETE", "global address", "erlmcp-ip"), ("CREATE", "global address", "erlmcp-ip"),
        ("CREATE", "global forwarding rule", "erlmcp-https"), ("CREATE", "global forwarding rule", "erlmcp-http"),
    ]  # fmt: skip
    notes = {(c["action"], c["name"]): c["note"] for c in json.loads(out)["changes"]}
    assert f"replaced: {field} cannot be changed in place" in notes[("DELETE", "erlmcp-ip")]
    assert "a new IP address: point the domains' DNS A records at it" in notes[("CREATE", "erlmcp-ip")]
    assert "replaced: its global address erlmcp-ip is made anew" in notes[("DELETE", "erlmcp-https")]
    code, out, err = cli(vpc, capsys, "gce", "apply", config_file=path)
    assert code == 0, err
    assert "3 created, 0 updated, 3 deleted" in out
    new = vpc.get("addresses", "erlmcp-ip")
    assert (new["address"] != old, new["addressType"], new["networkTier"]) == (True, "EXTERNAL", "PREMIUM")
    assert {vpc.get("forwardingRules", name)["IPAddress"] for name in ("erlmcp-https", "erlmcp-http")} == {
        new["address"]}  # fmt: skip
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]


def test_an_address_reserved_again_with_another_ip_replaces_the_forwarding_rules_still_on_the_old_one(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    vpc.edit("addresses", "erlmcp-ip", lambda a: a.update(address="203.0.113.250", description="edited by hand"))
    code, out, _ = cli(vpc, capsys, "gce", "plan", "--json", config_file=path)
    assert code == 0
    assert not_unchanged(out) == [
        ("DELETE", "global forwarding rule", "erlmcp-http"),
        ("DELETE", "global forwarding rule", "erlmcp-https"),
        ("CREATE", "global forwarding rule", "erlmcp-https"),
        ("CREATE", "global forwarding rule", "erlmcp-http"),
    ]  # the description is not compared: no method changes it, and it is no reason to replace
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0
    assert vpc.get("forwardingRules", "erlmcp-http")["IPAddress"] == "203.0.113.250"
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]


def test_the_stand_in_refuses_a_target_or_patch_the_api_refuses_and_deleting_an_address_in_use(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    assert cli(vpc, capsys, "gce", "apply", config_file=frontend_file(tmp_path))[0] == 0
    rule = next(r for r in compute.desired(frontend()) if r.name == "erlmcp-https")
    setter = rule.setters[0]
    nowhere = Resource(GLOBAL_FORWARDING_RULE, compute_v1.ForwardingRule(
        name="erlmcp-https", target=link("global/targetHttpsProxies/nothing")), setters=rule.setters)  # fmt: skip
    assert "HTTP 404" in refused(vpc, lambda api: api.set(nowhere, setter))
    backend = Resource(GLOBAL_FORWARDING_RULE, compute_v1.ForwardingRule(
        name="erlmcp-https", target=link("global/backendServices/erlmcp-backend")), setters=rule.setters)  # fmt: skip
    assert "needs a target HTTP(S) proxy" in refused(vpc, lambda api: api.set(backend, setter))
    port = Resource(GLOBAL_FORWARDING_RULE, compute_v1.ForwardingRule(name="erlmcp-https", port_range="8443"))
    actual = compute_v1.ForwardingRule(name="erlmcp-https")
    assert "only networkTier" in refused(vpc, lambda api: api.patch(port, ["port_range"], actual))
    assert "already being used by" in refused(vpc, lambda api: api.delete(GLOBAL_ADDRESS, "erlmcp-ip"))
    assert vpc.get("forwardingRules", "erlmcp-https")["target"].endswith("/targetHttpsProxies/erlmcp-https-proxy")
    assert "cannot list SSL certificates named erlmcp-cert-(" in refused(
        vpc, lambda api: api.names(SSL_CERTIFICATE, "erlmcp-cert-(")
    )  # not a regular expression: 400


def test_an_address_and_rules_read_back_without_their_defaults_are_no_change(
    vpc: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    path = frontend_file(tmp_path)
    assert cli(vpc, capsys, "gce", "apply", config_file=path)[0] == 0

    def without(*keys: str) -> Callable[[dict[str, Any]], None]:
        def drop(resource: dict[str, Any]) -> None:
            for key in keys:
                del resource[key]

        return drop

    vpc.edit("addresses", "erlmcp-ip", without("addressType", "ipVersion", "networkTier"))
    for name in ("erlmcp-https", "erlmcp-http"):
        vpc.edit("forwardingRules", name, without("IPProtocol", "networkTier"))
    assert "14 unchanged" in cli(vpc, capsys, "gce", "plan", config_file=path)[1]
