"""``python -m deployer logging`` against a local server of the real ``google.logging.v2.ConfigServiceV2``
(:mod:`tests.logging_config`) and local servers of the BigQuery datasets API and the Cloud Storage JSON API
(:mod:`tests.bigquery_rest`, :mod:`tests.storage_rest`): render offline, plan, apply, re-apply, drift, the
exclusions switched off, an own log bucket, bad configurations and refusals. The sinks' destinations and their
grants: :mod:`tests.deployer.gcp.test_log_destinations`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import yaml

from app.middleware import HEALTH_PATHS
from deployer.cli import main
from deployer.gcp import log_router
from tests.bigquery_rest import BigQueryRest
from tests.conftest import ROOT
from tests.deployer.gcp.test_render import offline  # noqa: F401 (a fixture)
from tests.gcp import Refused
from tests.logging_config import FakeLoggingConfig
from tests.storage_rest import StorageRest

PROJECT = "erlmcp-logs-1"
BIGQUERY, STORAGE, BUCKET_SINK = "erlmcp-logs-bigquery", "erlmcp-logs-storage", "erlmcp-logs-bucket"
EXCLUSION = "erlmcp-health-probes"
DEFAULT_BUCKET = f"projects/{PROJECT}/locations/global/buckets/_Default"
DATASET, GCS = f"{PROJECT}:erlmcp_logs", f"gs://{PROJECT}-erlmcp-logs"


@pytest.fixture(name="bigquery")
def bigquery_server() -> Iterator[BigQueryRest]:
    server = BigQueryRest(PROJECT).start()
    yield server
    server.stop()


@pytest.fixture(name="storage")
def storage_server() -> Iterator[StorageRest]:
    server = StorageRest(PROJECT).start()
    yield server
    server.stop()


@dataclass
class LoggingServers(FakeLoggingConfig):
    """Cloud Logging's config service, and where the BigQuery and Cloud Storage servers listen."""

    bigquery_url: str = ""
    storage_url: str = ""


@pytest.fixture(name="api")
def logging_servers(bigquery: BigQueryRest, storage: StorageRest) -> Iterator[FakeLoggingConfig]:
    server = LoggingServers(PROJECT, bigquery_url=bigquery.url, storage_url=storage.url).start()
    yield server
    server.stop()


def endpoints(api: FakeLoggingConfig) -> list[str]:
    """The options that point a command at the local servers."""
    assert isinstance(api, LoggingServers)
    return ["--insecure", "--endpoint", api.endpoint, "--bigquery-endpoint", api.bigquery_url,
            "--storage-endpoint", api.storage_url]  # fmt: skip


def configured(tmp_path: Path, **logging: Any) -> list[str]:
    path = tmp_path / "erlmcp-gcp.yaml"
    path.write_text(yaml.safe_dump({"logging": logging}))
    return ["--config", str(path)]


def run(capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, action: str, *argv: str) -> dict[str, Any]:
    common = ["--project", PROJECT, "--json", *endpoints(api)]
    assert main(["logging", action, *common, *argv]) == 0, capsys.readouterr().err
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def actions(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c["kind"], c["name"]): c["action"] for c in document["changes"]}


