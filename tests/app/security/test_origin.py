"""DNS-rebinding protection remembers its verdict per (Host, Origin) pair, within a bounded memory: a client that
varies its headers cannot grow it, and a verdict is the same whether it was remembered or worked out again."""

from __future__ import annotations

from app.security.origin import OriginPolicy, Refusal


def verdict(policy: OriginPolicy, host: str, origin: str | None = None) -> Refusal | None:
    headers = {"host": host} if origin is None else {"host": host, "origin": origin}
    return policy.check(headers)


def test_a_loopback_server_refuses_a_foreign_host_and_origin_every_time_it_is_asked() -> None:
    policy = OriginPolicy(bind_host="127.0.0.1", allowed_hosts=(), allowed_origins=())
    for _ in range(3):
        assert verdict(policy, "127.0.0.1:8080") is None
        assert verdict(policy, "localhost:8080", "http://localhost:3000") is None
        assert verdict(policy, "evil.example:8080") == Refusal(
            421, "Misdirected Request: Host 'evil.example:8080' is not a loopback name"
        )
        assert verdict(policy, "127.0.0.1:8080", "http://evil.example") == Refusal(
            403, "Forbidden: Origin 'http://evil.example' may not call this server"
        )


def test_headers_that_change_at_every_request_neither_grow_the_memory_nor_change_a_verdict() -> None:
    policy = OriginPolicy(bind_host="0.0.0.0", allowed_hosts=(), allowed_origins=())
    assert verdict(policy, "mcp.example.com", "https://other.example") is not None
    for number in range(5_000):
        assert verdict(policy, f"host-{number}.example", f"https://host-{number}.example") is None
    assert len(policy._verdicts) <= 256
    assert verdict(policy, "mcp.example.com", "https://other.example") is not None
    assert verdict(policy, "mcp.example.com", "https://mcp.example.com") is None
