"""Where the deployer's REST clients connect: the root URL of an API from an ``--endpoint``."""

from __future__ import annotations

import pytest

from deployer.gcp.credentials import rest_root


@pytest.mark.parametrize(("insecure", "scheme"), [(True, "http"), (False, "https")])
def test_an_endpoint_without_a_scheme_gets_plain_http_for_a_local_server_and_tls_otherwise(
    insecure: bool, scheme: str
) -> None:
    assert rest_root("127.0.0.1:8089", insecure=insecure) == f"{scheme}://127.0.0.1:8089"
    assert rest_root("bigquery.googleapis.com", insecure=insecure) == f"{scheme}://bigquery.googleapis.com"


@pytest.mark.parametrize("insecure", [True, False])
def test_an_endpoint_that_names_its_scheme_is_kept_as_given(insecure: bool) -> None:
    assert rest_root("https://europe-west1-run.googleapis.com", insecure=insecure) == (
        "https://europe-west1-run.googleapis.com"
    )
    assert rest_root("http://localhost:9050/", insecure=insecure) == "http://localhost:9050/"