@pytest.mark.usefixtures("offline")
def test_render_holds_both_sinks_their_exclusion_and_the_retention_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logging", "render", "--project", PROJECT, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    sinks = {s["name"]: s for s in document["sinks"]}
    assert set(sinks) == {BIGQUERY, STORAGE}
    assert sinks[BIGQUERY]["destination"] == f"bigquery.googleapis.com/projects/{PROJECT}/datasets/erlmcp_logs"
    assert sinks[BIGQUERY]["bigqueryOptions"] == {"usePartitionedTables": True}
    assert sinks[STORAGE]["destination"] == f"storage.googleapis.com/{PROJECT}-erlmcp-logs"
    assert all(s["uniqueWriterIdentity"] for s in sinks.values())
    for sink in sinks.values():
        assert [e["name"] for e in sink["exclusions"]] == [EXCLUSION]
        assert 'resource.labels.container_name="server"' in sink["filter"]
    assert [e["name"] for e in document["exclusions"]] == [EXCLUSION]
    assert document["logBucket"] == {"name": DEFAULT_BUCKET, "retentionDays": 30, "create": False}
    # the destinations and the grants, made by apply now (they were MANUAL commands, "applied": False)
    assert document["bigqueryDataset"]["name"] == f"{PROJECT}:erlmcp_logs"
    assert document["bigqueryDataset"]["body"]["location"] == "us-central1"
    assert document["storageBucket"]["body"] == {
        "name": f"{PROJECT}-erlmcp-logs",
        "location": "us-central1",
        "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "enforced"},
    }
    grants = {g["role"]: g for g in document["grants"]}
    assert set(grants) == {"roles/bigquery.dataEditor", "roles/storage.objectCreator"}
    assert grants["roles/bigquery.dataEditor"]["sink"] == BIGQUERY
    assert grants["roles/storage.objectCreator"]["on"] == f"gs://{PROJECT}-erlmcp-logs"
    assert all(g["member"] == "the sink's writer identity" for g in grants.values())


def test_plan_of_an_empty_project_creates_everything_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    api: FakeLoggingConfig,
    bigquery: BigQueryRest,
    storage: StorageRest,
    tmp_path: Path,
) -> None:
    plan = run(capsys, api, "plan", *configured(tmp_path, retentionDays=90))
    assert actions(plan) == {  # the destinations and grants were MANUAL lines; they are steps now
        ("BigQuery dataset", DATASET): "CREATE",
        ("storage bucket", GCS): "CREATE",
        ("log bucket", DEFAULT_BUCKET): "UPDATE",
        ("log sink", BIGQUERY): "CREATE",
        ("log sink", STORAGE): "CREATE",
        ("log exclusion", EXCLUSION): "CREATE",
        ("IAM grant", f"roles/bigquery.dataEditor on {DATASET}"): "CREATE",
        ("IAM grant", f"roles/storage.objectCreator on {GCS}"): "CREATE",
    }
    [bucket] = [c for c in plan["changes"] if c["kind"] == "log bucket"]
    assert bucket["differences"] == [{"field": "retentionDays", "actual": 30, "desired": 90}]
    assert plan["summary"] == {"CREATE": 7, "UPDATE": 1, "DELETE": 0, "NO CHANGE": 0}
    assert [c["kind"] for c in plan["changes"]][:2] == ["BigQuery dataset", "storage bucket"]
    assert [c["kind"] for c in plan["changes"]][-2:] == ["IAM grant", "IAM grant"]  # after the sinks
    assert api.writes == [] == bigquery.writes == storage.writes
    assert api.sinks == {}


