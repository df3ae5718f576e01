"""
Conditional and range requests on a static file (RFC 9110 §13 and §14).

C{twisted.web.static.File} has no C{ETag}, and answers 500 to
C{Range: bytes=-1000} on a shorter file (it seeks to a negative offset).
Here a file has a strong C{ETag} and a C{Last-Modified}; C{If-Match},
C{If-Unmodified-Since}, C{If-None-Match} and C{If-Modified-Since} are
evaluated in the order of RFC 9110 §13.2.2, and C{If-Range} decides whether
C{Range} is honoured.  L{byte_ranges} reads C{Range}: more than
L{MAX_RANGES}, overlapping or malformed ranges mean the whole file.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import NamedTuple

from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.server import Request

__all__ = [
    "MAX_RANGES",
    "OpenedFile",
    "Ranges",
    "asks_conditionally",
    "byte_ranges",
    "if_range_holds",
    "preconditions",
]

#: The most ranges one request may ask for; past it, the whole file is sent.
MAX_RANGES = 16

#: Request headers that can make the answer other than the whole file.
_CONDITIONAL_HEADERS = frozenset(
    {
        b"if-match",
        b"if-unmodified-since",
        b"if-none-match",
        b"if-modified-since",
        b"if-range",
        b"range",
    }
)
#: Larger than any file; a longer number of digits means "past the end".
_HUGE = 1 << 63
_INT_RANGE = re.compile(rb"([0-9]*)-([0-9]*)")
_ENTITY_TAG = re.compile(rb'(?:W/)?"[^"]*"')

#: Byte ranges of a file, each as its first and last (inclusive) offset.
Ranges = list[tuple[int, int]]


class OpenedFile(NamedTuple):
    """
    What the answer needs to know of an opened file.
    """

    size: int
    mtime: int
    etag: bytes
    last_modified: bytes


def asks_conditionally(headers: Headers) -> bool:
    """
    Whether the request has a precondition or C{Range} header: most have
    none, and one look at the few headers beats six lookups.
    """
    for name, _ in headers.getAllRawHeaders():
        if name.lower() in _CONDITIONAL_HEADERS:
            return True
    return False


# -- conditional requests (RFC 9110 §13) -------------------------------------


def preconditions(request: Request, opened: OpenedFile) -> int | None:
    """
    412 or 304 if a precondition header says so, else C{None}.
    """
    headers = request.requestHeaders
    if_match = headers.getRawHeaders(b"if-match")
    if if_match is not None:
        if not _etag_listed(b",".join(if_match), opened.etag, weak=False):
            return 412
    else:
        unmodified_since = _http_date(headers.getRawHeaders(b"if-unmodified-since"))
        if unmodified_since is not None and opened.mtime > unmodified_since:
            return 412
    if_none_match = headers.getRawHeaders(b"if-none-match")
    if if_none_match is not None:
        if _etag_listed(b",".join(if_none_match), opened.etag, weak=True):
            return 304
        return None
    modified_since = _http_date(headers.getRawHeaders(b"if-modified-since"))
    if modified_since is not None and opened.mtime <= modified_since:
        return 304
    return None


def _etag_listed(value: bytes, etag: bytes, *, weak: bool) -> bool:
    """
    Whether the list of entity-tags C{value} (or C{*}) matches C{etag}, by
    weak or strong comparison.
    """
    if value.strip(b" \t") == b"*":
        return True
    for tag in _ENTITY_TAG.findall(value):
        if tag.startswith(b"W/"):
            if weak and tag[2:] == etag:
                return True
        elif tag == etag:
            return True
    return False


def _http_date(values: Sequence[bytes] | None) -> int | None:
    """
    The time of a one-valued date header, or C{None} if it is absent or not
    a date.
    """
    if values is None or len(values) != 1:
        return None
    try:
        return int(http.stringToDatetime(values[0]))
    except (ValueError, IndexError, KeyError, OverflowError):
        # twisted.web's parser raises each of these for some malformed date.
        return None


def if_range_holds(request: Request, opened: OpenedFile) -> bool:
    """
    Whether a C{Range} header may be honoured: no C{If-Range}, or one whose
    validator is current (an entity-tag compared strongly, or the date).
    """
    values = request.requestHeaders.getRawHeaders(b"if-range")
    if values is None:
        return True
    if len(values) != 1:
        return False
    value = values[0].strip(b" \t")
    if value.startswith((b'"', b"W/")):
        return value == opened.etag
    return _http_date([value]) == opened.mtime


# -- ranges (RFC 9110 §14) ---------------------------------------------------


def byte_ranges(value: bytes, size: int) -> Ranges | None:
    """
    The ranges of a file of C{size} bytes that the C{Range} header C{value}
    asks for, in the order asked; C{None} when the header is to be ignored
    (malformed, another unit, more than L{MAX_RANGES} ranges, or overlapping
    ones) and the whole file sent; C{[]} when no range overlaps the file.
    """
    unit, equals, specs = value.partition(b"=")
    if not equals or unit.lower() != b"bytes":
        return None
    elements = [element.strip(b" \t") for element in specs.split(b",")]
    elements = [element for element in elements if element]
    if not elements or len(elements) > MAX_RANGES:
        return None
    ranges: Ranges = []
    for element in elements:
        match = _INT_RANGE.fullmatch(element)
        if match is None:
            return None
        first_digits, last_digits = match.groups()
        if first_digits:
            first = _number(first_digits)
            last = _number(last_digits) if last_digits else _HUGE
            if last < first:
                return None
            if first < size:
                ranges.append((first, min(last, size - 1)))
        elif last_digits:
            suffix = _number(last_digits)
            if suffix > 0 and size > 0:
                ranges.append((max(0, size - suffix), size - 1))
        else:
            return None
    ordered = sorted(ranges)
    for (_, last), (first, _) in itertools.pairwise(ordered):
        if first <= last:
            return None
    return ranges


def _number(digits: bytes) -> int:
    digits = digits.lstrip(b"0")
    # Python refuses to parse very long numbers; they are past any end.
    return int(digits) if 0 < len(digits) <= 18 else (0 if not digits else _HUGE)
