"""
What the answer to a request for a static file is: its headers, and the
pieces of the file that make its body, or the status that answers instead.

C{twisted.web.static.File} sends the full length of the file as the
C{Content-Length} of a partial response.  Here C{Range} (GET only) is
honoured so: one range is a 206 with the part's length, several disjoint
ones a 206 C{multipart/byteranges}; a header to be ignored gets the whole
file; an unsatisfiable set is 416 with C{Content-Range: bytes */SIZE}.

A file is served with C{Cache-Control: no-cache} and its validators: kept
by caches, checked before each use.  A C{FILE.gz} served in its place has
C{Content-Encoding: gzip} and its own, weak, C{ETag}; a file that the
request's rule (L{app.http.compression}) compresses on its way out has its
C{ETag} made weak here too, so that a 304 carries the one a 200 would.
"""

from __future__ import annotations

import secrets

from twisted.web.server import Request

from app.http.compression import (
    MIN_SIZE,
    compresses,
    compressible,
    vary_on_encoding,
    weak,
)
from app.mounts.static.conditional import (
    OpenedFile,
    Ranges,
    asks_conditionally,
    byte_ranges,
    if_range_holds,
    preconditions,
)
from app.mounts.static.producer import Pieces

__all__ = ["CACHE_CONTROL", "plan_response"]

#: A file may be kept, but is checked (by its validators) before each use:
#: a file served may change at any moment.
CACHE_CONTROL = b"no-cache"


def plan_response(
    request: Request, opened: OpenedFile, media_type: bytes, *, gzipped: bool = False
) -> int | Pieces:
    """
    Set the headers of the answer to C{request} from C{opened}; return the
    pieces of the body, or the status (304, 412, 416) that answers instead.
    C{gzipped}: C{opened} is the C{FILE.gz} beside the file asked for.
    """
    headers = request.responseHeaders
    etag = opened.etag
    if gzipped:
        headers.setRawHeaders(b"content-encoding", [b"gzip"])
        etag = weak(etag)
    elif compressible(media_type) and opened.size >= MIN_SIZE:
        # Compressed on its way out when the request allows it (the
        # Request's rule): a 304 carries the Vary and ETag a 200 would.
        vary_on_encoding(headers)
        if compresses(request.requestHeaders, request.method):
            etag = weak(etag)
    headers.setRawHeaders(b"etag", [etag])
    headers.setRawHeaders(b"last-modified", [opened.last_modified])
    headers.setRawHeaders(b"accept-ranges", [b"bytes"])
    ranges = None
    if asks_conditionally(request.requestHeaders):
        precondition = preconditions(request, opened)
        if precondition == 304:
            headers.setRawHeaders(b"cache-control", [CACHE_CONTROL])
        if precondition is not None:
            return precondition
        if request.method == b"GET" and if_range_holds(request, opened):
            header = request.requestHeaders.getRawHeaders(b"range")
            if header is not None and len(header) == 1:
                ranges = byte_ranges(header[0], opened.size)
        if ranges is not None and not ranges:
            request.setHeader(b"content-range", b"bytes */%d" % (opened.size,))
            return 416

    headers.setRawHeaders(b"cache-control", [CACHE_CONTROL])
    pieces: Pieces
    if ranges is None:
        headers.setRawHeaders(b"content-type", [media_type])
        pieces = [(0, opened.size)]
        length = opened.size
    elif len(ranges) == 1:
        first, last = ranges[0]
        request.setResponseCode(206)
        request.setHeader(b"content-type", media_type)
        request.setHeader(
            b"content-range", b"bytes %d-%d/%d" % (first, last, opened.size)
        )
        pieces = [(first, last - first + 1)]
        length = last - first + 1
    else:
        boundary = secrets.token_hex(16).encode("ascii")
        request.setResponseCode(206)
        request.setHeader(
            b"content-type", b"multipart/byteranges; boundary=" + boundary
        )
        pieces = _multipart(ranges, opened.size, media_type, boundary)
        length = sum(len(p) if isinstance(p, bytes) else p[1] for p in pieces)
    headers.setRawHeaders(b"content-length", [b"%d" % (length,)])
    if request.method == b"HEAD" or length == 0:
        return []
    return pieces


def _multipart(ranges: Ranges, size: int, media_type: bytes, boundary: bytes) -> Pieces:
    pieces: Pieces = []
    for first, last in ranges:
        pieces.append(
            b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
            % (boundary, media_type, first, last, size)
        )
        pieces.append((first, last - first + 1))
    pieces.append(b"\r\n--%s--\r\n" % (boundary,))
    return pieces
