"""
htdigest files: C{user:realm:HA1} lines as Apache's C{htdigest} writes them,
and the C{user:realm:SHA256-HA1:TAG} lines that C{passwd --digest} adds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from auth._errors import NoSuchRealm, PasswordFileError
from auth._htpasswd import read_lines
from auth._names import is_plain_name

_MD5_LINE = re.compile(r"([^:]*):(.*):([0-9A-Fa-f]{32})")
_SHA256_LINE = re.compile(r"([^:]*):(.*):([0-9A-Fa-f]{64}):([0-9A-Fa-f]{8})")


@dataclass(frozen=True)
class DigestUser:
    """
    The secrets of one user in one realm: HA1 in lower-case hex, for MD5
    and, when the file has a valid line for it, for SHA-256.
    """

    md5: str
    sha256: str | None = None


def ha1(algorithm: str, user: str, realm: str, password: bytes) -> str:
    """
    C{H(user:realm:password)} in hex, C{algorithm} being C{MD5} or C{SHA-256}.
    """
    hasher = hashlib.md5 if algorithm == "MD5" else hashlib.sha256
    return hasher(f"{user}:{realm}:".encode() + password).hexdigest()


def sha256_tag(md5_ha1: str) -> str:
    """
    The tag tying a SHA-256 line to the MD5 line it was written with.
    """
    return hashlib.sha256(md5_ha1.lower().encode("ascii")).hexdigest()[:8]


def digest_owner(line: str) -> tuple[str, str] | None:
    """
    The (user, realm) of an htdigest line of either kind, or C{None}.
    """
    found = _SHA256_LINE.fullmatch(line) or _MD5_LINE.fullmatch(line)
    return None if found is None else (found.group(1), found.group(2))


def parse_htdigest(path: Path, realm: str) -> Mapping[str, DigestUser]:
    """
    The users of C{realm} in the htdigest file at C{path}.

    Every line is checked, whatever its realm.  A user's first MD5 line is
    their current one (Apache's C{htdigest} rewrites only that one); a
    SHA-256 line counts when its tag matches it.

    @raise PasswordFileError: for a malformed line, or when no line is for
        C{realm}.
    """
    md5: dict[str, str] = {}
    sha256: list[tuple[str, str, str]] = []
    for number, line in read_lines(path):
        long_form = _SHA256_LINE.fullmatch(line)
        short_form = None if long_form else _MD5_LINE.fullmatch(line)
        found = long_form or short_form
        if found is None:
            raise PasswordFileError(
                number, "expected user:realm:HA1 (32 hex digits, as htdigest writes)"
            )
        user, line_realm = found.group(1), found.group(2)
        if not is_plain_name(user):
            raise PasswordFileError(number, "the user name is not a plain name")
        if line_realm != realm:
            continue
        if long_form:
            sha256.append((user, long_form.group(3).lower(), long_form.group(4)))
        else:
            md5.setdefault(user, found.group(3).lower())
    if not md5:
        raise NoSuchRealm(0, f"no user for realm {realm!r}")
    users = {user: DigestUser(secret) for user, secret in md5.items()}
    for user, secret, tag in sha256:
        current = users.get(user)
        if current is None or current.sha256 is not None:
            continue
        if tag.lower() == sha256_tag(current.md5):
            users[user] = DigestUser(current.md5, secret)
    return users
