"""
The server's configuration: one frozen L{Config}, the single source of
every default and of what each value means, whether it is built by the
command line (L{app.cli.options}) or in Python: a L{Config} given the values
of a command line serves the same site.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klein import Klein

from app.demo_wsgi import application as demo_application

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_STATIC = DEMO_DIR / "static"
DEMO_CGI = DEMO_DIR / "cgi-bin"
DEMO_WSGI = "app.demo_wsgi:application"
#: Where a WSGI application is mounted when C{--wsgi} names no prefix.
WSGI_PREFIX = "wsgi"
#: The server's own top-level packages: a user's module may not take a name.
OWN_PACKAGES = ("app", "routes", "auth")
#: Environment variable with the server's secret (hex): the HMAC key of Digest
#: nonces and of session records, which every worker and every host of one
#: server must share; unset, the parent of the workers makes one at random
#: (a single process makes its own).
SECRET_KEY_VARIABLE = "APP_SECRET_KEY"  # noqa: S105 (a name, not a key)
#: Its older name, still read when the new one is unset.
DIGEST_KEY_VARIABLE = "APP_DIGEST_KEY"


class ConfigError(Exception):
    """
    A bad option value: C{option} names the option, C{message} says why.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


#: A plain path segment: what a C{--mount} or C{--wsgi} prefix is made of.
PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


