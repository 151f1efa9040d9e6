"""How every platform applies its plan (:mod:`deployer.gcp.converge`): steps in order, refusals before any write,
an IAM binding as one kind of step, long-running operations followed to their end, and a write refused as stale
made again from a new read (:mod:`deployer.gcp.conflicts`)."""

from __future__ import annotations

from typing import Any

import pytest
from google.iam.v1 import iam_policy_pb2, policy_pb2  # type: ignore[import-untyped]

from deployer.gcp.changes import CREATE, NO_CHANGE, REPLACE, UPDATE, Change
from deployer.gcp.conflicts import again_on_conflict
from deployer.gcp.converge import (
    Operation,
    OperationPlan,
    Step,
    apply,
    changes,
    follow_until_done,
    grant_step,
    minutes,
    refusals,
    replace_lines,
    run_operations,
)
from deployer.gcp.iam import Policy

ROLE, MEMBER = "roles/secretmanager.secretAccessor", "serviceAccount:app@p.iam.gserviceaccount.com"


def test_apply_makes_the_steps_in_order_logs_what_each_did_and_skips_lines_with_nothing_to_write() -> None:
    done: list[str] = []
    steps = [
        Step(Change(CREATE, "bucket", "a"), lambda: "created bucket a"),
        Step(Change(NO_CHANGE, "bucket", "b")),
        Step(Change(UPDATE, "sink", "c"), lambda: "updated sink c"),
    ]
    apply(steps, log=done.append)
    assert done == ["created bucket a", "updated sink c"]
    assert [c.name for c in changes(steps)] == ["a", "b", "c"]


def test_refusals_say_why_apply_cannot_make_a_step() -> None:
    steps = [
        Step(Change(UPDATE, "secret", "s"), lambda: "", refused="replication cannot change"),
        Step(Change(NO_CHANGE, "k", "n")),
    ]
    assert refusals(steps) == ["replication cannot change"]
    assert refusals(steps[1:]) == []


class Resource:
    """One resource's IAM policy, set with the etag it was read with."""

    def __init__(self, *bindings: tuple[str, str]) -> None:
        self.policy = policy_pb2.Policy(etag=b"1")
        for role, member in bindings:
            self.policy.bindings.add(role=role, members=[member])
        self.sets = 0

    def get(self, request: iam_policy_pb2.GetIamPolicyRequest) -> policy_pb2.Policy:
        return self.policy

    def set(self, request: iam_policy_pb2.SetIamPolicyRequest) -> policy_pb2.Policy:
        self.policy, self.sets = request.policy, self.sets + 1
        return self.policy


def call(what: str, kind: str, run: Any) -> Any:
    return run()


def step(resource: Resource, *, new: bool) -> Step:
    policy = Policy("projects/p/secrets/s", resource.get, resource.set)
    existing = None if new else policy.read()
    return grant_step("access", "s", policy, ROLE, MEMBER, existing, new=new, fresh=False, call=call, note="n")


def test_a_binding_already_there_is_no_change_and_has_nothing_to_write() -> None:
    found = step(Resource((ROLE, MEMBER)), new=False)
    assert found.change.action == NO_CHANGE
    assert found.write is None


def test_a_missing_member_on_an_existing_resource_is_an_update_and_its_write_grants_it() -> None:
    resource = Resource()
    found = step(resource, new=False)
    assert (found.change.action, found.change.differences) == (UPDATE, [("member", "absent", "present")])
    assert found.write is not None
    assert found.write() == f"granted {ROLE} on projects/p/secrets/s to {MEMBER}"
    assert [(b.role, list(b.members)) for b in resource.policy.bindings] == [(ROLE, [MEMBER])]


def test_a_binding_on_a_resource_this_apply_makes_is_a_create_and_granting_twice_writes_once() -> None:
    resource = Resource()
    found = step(resource, new=True)
    assert (found.change.action, found.change.differences) == (CREATE, [])
    assert found.write is not None
    found.write()
    assert found.write() == f"{MEMBER} already holds {ROLE}"
    assert resource.sets == 1


