"""The one plan line (:class:`deployer.gcp.changes.Change`) and how every command prints plans."""

from __future__ import annotations

import io
import json

from deployer.gcp.changes import CREATE, DELETE, NO_CHANGE, UPDATE, Change, Names, Shown, render


def printed(changes: list[Change], *, as_json: bool = False, heading: dict[str, object] | None = None) -> str:
    out = io.StringIO()
    render("Thing", changes, mode="plan", out=out, as_json=as_json, heading=heading)
    return out.getvalue()


def test_a_plan_prints_a_summary_then_one_aligned_line_per_object_with_its_differences_under_it() -> None:
    text = printed([Change(CREATE, "bucket", "logs", note="30 days"), Change(UPDATE, "sink", "s", [("a", 1, 2)])])
    assert text.splitlines() == [
        "Thing plan: 1 to create, 1 to update, 0 to delete, 0 unchanged",
        "  CREATE     bucket  logs  30 days",
        "  UPDATE     sink    s",
        "      a: 1 -> 2",
    ]


def test_a_scope_follows_the_verb_and_the_apply_line_counts_what_was_done() -> None:
    out = io.StringIO()
    render("Thing", [Change(NO_CHANGE, "k", "n")], mode="apply", out=out, scope="project p")
    assert out.getvalue().splitlines()[0] == "Thing applied for project p: 0 created, 0 updated, 0 deleted, 1 unchanged"


def test_shown_values_print_as_they_are_and_two_name_sets_print_what_goes_and_what_comes() -> None:
    found = [("token", Shown("(changed)"), Shown("(from f)")), ("names", Names(["a", "b"]), Names(["b", "c"]))]
    assert printed([Change(UPDATE, "k", "n", found)]).splitlines()[2:] == [
        "      token: (changed) -> (from f)",
        "      names: -a +c",
    ]


def test_plain_lists_still_print_as_json_on_both_sides() -> None:
    assert '      ranges: ["a"] -> ["b"]' in printed([Change(UPDATE, "k", "n", [("ranges", ["a"], ["b"])])])


def test_the_json_of_a_change_names_it_and_its_note_unless_it_says_what_it_is_about() -> None:
    plain = Change(DELETE, "k", "n", note="gone")
    about = Change(DELETE, "k", "key", note="x", about={"key": "key", "name": "projects/p/k/1"})
    assert plain.as_dict() == {"action": DELETE, "kind": "k", "name": "n", "note": "gone", "differences": []}
    assert about.as_dict() == {"action": DELETE, "kind": "k", "key": "key", "name": "projects/p/k/1", "differences": []}


def test_the_json_document_opens_with_the_title_or_the_heading_given() -> None:
    names = Names(["a"])
    document = json.loads(printed([Change(UPDATE, "k", "n", [("f", names, Names([]))])], as_json=True))
    assert document["title"] == "Thing"
    assert document["changes"][0]["differences"][0]["actual"] == ["a"]
    headed = json.loads(printed([], as_json=True, heading={"project": "p", "namespace": None}))
    assert list(headed) == ["project", "namespace", "mode", "summary", "changes"]
