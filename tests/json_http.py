"""The HTTP plumbing the local REST servers of Google APIs share (:mod:`tests.bigquery_rest`,
:mod:`tests.storage_rest`): a threaded loopback server that hands each request to ``handle(method, path, query,
headers, body)`` and writes the JSON document it answers, with Google's JSON error format for :class:`ApiError`;
:class:`Served`, the start, stop and URL of a server class built on it. :mod:`tests.compute_rest` shares the error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["ApiError", "Handle", "JsonServer", "Served"]

# (method, path, query (first value of each), headers (lower-case names), body) -> (status, document)
Handle = Callable[[str, str, dict[str, str], dict[str, str], Any], tuple[int, Any]]


class ApiError(Exception):
    """An answer in Google's JSON error format: ``{"error": {"code", "message", "errors": [{"reason", ...}]}}``."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict[str, Any]:
        detail = {"message": self.message, "domain": "global", "reason": self.reason}
        return {"error": {"code": self.status, "message": self.message, "errors": [detail]}}


class _Handler(BaseHTTPRequestHandler):
    handle_call: Handle
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        try:
            if raw:
                if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                    raise ApiError(400, "invalid", "Content-Type must be application/json")
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, "parseError", "Parse Error") from exc
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            code, document = type(self).handle_call(self.command, url.path, query, headers, body)
        except ApiError as exc:
            code, document = exc.status, exc.body()
        data = b"" if document is None else json.dumps(document).encode()
        self.send_response(code)
        if document is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


class JsonServer:
    """``handle`` served on a free loopback port: :attr:`url` once started."""

    def __init__(self, handle: Handle, name: str) -> None:
        self._handler = type("Handler", (_Handler,), {"handle_call": staticmethod(handle)})
        self._name = name
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "not started"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> None:
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.02,), name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Served:
    """A local API server's life: :meth:`start` serves its ``handle`` on a free loopback port (:attr:`url`),
    :meth:`stop` ends it. The class sets ``server_name`` (its thread's name) and ``handle``."""

    server_name: ClassVar[str]
    _server: JsonServer | None

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return self._server.url

    def start(self) -> Self:
        self._server = JsonServer(self.handle, self.server_name)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
