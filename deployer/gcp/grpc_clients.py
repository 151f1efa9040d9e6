"""Google Cloud gRPC clients, made the same way for every command that calls a Google API (``monitoring``,
``cluster``, ``secrets``): Application Default Credentials on Google's endpoint, or ``--endpoint``; with
``--insecure``, one plaintext channel to ``--endpoint`` and no credentials, for a local server that speaks the API
(the tests' servers of the real services)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.api_core.client_options import ClientOptions
from google.auth.exceptions import GoogleAuthError

from deployer.errors import CloudError, ValuesError
from deployer.gcp.credentials import no_credentials

__all__ = ["Connected", "connect"]


@dataclass(frozen=True)
class Connected:
    """The clients, in the order asked for, and the channel they share when insecure."""

    clients: tuple[Any, ...]
    channel: Any = None

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            return
        for client in self.clients:
            close: Callable[[], None] = client.transport.close
            close()


def connect(
    kinds: Sequence[tuple[type[Any], type[Any]]],
    endpoint: str | None = None,
    *,
    insecure: bool = False,
    error: type[CloudError] = CloudError,
) -> Connected:
    """One client per ``(ClientClass, GrpcTransportClass)`` of ``kinds``.

    Raises:
        ValuesError: ``insecure`` without an ``endpoint``.
        CloudError: of class ``error``, when there are no credentials.
    """
    try:
        if insecure:
            if not endpoint:
                raise ValuesError("--insecure needs --endpoint HOST:PORT")
            channel = grpc.insecure_channel(endpoint)
            clients = tuple(client(transport=transport(channel=channel)) for client, transport in kinds)
            return Connected(clients, channel)
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        return Connected(tuple(client(client_options=options) for client, _ in kinds))
    except GoogleAuthError as exc:
        raise no_credentials(exc, error) from exc
