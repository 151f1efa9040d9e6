"""Loading a catalogue: the built-in default, a file, and refusals that name the file, the entry and the field."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from app.catalog import CatalogError, load_catalog


def test_the_built_in_catalogue_offers_the_example_tools_a_help_resource_and_a_prompt() -> None:
    catalog = load_catalog(None)
    assert [tool.name for tool in catalog.tools] == ["echo", "add", "subtract", "multiply", "divide", "power", "sqrt",
                                                     "system_info"]  # fmt: skip
    assert [resource.name for resource in catalog.resources] == ["help"]
    assert [prompt.name for prompt in catalog.prompts] == ["explain"]


def test_a_catalogue_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("tools:\n  - {name: say, description: Says., builtin: echo}\n", encoding="utf-8")
    assert [tool.name for tool in load_catalog(path).tools] == ["say"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("tools: [{name: 'bad name', description: d, builtin: echo}]", r"tools\[0\] 'bad name': name: String should"),
        ("tools: [{name: a, description: d, builtin: rm-rf}]", r"tools\[0\] 'a': builtin: Input should be 'echo'"),
        ("tools: [{name: a, description: d, kind: python, function: 'no colon'}]", r"tools\[0\] 'a': function"),
        (
            "tools: [{name: a, description: d, kind: http, url: 'https://x.example/', method: BREW}]",
            r"tools\[0\] 'a': method: Input should be 'GET'",
        ),
        (
            "allowedHosts: [x.example]\ntools: [{name: a, description: d, kind: http, url: 'https://x.example/',"
            " secrets: {token: relative/path}}]",
            r"tools\[0\] 'a': secrets: secret 'token': 'relative/path' must be an absolute path",
        ),
        ("resources: [{kind: text, uri: 'a://b', name: n}]", r"resources\[0\] 'n': text: Field required"),
        (
            "resourceTemplates: [{kind: text, uriTemplate: 'a://fixed', name: t, text: x}]",
            r"resourceTemplates\[0\] 't': uriTemplate: 'a://fixed' has no \{variable\}",
        ),
        (
            "prompts: [{name: p, arguments: [{name: a}, {name: a}], messages: [{text: x}]}]",
            r"prompts\[0\] 'p': argument 'a' is declared more than once",
        ),
        (
            "resourceTemplates: [{kind: text, uriTemplate: 'a://{x}', name: t, text: x, completions: {y: [b]}}]",
            r"resourceTemplates\[0\] 't': completions: 'y' is not a variable",
        ),
        ("allowedHosts: ['http://x']", "allowedHosts: .*must be a host name"),
        (
            "tools: [{name: a, description: d, builtin: echo}, {name: a, description: d, builtin: echo}]",
            "more than once",
        ),
        ("tools: [{name: a, builtin: echo}]", "description"),
        ("tool: []", "tool"),
        ("tools: [", "not valid YAML"),
    ],
)
def test_a_bad_catalogue_is_refused_naming_the_field(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=names):
        load_catalog(path)


def test_a_missing_catalogue_is_refused_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="absent.yaml"):
        load_catalog(tmp_path / "absent.yaml")


def test_a_catalogue_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_bytes(b"\xff\xfe tools")
    with pytest.raises(CatalogError, match="UTF-8"):
        load_catalog(path)


def test_the_built_in_catalogue_passes_every_check_a_user_catalogue_gets(tmp_path: Path) -> None:
    # The server trusts the built-in catalogue's templates at start (their syntax is not checked, so Jinja2 is not
    # imported until its prompt is first rendered): this test is that check.
    copy = tmp_path / "catalog.yaml"
    copy.write_text(resources.files("app.catalog.defaults").joinpath("catalog.yaml").read_text(encoding="utf-8"))
    assert load_catalog(copy) == load_catalog(None)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("prompts: [{name: p, messages: [{text: 'Hi {{ who '}]}]", r"prompts\[0\] 'p': messages\[0\]: text: not a val"),
        (
            "resourceTemplates: [{kind: text, uriTemplate: 'a://{x}', name: t, text: '{% if x %}'}]",
            r"resourceTemplates\[0\] 't': text: not a valid Jinja2 template: .*\(line 1\)",
        ),
        (
            "allowedHosts: [x.example]\ntools: [{name: a, description: d, kind: http, url: 'https://x.example/{{ q'}]",
            r"tools\[0\] 'a': url: not a valid Jinja2 template",
        ),
        (
            "allowedHosts: [x.example]\ntools: [{name: a, description: d, kind: http, url: 'https://x.example/',"
            " headers: {X-A: '{{ }}'}}]",
            r"tools\[0\] 'a': headers: not a valid Jinja2 template",
        ),
        (
            "allowedHosts: [x.example]\ntools: [{name: a, description: d, kind: http, url: 'https://x.example/',"
            " method: POST, body: '{% for %}'}]",
            r"tools\[0\] 'a': body: not a valid Jinja2 template",
        ),
        (
            "tools: [{name: a, description: d, builtin: echo,"
            " inputSchema: {type: object, properties: {t: {type: txt}}}}]",
            r"tools\[0\] 'a': inputSchema: not a valid JSON Schema \(2020-12\): .*\(at properties/t/type\)",
        ),
    ],
)
def test_a_user_catalogue_with_a_broken_template_or_schema_is_refused_at_load_naming_it(
    tmp_path: Path, text: str, names: str
) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=names):
        load_catalog(path)
