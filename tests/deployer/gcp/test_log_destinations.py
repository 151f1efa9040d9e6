"""``python -m deployer logging`` making the sinks' destinations and granting each sink's writer identity there,
against the local BigQuery and Cloud Storage REST servers (:mod:`tests.bigquery_rest`, :mod:`tests.storage_rest`)
and Cloud Logging's config service (:mod:`tests.logging_config`): drift of the grants, existing destinations used
as they are, refusals, new writer identities IAM does not know yet, and the log bucket's sink deleted once it is
no longer wanted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from deployer.cli import main
from deployer.gcp import iam
from tests.bigquery_rest import BigQueryRest
from tests.deployer.gcp.test_log_router import (  # noqa: F401 (bigquery_server, logging_servers, storage_server: fixtures)
    BIGQUERY,
    BUCKET_SINK,
    DATASET,
    GCS,
    PROJECT,
    STORAGE,
    actions,
    bigquery_server,
    configured,
    endpoints,
    logging_servers,
    run,
    storage_server,
)
from tests.logging_config import FakeLoggingConfig
from tests.storage_rest import StorageRest

BUCKET = f"{PROJECT}-erlmcp-logs"
BQ_GRANT, GCS_GRANT = f"roles/bigquery.dataEditor on {DATASET}", f"roles/storage.objectCreator on {GCS}"
ANALYST = "analyst@example.com"


def email(member: str) -> str:
    return member.removeprefix("serviceAccount:")


def clear(*servers: Any) -> None:
    for server in servers:
        server.writes.clear()


def test_a_grant_removed_out_of_band_is_planned_and_put_back_and_other_members_are_kept(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, bigquery: BigQueryRest, storage: StorageRest
) -> None:
    run(capsys, api, "apply")
    bq_member, gcs_member = api.sinks[BIGQUERY].writer_identity, api.sinks[STORAGE].writer_identity

    def dataset_drift(dataset: dict[str, Any]) -> None:  # someone, in the console
        dataset["access"] = [e for e in dataset["access"] if e.get("userByEmail") != email(bq_member)]
        dataset["access"].append({"role": "READER", "userByEmail": ANALYST})

    def bucket_drift(bindings: list[dict[str, Any]]) -> None:
        bindings[:] = [b for b in bindings if b["role"] != "roles/storage.objectCreator"]
        bindings.append({"role": "roles/storage.objectViewer", "members": [f"user:{ANALYST}"]})

    bigquery.edit("erlmcp_logs", dataset_drift)
    storage.edit_policy(BUCKET, bucket_drift)
    clear(api, bigquery, storage)
    plan = run(capsys, api, "plan")
    assert api.writes == [] == bigquery.writes == storage.writes
    drifted = {c["name"]: c for c in plan["changes"] if c["action"] != "NO CHANGE"}
    assert set(drifted) == {BQ_GRANT, GCS_GRANT}
    for change in drifted.values():
        assert change["action"] == "UPDATE"
        assert change["differences"] == [{"field": "member", "actual": "absent", "desired": "present"}]
    assert drifted[BQ_GRANT]["note"] == f"to {bq_member}"
    run(capsys, api, "apply")
    assert bigquery.writes == [f"patch {DATASET} [access]"]
    assert storage.writes == [f"setIamPolicy {BUCKET}"]
    access = bigquery.datasets["erlmcp_logs"]["access"]
    assert {"role": "WRITER", "userByEmail": email(bq_member)} in access
    assert {"role": "READER", "userByEmail": ANALYST} in access
    assert {"role": "OWNER", "specialGroup": "projectOwners"} in access  # the API's defaults stay
    bindings = {b["role"]: b["members"] for b in storage.policies[BUCKET]["bindings"]}
    assert bindings["roles/storage.objectCreator"] == [gcs_member]
    assert bindings["roles/storage.objectViewer"] == [f"user:{ANALYST}"]
    assert run(capsys, api, "plan")["summary"] == {"CREATE": 0, "UPDATE": 0, "DELETE": 0, "NO CHANGE": 8}


def test_an_existing_dataset_and_bucket_are_used_as_they_are_even_elsewhere(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, bigquery: BigQueryRest, storage: StorageRest
) -> None:
    theirs = [{"role": "OWNER", "userByEmail": ANALYST}, {"role": "READER", "groupByEmail": "team@example.com"}]
    made = requests.post(
        f"{bigquery.url}/bigquery/v2/projects/{PROJECT}/datasets",
        json={
            "datasetReference": {"projectId": PROJECT, "datasetId": "erlmcp_logs"},
            "location": "US",
            "access": theirs,
        },  # fmt: skip
        timeout=10,
    )
    assert made.status_code == 200, made.text
    made = requests.post(
        f"{storage.url}/storage/v1/b", params={"project": PROJECT}, json={"name": BUCKET, "location": "EU"}, timeout=10
    )
    assert made.status_code == 200, made.text
    clear(bigquery, storage)
    plan = run(capsys, api, "plan")
    lines = {(c["kind"], c["name"]): c for c in plan["changes"]}
    dataset, bucket = lines[("BigQuery dataset", DATASET)], lines[("storage bucket", GCS)]
    assert dataset["action"] == bucket["action"] == "NO CHANGE"
    assert dataset["note"] == "in US, not us-central1: used as it is (it cannot move)"
    assert bucket["note"] == (
        "in EU, not us-central1: used as it is (it cannot move); uniform bucket-level access is off: used as it "
        "is; public access prevention is not enforced: used as it is"
    )
    assert actions(plan)[("IAM grant", BQ_GRANT)] == "CREATE"  # the sink is new: its identity is, too
    run(capsys, api, "apply")
    assert bigquery.writes == [f"patch {DATASET} [access]"]  # no insert, no other change
    assert storage.writes == [f"setIamPolicy {BUCKET}"]
    stored = bigquery.datasets["erlmcp_logs"]
    assert stored["location"] == "US"
    assert stored["access"] == [*theirs, {"role": "WRITER", "userByEmail": email(api.sinks[BIGQUERY].writer_identity)}]
    assert storage.buckets[BUCKET]["location"] == "EU"
    assert storage.buckets[BUCKET]["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is False
    roles = [b["role"] for b in storage.policies[BUCKET]["bindings"]]
    assert "roles/storage.legacyObjectOwner" in roles  # the fine-grained bucket's own bindings stay
    clear(bigquery, storage)
    again = run(capsys, api, "apply")
    assert bigquery.writes == [] == storage.writes
    assert again["summary"]["NO CHANGE"] == 8


def test_a_permission_refusal_fails_naming_the_resource_and_the_permission(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, bigquery: BigQueryRest, storage: StorageRest
) -> None:
    common = ["--project", PROJECT, *endpoints(api)]
    bigquery.deny("POST", "bigquery.datasets.create")
    assert main(["logging", "apply", *common]) == 1
    error = capsys.readouterr().err
    assert f"cannot create BigQuery dataset {DATASET}: HTTP 403" in error
    assert "it takes the IAM permission bigquery.datasets.create" in error
    assert api.writes == [] == bigquery.writes == storage.writes  # the first write: nothing after it
    storage.deny("get", "storage.buckets.get")
    assert main(["logging", "plan", *common]) == 1
    error = capsys.readouterr().err
    assert f"cannot read Cloud Storage bucket {GCS}" in error
    assert "storage.buckets.get" in error
    storage.deny("setIamPolicy", "storage.buckets.setIamPolicy")
    assert main(["logging", "apply", *common]) == 1
    error = capsys.readouterr().err
    assert f"cannot grant roles/storage.objectCreator on Cloud Storage bucket {GCS} to serviceAccount:" in error
    assert "it takes the IAM permission storage.buckets.setIamPolicy" in error
    assert storage.writes == [f"insert {BUCKET}"]
    bigquery.deny("PATCH", "bigquery.datasets.update")
    assert main(["logging", "apply", *common]) == 0  # the rest, once allowed (the dataset grant is done)
    assert storage.writes[-1] == f"setIamPolicy {BUCKET}"


def test_a_bucket_name_another_project_owns_fails_plan_saying_so(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, storage: StorageRest
) -> None:
    storage.foreign.add(BUCKET)
    assert main(["logging", "plan", "--project", PROJECT, *endpoints(api)]) == 1
    error = capsys.readouterr().err
    assert f"cannot read Cloud Storage bucket {GCS} (a bucket name is global: if another project owns it" in error
    assert "set logging.storageBucket" in error
    assert storage.writes == []


def test_new_writer_identities_are_granted_once_iam_knows_them(
    capsys: pytest.CaptureFixture[str],
    api: FakeLoggingConfig,
    bigquery: BigQueryRest,
    storage: StorageRest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(iam, "PROPAGATION_DELAYS", (0, 0, 0))
    # the fake config service's identities, in the order the sinks are created (BigQuery's first)
    bq_email, gcs_email = (
        f"p{api.project_number}-{n}@gcp-sa-logging.iam.gserviceaccount.com" for n in (100001, 100002)
    )
    bigquery.propagating[bq_email] = 2
    storage.propagating[gcs_email] = 3
    run(capsys, api, "apply")
    assert email(api.sinks[BIGQUERY].writer_identity) == bq_email
    assert bigquery.propagating[bq_email] == 0 == storage.propagating[gcs_email]
    assert {"role": "WRITER", "userByEmail": bq_email} in bigquery.datasets["erlmcp_logs"]["access"]
    bindings = {b["role"]: b["members"] for b in storage.policies[BUCKET]["bindings"]}
    assert bindings["roles/storage.objectCreator"] == [f"serviceAccount:{gcs_email}"]


def test_an_unknown_member_of_an_existing_sink_is_not_waited_for(
    capsys: pytest.CaptureFixture[str],
    api: FakeLoggingConfig,
    bigquery: BigQueryRest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run(capsys, api, "apply")
    member = api.sinks[BIGQUERY].writer_identity
    bigquery.edit("erlmcp_logs", lambda d: d.update(access=[e for e in d["access"] if "userByEmail" not in e
                                                            or e["userByEmail"] != email(member)]))  # fmt: skip
    bigquery.propagating[email(member)] = 1  # a sink's identity IAM does not know: not new, so not waited for
    monkeypatch.setattr(iam, "PROPAGATION_DELAYS", (0, 0, 0))  # (a retry would succeed)
    assert main(["logging", "apply", "--project", PROJECT, *endpoints(api)]) == 1
    assert f"Service account {email(member)} does not exist" in capsys.readouterr().err
    assert bigquery.propagating[email(member)] == 0  # asked once


def test_a_concurrent_change_is_read_again_and_kept(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, bigquery: BigQueryRest, storage: StorageRest
) -> None:
    bigquery.interfere = lambda dataset: dataset["access"].append({"role": "READER", "userByEmail": ANALYST})
    storage.interfere = lambda bindings: bindings.append({"role": "roles/storage.objectViewer",
                                                          "members": [f"user:{ANALYST}"]})  # fmt: skip
    run(capsys, api, "apply")
    assert bigquery.interfere is None is storage.interfere  # each first write met a stale etag (412)
    access = bigquery.datasets["erlmcp_logs"]["access"]
    assert {"role": "READER", "userByEmail": ANALYST} in access
    assert {"role": "WRITER", "userByEmail": email(api.sinks[BIGQUERY].writer_identity)} in access
    bindings = {b["role"]: b["members"] for b in storage.policies[BUCKET]["bindings"]}
    assert bindings["roles/storage.objectViewer"] == [f"user:{ANALYST}"]
    assert bindings["roles/storage.objectCreator"] == [api.sinks[STORAGE].writer_identity]
    assert bigquery.writes == [f"insert {DATASET}", f"patch {DATASET} [access]"]  # the refused one is no write


def test_the_log_buckets_sink_is_deleted_once_log_bucket_is_default_again(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig, tmp_path: Path
) -> None:
    own = configured(tmp_path, logBucket="erlmcp")
    run(capsys, api, "apply", *own)
    assert BUCKET_SINK in api.sinks
    (tmp_path / "erlmcp-gcp.yaml").write_text("logging: {}\n")
    plan = run(capsys, api, "plan", *own)
    assert actions(plan)[("log sink", BUCKET_SINK)] == "DELETE"
    assert plan["summary"]["DELETE"] == 1
    api.writes.clear()
    run(capsys, api, "apply", *own)
    assert api.writes == [f"DeleteSink {BUCKET_SINK}"]
    assert set(api.sinks) == {BIGQUERY, STORAGE}
    assert f"projects/{PROJECT}/locations/global/buckets/erlmcp" in api.buckets  # its logs are kept
    assert run(capsys, api, "plan", *own)["summary"]["DELETE"] == 0


def test_a_sink_of_that_name_that_is_not_ours_is_left_alone(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig
) -> None:
    from google.cloud.logging_v2.types import logging_config as lc

    sink = lc.LogSink(name=BUCKET_SINK, destination=f"storage.googleapis.com/{PROJECT}-theirs", description="ours")
    api.create_sink(lc.CreateSinkRequest(parent=f"projects/{PROJECT}", sink=sink, unique_writer_identity=True))
    api.writes.clear()
    plan = run(capsys, api, "apply")
    assert ("log sink", BUCKET_SINK) not in actions(plan)
    assert BUCKET_SINK in api.sinks
    assert not [w for w in api.writes if BUCKET_SINK in w]


def test_insecure_without_the_rest_endpoints_is_bad_input_before_any_call(
    capsys: pytest.CaptureFixture[str], api: FakeLoggingConfig
) -> None:
    assert main(["logging", "plan", "--project", PROJECT, "--insecure", "--endpoint", api.endpoint]) == 2
    assert "--insecure needs --bigquery-endpoint and --storage-endpoint too" in capsys.readouterr().err
    assert api.writes == []
