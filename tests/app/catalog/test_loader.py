from __future__ import annotations

from pathlib import Path

import pytest

from app.catalog import CatalogError, load_catalog


def test_the_built_in_catalogue_offers_echo() -> None:
    assert [tool.name for tool in load_catalog(None).tools] == ["echo"]


def test_a_catalogue_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("tools:\n  - {name: say, description: Says., builtin: echo}\n", encoding="utf-8")
    assert [tool.name for tool in load_catalog(path).tools] == ["say"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("tools: [{name: 'bad name', description: d, builtin: echo}]", "tools.0.name"),
        ("tools: [{name: a, description: d, builtin: rm-rf}]", "tools.0.builtin"),
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