@dataclass(frozen=True)
class Config:
    """
    Everything the server needs to know, built once from the command line or
    in Python; each field is the value of the option of the same name
    (C{static_dir} is C{--static}, C{demo=False} is C{--no-demo}).

    Paths are absolute.  C{static_dir}, C{cgi_dir} and C{wsgi} left to
    C{None} mean what leaving their option out means: the demo's with
    C{demo}, otherwise not served (L{static_root}, L{cgi_root},
    L{wsgi_prefix} say what is).  Building a L{Config} imports the modules
    that C{wsgi} and C{routes} name (L{import_module}).
    """

    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    static_dir: Path | None = None
    mounts: tuple[tuple[str, Path], ...] = ()
    cgi_dir: Path | None = None
    cgi_interpreters: tuple[tuple[str, str], ...] = ((".py", sys.executable),)
    cgi_timeout: float = 60.0
    #: CGI scripts running at once; up to CGI_QUEUE more wait their turn.
    cgi_max: int = 16
    #: C{[PREFIX=]MODULE:CALLABLE}, as C{--wsgi} takes it.
    wsgi: str | None = None
    #: An application object served instead of the one C{wsgi} names (at
    #: C{wsgi}'s prefix, or C{/wsgi/}).
    wsgi_app: Callable[..., Any] | None = field(default=None, compare=False)
    wsgi_threads: int = 10
    proxy: str | None = None
    htpasswd: Path | None = None
    htdigest: Path | None = None
    realm: str = "app"
    homes: Path | None = None
    #: The server's secret: HMAC key of Digest nonces and session records;
    #: workers and hosts of one server must share it (None: a random key
    #: made when the site is built).
    secret_key: bytes | None = field(default=None, compare=False, repr=False)
    #: Where sessions are kept: C{memory}, C{sqlite:PATH}, C{redis://…} or
    #: C{redis+unix://…} (None: memory, or with several workers a SQLite file
    #: in a private directory that the parent makes).
    sessions: str | None = None
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
    #: Modules whose Klein C{app} is served beside the built-in routes.
    routes: tuple[str, ...] = ()
    #: Klein apps served after those of C{routes}.
    route_apps: tuple[Klein, ...] = field(default=(), compare=False)
    workers: int = 1
    #: The endpoint serving Prometheus metrics at /metrics (None: none).
    metrics: str | None = None
    demo: bool = True
    display_tracebacks: bool = False

    # What the fields above come to, worked out once when the Config is made.
    #: Where the WSGI application is mounted: C{wsgi}, C{app/v1}, or C{""}
    #: for C{/} (every path no route takes); C{None}: nowhere.
    wsgi_prefix: str | None = field(init=False)
    #: The WSGI application served at L{wsgi_prefix}.
    wsgi_application: Callable[..., Any] | None = field(
        init=False, compare=False, repr=False
    )
    #: The Klein apps served beside the built-in routes, in order.
    extra_apps: tuple[Klein, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        prefix, application = _wsgi(self.wsgi, self.wsgi_app, self.demo)
        object.__setattr__(self, "wsgi_prefix", prefix)
        object.__setattr__(self, "wsgi_application", application)
        loaded = tuple(route_app(name) for name in self.routes)
        object.__setattr__(self, "extra_apps", loaded + tuple(self.route_apps))

    @property
    def static_root(self) -> Path | None:
        """
        The directory served at C{/static/}, if any.
        """
        if self.static_dir is not None:
            return self.static_dir
        return DEMO_STATIC if self.demo else None

    @property
    def cgi_root(self) -> Path | None:
        """
        The directory of the scripts served at C{/cgi-bin/}, if any.
        """
        if self.cgi_dir is not None:
            return self.cgi_dir
        return DEMO_CGI if self.demo else None


def wsgi_prefix_of(spec: str) -> tuple[str, str]:
    """
    Split C{--wsgi [PREFIX=]MODULE:CALLABLE} into its prefix (C{""} for
    C{/}) and C{MODULE:CALLABLE}, or raise L{ConfigError}.
    """
    prefix, sep, target = spec.partition("=")
    if not sep:
        return WSGI_PREFIX, spec
    if prefix.strip("/") == "" and prefix != "/":
        raise ConfigError("--wsgi", f"expected PREFIX=MODULE:CALLABLE, got {spec!r}")
    prefix = prefix.strip("/")
    if prefix and not all(PLAIN_SEGMENT.fullmatch(s) for s in prefix.split("/")):
        raise ConfigError("--wsgi", f"{prefix!r} is not a plain path prefix, nor /")
    return prefix, target


def _wsgi(
    spec: str | None, given: Callable[..., Any] | None, demo: bool
) -> tuple[str | None, Callable[..., Any] | None]:
    """
    Where the WSGI application is mounted, and the application.
    """
    if spec is None:
        if given is not None:
            return WSGI_PREFIX, given
        # The demo's is the server's own module, never looked for elsewhere.
        return (WSGI_PREFIX, demo_application) if demo else (None, None)
    prefix, target = wsgi_prefix_of(spec)
    application = load_object("--wsgi", target) if given is None else given
    if not callable(application):
        raise ConfigError("--wsgi", f"{target!r} is not callable")
    return prefix, application


def route_app(module_name: str) -> Klein:
    """
    The Klein C{app} of the C{--routes} module C{module_name}, or raise
    L{ConfigError}.
    """
    module = import_module("--routes", module_name)
    app = getattr(module, "app", None)
    if not isinstance(app, Klein):
        raise ConfigError("--routes", f"module {module_name!r} has no Klein `app`")
    return app


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
    Import the user's module C{module_name} for C{option}, or raise
    L{ConfigError}.

    The working directory is searched after the server's own packages and
    everything installed (it is appended to C{sys.path} when missing), so a
    user's C{app.py} or C{auth/} never replaces a package of the server; a
    module asked for whose name one of those takes is an error, rather than
    a silent import of the other.
    """
    _check_not_hidden(option, module_name)
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # any import-time failure is a bad option value
        raise ConfigError(
            option, f"cannot import {module_name!r}: {type(error).__name__}: {error}"
        ) from None


def _check_not_hidden(option: str, module_name: str) -> None:
    """
    Raise L{ConfigError} when the working directory holds the top-level
    module or package of C{module_name}, but the name leads elsewhere.
    """
    top = module_name.partition(".")[0]
    here = Path.cwd().resolve()
    if not top.isidentifier() or not (
        (here / f"{top}.py").is_file() or (here / top).is_dir()
    ):
        return
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return
    if spec is None or _found_in(spec) == here:
        return
    yours = here / f"{top}.py" if (here / f"{top}.py").is_file() else here / top
    where = spec.origin if spec.has_location else "built in"
    owner = "the server's own package" if top in OWN_PACKAGES else "the module"
    raise ConfigError(
        option,
        f"cannot import {module_name!r}: your {str(yours)!r} has the name of "
        f"{owner} {top!r} ({where}), which is found first; rename yours",
    )


def _found_in(spec: importlib.machinery.ModuleSpec) -> Path | None:
    """
    The directory on C{sys.path} that C{spec}'s module was found in.
    """
    if spec.has_location and spec.origin is not None:
        origin = Path(spec.origin).resolve()
        # A package's origin is its __init__.py, a directory further down.
        package = spec.submodule_search_locations is not None
        return origin.parent.parent if package else origin.parent
    locations = list(spec.submodule_search_locations or ())
    return Path(locations[0]).resolve().parent if locations else None
