"""
A CGI script's header block (RFC 3875 section 6): where it ends, and what
status and headers it gives the response.

twcgi ends the block at the first of four blank-line delimiters, and logs
and skips a line that is not a header, so that output without a valid
header block is answered 200.  Here the block ends at the first empty line
(LF or CRLF), and a line that is not a header, a control character in a
value, a second C{Status}, C{Location} or C{Content-Type}, or none of them
at all makes it invalid (L{BadHead}): the server answers 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The longest header block a script may print.
MAX_HEAD_BYTES = 64 * 1024

#: Headers of a script's answer that the server writes itself.  The body is
#: streamed (chunked), so a script's Content-Length is dropped rather than
#: trusted to match what it writes.
_SERVER_OWNED = frozenset(
    {
        b"server",
        b"date",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: The header fields RFC 3875 defines for a script's answer (one of each).
_CGI_FIELDS = frozenset({b"content-type", b"location", b"status"})

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_STATUS = re.compile(rb"([2-5][0-9][0-9])(?:[ \t]+([\x20-\x7e\t]*))?")


class BadHead(ValueError):
    """
    A script's output does not start with a valid header block.
    """


@dataclass(frozen=True)
class Head:
    """
    A script's header block: the status and the headers to send.
    """

    code: int
    reason: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]


def split_head(output: bytes, start: int = 0) -> tuple[bytes, bytes, int] | None:
    """
    Find the blank line that ends the header block at the start of
    C{output}, looking at lines from offset C{start} on.

    @return: C{None} if the block is not complete yet; else the lines of the
        block, what follows the blank line, and C{start} for the next call.
    """
    while True:
        end = output.find(b"\n", start)
        if end == -1:
            return None
        if end == start or (end == start + 1 and output[start] == 0x0D):
            return output[:start], output[end + 1 :], start
        start = end + 1


def resume_offset(output: bytes) -> int:
    """
    Where L{split_head} may resume on C{output} plus more: the start of its
    last, incomplete line.
    """
    return output.rfind(b"\n") + 1


def parse_head(block: bytes) -> Head:
    """
    Parse a script's header block (RFC 3875 section 6.2), lines ending in
    LF or CRLF, without the blank line.

    @raise BadHead: if it is not a valid CGI header block.
    """
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    special: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadHead(f"not a header line: {_shorten(line)}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise BadHead(f"control characters in header {_shorten(name)}")
        key = name.lower()
        if key in _CGI_FIELDS:
            if key in special:
                raise BadHead(f"header {_shorten(name)} given twice")
            special[key] = value
            if key == b"status":
                continue
        if key not in _SERVER_OWNED:
            headers.append((name, value))
    status = special.get(b"status")
    location = special.get(b"location")
    if not special:
        raise BadHead("no Content-Type, Location or Status header")
    code, reason = 200, None
    if status is not None:
        match = _STATUS.fullmatch(status)
        if match is None:
            raise BadHead(f"not a status: {_shorten(status)}")
        code = int(match.group(1))
        reason = match.group(2) or None
    elif location is not None:
        code = 302
    return Head(code, reason, tuple(headers))


def _shorten(text: bytes, limit: int = 80) -> str:
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown
