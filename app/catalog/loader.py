"""Reading and validating a catalogue file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from app.catalog.model import TRUSTED_TEMPLATES, Catalog

__all__ = ["CatalogError", "load_catalog"]


class CatalogError(ValueError):
    """The catalogue cannot be used; the message names the file and the offending field."""


def load_catalog(path: Path | None) -> Catalog:
    """Load the catalogue at ``path``, or the built-in default when ``path`` is None (whose templates are trusted:
    not checked here, see :data:`~app.catalog.model.TRUSTED_TEMPLATES`).

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
        return Catalog.model_validate(
            data if data is not None else {}, context=TRUSTED_TEMPLATES if path is None else None
        )
    except ValidationError as exc:
        problems = "; ".join(_problem(data, err) for err in exc.errors())
        raise CatalogError(f"the catalogue {source} is invalid: {problems}") from exc


def _problem(data: Any, error: ErrorDetails) -> str:
    """One validation error as the operator would look for it: ``tools[2] 'weather': url: <why>``."""
    where: list[str] = []
    node = data
    location = list(error["loc"])
    while location:
        part = location.pop(0)
        if isinstance(part, int) and where and isinstance(node, list) and part < len(node):
            node = node[part]
            label = node.get("name") or node.get("uri") or node.get("uriTemplate") if isinstance(node, dict) else None
            where[-1] += f"[{part}]" + (f" {label!r}" if isinstance(label, str) else "")
            kind = (node.get("kind") or ("builtin" if "builtin" in node else None)) if isinstance(node, dict) else None
            if location and location[0] == kind:
                location.pop(0)  # the tagged-union branch pydantic took (the entry's kind), not a field
            continue
        where.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    message = error["msg"].removeprefix("Value error, ")
    return f"{': '.join(where)}: {message}" if where else message
