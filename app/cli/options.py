"""
Command-line options turned into one frozen L{Config}.

Every option of C{python -m app} is parsed and validated here, once.  A bad
value raises L{ConfigError}, which the command line reports as one line naming
the option and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from app.cli.log import LOG_LEVELS
from app.config import (
    DIGEST_KEY_VARIABLE,
    PLAIN_SEGMENT,
    SECRET_KEY_VARIABLE,
    Config,
    ConfigError,
    wsgi_prefix_of,
)
from app.http.forwarding import trusted_network
from app.sessions.locations import parse_redis_url
from app.site import check_mount, check_wsgi_prefix
from auth import (
    NoSuchRealm,
    PasswordFileError,
    is_plain_realm,
    parse_htdigest,
    parse_htpasswd,
)

#: Every option's default is the Config's.
_DEFAULT = Config()

ACCESS_LOG_FORMATS = ("combined", "json")
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

_EPILOG = f"""\
command:
  {{prog}} passwd [--digest] [--realm NAME] FILE USER
      add or replace USER in FILE, a file for --htpasswd (bcrypt) or, with
      --digest, for --htdigest; the password is read from standard input
      (prompted for twice on a terminal), never given as an argument

environment:
  {SECRET_KEY_VARIABLE}  the server's secret (at least 32 hex digits): the HMAC
      key of Digest nonces and session records, which every worker and host
      of one server must share (default: a random key per start; the older
      name {DIGEST_KEY_VARIABLE} is still read)

examples:
  the demo with its users and their home pages:
    {{prog}} --htpasswd app/demo/users.htpasswd \\
        --htdigest app/demo/users.htdigest --homes app/demo/homes
  TLS with two endpoints, plain HTTP on 8080 and HTTPS on 8443:
    {{prog}} --listen tcp:8080:interface=127.0.0.1 \\
        --listen ssl:8443:privateKey=key.pem:certKey=cert.pem
  your own routes (myroutes.py) and a WSGI application serving every other
  path, both looked for in the working directory after the server's own
  packages (app, routes, auth: a module of yours with one of those names is
  an error):
    {{prog}} --no-demo --routes myroutes --wsgi /=mysite:application
  several workers behind a UNIX socket (for a reverse proxy in front):
    {{prog}} --workers 4 --listen unix:/run/app/app.sock \\
        --access-log /var/log/app/access.log
