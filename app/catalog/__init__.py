"""The catalogue: which tools the server offers, read from a YAML file or the built-in default."""

from app.catalog.loader import CatalogError, load_catalog
from app.catalog.model import Catalog, ToolEntry

__all__ = ["Catalog", "CatalogError", "ToolEntry", "load_catalog"]
