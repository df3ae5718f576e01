"""
Where a shared session store is: the C{redis://} and C{redis+unix://} URLs
of C{--sessions}, read without importing a Redis client.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class RedisAddress:
    """
    Where a Redis server is: a TCP host and port, or a UNIX socket path.
    """

    host: str | None = None
    port: int = 6379
    path: str | None = None
    db: int = 0
    password: str | None = None


def parse_redis_url(url: str) -> RedisAddress:
    """
    The address of C{redis://[:PASSWORD@]HOST[:PORT][/DB]} or
    C{redis+unix:///ABSOLUTE/PATH.sock[?db=N]}.

    @raise ValueError: saying what is wrong with C{url}.
    """
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "redis+unix":
        if parts.netloc not in ("", "localhost") and parts.password is None:
            raise ValueError("expected redis+unix:///ABSOLUTE/PATH.sock[?db=N]")
        if not parts.path.startswith("/") or parts.path == "/":
            raise ValueError("the socket path must be absolute")
        query = parse_qs(parts.query, strict_parsing=False)
        db = _db(query.get("db", ["0"])[-1])
        return RedisAddress(path=unquote(parts.path), db=db, password=password)
    if parts.scheme != "redis":
        raise ValueError("expected redis:// or redis+unix://")
    if not parts.hostname:
        raise ValueError("expected redis://[:PASSWORD@]HOST[:PORT][/DB]")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    path = parts.path.strip("/")
    return RedisAddress(
        host=parts.hostname, port=port, db=_db(path or "0"), password=password
    )


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > 1_000_000:
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)
