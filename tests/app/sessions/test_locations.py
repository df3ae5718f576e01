"""
The Redis URLs of C{--sessions}.
"""

from __future__ import annotations

import pytest

from app.sessions.locations import RedisAddress, parse_redis_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://localhost", RedisAddress(host="localhost")),
        ("redis://10.0.0.5:6380/2", RedisAddress(host="10.0.0.5", port=6380, db=2)),
        (
            "redis://:s%40cret@redis.internal/1",
            RedisAddress(host="redis.internal", db=1, password="s@cret"),
        ),
        ("redis://[::1]:7000", RedisAddress(host="::1", port=7000)),
        ("redis+unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
        (
            "redis+unix:///run/redis.sock?db=3",
            RedisAddress(path="/run/redis.sock", db=3),
        ),
        (
            "redis+unix://:pw@/run/redis.sock",
            RedisAddress(path="/run/redis.sock", password="pw"),
        ),
    ],
)
def test_a_redis_url_names_its_server(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address


@pytest.mark.parametrize(
    "url",
    [
        "redis://",
        "redis://host:0x10",
        "redis://host/1/2",
        "redis+unix://",
        "redis+unix:///",
        "redis+unix://host/run/redis.sock",
        "rediss://host",
        "http://host",
    ],
)
def test_a_malformed_redis_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)
