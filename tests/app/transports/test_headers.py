from __future__ import annotations

import pytest

from app.transports.headers import decode_header


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("echo", "echo"),
        ("  echo \t", "echo"),
        ("=?base64?ZWNobw==?=", "echo"),
        (" =?base64?ZWNobw==?= ", "echo"),
        ("=?base64?w6ljaG8=?=", "\u00e9cho"),
        ("x=?base64?ZWNobw==?=", "x=?base64?ZWNobw==?="),  # not at the start: a plain value
        ("=?base64?ZWNobw==", "=?base64?ZWNobw=="),  # no end marker: a plain value
        ("=?base64?ZWNobw?=", None),  # unpadded
        ("=?base64?ZWNobw=\n=?=", None),  # not canonical
        ("=?base64?!!!!?=", None),
        ("=?base64?/w==?=", None),  # not UTF-8
    ],
)
def test_a_header_value_is_trimmed_and_strict_base64_decoded(value: str, decoded: str | None) -> None:
    assert decode_header(value) == decoded
