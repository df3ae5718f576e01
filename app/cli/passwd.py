"""
C{python -m app passwd [--digest] [--realm NAME] FILE USER}: add or replace a
user in an htpasswd (bcrypt) or htdigest (MD5 and SHA-256 HA1) file.

The password comes from standard input (one line) when it is not a
terminal, otherwise from two prompts that must agree; never from the
command line.  The file is rewritten atomically: a new file gets mode 0600,
an existing one keeps its owner and mode.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, NoReturn

import bcrypt

from app.config import Config
from auth import (
    BCRYPT_MAX_PASSWORD,
    digest_owner,
    ha1,
    is_plain_name,
    is_plain_realm,
    sha256_tag,
)

PROG = "python -m app passwd"
#: bcrypt cost of new Basic passwords.
BCRYPT_COST = 12
# Lets the test suite write cheap hashes; not an option users should need.
_COST_VARIABLE = "APP_PASSWD_BCRYPT_COST"


class UsageError(Exception):
    """
    A bad argument: exit status 2.
    """


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Add or replace USER in the password file FILE.",
    )
    parser.add_argument(
        "--digest",
        action="store_true",
        help="write an htdigest file (for --htdigest) instead of htpasswd",
    )
    parser.add_argument(
        "--realm",
        default=Config.realm,
        metavar="NAME",
        help=f"Digest realm (default: {Config.realm})",
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("user", metavar="USER")
    return parser


def _read_password(stdin: IO[str], prompt: Callable[[str], str]) -> bytes:
    if not stdin.isatty():
        buffer = getattr(stdin, "buffer", None)
        line: bytes = (
            buffer.readline() if buffer is not None else stdin.readline().encode()
        )
        return line.removesuffix(b"\n").removesuffix(b"\r")
    first = prompt("New password: ")
    if prompt("Re-type new password: ") != first:
        raise ValueError("the passwords do not match")
    return first.encode("utf-8")


def _bcrypt_cost() -> int:
    text = os.environ.get(_COST_VARIABLE)
    if text is None:
        return BCRYPT_COST
    cost = int(text)
    if not 4 <= cost <= 31:
        raise ValueError(f"{_COST_VARIABLE} must be between 4 and 31")
    return cost


def basic_line(user: str, password: bytes, cost: int = BCRYPT_COST) -> str:
    """
    The htpasswd line of C{user}: bcrypt of the password's first 72 bytes.
    """
    hashed = bcrypt.hashpw(password[:BCRYPT_MAX_PASSWORD], bcrypt.gensalt(cost))
    return f"{user}:{hashed.decode('ascii')}"


def digest_lines(user: str, realm: str, password: bytes) -> list[str]:
    """
    The htdigest lines of C{user} in C{realm}: MD5, then SHA-256 with its tag.
    """
    md5 = ha1("MD5", user, realm, password)
    sha256 = ha1("SHA-256", user, realm, password)
    return [f"{user}:{realm}:{md5}", f"{user}:{realm}:{sha256}:{sha256_tag(md5)}"]


def replace_user(
    lines: list[str], owns: Callable[[str], bool], new: list[str]
) -> list[str]:
    """
    C{lines} without those that C{owns}, and with C{new} where the first of
    them was (or at the end).
    """
    kept: list[str] = []
    position: int | None = None
    for line in lines:
        if owns(line.strip()):
            if position is None:
                position = len(kept)
            continue
        kept.append(line)
    if position is None:
        position = len(kept)
    return kept[:position] + new + kept[position:]


def write_atomically(path: Path, text: str) -> None:
    """
    Replace C{path} with C{text} in one step; a new file gets mode 0600, an
    existing one keeps its owner and mode.
    """
    try:
        existing: os.stat_result | None = path.stat()
    except FileNotFoundError:
        existing = None
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
            if existing is not None:
                os.fchmod(file.fileno(), existing.st_mode & 0o7777)
                if (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
                    os.fchown(file.fileno(), existing.st_uid, existing.st_gid)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def passwd_main(
    argv: Sequence[str],
    stdin: IO[str] | None = None,
    stderr: IO[str] | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
    prog: str = PROG,
) -> int:
    """
    Run the command; return its exit status (2 for bad arguments, 1 when
    the password or the file is at fault).
    """
    stdin = sys.stdin if stdin is None else stdin
    stderr = sys.stderr if stderr is None else stderr
    try:
        args = _parser(prog).parse_args(list(argv))
        user: str = args.user
        realm: str = args.realm
        if not is_plain_name(user):
            raise UsageError(f"{user!r} is not a plain user name")
        if not is_plain_realm(realm):
            raise UsageError("a realm is printable and has no quotes")
        path = Path(args.file)
        if path.is_dir() or not path.parent.is_dir():
            raise UsageError(f"{args.file!r} cannot be a password file")
        cost = _bcrypt_cost()
    except UsageError as error:
        stderr.write(f"{prog}: error: {error}\n")
        return 2
    except ValueError as error:
        stderr.write(f"{prog}: error: {error}\n")
        return 2

    try:
        password = _read_password(stdin, prompt)
        if not password:
            raise ValueError("an empty password is refused")
        lines = path.read_text("utf-8").splitlines() if path.exists() else []
        key = (user, realm)
        if args.digest:
            new = digest_lines(user, realm, password)
            lines = replace_user(lines, lambda line: digest_owner(line) == key, new)
        else:
            new = [basic_line(user, password, cost)]
            lines = replace_user(lines, lambda line: line.split(":")[0] == user, new)
        write_atomically(path, "".join(line + "\n" for line in lines))
    except (ValueError, OSError, EOFError) as error:
        stderr.write(f"{prog}: error: {error}\n")
        return 1
    return 0
