"""Local gRPC servers that speak a Google Cloud API's real protocol, for the real client libraries to call.

No emulator exists for Cloud Monitoring, Secret Manager or GKE, so a test serves the real service names with the
client library's own (de)serializers (``monitoring_v3.CreateTimeSeriesRequest.deserialize``...) on loopback and
points the real client at it over an insecure channel. Each test module keeps the state its fake service needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]

__all__ = ["EMPTY", "Refused", "channel", "refusing", "serve", "unary"]

Behaviour = Callable[[Any, Any], Any]  # (request, grpc.ServicerContext) -> response


def _empty(_: object) -> bytes:
    return b""


EMPTY: Callable[[object], bytes] = _empty
"""The serializer of ``google.protobuf.Empty``: no bytes at all."""


class Refused(Exception):
    """What a fake service answers with instead of a response: a gRPC status code and its message."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code


def refusing(method: Callable[[Any], Any], refuse: dict[str, Refused]) -> Behaviour:
    """``method`` (request -> response) as a gRPC behaviour: a :class:`Refused` it raises, or the one ``refuse``
    holds for its name (taken, so that only the next call fails), aborts the call with that status."""

    def call(request: Any, context: Any) -> Any:
        try:
            if method.__name__ in refuse:
                raise refuse.pop(method.__name__)
            return method(request)
        except Refused as exc:
            context.abort(exc.code, str(exc))

    return call


def unary(behaviour: Behaviour, request: Any, response: Any) -> Any:
    """A unary-unary method: ``request`` and ``response`` are the library's message classes (``serialize``,
    ``deserialize``), or :data:`EMPTY` for a method answering ``google.protobuf.Empty``."""
    serializer = response if response is EMPTY else response.serialize
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=request.deserialize,
                                               response_serializer=serializer)  # fmt: skip


def serve(services: Mapping[str, Mapping[str, Any]]) -> tuple[Any, int]:
    """Start a ``grpc.server`` on a free loopback port serving ``{"package.Service": {"Method": handler}}``;
    returns the server (``stop(None)`` it) and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(name, dict(methods)) for name, methods in services.items())
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, int(port)


def channel(port: int) -> Any:
    """An insecure channel to the local server (give it to the library's ``...GrpcTransport(channel=...)``)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}")
