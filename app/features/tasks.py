"""The tasks extension (``io.modelcontextprotocol/tasks``, 2026-07-28): tool calls that finish in the background.

A tool that supports tasks may answer a call with :class:`RunAsTask`. For a client that declared the extension on
its request, the server then stores a task, replies at once with a CreateTaskResult, and runs the worker in the
background; the client polls ``tasks/get``, answers input requests with ``tasks/update`` and may ``tasks/cancel``.
Terminal states are first-wins: a cancelled task stays cancelled whatever its worker does afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from app.jsonrpc import InvalidParams, JsonRpcError

__all__ = ["TASKS_EXTENSION", "RunAsTask", "Task", "TaskContext", "TaskStore"]

log = structlog.get_logger(__name__)

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TERMINAL = frozenset({"completed", "failed", "cancelled"})


class TaskContext:
    """What a background worker may do: ask the client for input (the task waits in ``input_required``)."""

    def __init__(self, task: Task | None) -> None:
        self._task = task

    async def ask(self, requests: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """Put input requests to the client and wait for every answer; answers come back under the same names.

        Raises:
            RuntimeError: the call is not running as a task, so there is nobody to ask.
        """
        if self._task is None:
            raise RuntimeError("this tool needs input from the user; call it as a task (tasks extension)")
        return await self._task.ask(requests)


@dataclass(frozen=True, slots=True)
class RunAsTask:
    """Returned by a tool handler to finish the call in the background worker given here."""

    worker: Callable[[TaskContext], Awaitable[dict[str, Any]]]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Task:
    """One task and its state."""

    id: str
    ttl_ms: int
    poll_interval_ms: int
    principal: str | None = None  # who started it (None: no authentication); only they may see it
    status: str = "working"
    status_message: str | None = None
    created_at: str = field(default_factory=_now)
    last_updated_at: str = field(default_factory=_now)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    expires_at: float = 0.0
    input_requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    _answers: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    _keys: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    worker: asyncio.Task[None] | None = None

    def _set(self, status: str, message: str | None = None) -> bool:
        if self.status in TERMINAL:
            return False  # first terminal state wins
        self.status = status
        self.status_message = message
        self.last_updated_at = _now()
        return True

    def finish(self, *, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> None:
        """Record the outcome: a result (``completed``, tool errors included) or a protocol error (``failed``)."""
        if error is not None:
            if self._set("failed", error.get("message")):
                self.error = error
        elif self._set("completed"):
            self.result = result

    def cancel(self) -> None:
        """Cancel now; a task already finished keeps its outcome."""
        if self._set("cancelled", "task was cancelled"):
            for future in self._answers.values():
                future.cancel()
            if self.worker is not None:
                self.worker.cancel()

    async def ask(self, requests: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        keys = {name: f"{name}-{next(self._keys)}" for name in requests}
        loop = asyncio.get_running_loop()
        futures = {name: loop.create_future() for name in requests}
        for name, request in requests.items():
            self.input_requests[keys[name]] = request
            self._answers[keys[name]] = futures[name]
        self._set("input_required")
        answers = await asyncio.gather(*futures.values())
        return dict(zip(futures, answers, strict=True))

    def deliver(self, responses: Mapping[str, Any]) -> None:
        """Hand answers to the waiting worker; unknown keys are ignored, answered ones leave at once."""
        for key, response in responses.items():
            future = self._answers.pop(key, None)
            self.input_requests.pop(key, None)
            if future is not None and not future.done():
                future.set_result(response)
        if self.status == "input_required" and not self.input_requests:
            self._set("working")

    def describe(self, *, detailed: bool) -> dict[str, Any]:
        """The task on the wire: a CreateTaskResult's fields, or (detailed) what tasks/get shows."""
        shown: dict[str, Any] = {
            "taskId": self.id,
            "status": self.status,
            "createdAt": self.created_at,
            "lastUpdatedAt": self.last_updated_at,
            "ttlMs": self.ttl_ms,
            "pollIntervalMs": self.poll_interval_ms,
        }
        if self.status_message:
            shown["statusMessage"] = self.status_message
        if detailed:
            if self.status == "input_required":
                shown["inputRequests"] = dict(self.input_requests)
            elif self.status == "completed" and self.result is not None:
                shown["result"] = self.result
            elif self.status == "failed" and self.error is not None:
                shown["error"] = self.error
        return shown


class TaskStore:
    """Every task of this process, by id and principal. Finished tasks stay readable for their ttl.

    A task is bound to the principal that started it: to any other it is unknown (the same error as an id never
    issued, so that its existence does not leak).
    """

    def __init__(
        self, *, ttl_ms: int = 300_000, poll_interval_ms: int = 1000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tasks: dict[str, Task] = {}
        self._ttl_ms = ttl_ms
        self._poll_ms = poll_interval_ms
        self._clock = clock

    def start(
        self, worker: Callable[[TaskContext], Awaitable[dict[str, Any]]], *, principal: str | None = None
    ) -> Task:
        """Store a task of ``principal`` (before anyone can be told of it) and run its worker in the background."""
        self._expire()
        task = Task(
            id=f"task-{secrets.token_hex(12)}",
            ttl_ms=self._ttl_ms,
            poll_interval_ms=self._poll_ms,
            principal=principal,
            expires_at=self._clock() + self._ttl_ms / 1000,
        )
        self._tasks[task.id] = task
        task.worker = asyncio.get_running_loop().create_task(self._run(task, worker))
        return task

    async def _run(self, task: Task, worker: Callable[[TaskContext], Awaitable[dict[str, Any]]]) -> None:
        try:
            result = await worker(TaskContext(task))
        except asyncio.CancelledError:
            task.cancel()
            return
        except JsonRpcError as error:
            task.finish(error=error.to_error())
            return
        except Exception:
            log.exception("task worker failed", task=task.id)
            task.finish(error={"code": -32603, "message": "internal error: the task failed; see the server log"})
            return
        task.finish(result=result)

    def get(self, task_id: object, *, principal: str | None = None) -> Task:
        """The task with this id, if ``principal`` started it.

        Raises:
            InvalidParams: no such task (never issued, expired, or another principal's).
        """
        self._expire()
        task = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None or task.principal != principal:
            raise InvalidParams(f"task not found: {task_id}", data={"taskId": task_id})
        return task

    def _expire(self) -> None:
        now = self._clock()
        for task_id in [tid for tid, t in self._tasks.items() if t.status in TERMINAL and t.expires_at < now]:
            del self._tasks[task_id]

    def close(self) -> None:
        """Cancel every unfinished task (the server is stopping)."""
        for task in self._tasks.values():
            task.cancel()
