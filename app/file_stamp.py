"""How the server notices that a mounted file changed (API keys, TLS certificates, the catalogue).

Kubernetes replaces a mounted Secret's or ConfigMap's files by swapping a symlink, so the file's modification
time, size or inode change; a rewritten file changes at least one of them too.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FileStamp", "file_stamp"]

FileStamp = tuple[int, int, int] | None


def file_stamp(path: Path) -> FileStamp:
    """The file's mtime (ns), size and inode, following symlinks; None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
