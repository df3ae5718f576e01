"""
htpasswd files of bcrypt lines, as Apache's C{htpasswd -B} writes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from auth._errors import PasswordFileError
from auth._names import is_plain_name

#: bcrypt as Apache writes it (C{$2y$}), as OpenBSD and pyca do (C{$2b$},
#: C{$2a$}): cost, 22 characters of salt, 31 of hash.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """
    The numbered lines of C{path} that are neither blank nor C{#} comments,
    stripped; a line that is not UTF-8 is an error.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PasswordFileError(0, f"cannot read: {error.strerror}") from None
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise PasswordFileError(number, "not UTF-8 text") from None
        if line and not line.startswith("#"):
            yield number, line


def parse_htpasswd(path: Path) -> Mapping[str, bytes]:
    """
    The users of the htpasswd file at C{path}, each with its bcrypt hash.

    As Apache does, the first line of a user counts.

    @raise PasswordFileError: for a line that is not C{user:bcrypt-hash}
        (MD5 C{$apr1$}, crypt, SHA and plain passwords are refused).
    """
    users: dict[str, bytes] = {}
    for number, line in read_lines(path):
        user, sep, hashed = line.partition(":")
        if not sep:
            raise PasswordFileError(number, "expected user:hash")
        if not is_plain_name(user):
            raise PasswordFileError(number, "the user name is not a plain name")
        if not BCRYPT_HASH.fullmatch(hashed):
            raise PasswordFileError(
                number, "not a bcrypt hash (write it with htpasswd -B)"
            )
        users.setdefault(user, hashed.encode("ascii"))
    return users
