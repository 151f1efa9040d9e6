from __future__ import annotations

import pytest

from app.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    error_response,
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
