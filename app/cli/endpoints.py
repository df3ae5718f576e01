"""
C{--listen} endpoint strings, checked before twisted parses them.

twisted's parsers report a mistake with whatever their C{int()} or C{open()}
raised (C{invalid literal for int() with base 10}, a lock file's name, an
errno): here each mistake is one line naming C{--listen} and saying what is
wrong, and an endpoint that cannot be bound is one line saying why.  UNIX
sockets are made mode 0660, not twisted's 0666, unless the string gives
C{mode=}.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from twisted.internet.error import CannotListenError

from app.config import ConfigError

#: The mode of a UNIX socket whose endpoint string gives none.
UNIX_MODE = "660"
#: Endpoint types bound to a TCP port.
_PORT_TYPES = ("tcp", "tcp6", "ssl")
#: The TLS options that name a file to read.
_TLS_FILES = ("privateKey", "certKey", "extraCertChain", "dhParameters")
_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '([^']*)'")


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    The type, positional fields and C{key=value} fields of an endpoint
    string, split as twisted splits it: on C{:}, with C{\\} escaping the
    next character.
    """
    fields: list[tuple[str, int]] = []
    current: list[str] = []
    equals = -1
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(("".join(current), equals))
            current, equals = [], -1
        else:
            if char == "=" and equals < 0:
                equals = len(current)
            current.append(char)
    fields.append(("".join(current), equals))
    kind = fields[0][0]
    positional = [text for text, at in fields[1:] if at < 0]
    keywords = {text[:at]: text[at + 1 :] for text, at in fields[1:] if at >= 0}
    return kind, positional, keywords


def with_unix_mode(description: str) -> str:
    """
    C{description} with C{mode=660} where it is a UNIX endpoint that names
    no mode of its own.
    """
    kind, _, keywords = split_endpoint(description)
    if kind == "unix" and "mode" not in keywords:
        return f"{description}:mode={UNIX_MODE}"
    return description


def check_endpoint(description: str) -> None:
    """
    Raise L{ConfigError} for C{--listen} if C{description} is a TCP, TLS or
    UNIX endpoint string with a mistake twisted would report obscurely.
    """
    kind, positional, keywords = split_endpoint(description)
    problem = None
    if kind in _PORT_TYPES:
        problem = _port_problem(kind, positional, keywords)
    elif kind == "unix":
        problem = _unix_problem(positional, keywords)
    if problem is None and "backlog" in keywords:
        problem = _number_problem("backlog", keywords["backlog"], 1, 1 << 16)
    if problem is not None:
        raise ConfigError("--listen", f"{description!r}: {problem}")


def parse_problem(description: str, error: Exception) -> ConfigError:
    """
    The L{ConfigError} for an endpoint string twisted could not parse.
    """
    kind = split_endpoint(description)[0]
    text = str(error)
    if isinstance(error, ValueError) and text.startswith("Unknown endpoint type"):
        why = f"unknown endpoint type {kind!r} (tcp, tcp6, ssl, unix, systemd)"
    elif (match := _UNEXPECTED_KEYWORD.search(text)) is not None:
        why = f"a {kind} endpoint has no option {match.group(1)!r}"
    elif kind == "ssl":
        why = "cannot load the TLS private key and certificate"
    else:
        why = "not an endpoint string (for example tcp:8080:interface=127.0.0.1)"
    return ConfigError("--listen", f"{description!r}: {why}")


def bind_problem(description: str, error: Exception) -> str:
    """
    One line saying why the endpoint C{description} could not be bound.
    """
    reason: object = error
    if isinstance(error, CannotListenError):
        reason = error.socketError
    if isinstance(reason, OSError) and reason.errno is not None:
        why = (reason.strerror or os.strerror(reason.errno)).lower()
    elif isinstance(error, CannotListenError) and "lock" in str(reason).lower():
        why = "another process is listening on it"
    else:
        why = str(reason).rstrip(".") or type(reason).__name__
    return f"cannot listen on {description}: {why}"


def _port_problem(
    kind: str, positional: list[str], keywords: dict[str, str]
) -> str | None:
    port = positional[0] if positional else keywords.get("port")
    if not port:
        return f"a {kind} endpoint needs a port number ({kind}:PORT)"
    problem = _number_problem("port", port, 0, 65535)
    if problem is not None or kind != "ssl":
        return problem
    if "privateKey" not in keywords:
        return "an ssl endpoint needs privateKey=FILE (and certKey=FILE)"
    for name in _TLS_FILES:
        path = keywords.get(name)
        if path is not None and not _readable(path):
            return f"{name} {path!r} is not a readable file"
    return None


def _unix_problem(positional: list[str], keywords: dict[str, str]) -> str | None:
    path = positional[0] if positional else keywords.get("address")
    if not path:
        return "a unix endpoint needs a socket path (unix:PATH)"
    if "mode" in keywords and not re.fullmatch(r"0?[0-7]{1,3}", keywords["mode"]):
        return f"mode {keywords['mode']!r} is not an octal file mode such as 660"
    if path.startswith("\0"):
        return None  # Linux's abstract namespace: no directory
    directory = Path(path).parent
    if not directory.is_dir():
        return f"directory {str(directory)!r} does not exist"
    return None


def _number_problem(name: str, text: str, low: int, high: int) -> str | None:
    if text.isascii() and text.isdigit() and low <= int(text) <= high:
        return None
    return f"{name} {text!r} is not a whole number from {low} to {high}"


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)