def test_apply_creates_sinks_with_their_own_writer_identities_and_grants_them_on_their_destinations(
    capsys: pytest.CaptureFixture[str],
    api: FakeLoggingConfig,
    bigquery: BigQueryRest,
    storage: StorageRest,
    tmp_path: Path,
) -> None:
    applied = run(capsys, api, "apply", *configured(tmp_path, retentionDays=90))
    assert applied["mode"] == "apply"
    assert sorted(api.writes) == sorted([f"UpdateBucket {DEFAULT_BUCKET} [retention_days]", f"CreateSink {BIGQUERY}",
                                         f"CreateSink {STORAGE}", f"CreateExclusion {EXCLUSION}"])  # fmt: skip
    assert api.buckets[DEFAULT_BUCKET].retention_days == 90
    bq_sink, gcs_sink = api.sinks[BIGQUERY], api.sinks[STORAGE]
    assert bq_sink.bigquery_options.use_partitioned_tables
    assert gcs_sink.destination == f"storage.googleapis.com/{PROJECT}-erlmcp-logs"
    identities = {bq_sink.writer_identity, gcs_sink.writer_identity}
    assert len(identities) == 2
    assert all(i.endswith("@gcp-sa-logging.iam.gserviceaccount.com") for i in identities)
    assert [e.name for e in bq_sink.exclusions] == [EXCLUSION] == [e.name for e in gcs_sink.exclusions]
    assert api.exclusions[EXCLUSION].filter == bq_sink.exclusions[0].filter
    # the grants were printed as MANUAL commands naming these identities; now they are made, each identity on
    # its own destination only
    grants = {c["name"]: c for c in applied["changes"] if c["kind"] == "IAM grant"}
    bq_grant = grants[f"roles/bigquery.dataEditor on {DATASET}"]
    gcs_grant = grants[f"roles/storage.objectCreator on {GCS}"]
    assert bq_grant["action"] == gcs_grant["action"] == "CREATE"
    assert bq_grant["note"] == f"to {bq_sink.writer_identity}"
    assert gcs_grant["note"] == f"to {gcs_sink.writer_identity}"
    dataset = bigquery.datasets["erlmcp_logs"]
    assert dataset["location"] == "us-central1"
    email = bq_sink.writer_identity.removeprefix("serviceAccount:")
    assert {"role": "WRITER", "userByEmail": email} in dataset["access"]
    assert not any(gcs_sink.writer_identity.removeprefix("serviceAccount:") in str(e) for e in dataset["access"])
    bucket = storage.buckets[f"{PROJECT}-erlmcp-logs"]
    assert bucket["location"] == "US-CENTRAL1"
    assert bucket["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True
    assert bucket["iamConfiguration"]["publicAccessPrevention"] == "enforced"
    bindings = {b["role"]: b["members"] for b in storage.policies[f"{PROJECT}-erlmcp-logs"]["bindings"]}
    assert bindings["roles/storage.objectCreator"] == [gcs_sink.writer_identity]
    assert bindings["roles/storage.legacyBucketOwner"] == [f"projectEditor:{PROJECT}", f"projectOwner:{PROJECT}"]
    assert bigquery.writes == [f"insert {DATASET}", f"patch {DATASET} [access]"]
    assert storage.writes == [f"insert {PROJECT}-erlmcp-logs", f"setIamPolicy {PROJECT}-erlmcp-logs"]


def test_apply_again_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    api: FakeLoggingConfig,
    bigquery: BigQueryRest,
    storage: StorageRest,
    tmp_path: Path,
) -> None:
    config = configured(tmp_path, retentionDays=45)
    run(capsys, api, "apply", *config)
    api.writes.clear()
    bigquery.writes.clear()
    storage.writes.clear()
    again = run(capsys, api, "apply", *config)
    assert api.writes == [] == bigquery.writes == storage.writes
    # 4 of Cloud Logging's objects, and the dataset, the bucket and the two grants (MANUAL lines before)
    assert again["summary"] == {"CREATE": 0, "UPDATE": 0, "DELETE": 0, "NO CHANGE": 8}


def test_drift_is_planned_and_undone_by_apply(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, tmp_path: Path
) -> None:
    run(capsys, api, "apply")
    identity = api.sinks[BIGQUERY].writer_identity
    wanted = api.sinks[BIGQUERY].filter
    api.sinks[BIGQUERY].filter = 'resource.type="k8s_container"'  # someone, in the console
    api.exclusions[EXCLUSION].disabled = True
    api.buckets[DEFAULT_BUCKET].retention_days = 7
    api.writes.clear()
    plan = run(capsys, api, "plan")
    assert api.writes == []
    drifted = {c["name"]: c for c in plan["changes"] if c["action"] == "UPDATE"}
    assert set(drifted) == {DEFAULT_BUCKET, BIGQUERY, EXCLUSION}
    assert drifted[BIGQUERY]["differences"] == [
        {"field": "filter", "actual": 'resource.type="k8s_container"', "desired": wanted}
    ]
    assert drifted[EXCLUSION]["differences"] == [{"field": "disabled", "actual": True, "desired": False}]
    assert drifted[DEFAULT_BUCKET]["differences"] == [{"field": "retentionDays", "actual": 7, "desired": 30}]
    run(capsys, api, "apply")
    fixed = [f"UpdateBucket {DEFAULT_BUCKET} [retention_days]", f"UpdateSink {BIGQUERY} [filter]"]
    assert sorted(api.writes) == sorted([*fixed, f"UpdateExclusion {EXCLUSION} [disabled]"])
    assert api.sinks[BIGQUERY].filter == wanted
    assert api.sinks[BIGQUERY].writer_identity == identity
    assert not api.exclusions[EXCLUSION].disabled
    assert api.buckets[DEFAULT_BUCKET].retention_days == 30
    assert run(capsys, api, "plan")["summary"]["UPDATE"] == 0


