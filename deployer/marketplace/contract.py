"""The Marketplace deployer contract: what the deployer Job does with ``/data`` (``python -m deployer marketplace``).

Inputs, as Google's tools lay them out: ``/data/values.yaml`` (the parameters, from the deployer's config
Secret), ``/data/schema.yaml``, the chart tarballs ``/data/chart/*.tar.gz`` (each with a top-level ``chart/``
folder) and, for a test run (``mpdev verify``), ``/data-test/schema.yaml`` and ``/data-test/chart/*.tar.gz``
laid over them. The Application exists already as a placeholder made by the Marketplace UI or ``mpdev``.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import DeployerError, SchemaError, ValuesError
from deployer.marketplace.schema import Schema, overlay_test_schema, parse_schema

__all__ = ["DataDir", "extracted_chart", "read_values", "read_yaml"]


def read_yaml(path: Path, what: str, error: type[DeployerError]) -> Any:
    """One YAML file.

    Raises:
        DeployerError: of class ``error``, when the file cannot be read or is not YAML.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"the {what} {path} is not valid UTF-8 YAML: {exc}") from exc


def read_values(path: Path) -> dict[str, Any]:
    """A values file: property names (flat or nested) to values; an empty file is no values.

    Raises:
        ValuesError: the file is missing, not YAML, or not a mapping.
    """
    data = read_yaml(path, "values file", ValuesError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValuesError(f"the values file {path} must hold a mapping of property names to values")
    return data


@dataclass(frozen=True, slots=True)
class DataDir:
    """Where the deployer image keeps its inputs (``/data`` and ``/data-test``)."""

    data: Path = Path("/data")
    data_test: Path = Path("/data-test")

    def schema(self, *, test: bool) -> Schema:
        """The schema, with the test schema laid over it for a test run.

        Raises:
            SchemaError: a file is missing or breaks a rule.
        """
        base = read_yaml(self.data / "schema.yaml", "schema", SchemaError)
        if test and (self.data_test / "schema.yaml").exists():
            base = overlay_test_schema(base, read_yaml(self.data_test / "schema.yaml", "test schema", SchemaError))
        return parse_schema(base)

    def values(self, override: Path | None = None) -> dict[str, Any]:
        """The parameters (``/data/values.yaml``, or the given file).

        Raises:
            ValuesError: the file is missing, not YAML, or not a mapping.
        """
        return read_values(override or self.data / "values.yaml")

    def charts(self, *, test: bool) -> tuple[list[Path], list[Path]]:
        """The chart tarballs and, for a test run, the test overlays."""
        main = sorted((self.data / "chart").glob("*.tar.gz"))
        overlays = sorted((self.data_test / "chart").glob("*.tar.gz")) if test else []
        return main, overlays


def _extract(tarball: Path, into: Path) -> Path:
    """Unpack a chart tarball; its one top-level folder must be ``chart/``.

    Raises:
        DeployerError: not a tarball, or not laid out as Marketplace needs.
    """
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            tops = {Path(member.name).parts[0] for member in archive.getmembers() if Path(member.name).parts}
            if tops != {"chart"}:
                raise DeployerError(f"{tarball} must hold one top-level folder named chart/, not {sorted(tops)}")
            archive.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DeployerError(f"cannot unpack the chart {tarball}: {exc}") from exc
    return into / "chart"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@contextmanager
def extracted_chart(tarball: Path, overlays: list[Path]) -> Iterator[Path]:
    """The chart folder of ``tarball`` with the test overlays laid over it (``values.yaml`` merged, other files
    replaced or added), in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="erlmcp-chart-") as tmp:
        chart = _extract(tarball, Path(tmp, "main"))
        for number, overlay in enumerate(overlays):
            layer = _extract(overlay, Path(tmp, f"overlay-{number}"))
            for source in sorted(layer.rglob("*")):
                if source.is_dir():
                    continue
                target = chart / source.relative_to(layer)
                target.parent.mkdir(parents=True, exist_ok=True)
                if source.relative_to(layer) == Path("values.yaml") and target.exists():
                    base = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
                    extra = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
                    target.write_text(yaml.safe_dump(_merge(base, extra), sort_keys=False), encoding="utf-8")
                else:
                    shutil.copyfile(source, target)
        yield chart
