"""Hot reload: when the mounted catalogue changes, serve the new one without a restart.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file's inode, size or mtime change; the
watcher looks every few seconds. A new catalogue that does not load (bad YAML, an unknown field, a Python
function that does not import) is logged and the previous one stays. When the new one is served, clients that
listen hear ``notifications/tools/list_changed`` (and the resources and prompts ones) for each list that changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import structlog

from app.catalog.loader import CatalogError
from app.features import Features
from app.file_stamp import file_stamp

__all__ = ["CatalogWatcher", "changed_lists"]

log = structlog.get_logger(__name__)


def changed_lists(old: Features, new: Features) -> list[str]:
    """The list_changed notifications owed when ``new`` replaces ``old``: one per list whose content differs."""

    def snapshot(features: Features) -> tuple[bytes, bytes, bytes]:
        everything = {"cursor": None}
        tools = features.tools.list(everything)["tools"] if features.tools.names else []
        resources = [features.resources.list(everything), features.resources.list_templates(everything)]
        return (
            orjson.dumps(tools, option=orjson.OPT_SORT_KEYS),
            orjson.dumps(resources, option=orjson.OPT_SORT_KEYS),
            orjson.dumps(features.prompts.list(everything), option=orjson.OPT_SORT_KEYS),
        )

    before, after = snapshot(old), snapshot(new)
    methods = (
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/prompts/list_changed",
    )
    return [method for method, a, b in zip(methods, before, after, strict=True) if a != b]


class CatalogWatcher:
    """Watches one catalogue file; ``load`` builds features from it, ``serve`` puts them in service and tells
    the listening clients what changed."""

    def __init__(
        self,
        path: Path,
        *,
        load: Callable[[], Features],
        current: Features,
        serve: Callable[[Features, list[str]], Awaitable[None]],
        interval_seconds: float,
    ) -> None:
        self._path = path
        self._load = load
        self._serve = serve
        self._current = current
        self._interval = interval_seconds
        self._signature = file_stamp(path)

    @property
    def current(self) -> Features:
        """The features being served."""
        return self._current

    async def check(self) -> bool:
        """Reload if the file changed since the last look; True when new features went into service."""
        signature = file_stamp(self._path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            features = await asyncio.to_thread(self._load)  # imports and directory listings stay off the loop
        except CatalogError as exc:
            log.error("catalogue changed but cannot be used; still serving the previous one", error=str(exc))
            return False
        changes = changed_lists(self._current, features)
        self._current = features
        await self._serve(features, changes)
        log.info("catalogue reloaded", catalog=str(self._path), notified=changes)
        return True

    async def run(self) -> None:
        """Check every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:  # a watcher that dies would silently stop reloads: log and keep watching
                log.exception("catalogue reload failed")
