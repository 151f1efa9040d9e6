"""The one way the platforms of :mod:`deployer.gcp` apply a plan: each plan line (a
:class:`~deployer.gcp.changes.Change`) goes with the write that makes it so, a :class:`Step`. ``plan`` builds the
steps from what it reads (and writes nothing); ``apply`` first checks that every step can be made
(:func:`refusals`; nothing is written otherwise), then makes them in order and logs the line each write returns
(:func:`apply`). A NO CHANGE line has no write, so applying a converged plan writes nothing.

Which platform applies how:

* **Steps applied by** :func:`apply`: secrets, the node account, logging, monitoring; Compute Engine (``network``
  and ``gce``, through :mod:`deployer.gcp.compute_api`, whose ``plan`` answers one step per line: an insert, a
  PATCH with its setters and rules, or a DELETE, each waiting for its Compute operations, in the order planned:
  a replacement's DELETEs before its CREATEs, what uses a resource deleted first); and Cloud Run's one service
  (its CREATE or UPDATE is one step; see below for the conflict and the wait).
* **An IAM binding** (an etag-checked read-modify-write of the policy) is one kind of step, :func:`grant_step`,
  shared by the server's secrets and the cluster's node account.
* **Long-running operations** (GKE, Memorystore): one plan line may take several operations, so their plan is an
  :class:`OperationPlan` (the lines, the operations that make them, each an :class:`Operation`, the object's
  status); any REPLACE line refuses the whole apply (:attr:`OperationPlan.refused`, listed by
  :func:`replace_lines`); the operations run one at a time, each followed to its end (:func:`run_operations`) by
  polling it with :func:`follow_until_done` (progress lines every so often, an error naming how to follow it once
  overdue).
* **A write refused because the object changed since it was read** (an IAM policy's stale etag, a Cloud Run
  service's stale ``resourceVersion``) is made again from a new read and a new plan,
  :func:`deployer.gcp.conflicts.again_on_conflict` (its own module: :mod:`deployer.gcp.iam` uses it and is
  used here).

Cloud Run is read, planned and written as the others, but its attempt does more than a step: the plan depends on
the service read (a canary, promote or rollback is refused or shaped by it), a NO CHANGE still waits for a
deployment in progress, a ``--dry-run`` asks Cloud Run to check the write, and after the write it waits for the
service's conditions (Ready, or RoutesReady on a rollback) with the generation it wrote. Those stay in
:mod:`deployer.gcp.cloudrun`; the step's write and the retry on conflict are the shared ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from deployer.gcp.changes import CREATE, NO_CHANGE, REPLACE, UPDATE, Change
from deployer.gcp.iam import Policy, holds, patiently
from deployer.log import Log

__all__ = [
    "Caller",
    "Operation",
    "OperationPlan",
    "Step",
    "Write",
    "apply",
    "changes",
    "follow_until_done",
    "grant_step",
    "minutes",
    "refusals",
    "replace_lines",
    "run_operations",
]

C = TypeVar("C")

Write = Callable[[], str]  # makes one plan line so (its calls); returns the line apply logs
Caller = Callable[[str, str, Callable[[], Any]], Any]  # (what failed, kind, call): the platform's error on refusal


@dataclass
class Step:
    """One plan line and, unless there is nothing to write, the write that makes it so; ``refused``: why apply
    cannot make it (then apply writes nothing at all)."""

    change: Change
    write: Write | None = None
    refused: str | None = None


def changes(steps: Sequence[Step]) -> list[Change]:
    """The plan lines, in the order apply makes them."""
    return [step.change for step in steps]


def refusals(steps: Sequence[Step]) -> list[str]:
    """Why apply cannot make some of the steps (empty: it can make them all)."""
    return [step.refused for step in steps if step.refused]


def apply(steps: Sequence[Step], *, log: Log) -> None:
    """Makes the steps in order, logging what each write says it did. Callers check :func:`refusals` first."""
    for step in steps:
        if step.write is not None:
            log(step.write())


def grant_step(
    kind: str,
    name: str,
    policy: Policy,
    role: str,
    member: str,
    existing: Any | None,
    *,
    new: bool,
    fresh: bool,
    call: Caller,
    note: str,
) -> Step:
    """The plan line ``name`` that grants ``role`` to ``member`` on ``policy.resource``: NO CHANGE when
    ``existing`` (the policy as read; None when there is none yet) holds it, else CREATE when ``new`` (the resource
    or the member is made by this apply) or UPDATE (the member is absent). ``fresh``: the member was just created,
    so the grant waits out IAM's propagation; ``call`` turns a refusal into the platform's error."""
    if existing is not None and holds(existing, role, member):
        return Step(Change(NO_CHANGE, kind, name, note=note))
    found = [] if new else [("member", "absent", "present")]
    change = Change(CREATE if new else UPDATE, kind, name, found, note=note)

    def grant() -> str:
        what = f"cannot grant {role} on {policy.resource} to {member}"
        done = call(what, kind, lambda: patiently(lambda: policy.grant(role, member), fresh=fresh))
        return f"granted {role} on {policy.resource} to {member}" if done else f"{member} already holds {role}"

    return Step(change, grant)


@dataclass(frozen=True)
class Operation(Generic[C]):
    """One write of a long-running apply: what it does (for the log) and the call that starts it with the API
    client (it answers the operation)."""

    what: str
    call: Callable[[C], Any]


def run_operations(
    client: C,
    operations: Sequence[Operation[C]],
    *,
    call: Callable[[str, Callable[[], Any]], Any],
    started: Callable[[Operation[C], Any], str],
    follow: Callable[[Operation[C], Any], Any],
    log: Log,
) -> None:
    """Starts the operations one at a time and follows each to its end: ``call`` (what, start) turns a refusal
    into the platform's error, ``started`` is the line logged once it runs, ``follow`` waits for it (and raises
    if it fails); then ``WHAT: done``."""
    for operation in operations:
        running = call(operation.what, partial(operation.call, client))
        log(started(operation, running))
        follow(operation, running)
        log(f"{operation.what}: done")


@dataclass
class OperationPlan(Generic[C]):
    """The plan of one object written by long-running operations (a GKE cluster, a Memorystore instance): its
    lines (what ``plan`` prints) and the operations that make them, in order. ``status``: the existing object's
    (empty when there is none yet)."""

    name: str  # the object's resource name (projects/P/locations/L/...)
    changes: list[Change] = field(default_factory=list)
    steps: list[Operation[C]] = field(default_factory=list)
    status: str = ""

    @property
    def refused(self) -> list[Change]:
        """Its REPLACE lines: any one refuses the whole apply (it never recreates the object)."""
        return [c for c in self.changes if c.action == REPLACE]


def minutes(seconds: float) -> str:
    """A duration as a progress line says it: ``2 min 5 s``."""
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def follow_until_done(
    done: Callable[[], bool],
    *,
    timeout: float,
    poll_seconds: float,
    progress_seconds: float,
    progress: Callable[[str], str],
    overdue: Callable[[str], Exception],
    log: Log,
) -> None:
    """Asks ``done()`` (it reads the operation again, if need be) every ``poll_seconds`` until it is True; logs
    ``progress(elapsed)`` every ``progress_seconds``; raises ``overdue(elapsed)`` once ``timeout`` seconds have
    passed (the elapsed time as :func:`minutes` says it)."""
    started = last = time.monotonic()
    while not done():
        now = time.monotonic()
        if now - started >= timeout:
            raise overdue(minutes(now - started))
        if now - last >= progress_seconds:
            log(progress(minutes(now - started)))
            last = now
        time.sleep(poll_seconds)


def replace_lines(planned: Sequence[Change]) -> list[str]:
    """The REPLACE lines of a plan as a refusal lists them: ``  KIND NAME: field, field``."""
    return [
        f"  {c.kind} {c.name}: " + ", ".join(path for path, _, _ in c.differences)
        for c in planned
        if c.action == REPLACE
    ]
