"""
Content coding of responses (RFC 9110 §8.4, §12.5.3): which responses are
sent gzip-compressed, and the compressor that streams them.

twisted.web compresses only below an C{EncodingResourceWrapper}, for every
type and size, keeps the C{Content-Length} of the uncompressed body off the
wire only by luck of ordering, and leaves a strong C{ETag} on the compressed
body.  Here the L{app.http.request.Request} asks L{compresses} once, before
its head is written, so every response (routes, mounts, error pages) follows
one rule:

  - a body of a compressible type (L{compressible}) of L{MIN_SIZE} bytes or
    more, or of unknown length, varies with C{Accept-Encoding}: it says so in
    C{Vary} whether or not this client gets it compressed;
  - it is compressed when the request is a C{GET} without C{Range} whose
    C{Accept-Encoding} allows gzip (L{accepts_gzip}), and the body has no
    C{Content-Encoding} already (a script's, an upstream's, a C{FILE.gz});
  - a compressed body's C{ETag} is weak (L{weak}): it is not the same bytes
    as the identity body's.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from twisted.web.http_headers import Headers

from app.compat.twisted import raw_headers

__all__ = [
    "MIN_SIZE",
    "Compressor",
    "accepts_gzip",
    "compresses",
    "compressible",
    "vary_on_encoding",
    "weak",
]

#: Bodies shorter than this gain too little to be worth compressing.
MIN_SIZE = 1024
#: zlib's default: most of level 9's gain at a fraction of its cost.
_LEVEL = 6
#: A gzip wrapper (RFC 1952) rather than zlib's own (RFC 1950).
_GZIP_WINDOW = 16 + zlib.MAX_WBITS

_COMPRESSIBLE_TYPES = frozenset(
    {
        b"application/json",
        b"application/javascript",
        b"application/ecmascript",
        b"application/xml",
        b"image/svg+xml",
    }
)


@lru_cache(maxsize=256)
@lru_cache(maxsize=256)
def compressible(content_type: bytes) -> bool:
    """
    Whether a body of C{content_type} (a header value) is text that gzip
    shrinks: C{text/*}, JSON, JavaScript, XML and SVG, C{+json}, C{+xml}.
    """
    media_type = content_type.partition(b";")[0].strip(b" \t").lower()
    return (
        media_type.startswith(b"text/")
        or media_type in _COMPRESSIBLE_TYPES
        or media_type.endswith((b"+json", b"+xml"))
    )


@lru_cache(maxsize=256)
def _gzip_acceptable(accept_encoding: bytes) -> bool:
    """
    Whether the C{Accept-Encoding} value C{accept_encoding} lets a gzip body
    be sent, and prefers it to the identity one.
    """
    weights: dict[bytes, float] = {}
    for element in accept_encoding.split(b","):
        coding, _, parameters = element.partition(b";")
        coding = coding.strip(b" \t").lower()
        if not coding:
            continue
        weight = 1.0
        for parameter in parameters.split(b";"):
            name, equals, value = parameter.partition(b"=")
            if equals and name.strip(b" \t").lower() == b"q":
                try:
                    weight = float(value.strip(b" \t"))
                except ValueError:
                    weight = 0.0
                if not 0.0 <= weight <= 1.0:
                    weight = 0.0
        weights.setdefault(coding, weight)
    gzip = weights.get(b"gzip", weights.get(b"x-gzip", weights.get(b"*", 0.0)))
    # Identity is acceptable unless excluded; only when named does its weight
    # compete with gzip's.
    return gzip > 0.0 and gzip >= weights.get(b"identity", 0.0)


def accepts_gzip(request_headers: Headers) -> bool:
    """
    Whether a request with C{request_headers} accepts a gzip body.  No
    C{Accept-Encoding} at all gets the identity body, as browsers and other
    servers expect, though RFC 9110 would allow any coding.
    """
    values = raw_headers(request_headers).get(b"Accept-Encoding")
    if not values:
        return False
    return _gzip_acceptable(values[0] if len(values) == 1 else b",".join(values))


def compresses(request_headers: Headers, method: bytes) -> bool:
    """
    Whether a body that varies with C{Accept-Encoding} is sent compressed to
    a request with C{method} and C{request_headers}: never for C{HEAD}
    (whose headers are then the identity body's, as for a C{GET} that did
    not accept gzip) nor for a range.
    """
    return (
        method == b"GET"
        and not raw_headers(request_headers).get(b"Range")
        and accepts_gzip(request_headers)
    )


def vary_on_encoding(headers: Headers) -> None:
    """
    Add C{Accept-Encoding} to the C{Vary} of C{headers}, unless it is there.
    """
    raw = raw_headers(headers)
    values = raw.get(b"Vary")
    if not values:
        raw[b"Vary"] = [b"Accept-Encoding"]
        return
    for value in values:
        for token in value.split(b","):
            if token.strip(b" \t").lower() in (b"accept-encoding", b"*"):
                return
    headers.setRawHeaders(b"vary", [b", ".join([*values, b"Accept-Encoding"])])


def weak(etag: bytes) -> bytes:
    """
    C{etag} as a weak entity-tag.
    """
    return etag if etag.startswith(b"W/") else b"W/" + etag


class Compressor:
    """
    A gzip stream, written a piece at a time: each piece is flushed, so
    what a response writes reaches the client when it writes it.
    """

    def __init__(self) -> None:
        self._stream = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WINDOW)

    def compress(self, data: bytes) -> bytes:
        if not data:
            return b""
        stream = self._stream
        return stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._stream.flush()

    @staticmethod
    def whole(data: bytes) -> bytes:
        """
        C{data} compressed in one go: a body written whole.
        """
        stream = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WINDOW)
        return stream.compress(data) + stream.flush()
