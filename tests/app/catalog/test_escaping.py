"""Values in http entries' templates are escaped for where they stand: a URL's host, path, query; a JSON or form
body. A caller's value fills the request; it never changes its shape (red-team finding 6)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.catalog.escaping import body_kind
from app.catalog.upstream import Escaping, RefusedValue, Upstream, UpstreamError

UPSTREAM = Upstream(("api.example",))


def render(template: str, escaping: Escaping = "url", **variables: Any) -> str:
    return UPSTREAM.render(template, {**variables, "arguments": variables}, field="url", escaping=escaping)


@pytest.mark.parametrize(("city", "path"), [
    ("Paris", "/v1/Paris/today"),
    ("São Paulo", "/v1/S%C3%A3o%20Paulo/today"),
    ("../../admin", "/v1/..%2F..%2Fadmin/today"),
    ("a?b#c;d", "/v1/a%3Fb%23c%3Bd/today"),
    ("%2e%2e", "/v1/%252e%252e/today"),
    ("..;", "/v1/..%3B/today"),
    (3, "/v1/3/today"),
])  # fmt: skip
def test_a_value_in_the_path_is_one_segment(city: Any, path: str) -> None:
    assert render("https://api.example/v1/{{ city }}/today", city=city) == f"https://api.example{path}"


@pytest.mark.parametrize(("city", "path"), [
    ("São Paulo", "/v1/S%C3%A3o%20Paulo"),
    ("../../admin/delete", "/v1/..%2F..%2Fadmin%2Fdelete"),
    ("%2e%2e", "/v1/%252e%252e"),
])  # fmt: skip
def test_urlencode_in_the_path_is_not_encoded_twice_but_its_slashes_are(city: str, path: str) -> None:
    assert render("https://api.example/v1/{{ city | urlencode }}", city=city) == f"https://api.example{path}"


@pytest.mark.parametrize("city", ["", ".", ".."])
@pytest.mark.parametrize("template", ["/v1/{{ city }}/today", "/v1/{{ city | urlencode }}", "/v1/{{ arguments.city }}"])
def test_an_empty_or_dot_value_in_the_path_is_refused_naming_it(city: str, template: str) -> None:
    with pytest.raises(RefusedValue) as refused:
        render("https://api.example" + template, city=city)
    name = "arguments.city" if "arguments" in template else "city"
    shown = "empty" if not city else repr(city)
    assert str(refused.value) == (
        f"url: {name} is {shown}: a value in the URL's path is one segment, never empty, '.' or '..'"
    )


def test_a_value_in_the_query_is_one_value() -> None:
    url = render("https://api.example/v1?units={{ units }}&city={{ city | urlencode }}#{{ units }}",
                 units="metric&admin=true#x", city="São Paulo & co/x")  # fmt: skip
    assert url == (
        "https://api.example/v1?units=metric%26admin%3Dtrue%23x&city=S%C3%A3o%20Paulo%20%26%20co/x#metric%26admin%3Dtrue%23x"
    )


def test_a_query_written_by_urlencode_of_a_mapping_is_kept() -> None:
    assert render("https://api.example/v1?{{ q | urlencode }}", q={"a": "1 2", "b": "&"}) == (
        "https://api.example/v1?a=1+2&b=%26"
    )


def test_a_value_in_the_host_must_be_a_host_name() -> None:
    assert render("http://{{ host }}/v1", host="eu.api.example:8443") == "http://eu.api.example:8443/v1"
    assert render("https://{{ region }}.api.example/v1", region="eu") == "https://eu.api.example/v1"
    for host in ["api.example/admin?", "user@api.example", "api.example#", ""]:
        with pytest.raises(RefusedValue, match="a value in the URL's host must be a host name"):
            render("http://{{ host }}/v1", host=host)


def test_a_secret_base_url_is_used_as_it_is_and_what_follows_is_its_path() -> None:
    url = render(
        "{{ secrets.base }}/items/{{ id }}?q={{ q }}", id="a/b", q="x&y", secrets={"base": "https://api.example/v2"}
    )
    assert url == "https://api.example/v2/items/a%2Fb?q=x%26y"


def test_literal_text_and_control_blocks_are_left_as_written() -> None:
    template = "https://api.example/{% for part in parts %}{{ part }}/{% endfor %}end?{% if q %}q={{ q }}{% endif %}"
    assert render(template, parts=["a b", "c/d"], q="1") == "https://api.example/a%20b/c%2Fd/end?q=1"


def test_an_undefined_value_is_still_an_error_naming_the_field() -> None:
    with pytest.raises(UpstreamError, match="url: the template uses an undefined value: 'city' is undefined"):
        UPSTREAM.render("https://api.example/{{ city }}", {}, field="url", escaping="url")


# -- bodies --------------------------------------------------------------------------------------------------------

INJECTED = 'x", "admin": true, "y": "'


@pytest.mark.parametrize("template", [
    '{"q": "{{ q }}", "limit": {{ limit }}}',
    '{"q": {{ q }}, "limit": {{ limit }}}',
    '{"q": {{ q | tojson }}, "limit": {{ limit | tojson }}}',
    '{"q": {{ arguments.q }}, "limit": {{ arguments["limit"] }}}',
])  # fmt: skip
def test_a_value_in_a_json_body_is_a_json_value(template: str) -> None:
    assert json.loads(render(template, "json", q=INJECTED, limit=5)) == {"q": INJECTED, "limit": 5}


def test_json_values_keep_their_type_outside_strings_and_are_text_inside() -> None:
    body = render('{"a": {{ a }}, "b": {{ b }}, "c": {{ c }}, "d": "n={{ d }}", "e": {{ e }}}', "json",
                  a=None, b=True, c=[1, "two"], d=7, e='5, "admin": true')  # fmt: skip
    assert json.loads(body) == {"a": None, "b": True, "c": [1, "two"], "d": "n=7", "e": '5, "admin": true'}


def test_escaped_quotes_in_the_template_are_followed() -> None:
    body = render('{"say \\"hi\\"": "{{ q }}", "n": {{ n }}}', "json", q='"', n="1")
    assert json.loads(body) == {'say "hi"': '"', "n": "1"}


def test_safe_writes_a_value_as_it_is() -> None:
    assert json.loads(render('{"flag": {{ raw | safe }}}', "json", raw="true")) == {"flag": True}


def test_a_form_body_encodes_each_value() -> None:
    body = render("city={{ city }}&units={{ units | urlencode }}", "form", city="Nice&admin=1", units="a b")
    assert body == "city=Nice%26admin%3D1&units=a%20b"


def test_a_text_body_is_rendered_as_written() -> None:
    assert render("<q>{{ q }}</q>", "text", q="a&b") == "<q>a&b</q>"


@pytest.mark.parametrize(("body", "headers", "kind"), [
    ('{"q": "{{ q }}"}', {}, "json"),
    ('  [{{ a }}]', {}, "json"),
    ("{{ arguments | tojson }}", {}, "text"),
    ("{% if a %}x{% endif %}", {}, "text"),
    ("city={{ city }}", {}, "text"),
    ("{{ arguments | tojson }}", {"content-type": "application/json; charset=utf-8"}, "json"),
    ("{{ doc }}", {"Content-Type": "application/merge-patch+json"}, "json"),
    ("city={{ city }}", {"Content-Type": "application/x-www-form-urlencoded"}, "form"),
    ('{"looks": "like json"}', {"Content-Type": "text/plain"}, "text"),
])  # fmt: skip
def test_the_kind_of_a_body_follows_its_content_type_or_its_first_character(
    body: str, headers: dict[str, str], kind: str
) -> None:
    assert body_kind(body, headers) == kind
