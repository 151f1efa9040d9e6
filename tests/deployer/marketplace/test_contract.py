"""The deployer image's /data layout: chart tarballs with a chart/ folder, the test overlay."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import yaml

from deployer.errors import DeployerError, SchemaError, ValuesError
from deployer.marketplace.contract import DataDir, extracted_chart
from tests.conftest import ROOT


def tarball(path: Path, files: dict[str, str], top: str = "chart") -> Path:
    source = path.parent / f"{path.name}.src" / top
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    with tarfile.open(path, "w:gz") as archive:
        archive.add(source, arcname=top)
    return path


def test_the_test_overlay_merges_values_and_adds_files(tmp_path: Path) -> None:
    main = tarball(tmp_path / "main.tar.gz", {"Chart.yaml": "name: x\n", "values.yaml": "a: 1\nb: {c: 2, d: 3}\n"})
    overlay = tarball(tmp_path / "test.tar.gz", {"values.yaml": "b: {d: 4}\n", "templates/tester.yaml": "kind: Pod\n"})
    with extracted_chart(main, [overlay]) as chart:
        assert yaml.safe_load((chart / "values.yaml").read_text()) == {"a": 1, "b": {"c": 2, "d": 4}}
        assert (chart / "templates/tester.yaml").read_text() == "kind: Pod\n"
        assert (chart / "Chart.yaml").exists()
    assert not chart.exists()  # a temporary folder, removed afterwards


def test_a_tarball_without_a_top_level_chart_folder_is_refused(tmp_path: Path) -> None:
    wrong = tarball(tmp_path / "wrong.tar.gz", {"Chart.yaml": "name: x\n"}, top="erlmcp")
    with (
        pytest.raises(DeployerError, match=r"one top-level folder named chart/, not \['erlmcp'\]"),
        extracted_chart(wrong, []),
    ):
        pass


def test_the_schema_gets_the_test_overlay_only_in_test_mode(tmp_path: Path) -> None:
    data, data_test = tmp_path / "data", tmp_path / "data-test"
    data.mkdir()
    data_test.mkdir()
    (data / "schema.yaml").write_text((ROOT / "schema.yaml").read_text())
    (data_test / "schema.yaml").write_text("properties:\n  tester.image.tag: {type: string, default: '0.2.0'}\n")
    folders = DataDir(data, data_test)
    assert "tester.image.tag" not in folders.schema(test=False).properties
    assert folders.schema(test=True).properties["tester.image.tag"].default == "0.2.0"


def test_missing_inputs_are_named(tmp_path: Path) -> None:
    folders = DataDir(tmp_path / "data", tmp_path / "data-test")
    with pytest.raises(SchemaError, match="cannot read the schema"):
        folders.schema(test=False)
    with pytest.raises(ValuesError, match="cannot read the values file"):
        folders.values()
