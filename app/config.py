"""
The server's configuration: one frozen L{Config}, the single source of
every default, whether it is built by the command line (L{app.cli.options})
or in Python.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klein import Klein

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_STATIC = DEMO_DIR / "static"
DEMO_CGI = DEMO_DIR / "cgi-bin"
DEMO_WSGI = "app.demo_wsgi:application"
#: Environment variable with the HMAC key (hex) of Digest nonces, which every
#: worker of one server must share; unset, each site makes a random one.
DIGEST_KEY_VARIABLE = "APP_DIGEST_KEY"


class ConfigError(Exception):
    """
    A bad option value: C{option} names the option, C{message} says why.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


@dataclass(frozen=True)
class Config:
    """
    Everything the server needs to know, built once from the command line.

    Paths are absolute.  C{None} means "not served" for the optional mounts.
    """

    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    static_dir: Path | None = DEMO_STATIC
    mounts: tuple[tuple[str, Path], ...] = ()
    cgi_dir: Path | None = DEMO_CGI
    cgi_interpreters: tuple[tuple[str, str], ...] = ((".py", sys.executable),)
    cgi_timeout: float = 60.0
    #: CGI scripts running at once; up to CGI_QUEUE more wait their turn.
    cgi_max: int = 16
    wsgi: str | None = DEMO_WSGI
    wsgi_app: Callable[..., Any] | None = field(default=None, compare=False)
    wsgi_threads: int = 10
    proxy: str | None = None
    htpasswd: Path | None = None
    htdigest: Path | None = None
    realm: str = "app"
    homes: Path | None = None
    #: HMAC key of Digest nonces; workers of one server must share it
    #: (None: a random key made when the site is built).
    digest_key: bytes | None = field(default=None, compare=False, repr=False)
    session_timeout: float = 900.0
    max_sessions: int = 100_000
    max_body: int = 1_048_576
    idle_timeout: float = 60.0
    #: Open connections at most; past it the server stops accepting.
    max_connections: int = 1024
    #: Peers whose forwarding headers are believed: networks in CIDR
    #: notation, or C{unix:} for every peer on a UNIX socket.
    trusted_proxies: tuple[str, ...] = ()
    access_log: str | None = None
    #: C{combined} (Apache's Combined Log Format) or C{json}, one object a line.
    access_log_format: str = "combined"
    log_format: str = "text"
    #: The least severe server log events shown: debug, info, warn or error.
    log_level: str = "info"
    #: How long a graceful stop waits for requests in flight.
    grace: float = 10.0
    routes: tuple[str, ...] = ()
    route_apps: tuple[Klein, ...] = field(default=(), compare=False)
    workers: int = 1
    #: The endpoint serving Prometheus metrics at /metrics (None: none).
    metrics: str | None = None
    demo: bool = True
    display_tracebacks: bool = False


def load_object(option: str, spec: str) -> Any:
    """
    Import C{MODULE:NAME} and return the object, or raise L{ConfigError}.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name.isidentifier():
        raise ConfigError(option, f"expected MODULE:CALLABLE, got {spec!r}")
    module = import_module(option, module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(option, f"module {module_name!r} has no {name!r}") from None


def import_module(option: str, module_name: str) -> Any:
    """
    Import C{module_name} for C{option}, or raise L{ConfigError}.
    """
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # any import-time failure is a bad option value
        raise ConfigError(
            option, f"cannot import {module_name!r}: {type(error).__name__}: {error}"
        ) from None