def test_the_stand_in_refuses_dropping_a_unique_writer_identity_as_the_api_does(api: FakeLoggingConfig) -> None:
    from google.api_core.exceptions import InvalidArgument
    from google.cloud.logging_v2.types import logging_config as lc

    clients = log_router.Clients.connect(api.endpoint, insecure=True)
    try:
        sink = lc.LogSink(name="s", destination=f"storage.googleapis.com/{PROJECT}-b", filter="severity>=ERROR")
        clients.config.create_sink(
            request={"parent": f"projects/{PROJECT}", "sink": sink, "unique_writer_identity": True}
        )
        with pytest.raises(InvalidArgument, match="unique_writer_identity cannot be false"):
            clients.config.update_sink(sink_name=f"projects/{PROJECT}/sinks/s", sink=sink)
    finally:
        clients.close()


def test_the_table_counts_the_destinations_and_grants_as_changes_it_makes(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig
) -> None:
    # (was: the MANUAL lines, not counted; the destinations and grants are now steps like any other)
    assert main(["logging", "plan", "--project", PROJECT, *endpoints(api)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"Cloud Logging router for project {PROJECT} plan: 7 to create, 0 to update, 0 to delete, 1 unchanged"
    )
    assert not [line for line in lines if "MANUAL" in line]
    grants = [line for line in lines if "IAM grant" in line]
    assert len(grants) == 2
    assert all("writer identity, once the sink is created" in line for line in grants)  # no sink yet: no identity


def test_dry_run_of_apply_prints_the_plan_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig
) -> None:
    dry = run(capsys, api, "apply", "--dry-run")
    assert dry["mode"] == "dry-run"
    assert dry["summary"]["CREATE"] == 7  # 3 before: the dataset, the bucket and the grants were MANUAL lines
    assert api.writes == []


def test_switching_the_exclusions_off_deletes_ours_and_empties_the_sinks(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, tmp_path: Path
) -> None:
    run(capsys, api, "apply")
    off = configured(tmp_path, exclusions=False)
    plan = run(capsys, api, "plan", *off)
    assert actions(plan)[("log exclusion", EXCLUSION)] == "DELETE"
    assert actions(plan)[("log sink", BIGQUERY)] == "UPDATE"
    api.writes.clear()
    run(capsys, api, "apply", *off)
    assert sorted(api.writes) == sorted([f"UpdateSink {BIGQUERY} [exclusions]", f"UpdateSink {STORAGE} [exclusions]",
                                         f"DeleteExclusion {EXCLUSION}"])  # fmt: skip
    assert api.exclusions == {}
    assert list(api.sinks[STORAGE].exclusions) == []


