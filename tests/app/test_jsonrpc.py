from __future__ import annotations

import orjson
import pytest

from app.jsonrpc import (
    INVALID_REQUEST,
    MAX_DEPTH,
    MAX_STRING,
    PARSE_ERROR,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    error_response,
    leading_request_id,
    parse_json,
    parse_message,
)


def test_a_request_is_parsed_with_its_id_method_and_params() -> None:
    message = parse_message(b'{"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"a": 1}}')
    assert (message.id, message.method, message.params, message.is_notification) == (7, "ping", {"a": 1}, False)


def test_a_message_without_id_is_a_notification() -> None:
    assert parse_message(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}').is_notification


def test_a_client_response_is_recognised_as_a_response() -> None:
    message = parse_message(b'{"jsonrpc": "2.0", "id": "s1", "result": {}}')
    assert message.is_response
    assert message.method is None


def test_a_body_that_is_not_json_is_a_parse_error() -> None:
    with pytest.raises(ParseError) as caught:
        parse_message(b'{"jsonrpc": ')
    assert caught.value.code == PARSE_ERROR


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]',
        b'"ping"',
        b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}',
        b'{"jsonrpc": "2.0", "id": 1}',
        b'{"jsonrpc": "2.0", "id": 1, "method": 5}',
        b'{"jsonrpc": "2.0", "id": 1, "method": ""}',
        b'{"jsonrpc": "2.0", "id": null, "method": "ping"}',
        b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}',
        b'{"jsonrpc": "2.0", "id": true, "method": "ping"}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}',
    ],
)
def test_malformed_messages_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_message(body)
    assert caught.value.code == INVALID_REQUEST


def test_an_invalid_request_keeps_the_id_it_could_read() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_message(b'{"jsonrpc": "2.0", "id": 9, "method": "x", "params": "no"}')
    assert caught.value.request_id == 9


def test_an_error_response_carries_code_message_and_data() -> None:
    response = error_response(3, MethodNotFound("nope", data={"m": "x"}))
    assert response == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "nope", "data": {"m": "x"}}}


def test_a_message_nested_deeper_than_the_limit_is_refused_but_the_limit_itself_is_fine() -> None:
    def nested(levels: int) -> bytes:
        return b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + b'{"a":' * levels + b"1" + b"}" * levels + b"}"

    parse_message(nested(MAX_DEPTH - 2))  # the message object and params count as two levels
    with pytest.raises(InvalidRequest, match=f"nests deeper than {MAX_DEPTH} levels"):
        parse_message(nested(MAX_DEPTH))
    with pytest.raises(InvalidRequest, match="nests deeper"):
        parse_json(b"[" * 1000 + b"]" * 1000)  # arrays too, far below orjson's own limit


def test_a_string_or_key_longer_than_the_limit_is_refused() -> None:
    long = "x" * (MAX_STRING + 1)
    with pytest.raises(InvalidRequest, match="a string is longer"):
        parse_json(orjson.dumps({"params": {"text": long}}))
    with pytest.raises(InvalidRequest, match="a key is longer"):
        parse_json(orjson.dumps({long: 1}))
    with pytest.raises(InvalidRequest, match="a string is longer"):
        parse_json(orjson.dumps([long]))


@pytest.mark.parametrize(
    ("start", "found"),
    [
        (b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"text": "xxxx', 5),
        (b' {"id":"abc","params":{"a', "abc"),
        (b'{"jsonrpc":"2.0","method":"tools/call","params":{"id":7,"text":"xxx', None),  # an id among the params
        (b'{"jsonrpc":"2.0","params":{"text":"xxx', None),  # cut before the id
        (b'{"id": true, "method', None),  # not an id a response can carry
        (b'{"id": 1.5, "method', None),
        # An integer is an id only in the range a whole message's id can have (orjson's: -2**63 to 2**64 - 1; past
        # it orjson reads a float, which message_from refuses), so that the refusal can be written with it.
        (b'{"id": 18446744073709551615, "method', 2**64 - 1),
        (b'{"id": -9223372036854775808, "method', -(2**63)),
        (b'{"id": 18446744073709551616, "method', None),
        (b'{"id": -9223372036854775809, "method', None),
        (b'{"id": 1' + b"0" * 400 + b', "method', None),
        (b"[1, 2", None),
        (b"\xff\xfe", None),
    ],
)  # fmt: skip
def test_the_id_of_a_message_cut_short_is_read_only_from_its_own_top_level_member(start: bytes, found: object) -> None:
    assert leading_request_id(start) == found