def test_long_running_operations_run_one_at_a_time_each_followed_to_its_end_before_the_next_starts() -> None:
    events: list[str] = []

    def starting(what: str) -> Operation[list[str]]:
        def start(client: list[str]) -> str:
            client.append(f"start {what}")
            return what

        return Operation(what, start)

    operations = [starting("create cluster c"), starting("create node pool c/p")]

    def follow(operation: Operation[list[str]], running: Any) -> None:
        events.append(f"follow {running}")

    run_operations(events, operations, call=lambda what, start: start(),
                   started=lambda operation, running: f"{operation.what}: started", follow=follow,
                   log=lambda line: events.append(f"log {line}"))  # fmt: skip
    assert events == [
        "start create cluster c", "log create cluster c: started", "follow create cluster c",
        "log create cluster c: done",
        "start create node pool c/p", "log create node pool c/p: started", "follow create node pool c/p",
        "log create node pool c/p: done",
    ]  # fmt: skip


def test_a_refusal_lists_only_the_replace_lines_with_their_fields() -> None:
    planned = [Change(REPLACE, "GKE cluster", "c", [("network", "a", "b"), ("subnet", "a", "b")]),
               Change(UPDATE, "node pool", "c/p", [("autoscaling", 1, 2)])]  # fmt: skip
    assert replace_lines(planned) == ["  GKE cluster c: network, subnet"]


def test_a_plan_of_operations_is_refused_by_its_replace_lines_only() -> None:
    found: OperationPlan[Any] = OperationPlan("projects/p/locations/l/clusters/c")
    found.changes += [Change(UPDATE, "node pool", "c/p"), Change(REPLACE, "GKE cluster", "c", [("network", 1, 2)])]
    assert [c.name for c in found.refused] == ["c"]
    assert OperationPlan[Any]("n", [Change(UPDATE, "k", "n")]).refused == []


def test_a_duration_is_said_in_minutes_and_seconds() -> None:
    assert minutes(125.9) == "2 min 5 s"
    assert minutes(0.2) == "0 min 0 s"


def test_an_operation_is_asked_until_it_is_done_with_progress_lines_on_the_way() -> None:
    answers, lines = iter([False, False, True]), list[str]()
    follow_until_done(lambda: next(answers), timeout=60.0, poll_seconds=0.0, progress_seconds=0.0,
                      progress=lambda elapsed: f"running, {elapsed} so far", overdue=RuntimeError,
                      log=lines.append)  # fmt: skip
    assert lines == ["running, 0 min 0 s so far"] * 2
    assert next(answers, None) is None  # asked three times, no more


def test_an_operation_not_done_in_time_raises_what_overdue_says() -> None:
    with pytest.raises(RuntimeError, match=r"still running after 0 min 0 s"):
        follow_until_done(lambda: False, timeout=0.01, poll_seconds=0.005, progress_seconds=60.0,
                          progress=str, overdue=lambda elapsed: RuntimeError(f"still running after {elapsed}"),
                          log=lambda line: None)  # fmt: skip


class Stale(Exception):
    """A write refused: the object changed since it was read."""


def test_an_attempt_whose_write_conflicts_is_made_again_from_a_new_read_and_each_conflict_is_told() -> None:
    reads, told = [0], list[str]()

    def attempt() -> str:
        reads[0] += 1
        if reads[0] < 3:
            raise Stale(f"stale read {reads[0]}")
        return "written"

    assert (
        again_on_conflict(attempt, conflict=Stale, attempts=3, retrying=lambda exc: told.append(str(exc))) == "written"
    )
    assert told == ["stale read 1", "stale read 2"]


def test_the_last_attempts_conflict_is_raised_and_other_errors_are_never_retried() -> None:
    calls = [0]

    def stale() -> None:
        calls[0] += 1
        raise Stale("stale")

    with pytest.raises(Stale):
        again_on_conflict(stale, conflict=Stale, attempts=2)
    assert calls == [2]

    def broken() -> None:
        calls[0] += 1
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        again_on_conflict(broken, conflict=Stale, attempts=3)
    assert calls == [3]
