"""Catalogue resources (text, mounted files and directories, text templates) and prompt templates."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.catalog.features import CatalogRuntime, load_features
from app.catalog.model import DirectoryResourceEntry, FileResourceEntry, PromptEntry, TextTemplateEntry
from app.catalog.prompts import prompt_spec
from app.catalog.resources import directory_resources, file_reader, text_template_reader
from app.features.completion import complete
from app.features.prompts import Prompts
from app.features.resources import ResourceNotFound, Resources, TemplateSpec
from app.jsonrpc import InternalError, InvalidParams
from app.protocol.context import RequestContext

CTX = RequestContext(request_id=1, method="prompts/get")

T = TypeVar("T")


def wait(awaitable: Awaitable[T]) -> T:
    """Run one awaitable to its end on a new event loop."""

    async def run() -> T:
        return await awaitable

    return asyncio.run(run())


def read(resources: Resources, uri: str) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = wait(resources.read({"uri": uri}))["contents"]
    return contents


def test_a_mounted_file_is_read_at_each_call_so_an_update_shows(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("v1")
    entry = FileResourceEntry.model_validate({"kind": "file", "uri": "notes://a", "name": "a", "path": str(path)})
    reader = file_reader(entry)
    assert wait(reader("notes://a", {})) == [{"uri": "notes://a", "mimeType": "text/markdown", "text": "v1"}]
    path.write_text("v2")
    assert wait(reader("notes://a", {}))[0]["text"] == "v2"
    path.unlink()
    with pytest.raises(ResourceNotFound):
        wait(reader("notes://a", {}))


def test_a_directory_serves_each_file_but_not_hidden_ones_nor_links_out_of_it(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "guide").mkdir(parents=True)
    (root / "guide" / "start.txt").write_text("start here")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n")
    (root / "..data").mkdir()  # a mounted ConfigMap's own bookkeeping
    (root / "..data" / "x.txt").write_text("hidden")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    entry = DirectoryResourceEntry.model_validate({"kind": "directory", "uriPrefix": "docs://", "name": "docs",
                                                   "path": str(root)})  # fmt: skip
    resources = Resources(directory_resources(entry), [])
    listed = [r["uri"] for r in resources.list({})["resources"]]
    assert listed == ["docs://guide/start.txt", "docs://logo.png"]
    assert read(resources, "docs://guide/start.txt")[0]["text"] == "start here"
    assert base64.b64decode(read(resources, "docs://logo.png")[0]["blob"]) == b"\x89PNG\r\n"
    for uri in ("docs://escape.txt", "docs://../secret.txt", "docs://..data/x.txt"):
        with pytest.raises(ResourceNotFound):
            read(resources, uri)


def test_a_directory_that_is_not_there_is_refused(tmp_path: Path) -> None:
    entry = DirectoryResourceEntry.model_validate({"kind": "directory", "uriPrefix": "d://", "name": "d",
                                                   "path": str(tmp_path / "missing")})  # fmt: skip
    with pytest.raises(ValueError, match="is not a directory"):
        directory_resources(entry)


def test_a_text_template_renders_the_uris_variables_and_completes_declared_values() -> None:
    entry = TextTemplateEntry.model_validate({"kind": "text", "uriTemplate": "greet://{lang}/{name}", "name": "g",
                                              "text": "{{ 'Hei' if lang == 'no' else 'Hello' }}, {{ name }}",
                                              "completions": {"lang": ["en", "no", "nl"]}})  # fmt: skip
    template = TemplateSpec(entry.uri_template, entry.name, text_template_reader(entry),
                            completions={"lang": ("en", "no", "nl")})  # fmt: skip
    resources = Resources([], [template])
    assert read(resources, "greet://no/Ada")[0]["text"] == "Hei, Ada"
    answer = complete({"ref": {"type": "ref/resource", "uri": "greet://{lang}/{name}"},
                       "argument": {"name": "lang", "value": "n"}}, Prompts([]), resources)  # fmt: skip
    assert answer["completion"]["values"] == ["no", "nl"]


def explain() -> Prompts:
    entry = PromptEntry.model_validate({
        "name": "explain",
        "arguments": [{"name": "topic", "required": True}, {"name": "audience", "values": ["a beginner", "an expert"]}],
        "messages": [{"text": "Explain {{ topic }}{% if audience %} to {{ audience }}{% endif %}."},
                     {"role": "assistant", "text": "Sure."}],
    })  # fmt: skip
    return Prompts([prompt_spec(entry)])


def test_a_prompt_renders_its_messages_with_the_arguments_and_optional_ones_may_be_left_out() -> None:
    prompts = explain()
    full = wait(prompts.get({"name": "explain", "arguments": {"topic": "TLS", "audience": "an expert"}}, CTX))
    assert full["messages"] == [{"role": "user", "content": {"type": "text", "text": "Explain TLS to an expert."}},
                                {"role": "assistant", "content": {"type": "text", "text": "Sure."}}]  # fmt: skip
    short = wait(prompts.get({"name": "explain", "arguments": {"topic": "TLS"}}, CTX))
    assert short["messages"][0]["content"]["text"] == "Explain TLS."


def test_a_prompt_refuses_a_missing_required_or_unknown_argument() -> None:
    prompts = explain()
    with pytest.raises(InvalidParams, match="Missing required arguments for prompt 'explain': topic"):
        wait(prompts.get({"name": "explain", "arguments": {}}, CTX))
    with pytest.raises(InvalidParams, match="has no argument 'tone'"):
        wait(prompts.get({"name": "explain", "arguments": {"topic": "x", "tone": "dry"}}, CTX))


def test_prompt_argument_completion_offers_the_declared_values() -> None:
    answer = complete({"ref": {"type": "ref/prompt", "name": "explain"},
                       "argument": {"name": "audience", "value": "a"}}, explain(), Resources([], []))  # fmt: skip
    assert answer["completion"] == {"values": ["a beginner", "an expert"], "total": 2, "hasMore": False}


def test_a_template_cannot_reach_outside_the_sandbox() -> None:
    entry = TextTemplateEntry.model_validate({"kind": "text", "uriTemplate": "x://{n}", "name": "x",
                                              "text": "{{ n.__class__.__mro__ }}"})  # fmt: skip
    with pytest.raises(InternalError, match="cannot be rendered: access to attribute '__class__'"):
        wait(text_template_reader(entry)("x://a", {"n": "a"}))


def test_the_built_in_prompt_is_compiled_when_first_asked_for_and_renders() -> None:
    # Its template is trusted at load (not parsed then): the first prompts/get compiles it.
    runtime = CatalogRuntime(workers=1)
    try:
        features = load_features(None, runtime=runtime, timeout_seconds=5, page_size=50)
        asked = {"name": "explain", "arguments": {"topic": "TLS", "audience": "a beginner"}}
        for _ in range(2):  # compiled once, rendered each time
            text = wait(features.prompts.get(asked, CTX))["messages"][0]["content"]["text"]
            assert text.startswith("Explain TLS to a beginner. Be accurate and brief")
    finally:
        wait(runtime.aclose())
