"""``secretManager.enabled``: the API key file comes from Google Secret Manager through GKE's Secret Manager add-on
(CSI driver ``secrets-store-gke.csi.k8s.io``), mounted where the chart's own Secret would be, so the server reads and
watches the same file; off (the default), nothing changes. The SecretProviderClass is checked against the published
CRD; what the add-on reads in its parameters, and the mount itself, only GKE can run (see tests/chart/crds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deployer.gcp.cloudrun import closed_schema
from tests.chart.rendering import refusal, render

pytestmark = pytest.mark.slow

CRD = Path(__file__).parent / "crds" / "secrets-store-csi-driver-v1.6.0-secretproviderclasses.yaml"
ON = ("secretManager.enabled=true", "secretManager.project=acme-mcp-1")


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def pod_spec(documents: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    [found] = of_kind(documents, kind)
    spec: dict[str, Any] = found["spec"]["template"]["spec"] if kind == "Deployment" else found["spec"]
    return spec


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in spec["volumes"] if v["name"] == name]
    assert len(found) == 1, found
    return found[0]


def crd_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(closed_schema(version["schema"]["openAPIV3Schema"]))


def test_off_by_default_the_key_file_is_the_charts_secret_and_no_provider_class_is_rendered(helm: str) -> None:
    documents = render(helm)
    assert of_kind(documents, "SecretProviderClass") == []
    assert volume(pod_spec(documents), "api-keys") == {
        "name": "api-keys",
        "secret": {"secretName": "r1-api-keys", "defaultMode": 0o440},
    }  # (group: fsGroup 1000)
    # The test Pod has no fsGroup: its key file keeps the default mode, readable by its user.
    assert volume(pod_spec(documents, "Pod"), "api-keys") == {
        "name": "api-keys",
        "secret": {"secretName": "r1-api-keys"},
    }
    assert [s["metadata"]["name"] for s in of_kind(documents, "Secret") if s["metadata"]["name"] == "r1-api-keys"]


def test_on_the_key_file_is_mounted_from_secret_manager_through_the_gke_add_on(helm: str) -> None:
    documents = render(helm, *ON)
    [provider] = of_kind(documents, "SecretProviderClass")
    assert list(crd_validator().iter_errors(provider)) == []
    assert (provider["apiVersion"], provider["metadata"]["name"]) == (
        "secrets-store.csi.x-k8s.io/v1",
        "r1-secret-manager",
    )
    assert provider["spec"]["provider"] == "gke"
    assert yaml.safe_load(provider["spec"]["parameters"]["secrets"]) == [
        {"resourceName": "projects/acme-mcp-1/secrets/erlmcp-api-keys/versions/latest", "path": "api-keys"}
    ]
    for spec in (pod_spec(documents), pod_spec(documents, "Pod")):  # the server and the chart's test Pod
        assert volume(spec, "api-keys") == {
            "name": "api-keys",
            "csi": {"driver": "secrets-store-gke.csi.k8s.io", "readOnly": True,
                    "volumeAttributes": {"secretProviderClass": "r1-secret-manager"}},
        }  # fmt: skip
    server = pod_spec(documents)["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert (env["ERLMCP_API_KEY_FILE"], mounts["api-keys"]) == ("/etc/erlmcp/secrets/api-keys", "/etc/erlmcp/secrets")
    # The add-on reads the secret as the Pod's service account: the test Pod runs as the server's.
    assert pod_spec(documents, "Pod")["serviceAccountName"] == pod_spec(documents)["serviceAccountName"]
    # No key of the chart's own: it is in Secret Manager, and the Application says where.
    assert "r1-api-keys" not in [s["metadata"]["name"] for s in of_kind(documents, "Secret")]
    [application] = of_kind(documents, "Application")
    assert {"group": "secrets-store.csi.x-k8s.io", "kind": "SecretProviderClass"} in application["spec"][
        "componentKinds"
    ]
    info = {i["name"]: i for i in application["spec"]["info"]}
    assert info["API key (in Secret Manager)"]["value"] == "projects/acme-mcp-1/secrets/erlmcp-api-keys/versions/latest"


def test_a_chosen_secret_and_version_are_the_ones_mounted(helm: str) -> None:
    documents = render(helm, *ON, "secretManager.apiKeysSecret=mcp-keys", "secretManager.version=3")
    [provider] = of_kind(documents, "SecretProviderClass")
    [secret] = yaml.safe_load(provider["spec"]["parameters"]["secrets"])
    assert secret["resourceName"] == "projects/acme-mcp-1/secrets/mcp-keys/versions/3"


@pytest.mark.parametrize(
    ("sets", "reason"),
    [
        (("secretManager.enabled=true",), "needs secretManager.project"),
        ((*ON, "auth.apiKey=0123456789abcdef0123"), "leave auth.apiKey and auth.existingSecret empty"),
        ((*ON, "auth.existingSecret=mine"), "leave auth.apiKey and auth.existingSecret empty"),
        ((*ON, "auth.enabled=false"), "auth.enabled=false uses none"),
        ((*ON, "secretManager.version=newest"), "secretManager.version"),
        ((*ON, "secretManager.version=0"), "secretManager.version"),  # (--set makes it an integer)
        ((*ON, "secretManager.version=-2"), "secretManager.version"),
        ((*ON, "secretManager.apiKeysSecret=a/b"), "secretManager.apiKeysSecret"),
    ],
)
def test_values_that_cannot_mount_the_key_are_refused_saying_why(helm: str, sets: tuple[str, ...], reason: str) -> None:
    assert reason in refusal(helm, *sets)


# Every file `python -m deployer secrets` can make (deployer/gcp/server_secrets.py), each where the server reads it.
EVERY = (
    *ON,
    "secretManager.keys={api-keys,redis-url,redis-ca,tls-cert,tls-key,tls-client-ca,jwt-public-key,otel-ca-cert}",
    "sessions.store=external",
    "serverTls.enabled=true",
    "serverTls.testerClientSecret=tester-client",
    "jwt.issuer=https://issuer.example",
    "jwt.resourceUrl=https://mcp.example",
    "tracing.otlpEndpoint=https://collector.example:4318",
)


def provided(provider: dict[str, Any]) -> dict[str, str]:
    """What a SecretProviderClass mounts: each file's path, the secret version it holds."""
    secrets = yaml.safe_load(provider["spec"]["parameters"]["secrets"])
    return {s["path"]: s["resourceName"] for s in secrets}


