"""A round-robin TCP proxy on loopback: each new connection goes to the next backend, in turn, skipping a backend
that refuses the connection (a dead replica), as a Kubernetes Service stops sending new connections to a Pod
whose container died. Connections open when a backend dies are cut, as they would be behind a Service."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence


class RoundRobinProxy:
    """Runs in a thread of its own; ``port`` is where clients connect; ``served`` counts connections per backend,
    ``refused`` the connections a backend refused (each then went to the next one)."""

    def __init__(self, backends: Sequence[int]) -> None:
        self._backends = list(backends)
        self._turns = itertools.count()
        self.served = dict.fromkeys(backends, 0)
        self.refused = dict.fromkeys(backends, 0)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, server.wait_closed(), return_exceptions=True))
        self._loop.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        first = next(self._turns)
        for backend in (self._backends[(first + i) % len(self._backends)] for i in range(len(self._backends))):
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", backend)
            except OSError:
                self.refused[backend] += 1
                continue
            self.served[backend] += 1
            break
        else:  # every backend refused
            client_writer.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        except asyncio.CancelledError:
            pass  # the proxy stops with the connection open (a stream); Python 3.11 logs a cancelled handler
        finally:
            client_writer.close()
            upstream_writer.close()
