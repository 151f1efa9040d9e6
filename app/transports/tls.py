"""The server's TLS context, taken up again when its files change, so a renewed certificate needs no restart.

Kubernetes replaces a mounted Secret's files in one atomic swap when the Secret changes (cert-manager renews
certificates this way). The listening socket keeps one :class:`ssl.SSLContext` for its whole life, so the
certificate cannot simply be swapped in it; instead every handshake passes through ``sni_callback``, which
hands the connection the newest context. That also applies a changed client CA bundle (mutual TLS), including
a CA that was removed. A set of files that cannot be loaded (a key that does not match its certificate, a half
written file) leaves the previous context in place, and the log says why.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import structlog

from app.file_stamp import FileStamp, file_stamp

__all__ = ["ServingTls"]

log = structlog.get_logger(__name__)


def _signature(paths: tuple[Path, ...]) -> tuple[FileStamp, ...]:
    return tuple(file_stamp(path) for path in paths)


class ServingTls:
    """TLS 1.2 at least (1.3 whenever the client has it) with ``cert_file`` and ``key_file``; with
    ``client_ca_file`` clients must present a certificate that chains to it (mutual TLS).

    The files are looked at again at most every ``check_seconds``, on a handshake. Raises :class:`OSError` or
    :class:`ssl.SSLError` when the first set of files cannot be used.
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None,
                 *, check_seconds: float = 5.0) -> None:  # fmt: skip
        self._cert_file, self._key_file, self._client_ca_file = cert_file, key_file, client_ca_file
        self._paths = (cert_file, key_file) + ((client_ca_file,) if client_ca_file is not None else ())
        self._check_seconds = check_seconds
        self._signature = _signature(self._paths)
        self._current = self._build()
        self._checked_at = time.monotonic()
        # The context the socket is created with; each handshake is moved to the newest one.
        self.context = self._build()
        self.context.sni_callback = self._select

    @property
    def current(self) -> ssl.SSLContext:
        """The context new connections get (after any reload)."""
        return self._current

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self._cert_file), str(self._key_file))
        if self._client_ca_file is not None:
            context.load_verify_locations(cafile=str(self._client_ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def reload_if_changed(self) -> bool:
        """Load the files again if any changed since the last look; True when a new context took over."""
        signature = _signature(self._paths)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            self._current = self._build()
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS files changed but cannot be used; still serving the previous certificate",
                        cert_file=str(self._cert_file), error=str(exc))  # fmt: skip
            return False
        log.info("TLS certificate reloaded", cert_file=str(self._cert_file))
        return True

    def _select(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        now = time.monotonic()
        if now - self._checked_at >= self._check_seconds:
            self._checked_at = now
            self.reload_if_changed()
        connection.context = self._current
