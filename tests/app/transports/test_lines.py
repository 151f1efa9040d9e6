"""The line framing of TCP and stdio: messages, blank lines, over-long lines and the end of the stream."""

from __future__ import annotations

import asyncio

from app.transports.lines import Overlong, read_message


async def _messages(data: bytes, *, limit: int = 64) -> list[bytes | Overlong]:
    """The messages of a stream of ``data`` read with a reader of ``limit`` bytes."""
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    found: list[bytes | Overlong] = []
    while message := await read_message(reader):
        found.append(message)
    return found


def test_messages_come_one_a_line_and_blank_lines_are_skipped() -> None:
    found = asyncio.run(_messages(b'\n  \n{"a":1}\n\n{"b":2}\n'))
    assert found == [b'{"a":1}\n', b'{"b":2}\n']


def test_a_last_line_without_its_newline_still_counts() -> None:
    assert asyncio.run(_messages(b'{"a":1}\n{"b":2}')) == [b'{"a":1}\n', b'{"b":2}']


def test_an_over_long_line_is_cut_at_the_limit_and_the_next_line_is_read_whole() -> None:
    long = b'{"jsonrpc":"2.0","id":7,"x":"' + b"y" * 500 + b'"}\n'
    found = asyncio.run(_messages(long + b'{"b":2}\n'))
    assert len(found) == 2
    assert isinstance(found[0], Overlong)
    assert found[0].head.startswith(b'{"jsonrpc":"2.0","id":7')
    assert b'{"b":2}' not in found[0].head
    assert found[1] == b'{"b":2}\n'


def test_an_over_long_line_at_the_end_of_the_stream_ends_it() -> None:
    found = asyncio.run(_messages(b"z" * 500))
    assert len(found) == 1
    assert isinstance(found[0], Overlong)


def test_a_stream_of_nothing_has_no_message() -> None:
    assert asyncio.run(_messages(b"")) == []
