"""Plans of Google Cloud objects: what happens to each (CREATE, UPDATE with the fields that differ, NO CHANGE,
DELETE), compared on the fields the desired object sets, and printed the same way by every command that
plans (``monitoring`` and the platforms of :mod:`deployer.gcp`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = [
    "ACTIONS",
    "CREATE",
    "DELETE",
    "NO_CHANGE",
    "REPLACE",
    "UPDATE",
    "Change",
    "Names",
    "Shown",
    "differences",
    "emit_desired",
    "message_fields",
    "rest_fields",
    "render",
    "run_mode",
    "summary",
]

CREATE, UPDATE, NO_CHANGE, DELETE = "CREATE", "UPDATE", "NO CHANGE", "DELETE"
ACTIONS = (CREATE, UPDATE, DELETE, NO_CHANGE)
REPLACE = "REPLACE"  # a difference that cannot be made in place: apply refuses (GKE, Memorystore)


def differences(desired: Any, actual: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Where ``actual`` differs from ``desired`` on the fields ``desired`` sets: (path, actual, desired). A list of
    plain values is a set (order does not matter); a list of objects is compared item by item."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return [(path, actual, desired)]
        return [d for k, v in desired.items() for d in differences(v, actual.get(k), f"{path}.{k}" if path else k)]
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return [(path, actual, desired)]
        if not any(isinstance(v, dict | list) for v in desired):
            return [] if sorted(map(str, desired)) == sorted(map(str, actual)) else [(path, actual, desired)]
        return [
            d for i, (v, a) in enumerate(zip(desired, actual, strict=True)) for d in differences(v, a, f"{path}[{i}]")
        ]
    return [] if desired == actual else [(path, actual, desired)]


class Shown(str):
    """A difference's value printed as is, not as JSON (``(changed)``, ``(from FILE)``, a URL without its query)."""

    __slots__ = ()


class Names(list[str]):
    """A difference's value that is a set of resource names: printed as what goes and what comes (``-a +b``) when
    both sides are; a list in JSON."""


@dataclass
class Change:
    """One line of a plan: ``action`` on the object ``kind`` ``name``; for UPDATE the differing fields (path,
    actual, desired). ``about``, when set, is what the JSON says of the object instead of its name and note
    (monitoring: its key, display name, resource name and where its secrets come from)."""

    action: str
    kind: str
    name: str
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)
    desired: Any = None
    actual: Any = None
    note: str = ""
    about: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        about = {"name": self.name, "note": self.note} if self.about is None else self.about
        return {
            "action": self.action,
            "kind": self.kind,
            **about,
            "differences": [{"field": f, "actual": a, "desired": d} for f, a, d in self.differences],
        }


def message_fields(message: Any, *, rest_names: bool = True) -> dict[str, Any]:
    """The fields a Google Cloud API message (proto-plus) sets, as a dict with enum names (fields left at their
    default out): the REST API's camelCase field names, or with ``rest_names`` False the protocol buffer's."""
    found: dict[str, Any] = type(message).to_dict(
        message,
        use_integers_for_enums=False,
        preserving_proto_field_name=not rest_names,
        always_print_fields_with_no_presence=False,
    )
    return found


def rest_fields(message: Any) -> dict[str, Any]:
    """A Google Cloud API message (proto-plus) as the REST API writes it: camelCase field names, enum names, the
    fields it sets only."""
    return message_fields(message)


def emit_desired(document: Any, *, out: TextIO, as_json: bool = False) -> None:
    """What a platform's ``render`` prints: the desired resources, made offline (no credentials, no call), as YAML
    or, with ``as_json``, one JSON document."""
    if as_json:
        out.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        import yaml  # (only render prints YAML)

        out.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))


def run_mode(action: str, dry_run: bool) -> str:
    """How a command runs: ``plan`` (reads only), ``dry-run`` (an action that writes, asked with --dry-run: the
    plan is printed, nothing is written) or ``apply`` (it writes)."""
    if action == "plan":
        return "plan"
    return "dry-run" if dry_run else "apply"


def summary(changes: Sequence[Change]) -> dict[str, int]:
    """How many changes of each action."""
    return {action: sum(c.action == action for c in changes) for action in ACTIONS}


def _brief(value: Any, width: int = 70) -> str:
    if isinstance(value, Shown):
        return str(value)
    text = "(unset)" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _difference(path: str, actual: Any, desired: Any) -> str:
    if isinstance(actual, Names) and isinstance(desired, Names):  # what goes, what comes
        moves = [f"-{v}" for v in actual if v not in desired] + [f"+{v}" for v in desired if v not in actual]
        return f"      {path}: {' '.join(moves)}"
    return f"      {path}: {_brief(actual)} -> {_brief(desired)}"


def render(
    title: str,
    changes: Sequence[Change],
    *,
    mode: str,
    out: TextIO,
    as_json: bool = False,
    scope: str = "",
    heading: Mapping[str, Any] | None = None,
    trailer: Mapping[str, Any] | None = None,
    counted: Sequence[str] = ACTIONS,
) -> None:
    """The plan (``mode`` plan, dry-run or apply) as a table, or as one JSON document with ``as_json``. ``scope``
    follows the title's verb (``Cloud Monitoring plan for SCOPE: ...``). The JSON document: ``heading`` (default
    the title), the mode, how many changes of each ``counted`` action, the changes, then ``trailer``."""
    counts = summary(changes)
    if as_json:
        head = {"title": title} if heading is None else heading
        tally = {action: sum(c.action == action for c in changes) for action in counted}
        listed = [c.as_dict() for c in changes]
        document = {**head, "mode": mode, "summary": tally, "changes": listed, **(trailer or {})}
        out.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
        return
    where = f" for {scope}" if scope else ""
    if mode == "apply":
        print(
            f"{title} applied{where}: {counts[CREATE]} created, {counts[UPDATE]} updated, {counts[DELETE]} "
            f"deleted, {counts[NO_CHANGE]} unchanged",
            file=out,
        )
    else:
        verb = "plan (dry run: nothing written)" if mode == "dry-run" else "plan"
        print(
            f"{title} {verb}{where}: {counts[CREATE]} to create, {counts[UPDATE]} to update, {counts[DELETE]} to "
            f"delete, {counts[NO_CHANGE]} unchanged",
            file=out,
        )
    widths = (max(len(c.kind) for c in changes), max(len(c.name) for c in changes)) if changes else (0, 0)
    for change in changes:
        line = f"  {change.action:<9}  {change.kind:<{widths[0]}}  {change.name:<{widths[1]}}"
        print((line + (f"  {change.note}" if change.note else "")).rstrip(), file=out)
        for path, actual, desired in change.differences:
            print(_difference(path, actual, desired), file=out)
