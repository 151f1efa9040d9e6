"""Catalogue resources that need no network: text written in the catalogue, mounted files and directories, and
text templates over a URI's variables. Files are read at each resources/read, so an updated ConfigMap or Secret
shows without a reload; a directory's listing is taken when the catalogue is (re)loaded."""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Mapping
from pathlib import Path

from app.catalog.model import (
    DirectoryResourceEntry,
    FileResourceEntry,
    TextResourceEntry,
    TextTemplateEntry,
    template_environment,
)
from app.features.resources import Reader, ResourceContents, ResourceNotFound, ResourceSpec
from app.jsonrpc import InternalError

__all__ = [
    "MAX_DIRECTORY_FILES",
    "MAX_FILE_BYTES",
    "directory_resources",
    "file_reader",
    "text_reader",
    "text_template_reader",
]

MAX_FILE_BYTES = 8 * 1024 * 1024  # a resource is read whole into one message
MAX_DIRECTORY_FILES = 1000
_TEXT_TYPES = ("application/json", "application/xml", "application/yaml", "application/x-yaml", "application/toml")


def _mime_type(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed is None and path.suffix.lower() in {".md", ".markdown"}:
        return "text/markdown"
    if guessed is None and path.suffix.lower() in {".yaml", ".yml"}:
        return "application/yaml"
    return guessed or "text/plain"


def _contents(uri: str, data: bytes, mime_type: str) -> ResourceContents:
    if mime_type.startswith("text/") or mime_type in _TEXT_TYPES or mime_type.endswith(("+json", "+xml")):
        try:
            return [{"uri": uri, "mimeType": mime_type, "text": data.decode("utf-8")}]
        except UnicodeDecodeError:
            pass  # declared as text but is not UTF-8: send the bytes as they are
    return [{"uri": uri, "mimeType": mime_type, "blob": base64.b64encode(data).decode()}]


def _read(uri: str, path: Path, mime_type: str) -> ResourceContents:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ResourceNotFound(f"Resource not found: {uri!r} (the file is gone)", data={"uri": uri}) from None
    except OSError as exc:
        raise InternalError(f"Resource {uri!r} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InternalError(f"Resource {uri!r} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return _contents(uri, data, mime_type)


def text_reader(entry: TextResourceEntry) -> Reader:
    """A resource whose text is in the catalogue."""
    contents = [{"uri": entry.uri, "mimeType": entry.mime_type or "text/plain", "text": entry.text}]

    async def read(_: str, __: Mapping[str, str]) -> ResourceContents:
        return contents

    return read


def file_reader(entry: FileResourceEntry) -> Reader:
    """One mounted file, read at each call."""
    mime_type = _mime_type(entry.path, entry.mime_type)

    async def read(uri: str, _: Mapping[str, str]) -> ResourceContents:
        return _read(uri, entry.path, mime_type)

    return read


def directory_resources(entry: DirectoryResourceEntry) -> list[ResourceSpec]:
    """One resource per file under the directory (hidden names, such as a mounted ConfigMap's ``..data``,
    skipped; a symlink that leads out of the directory skipped), in path order.

    Raises:
        ValueError: the directory cannot be listed, or holds more than :data:`MAX_DIRECTORY_FILES` files.
    """
    root = entry.path
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a directory")
    real_root = root.resolve()
    found: list[Path] = []
    try:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if not path.resolve().is_relative_to(real_root):
                continue
            found.append(relative)
            if len(found) > MAX_DIRECTORY_FILES:
                raise ValueError(f"{str(root)!r} holds more than {MAX_DIRECTORY_FILES} files")
    except OSError as exc:
        raise ValueError(f"{str(root)!r} cannot be listed: {exc.strerror or exc}") from None
    specs = []
    for relative in found:
        path = root / relative
        mime_type = _mime_type(path, entry.mime_type)

        async def read(
            uri: str, _: Mapping[str, str], path: Path = path, mime_type: str = mime_type
        ) -> ResourceContents:
            return _read(uri, path, mime_type)

        name = relative.as_posix()
        specs.append(
            ResourceSpec(
                uri=entry.uri_prefix + name,
                name=f"{entry.name}/{name}",
                read=read,
                title=entry.title,
                description=entry.description,
                mime_type=mime_type,
            )
        )
    return specs


def text_template_reader(entry: TextTemplateEntry) -> Reader:
    """Resources whose text is a Jinja2 template over the URI's variables (Jinja2 is loaded only for these)."""
    from jinja2 import TemplateError

    template = template_environment().from_string(entry.text)
    mime_type = entry.mime_type or "text/plain"

    async def read(uri: str, variables: Mapping[str, str]) -> ResourceContents:
        try:
            text = template.render(**variables)
        except TemplateError as exc:  # includes the sandbox refusing an attribute
            raise InternalError(f"Resource {uri!r} cannot be rendered: {exc}") from None
        return [{"uri": uri, "mimeType": mime_type, "text": text}]

    return read
