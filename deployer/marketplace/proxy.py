"""A round-robin TCP proxy on loopback, standing for a Kubernetes Service in a local run: each new connection goes
to the next backend in turn (kube-proxy spreads connections, not requests, over a Service's Pods), skipping a
backend that refuses the connection, as a Service stops sending new connections to a Pod that is gone."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence

from deployer.errors import LocalRunError

__all__ = ["RoundRobinProxy"]


class RoundRobinProxy:
    """Listens on 127.0.0.1:``port`` (0: a free port) in a thread of its own. ``served`` counts the connections
    each backend took, ``refused`` those it refused (each then went to the next backend)."""

    def __init__(self, backends: Sequence[int], *, port: int = 0) -> None:
        if not backends:
            raise ValueError("a proxy needs at least one backend")
        self.backends = tuple(backends)
        self.port = port
        self.served = dict.fromkeys(self.backends, 0)
        self.refused = dict.fromkeys(self.backends, 0)
        self._turns = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=f"proxy-{port}", daemon=True)

    def start(self) -> None:
        """Listen; returns once connections are accepted.

        Raises:
            LocalRunError: the port cannot be bound (something else listens there).
        """
        self._thread.start()
        if not self._ready.wait(10):
            raise LocalRunError(f"the proxy on 127.0.0.1:{self.port} did not start within 10 s")
        if self._failure is not None:
            self._thread.join(10)
            raise LocalRunError(f"cannot listen on 127.0.0.1:{self.port}: {self._failure.strerror or self._failure}")

    def stop(self) -> None:
        """Stop listening and cut the connections still open."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        elif not self._loop.is_closed():  # never started
            self._loop.close()

    def __enter__(self) -> RoundRobinProxy:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        except OSError as exc:
            self._failure = exc
            self._ready.set()
            self._loop.close()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, server.wait_closed(), return_exceptions=True))
        self._loop.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the next backend that accepts one, or None when every backend refuses."""
        first = next(self._turns)
        for offset in range(len(self.backends)):
            backend = self.backends[(first + offset) % len(self.backends)]
            try:
                connection = await asyncio.open_connection("127.0.0.1", backend)
            except OSError:
                self.refused[backend] += 1
                continue
            self.served[backend] += 1
            return connection
        return None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            client_writer.close()
            return
        upstream_reader, upstream_writer = upstream
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        except asyncio.CancelledError:
            pass  # the proxy stops with the connection open (an event stream)
        finally:
            client_writer.close()
            upstream_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side ends; then close the writer, which ends the other direction too."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
