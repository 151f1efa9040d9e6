"""Reading and validating a catalogue file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from app.catalog.model import Catalog

__all__ = ["CatalogError", "load_catalog"]


class CatalogError(ValueError):
    """The catalogue cannot be used; the message names the file and the offending field."""


def load_catalog(path: Path | None) -> Catalog:
    """Load the catalogue at ``path``, or the built-in default when ``path`` is None.

    Raises:
        CatalogError: the file cannot be read, is not YAML, or does not match the catalogue format.
    """
    if path is None:
        source = "the built-in catalogue"
        text = resources.files("app.catalog.defaults").joinpath("catalog.yaml").read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read the catalogue {source}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise CatalogError(f"the catalogue {source} is not UTF-8 text") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"the catalogue {source} is not valid YAML: {exc}") from exc
    try:
        return Catalog.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise CatalogError(f"the catalogue {source} is invalid: {problems}") from exc
