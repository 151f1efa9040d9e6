"""Event ids: ``<stream id>-<sequence>``, read back from a client's ``Last-Event-ID``, which is the client's to write:
anything that is not one of ours is None (the transport answers 404, as for a stream it does not know)."""

from __future__ import annotations

import pytest

from app.sessions.events import parse_event_id


def test_an_event_id_of_ours_names_its_stream_and_sequence() -> None:
    assert parse_event_id("5f0c2a9e1b3d4c6f-12") == ("5f0c2a9e1b3d4c6f", 12)
    assert parse_event_id("a-b-7") == ("a-b", 7)  # the sequence follows the last dash


@pytest.mark.parametrize(
    "event_id",
    [
        "ab-\u00b2",  # a superscript two: a digit to str.isdigit, not to int
        "ab-\u0661\u0662",  # Arabic-Indic digits, which int would read as 12
        "ab-\uff11",  # a fullwidth one
        "ab-" + "9" * 20,  # more digits than any stream numbers
        "ab-" + "1" * 5000,  # more than int reads from a string
        "ab-",
        "-3",
        "ab-+3",
        "ab- 3",
        "ab-3 ",
        "ab-0x3",
        "ab",
        "",
    ],
)
def test_what_is_not_one_of_our_event_ids_is_none(event_id: str) -> None:
    assert parse_event_id(event_id) is None