def provider_named(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = [p for p in of_kind(documents, "SecretProviderClass") if p["metadata"]["name"] == name]
    return found


def server_env(documents: list[dict[str, Any]]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in pod_spec(documents)["containers"][0]["env"]}


def server_mounts(documents: list[dict[str, Any]]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in pod_spec(documents)["containers"][0]["volumeMounts"]}


def resource(secret: str) -> str:
    return f"projects/acme-mcp-1/secrets/{secret}/versions/latest"


def test_every_chosen_secret_is_a_file_of_the_one_provider_class_where_the_server_reads_it(helm: str) -> None:
    documents = render(helm, *EVERY)
    providers = {p["metadata"]["name"]: p for p in of_kind(documents, "SecretProviderClass")}
    for provider in providers.values():
        assert list(crd_validator().iter_errors(provider)) == []
    # Named as `python -m deployer secrets` names them: the prefix (its configuration's name), then the key.
    assert provided(providers["r1-secret-manager"]) == {
        "api-keys": resource("erlmcp-api-keys"),
        "erlmcp_redis_url": resource("erlmcp-redis-url"),
        "redis-ca.crt": resource("erlmcp-redis-ca"),
        "tls.crt": resource("erlmcp-tls-cert"),
        "tls.key": resource("erlmcp-tls-key"),
        "client-ca.crt": resource("erlmcp-tls-client-ca"),
        "jwt-public-key.pem": resource("erlmcp-jwt-public-key"),
        "otel-ca.crt": resource("erlmcp-otel-ca-cert"),
    }
    assert volume(pod_spec(documents), "api-keys")["csi"]["volumeAttributes"] == {
        "secretProviderClass": "r1-secret-manager"
    }
    assert server_mounts(documents)["api-keys"] == "/etc/erlmcp/secrets"
    env = server_env(documents)
    assert {name: env[name] for name in (
        "ERLMCP_API_KEY_FILE", "ERLMCP_TLS_CERT_FILE", "ERLMCP_TLS_KEY_FILE", "ERLMCP_TLS_CLIENT_CA_FILE",
        "ERLMCP_JWT_PUBLIC_KEY_FILE", "OTEL_EXPORTER_OTLP_CERTIFICATE", "ERLMCP_REDIS_CA_FILE",
    )} == {
        "ERLMCP_API_KEY_FILE": "/etc/erlmcp/secrets/api-keys",
        "ERLMCP_TLS_CERT_FILE": "/etc/erlmcp/secrets/tls.crt",
        "ERLMCP_TLS_KEY_FILE": "/etc/erlmcp/secrets/tls.key",
        "ERLMCP_TLS_CLIENT_CA_FILE": "/etc/erlmcp/secrets/client-ca.crt",
        "ERLMCP_JWT_PUBLIC_KEY_FILE": "/etc/erlmcp/secrets/jwt-public-key.pem",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/erlmcp/secrets/otel-ca.crt",
        "ERLMCP_REDIS_CA_FILE": "/etc/erlmcp/secrets/redis-ca.crt",
    }  # fmt: skip
    assert (env["ERLMCP_JWT_ISSUER"], env["ERLMCP_RESOURCE_URL"]) == ("https://issuer.example", "https://mcp.example")
    assert "ERLMCP_JWT_JWKS_URL" not in env
    # The certificate is not the chart's: no Secret is made for it, none is mounted.
    volumes = [v["name"] for v in pod_spec(documents)["volumes"]]
    assert ("server-tls" not in volumes, "client-ca" not in volumes) == (True, True)
    assert "r1-server-tls" not in [s["metadata"]["name"] for s in of_kind(documents, "Secret")]
    # Mutual TLS is on: the kubelet's probes go to the metrics port, which wants no client certificate.
    assert pod_spec(documents)["containers"][0]["readinessProbe"]["httpGet"]["port"] == "metrics"


def test_the_redis_url_from_secret_manager_is_read_from_a_second_secrets_folder(helm: str) -> None:
    documents = render(helm, *ON, "secretManager.keys={api-keys,redis-url}", "sessions.store=external")
    for provider in of_kind(documents, "SecretProviderClass"):
        assert list(crd_validator().iter_errors(provider)) == []
    assert provided(provider_named(documents, "r1-secret-manager"))["erlmcp_redis_url"] == resource("erlmcp-redis-url")
    # The test Pod's class gives it the API key file, not the Redis URL.
    assert provided(provider_named(documents, "r1-secret-manager-test")) == {"api-keys": resource("erlmcp-api-keys")}
    # The chart's state Secret stays in the first folder; the add-on's files are the second, where the server finds
    # erlmcp_redis_url (app/cli.py: every folder of ERLMCP_SECRETS_DIR is read).
    folders = server_env(documents)["ERLMCP_SECRETS_DIR"]
    assert folders == "/etc/erlmcp/state:/etc/erlmcp/secrets"
    mounts = server_mounts(documents)
    assert (mounts["state"], mounts["api-keys"]) == ("/etc/erlmcp/state", "/etc/erlmcp/secrets")
    # Nothing else gives that file: the state volume holds only the chart's own state Secret.
    assert volume(pod_spec(documents), "state")["projected"]["sources"] == [{"secret": {"name": "r1-state"}}]
    [state] = [s for s in of_kind(documents, "Secret") if s["metadata"]["name"] == "r1-state"]
    assert "erlmcp_redis_url" not in state["data"]


def test_the_redis_ca_from_secret_manager_is_the_file_the_server_trusts_for_a_tls_redis(helm: str) -> None:
    # Memorystore with in-transit encryption: its server CA, beside the rediss:// URL, both from Secret Manager.
    documents = render(helm, *ON, "secretManager.keys={api-keys,redis-url,redis-ca}", "sessions.store=external")
    for provider in of_kind(documents, "SecretProviderClass"):
        assert list(crd_validator().iter_errors(provider)) == []
    assert provided(provider_named(documents, "r1-secret-manager")) == {
        "api-keys": resource("erlmcp-api-keys"),
        "erlmcp_redis_url": resource("erlmcp-redis-url"),
        "redis-ca.crt": resource("erlmcp-redis-ca"),
    }
    # The test Pod does not reach Redis: its class has the API key file alone.
    assert provided(provider_named(documents, "r1-secret-manager-test")) == {"api-keys": resource("erlmcp-api-keys")}
    env = server_env(documents)
    assert env["ERLMCP_REDIS_CA_FILE"] == "/etc/erlmcp/secrets/redis-ca.crt"
    assert server_mounts(documents)["api-keys"] == "/etc/erlmcp/secrets"
    # No Secret of the user's is mounted for the CA.
    assert "redis-ca" not in [v["name"] for v in pod_spec(documents)["volumes"]]
    assert "redis-ca" not in server_mounts(documents)


def test_the_redis_ca_takes_its_own_secret_name_like_the_other_keys(helm: str) -> None:
    documents = render(
        helm, *ON, "secretManager.keys={api-keys,redis-url,redis-ca}", "sessions.store=external",
        "secretManager.names.redis-ca=memorystore-server-ca",
    )  # fmt: skip
    found = provided(provider_named(documents, "r1-secret-manager"))
    assert found["redis-ca.crt"] == resource("memorystore-server-ca")


def test_without_the_redis_url_from_secret_manager_the_secrets_folder_is_the_state_one_alone(helm: str) -> None:
    assert server_env(render(helm, *ON))["ERLMCP_SECRETS_DIR"] == "/etc/erlmcp/state"


def test_a_prefix_and_a_secrets_own_name_choose_the_secrets_mounted(helm: str) -> None:
    documents = render(
        helm, *ON, "secretManager.keys={api-keys,redis-url}", "sessions.store=external",
        "secretManager.prefix=mcp-prod", "secretManager.names.redis-url=memorystore-url", "secretManager.version=7",
    )  # fmt: skip
    assert provided(provider_named(documents, "r1-secret-manager")) == {
        "api-keys": "projects/acme-mcp-1/secrets/mcp-prod-api-keys/versions/7",
        "erlmcp_redis_url": "projects/acme-mcp-1/secrets/memorystore-url/versions/7",
    }
    info = {i["name"]: i for i in of_kind(documents, "Application")[0]["spec"]["info"]}
    assert info["API key (in Secret Manager)"]["value"] == "projects/acme-mcp-1/secrets/mcp-prod-api-keys/versions/7"


def test_the_test_pod_trusts_the_certificate_from_secret_manager_and_mounts_nothing_else_it_does_not_use(
    helm: str,
) -> None:
    documents = render(helm, *EVERY)
    tester = pod_spec(documents, "Pod")
    attributes = volume(tester, "api-keys")["csi"]["volumeAttributes"]
    provider = provider_named(documents, attributes["secretProviderClass"])
    assert provider["metadata"]["name"] == "r1-secret-manager-test"
    assert list(crd_validator().iter_errors(provider)) == []
    # The API key file and the certificate the server presents, which it trusts: not the server's private key, the
    # Redis URL, or anything else the server reads.
    assert provided(provider) == {"api-keys": resource("erlmcp-api-keys"), "server.crt": resource("erlmcp-tls-cert")}
    args = tester["containers"][0]["args"]
    assert args[args.index("--ca-file") + 1] == "/etc/erlmcp/secrets/server.crt"
    assert args[args.index("--api-key-file") + 1] == "/etc/erlmcp/secrets/api-keys"
    assert {m["name"]: m["mountPath"] for m in tester["containers"][0]["volumeMounts"]}["api-keys"] == (
        "/etc/erlmcp/secrets"
    )
    assert "server-ca" not in [v["name"] for v in tester["volumes"]]
    # Mutual TLS from Secret Manager: the test Pod still presents the client certificate it is given.
    assert args[args.index("--cert-file") + 1] == "/etc/erlmcp/client/tls.crt"
    assert volume(tester, "client-certificate")["secret"]["secretName"] == "tester-client"


def test_the_test_pod_shares_the_servers_provider_class_when_it_holds_only_the_api_keys(helm: str) -> None:
    documents = render(helm, *ON)
    assert [p["metadata"]["name"] for p in of_kind(documents, "SecretProviderClass")] == ["r1-secret-manager"]
    assert volume(pod_spec(documents, "Pod"), "api-keys")["csi"]["volumeAttributes"] == {
        "secretProviderClass": "r1-secret-manager"
    }


@pytest.mark.parametrize(
    ("sets", "reason"),
    [
        (("secretManager.keys={redis-url}",), "secretManager.keys must include api-keys"),
        (("secretManager.keys={api-keys,db-password}",), "secretManager.keys"),
        (
            ("secretManager.keys={api-keys,redis-url}",),
            "redis-url needs sessions.store=external (sessions.store is pod)",
        ),
        (
            (
                "secretManager.keys={api-keys,redis-url}",
                "sessions.store=external",
                "sessions.external.url=redis://r:6379",
            ),
            "leave sessions.external.secretName and sessions.external.url empty",
        ),
        (
            ("secretManager.keys={api-keys,redis-url}", "sessions.store=external", "sessions.external.secretName=mine"),
            "leave sessions.external.secretName and sessions.external.url empty",
        ),
        (
            ("secretManager.keys={api-keys,redis-ca}",),
            "redis-ca needs sessions.store=external (sessions.store is pod)",
        ),
        (
            ("secretManager.keys={api-keys,redis-ca}", "sessions.store=external", "sessions.external.secretName=mine"),
            "secretManager.keys: redis-ca needs redis-url in secretManager.keys too",
        ),
        (
            (
                "secretManager.keys={api-keys,redis-url,redis-ca}",
                "sessions.store=external",
                "sessions.external.caCert=true",
            ),
            "give sessions.external.caCert or redis-ca in secretManager.keys, not both",
        ),
        (("secretManager.keys={api-keys,tls-cert}", "serverTls.enabled=true"), "tls-cert and tls-key go together"),
        (("secretManager.keys={api-keys,tls-key}", "serverTls.enabled=true"), "tls-cert and tls-key go together"),
        (("secretManager.keys={api-keys,tls-cert,tls-key}",), "tls-cert and tls-key need serverTls.enabled=true"),
        (
            ("secretManager.keys={api-keys,tls-cert,tls-key}", "serverTls.enabled=true", "serverTls.secretName=mine"),
            "leave serverTls.secretName empty",
        ),
        (("secretManager.keys={api-keys,tls-client-ca}",), "tls-client-ca needs serverTls.enabled=true"),
        (
            ("secretManager.keys={api-keys,tls-client-ca}", "serverTls.enabled=true", "serverTls.clientCaSecret=ca"),
            "give serverTls.clientCaSecret or tls-client-ca in secretManager.keys, not both",
        ),
        (
            ("secretManager.keys={api-keys,tls-client-ca}", "serverTls.enabled=true"),
            "serverTls.testerClientSecret (a client certificate the client CA signed, for the test Pod) is required",
        ),
        (
            (
                "secretManager.keys={api-keys,tls-client-ca}",
                "serverTls.enabled=true",
                "exposure=ingress",
                "ingress.managedCertificate=true",
                "ingress.host=mcp.example",
                "serverTls.testerClientSecret=t",
            ),
            "exposure=ingress cannot be used with",
        ),
        (
            (
                "secretManager.keys={api-keys,jwt-public-key}",
                "jwt.issuer=https://i.example",
                "jwt.resourceUrl=https://m",
                "jwt.jwksUrl=https://i.example/jwks",
            ),
            "give jwt.jwksUrl or jwt-public-key in secretManager.keys, not both",
        ),
        (("secretManager.keys={api-keys,jwt-public-key}", "jwt.resourceUrl=https://m"), "jwt.issuer is required"),
        (("secretManager.keys={api-keys,jwt-public-key}", "jwt.issuer=https://i.example"), "jwt.resourceUrl"),
        (("secretManager.keys={api-keys,otel-ca-cert}",), "otel-ca-cert needs an https:// tracing.otlpEndpoint"),
        (
            ("secretManager.keys={api-keys,otel-ca-cert}", "tracing.otlpEndpoint=http://collector:4318"),
            "otel-ca-cert needs an https:// tracing.otlpEndpoint",
        ),
        (
            ("secretManager.apiKeysSecret=old", "secretManager.names.api-keys=new"),
            "give secretManager.names.api-keys or secretManager.apiKeysSecret, not both",
        ),
        (("secretManager.names.db-password=x",), "secretManager.names"),
    ],
)
def test_secrets_from_secret_manager_that_the_values_cannot_use_are_refused_naming_them(
    helm: str, sets: tuple[str, ...], reason: str
) -> None:
    assert reason in refusal(helm, *ON, *sets)