def test_an_own_log_bucket_is_created_with_its_retention_and_routed_to(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, tmp_path: Path
) -> None:
    config = configured(tmp_path, logBucket="erlmcp", retentionDays=60)
    run(capsys, api, "apply", *config)
    name = f"projects/{PROJECT}/locations/global/buckets/erlmcp"
    assert api.buckets[name].retention_days == 60
    assert api.buckets[DEFAULT_BUCKET].retention_days == 30  # not ours to change then
    assert api.sinks[BUCKET_SINK].destination == f"logging.googleapis.com/{name}"
    assert api.writes.index(f"CreateBucket {name}") < api.writes.index(f"CreateSink {BUCKET_SINK}")
    api.writes.clear()
    again = run(capsys, api, "apply", *config)
    assert api.writes == []
    assert not [c for c in again["changes"] if c["kind"] == "IAM grant" and BUCKET_SINK in c["name"]]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"retentionDays": 0}, "logging.retentionDays 0: 1 to 3650 days"),
        ({"bigqueryDataset": "erlmcp-logs"}, "logging.bigqueryDataset 'erlmcp-logs'"),
        ({"storageBucket": "Bad_Bucket"}, "logging.storageBucket 'Bad_Bucket'"),
        ({"logBucket": "_Required"}, "logging.logBucket '_Required'"),
        ({"filter": "  "}, "logging.filter"),
        ({"location": "Mars"}, "logging.location 'Mars'"),
        ({"retentionDay": 30}, "logging.retentionDay: Extra inputs are not permitted"),
    ],
)
@pytest.mark.usefixtures("offline")
def test_a_bad_logging_section_is_refused_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    for action in ("render", "plan"):
        assert main(["logging", action, "--project", PROJECT, *configured(tmp_path, **section)]) == 2
        assert message in capsys.readouterr().err


def test_a_filter_the_api_refuses_fails_apply_with_its_message(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, tmp_path: Path
) -> None:
    common = ["--project", PROJECT, *endpoints(api)]
    assert main(["logging", "apply", *common, *configured(tmp_path, filter='resource.type="k8s_container')]) == 1
    error = capsys.readouterr().err
    assert f"cannot create log sink {BIGQUERY}" in error
    assert "Unparseable filter" in error
    assert api.sinks == {}


def test_a_default_bucket_elsewhere_and_a_refused_read_fail_plan_naming_them(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, tmp_path: Path
) -> None:
    common = ["--project", PROJECT, *endpoints(api)]
    assert main(["logging", "plan", *common, *configured(tmp_path, location="us-central1")]) == 1
    assert "set logging.location" in capsys.readouterr().err
    api.refuse["get_sink"] = Refused(grpc.StatusCode.PERMISSION_DENIED, "logging.sinks.get denied")
    assert main(["logging", "plan", *common]) == 1
    assert f"cannot read log sink {BIGQUERY}: logging.sinks.get denied" in capsys.readouterr().err
    assert api.writes == []


def test_the_exclusion_matches_the_servers_health_paths_and_probes_only() -> None:
    assert frozenset(log_router.HEALTH_PATHS) == HEALTH_PATHS
    urls = re.compile(log_router.HEALTH_URLS)  # RE2 as Cloud Logging's =~, within what Python's re reads alike
    for url in ("/health", "/livez", "/readyz?x=1", "https://mcp.example.com/healthz", "http://10.0.0.7:8080/readyz"):
        assert urls.search(url), url
    for url in ("/mcp", "/healthcheck", "/mcp/health", "https://h/metrics"):
        assert not urls.search(url), url
    agents = re.compile(log_router.PROBE_AGENTS)
    assert agents.search("kube-probe/1.30")
    assert agents.search("GoogleHC/1.0")
    assert not agents.search("python-httpx/0.28")


def test_the_default_filter_names_the_charts_container_and_the_configured_names(tmp_path: Path) -> None:
    deployment = (ROOT / "chart" / "templates" / "deployment.yaml").read_text()
    assert re.search(r"containers:\n\s+- name: server\n", deployment)
    from deployer.gcp.config import load_config

    config = load_config(None, project=PROJECT)
    text = log_router.default_filter(config)
    assert 'resource.labels.namespace_name="erlmcp"' in text
    assert 'resource.labels.cluster_name="erlmcp-cluster"' in text
    assert 'resource.labels.service_name="erlmcp"' in text
    assert f'logName="projects/{PROJECT}/logs/cos_containers"' in text