"""


class _Parser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line and exit status 2.
    """

    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block first; one line is clearer.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(text)
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _typed(kind: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None

    return convert


def version() -> str:
    """
    The version of the installed package, or else pyproject.toml's.
    """
    try:
        return importlib.metadata.version("app")
    except importlib.metadata.PackageNotFoundError:
        with open(_PYPROJECT, "rb") as project:
            return str(tomllib.load(project)["project"]["version"])


def build_parser(prog: str = "python -m app") -> argparse.ArgumentParser:
    """
    The parser for C{python -m app} (or C{prog}); its help is the option
    reference.
    """
    parser = _Parser(
        prog=prog,
        description=(
            "Serve the Twisted Web in 60 seconds demo site "
            "(or your own Klein routes).\n"
            "klein-server and python -m app are one program; from a folder "
            "holding\nan app.py of yours, python -m app runs that instead: "
            "use klein-server."
        ),
        epilog=_EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--listen",
        action="append",
        metavar="ENDPOINT",
        help="Twisted server endpoint string; repeatable "
        f"(default: {_DEFAULT.listen[0]})",
    )
    add("--static", metavar="DIR", help="directory served at /static/")
    add(
        "--mount",
        action="append",
        default=[],
        metavar="PREFIX=DIR",
        help="a further directory served at /PREFIX/; repeatable",
    )
    add("--cgi-dir", metavar="DIR", help="CGI scripts served at /cgi-bin/")
    add(
        "--cgi-interpreter",
        action="append",
        default=[],
        metavar="EXT=PROGRAM",
        help="run scripts ending in EXT through PROGRAM; repeatable",
    )
    add(
        "--cgi-timeout",
        type=_typed(_positive_float, "a positive number of seconds"),
        default=_DEFAULT.cgi_timeout,
        metavar="SECONDS",
        help="kill a CGI script that has not answered by then "
        f"(default: {_DEFAULT.cgi_timeout:g})",
    )
    add(
        "--cgi-max",
        type=_typed(_positive_int, "a positive whole number"),
        default=_DEFAULT.cgi_max,
        metavar="N",
        help=f"CGI scripts running at once (default: {_DEFAULT.cgi_max})",
    )
    add(
        "--wsgi",
        metavar="[PREFIX=]MODULE:CALLABLE",
        help="WSGI application mounted at /PREFIX/ (default: /wsgi/); PREFIX / "
        "serves every path no route takes",
    )
    add(
        "--wsgi-threads",
        type=_typed(_positive_int, "a positive whole number"),
        default=_DEFAULT.wsgi_threads,
        metavar="N",
        help=f"threads in the WSGI pool (default: {_DEFAULT.wsgi_threads})",
    )
    add(
        "--proxy",
        metavar="URL",
        help="upstream HTTP server mounted at /proxy/; "
        f"{PROXY_SELF!r}: this server's own /static/",
    )
    add("--htpasswd", metavar="FILE", help="bcrypt users for HTTP Basic")
    add("--htdigest", metavar="FILE", help="users for HTTP Digest")
    add(
        "--realm",
        default=_DEFAULT.realm,
        metavar="NAME",
        help=f"auth realm (default: {_DEFAULT.realm})",
    )
    add("--homes", metavar="DIR", help="/private/ serves DIR/USER/public_html")
    add(
        "--session-timeout",
        type=_typed(_positive_float, "a positive number of seconds"),
        default=_DEFAULT.session_timeout,
        metavar="SECONDS",
        help="idle time after which a session expires "
        f"(default: {_DEFAULT.session_timeout:g})",
    )
    add(
        "--sessions",
        metavar="STORE",
        help="where sessions are kept: memory, sqlite:PATH, "
        "redis://[:PASSWORD@]HOST[:PORT][/DB] or redis+unix:///PATH.sock[?db=N] "
        "(default: memory; with --workers, a SQLite file of the server's own)",
    )
    add(
        "--max-sessions",
        type=_typed(_positive_int, "a positive whole number"),
        default=_DEFAULT.max_sessions,
        metavar="N",
        help=f"sessions held at once (default: {_DEFAULT.max_sessions})",
    )
    add(
        "--max-body",
        type=_typed(_non_negative_int, "a whole number of bytes"),
        default=_DEFAULT.max_body,
        metavar="BYTES",
        help=f"largest request body accepted (default: {_DEFAULT.max_body})",
    )
    add(
        "--idle-timeout",
        type=_typed(_positive_float, "a positive number of seconds"),
        default=_DEFAULT.idle_timeout,
        metavar="SECONDS",
        help=f"close connections idle this long (default: {_DEFAULT.idle_timeout:g})",
    )
    add(
        "--max-connections",
        type=_typed(_positive_int, "a positive whole number"),
        default=_DEFAULT.max_connections,
        metavar="N",
        help="open connections at most; past it new ones wait "
        f"(default: {_DEFAULT.max_connections})",
    )
    add(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="believe the X-Forwarded-For/-Proto (or Forwarded) headers of "
        "peers in this network (an address alone: just it; unix: every peer "
        "on a UNIX socket); repeatable (default: none)",
    )
    add("--access-log", metavar="PATH", help="access log file; - is stdout")
    add(
        "--access-log-format",
        choices=ACCESS_LOG_FORMATS,
        default=_DEFAULT.access_log_format,
        help="Combined Log Format, or one JSON object a line with "
        f"duration_ms (default: {_DEFAULT.access_log_format})",
    )
    add(
        "--log-format",
        choices=["text", "json"],
        default=_DEFAULT.log_format,
        help=f"format of the server log on stdout (default: {_DEFAULT.log_format})",
    )
    add(
        "--log-level",
        choices=list(LOG_LEVELS),
        default=_DEFAULT.log_level,
        help="the least severe server log events shown "
        f"(default: {_DEFAULT.log_level})",
    )
    add(
        "--grace",
        type=_typed(_non_negative_float, "a number of seconds"),
        default=_DEFAULT.grace,
        metavar="SECONDS",
        help="how long a graceful stop waits for requests in flight "
        f"(default: {_DEFAULT.grace:g})",
    )
    add(
        "--routes",
        action="append",
        default=[],
        metavar="MODULE",
        help="serve the routes of MODULE's Klein instance `app`; repeatable",
    )
    add(
        "--workers",
        type=_typed(_positive_int, "a positive whole number"),
        default=_DEFAULT.workers,
        metavar="N",
        help=f"worker processes (default: {_DEFAULT.workers})",
    )
    add(
        "--metrics",
        metavar="ENDPOINT",
        help="Twisted server endpoint string serving Prometheus metrics at "
        "/metrics, never on the site (default: none)",
    )
    add(
        "--no-demo",
        dest="demo",
        action="store_false",
        help="serve only /health, the mounts named by options and --routes",
    )
    add(
        "--display-tracebacks",
        action="store_true",
        help="show tracebacks in 500 pages (development only)",
    )
    add(
        "--version",
        action="version",
        version=f"app {version()}",
        help="print the version and exit",
    )
    return parser


def _directory(option: str, text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ConfigError(option, f"{text!r} is not a directory")
    return path.resolve()


def _readable_file(option: str, text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(option, f"{text!r} is not a readable file")
    return path.resolve()


def _mount(text: str) -> tuple[str, Path]:
    prefix, sep, directory = text.partition("=")
    prefix = prefix.strip("/")
    if not sep or not directory:
        raise ConfigError("--mount", f"expected PREFIX=DIR, got {text!r}")
    segments = prefix.split("/")
    if not all(PLAIN_SEGMENT.fullmatch(s) for s in segments):
        raise ConfigError("--mount", f"{prefix!r} is not a plain path prefix")
    check_mount(prefix)
    return prefix, _directory("--mount", directory)


def _interpreter(text: str) -> tuple[str, str]:
    extension, sep, program = text.partition("=")
    if not sep or not re.fullmatch(r"\.[A-Za-z0-9_]+", extension):
        raise ConfigError("--cgi-interpreter", f"expected .EXT=PROGRAM, got {text!r}")
    found = shutil.which(program)
    if found is None:
        raise ConfigError("--cgi-interpreter", f"{program!r} is not an executable")
    return extension, found


#: The --proxy value that mounts this server's own /static/ at /proxy/.
PROXY_SELF = "self"
#: A colon that separates endpoint-string arguments: not one escaped by \\.
_ENDPOINT_SEPARATOR = re.compile(r"(?<!\\):")
#: Addresses that listen everywhere, and the one that reaches them here.
_ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def _own_static(listen: Sequence[str]) -> str:
    """
    The URL of this server's /static/ at its first TCP endpoint with a
    fixed port: what C{--proxy self} stands for.
    """
    for description in listen:
        kind, _, rest = description.partition(":")
        if kind not in ("tcp", "tcp6"):
            continue
        arguments = [
            part.replace("\\:", ":") for part in _ENDPOINT_SEPARATOR.split(rest)
        ]
        positional = [part for part in arguments if "=" not in part]
        keywords = dict(part.split("=", 1) for part in arguments if "=" in part)
        port = keywords.get("port", positional[0] if positional else "")
        host = keywords.get("interface", positional[1] if positional[1:] else "")
        if not port.isdigit() or int(port) == 0:
            continue
        host = _ANY_ADDRESS.get(host if host or kind == "tcp" else "::", host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{int(port)}/static/"
    raise ConfigError(
        "--proxy", f"{PROXY_SELF} needs a --listen tcp: endpoint with a fixed port"
    )


def _proxy(text: str, listen: Sequence[str]) -> str:
    if text == PROXY_SELF:
        text = _own_static(listen)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError("--proxy", f"{text!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "--proxy", f"expected an http:// or https:// URL, got {text!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError("--proxy", "the upstream URL takes no query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("--proxy", "the upstream URL takes no user name or password")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise ConfigError("--proxy", f"{text!r} is not a plain ASCII URL")
    return text


def _trusted_proxies(texts: Sequence[str]) -> tuple[str, ...]:
    networks: dict[str, None] = {}
    for text in texts:
        try:
            networks[trusted_network(text)] = None
        except ValueError as error:
            raise ConfigError("--trusted-proxy", str(error)) from None
    return tuple(networks)


def _access_log(text: str) -> str:
    if text == "-":
        return text
    parent = Path(text).expanduser().resolve().parent
    if not parent.is_dir():
        raise ConfigError("--access-log", f"directory {str(parent)!r} does not exist")
    path = Path(text).expanduser().resolve()
    try:
        # Opened as the access log will be (appending), so that a file the
        # server cannot write is a bad option value, not a traceback later.
        with open(path, "ab"):
            pass
    except OSError as error:
        raise ConfigError(
            "--access-log", f"cannot write {str(path)!r}: {error.strerror}"
        ) from None
    return str(path)


def _secret_key() -> bytes | None:
    # A parent process hands its workers one secret this way, and the hosts
    # of one server are each given the same.
    name = SECRET_KEY_VARIABLE
    text = os.environ.get(name)
    if text is None:
        name = DIGEST_KEY_VARIABLE
        text = os.environ.get(name)
        if text is None:
            return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(name, "expected at least 32 hex digits")
    return key


def _sessions(text: str) -> str:
    """
    The session store C{--sessions} names, checked: C{memory},
    C{sqlite:PATH} (made absolute; its directory must exist), or a Redis URL.
    """
    if text == "memory":
        return text
    if text.startswith("sqlite:"):
        name = text.removeprefix("sqlite:")
        if not name:
            raise ConfigError("--sessions", "expected sqlite:PATH")
        path = Path(name).expanduser().resolve()
        if not path.parent.is_dir():
            raise ConfigError(
                "--sessions", f"directory {str(path.parent)!r} does not exist"
            )
        if path.is_dir():
            raise ConfigError("--sessions", f"{str(path)!r} is a directory")
        return f"sqlite:{path}"
    if text.startswith(("redis://", "redis+unix://")):
        try:
            parse_redis_url(text)
        except ValueError as error:
            raise ConfigError("--sessions", str(error)) from None
        return text
    raise ConfigError(
        "--sessions",
        f"expected memory, sqlite:PATH, redis://… or redis+unix://…, got {text!r}",
    )


def _check_password_files(
    args: argparse.Namespace, htpasswd: Path | None, htdigest: Path | None, realm: str
) -> None:
    try:
        if htpasswd is not None:
            parse_htpasswd(htpasswd)
    except PasswordFileError as error:
        raise ConfigError("--htpasswd", f"{args.htpasswd}: {error}") from None
    try:
        if htdigest is not None:
            parse_htdigest(htdigest, realm)
    except PasswordFileError as error:
        option = "--realm" if isinstance(error, NoSuchRealm) else "--htdigest"
        raise ConfigError(option, f"{args.htdigest}: {error}") from None


def config_from_args(argv: Sequence[str], prog: str = "python -m app") -> Config:
    """
    Parse C{argv} (without the program name) into a L{Config}.

    @raise SystemExit: with status 2 for malformed options (argparse).
    @raise ConfigError: for well-formed options whose values are bad.
    """
    args = build_parser(prog).parse_args(list(argv))
    demo: bool = args.demo

    static_dir = _directory("--static", args.static) if args.static else None
    cgi_dir = _directory("--cgi-dir", args.cgi_dir) if args.cgi_dir else None
    interpreters = dict(Config.cgi_interpreters)
    interpreters.update(_interpreter(text) for text in args.cgi_interpreter)

    mounts = tuple(_mount(text) for text in args.mount)
    prefixes = [prefix for prefix, _ in mounts]
    if len(set(prefixes)) != len(prefixes):
        raise ConfigError("--mount", "the same prefix is mounted twice")

    if args.wsgi is not None:
        check_wsgi_prefix(wsgi_prefix_of(args.wsgi)[0], prefixes)

    htpasswd = _readable_file("--htpasswd", args.htpasswd) if args.htpasswd else None
    htdigest = _readable_file("--htdigest", args.htdigest) if args.htdigest else None
    homes = _directory("--homes", args.homes) if args.homes else None

    realm: str = args.realm
    if not is_plain_realm(realm):
        raise ConfigError("--realm", "a realm is printable and has no quotes")
    _check_password_files(args, htpasswd, htdigest, realm)

    return Config(
        listen=tuple(args.listen or Config.listen),
        static_dir=static_dir,
        mounts=mounts,
        cgi_dir=cgi_dir,
        cgi_interpreters=tuple(sorted(interpreters.items())),
        cgi_timeout=args.cgi_timeout,
        cgi_max=args.cgi_max,
        wsgi=args.wsgi,
        wsgi_threads=args.wsgi_threads,
        proxy=_proxy(args.proxy, args.listen or Config.listen) if args.proxy else None,
        htpasswd=htpasswd,
        htdigest=htdigest,
        realm=realm,
        homes=homes,
        secret_key=_secret_key(),
        sessions=_sessions(args.sessions) if args.sessions else None,
        session_timeout=args.session_timeout,
        max_sessions=args.max_sessions,
        max_body=args.max_body,
        idle_timeout=args.idle_timeout,
        trusted_proxies=_trusted_proxies(args.trusted_proxy),
        access_log=_access_log(args.access_log) if args.access_log else None,
        access_log_format=args.access_log_format,
        log_format=args.log_format,
        log_level=args.log_level,
        grace=args.grace,
        routes=tuple(args.routes),
        workers=args.workers,
        metrics=args.metrics,
        demo=demo,
        display_tracebacks=args.display_tracebacks,
        max_connections=args.max_connections,
    )
