"""DNS-rebinding protection: which Host and Origin headers the MCP endpoint accepts."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "Refusal"]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_REMEMBERED = 256  # verdicts kept by (Host, Origin); the headers are the client's, so the memory is bounded


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused, and with which status."""

    status: int
    message: str


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of_header(value: str) -> str:
    """The host part of a Host header (``name``, ``name:port``, ``[v6]:port``), lower case."""
    return (urlsplit(f"//{value}").hostname or "").lower()


class OriginPolicy:
    """Accepts a request whose Host and Origin the server expects.

    Explicit lists win. Without them: a server bound to a loopback address accepts only loopback Host and
    Origin headers (what a DNS-rebinding attack cannot forge); a server bound elsewhere accepts any Host and an
    Origin only when it names the same host as the Host header (browsers send Origin cross-site).
    """

    def __init__(self, *, bind_host: str, allowed_hosts: Sequence[str], allowed_origins: Sequence[str]) -> None:
        self._loopback_only = _is_loopback(bind_host.strip("[]"))
        self._hosts = frozenset(h.lower() for h in allowed_hosts)
        self._origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)
        # The verdict depends on the two headers alone, and a client sends the same two on every request: parsing
        # them (urlsplit, ipaddress) once per pair takes that work off the hot path.
        self._verdicts: dict[tuple[str, str | None], Refusal | None] = {}

    def check(self, headers: Mapping[str, str]) -> Refusal | None:
        """None when the request may go on, else the refusal."""
        pair = (headers.get("host", ""), headers.get("origin"))
        try:
            return self._verdicts[pair]
        except KeyError:
            pass
        verdict = self._check(*pair)
        if len(self._verdicts) >= _REMEMBERED:
            self._verdicts.clear()  # (clients that vary their headers: start over rather than grow)
        self._verdicts[pair] = verdict
        return verdict

    def _check(self, host_value: str, origin: str | None) -> Refusal | None:
        host_header = host_value.lower()
        host = _host_of_header(host_header)
        if self._hosts:
            if host_header not in self._hosts and host not in self._hosts:
                return Refusal(421, f"Misdirected Request: Host {host_header!r} is not one this server answers")
        elif self._loopback_only and host and not _is_loopback(host):
            return Refusal(421, f"Misdirected Request: Host {host_header!r} is not a loopback name")
        if origin is None:
            return None
        origin_host = (urlsplit(origin).hostname or "").lower()
        if self._origins:
            allowed = origin.lower().rstrip("/") in self._origins
        elif self._loopback_only:
            allowed = _is_loopback(origin_host)
        else:
            allowed = origin_host == host
        if not allowed:
            return Refusal(403, f"Forbidden: Origin {origin!r} may not call this server")
        return None
