"""
What a user name may be (a plain name, safe as a directory under
C{--homes}), and what a realm may be.
"""

from __future__ import annotations

import re

#: Longest user name accepted.
MAX_NAME_LENGTH = 64

# Letters, digits and a few marks; never a path separator, a colon (the
# password files' field separator), a quote, a space or a control character.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*")


def is_plain_name(name: str) -> bool:
    """
    Whether C{name} can name a user: not empty, no leading dot (so never
    C{.} or C{..}), no C{/}, C{\\}, C{:}, NUL, space or control character.
    """
    return len(name) <= MAX_NAME_LENGTH and _PLAIN_NAME.fullmatch(name) is not None


def is_plain_realm(realm: str) -> bool:
    """
    Whether C{realm} can stand quoted in a challenge as it is.
    """
    return bool(realm) and realm.isprintable() and not any(c in realm for c in '"\\')
