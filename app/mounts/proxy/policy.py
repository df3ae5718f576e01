"""
What the reverse proxy lets through, each way, and where it sends it.

Twisted's own L{twisted.web.proxy.ReverseProxyResource} sets C{Host}, drops
C{Proxy-Connection} and C{Keep-Alive} and passes every other header both
ways; it quotes each path segment again, and leaves the upstream's
C{Location} pointing at the upstream.  A proxy in front of a real upstream
must do better, so here:

  - The upstream path is its base path joined with the rest of the raw
    request path by plain concatenation, the query string passed verbatim,
    percent-encoding untouched (L{Upstream.target}); a target with a C{.} or
    C{..} segment (L{dot_segment}) or that is not visible ASCII
    (L{valid_target}) never goes upstream.
  - Hop-by-hop headers are dropped both ways; C{X-Forwarded-For} gets the
    client appended, C{X-Forwarded-Proto} and C{X-Forwarded-Host} are set
    (L{request_headers}).
  - The upstream's C{Location} and C{Content-Location} under its own origin
    and base path are rewritten back under the mount; header names that are
    not tokens and values holding a NUL are dropped (L{response_headers}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.interfaces import IAddress
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

__all__ = [
    "HOP_BY_HOP",
    "Upstream",
    "dot_segment",
    "reason_phrase",
    "request_headers",
    "response_headers",
    "valid_target",
]

#: Hop-by-hop headers (RFC 9110 section 7.6.1 and the legacy ones), dropped
#: both ways together with those a Connection header names and every Proxy-*.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Request headers that the proxy sets itself instead of passing them on.
_SET_BY_PROXY = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: What a request target may hold on its way upstream: visible ASCII, no '#'.
_TARGET = re.compile(rb"[!-\"$-~]*")
_REASON = re.compile(rb"[\t -~]*")


@dataclass(frozen=True)
class Upstream:
    """
    Where the proxy sends requests: an origin and a base path.

    @ivar url_prefix: C{scheme://netloc} as given, to which paths are added.
    @ivar base_path: the upstream path that the mount stands for; it ends
        with C{/}.
    @ivar origins: lower-cased prefixes (C{scheme://host:port}, and without
        the port when it is the scheme's default; the same as network-path
        references) under which a C{Location} points at the upstream.
    """

    url_prefix: bytes
    base_path: bytes
    origins: tuple[bytes, ...]

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        host = parts.netloc.rpartition("@")[2].lower()
        if parts.port is not None:
            host = host.rpartition(":")[0]
        hosts = [f"{host}:{port}"] + ([host] if port == default_port else [])
        origins = [f"{parts.scheme}://{h}" for h in hosts] + [f"//{h}" for h in hosts]
        base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return cls(
            url_prefix=f"{parts.scheme}://{parts.netloc}".encode("ascii"),
            base_path=base_path.encode("ascii"),
            origins=tuple(origin.encode("ascii") for origin in origins),
        )

    def target(self, rest: bytes, query: bytes | None) -> bytes:
        """
        The upstream request target for C{rest} (the raw path below the
        mount) and C{query} (verbatim; C{None} when the request had no C{?}).
        """
        target = self.base_path + rest
        if query is not None:
            target += b"?" + query
        return target

    def rewrite_location(self, value: bytes, mount: bytes) -> bytes:
        """
        C{value} (a C{Location} or C{Content-Location}) moved under C{mount}
        (the raw path of the mount, ending in C{/}) when it points at the
        upstream's base path, by absolute URL or by path; else unchanged.
        """
        lowered = value.lower()
        for origin in self.origins:
            if lowered.startswith(origin):
                rest = value[len(origin) :]
                if rest[:1] in (b"", b"?", b"#"):
                    rest = b"/" + rest
                if rest.startswith(b"/"):
                    return self._under_mount(rest, mount) or value
        if value.startswith(b"/") and not value.startswith((b"//", b"/\\")):
            return self._under_mount(value, mount) or value
        return value

    def _under_mount(self, path: bytes, mount: bytes) -> bytes | None:
        if path.startswith(self.base_path):
            return mount + path[len(self.base_path) :]
        bare = self.base_path[:-1]
        if (
            bare
            and path.startswith(bare)
            and path[len(bare) : len(bare) + 1]
            in (
                b"",
                b"?",
                b"#",
            )
        ):
            return mount[:-1] + path[len(bare) :]
        return None


def valid_target(rest: bytes, query: bytes | None) -> bool:
    """
    Whether C{rest} and C{query} may go upstream as they are: visible ASCII,
    no C{#}.
    """
    return _TARGET.fullmatch(rest + (query or b"")) is not None


def dot_segment(rest: bytes) -> bool:
    """
    Whether C{rest} has a C{.} or C{..} segment, as the upstream may see it
    once it decodes C{%2e} and C{%2f} (or treats C{\\} as C{/}).
    """
    decoded = unquote_to_bytes(rest).replace(b"\\", b"/")
    return any(segment in (b".", b"..") for segment in decoded.split(b"/"))


def reason_phrase(phrase: bytes) -> bytes:
    """
    The upstream's reason C{phrase} if it is safe to pass on, else C{b""}.
    """
    return phrase if _REASON.fullmatch(phrase) else b""


def request_headers(request: IRequest) -> Headers:
    """
    The headers of the client's C{request} that go upstream, with the
    forwarding headers set.
    """
    incoming: Headers = request.requestHeaders
    named = _named_by_connection(incoming)
    headers = Headers()
    for name, values in incoming.getAllRawHeaders():
        lowered = name.lower()
        if lowered in _SET_BY_PROXY or _hop_by_hop(lowered, named):
            continue
        headers.setRawHeaders(name, values)
    forwarded = incoming.getRawHeaders(b"x-forwarded-for", [])
    client = _client_host(request.getClientAddress())
    headers.setRawHeaders(b"x-forwarded-for", [b", ".join([*forwarded, client])])
    proto = b"https" if request.isSecure() else b"http"
    headers.setRawHeaders(b"x-forwarded-proto", [proto])
    host = request.getHeader(b"host")
    if host:
        headers.setRawHeaders(b"x-forwarded-host", [host])
    return headers


def response_headers(upstream: Upstream, incoming: Headers, mount: bytes) -> Headers:
    """
    The headers of the upstream's answer (C{incoming}) that the client gets,
    its locations moved under C{mount}.
    """
    named = _named_by_connection(incoming)
    headers = Headers()
    for name, values in incoming.getAllRawHeaders():
        lowered = name.lower()
        if _hop_by_hop(lowered, named) or not _TOKEN.fullmatch(name):
            continue
        if lowered in (b"location", b"content-location"):
            values = [upstream.rewrite_location(v, mount) for v in values]
        values = [value for value in values if b"\x00" not in value]
        if values:
            headers.setRawHeaders(name, values)
    return headers


def _named_by_connection(headers: Headers) -> frozenset[bytes]:
    """
    The lower-cased names that C{headers}' C{Connection} header lists.
    """
    names: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        names.update(token.strip().lower() for token in value.split(b","))
    return frozenset(names)


def _hop_by_hop(name: bytes, named: frozenset[bytes]) -> bool:
    lowered = name.lower()
    return lowered in HOP_BY_HOP or lowered in named or lowered.startswith(b"proxy-")


def _client_host(address: IAddress) -> bytes:
    host = getattr(address, "host", None)
    return host.encode("ascii", "replace") if isinstance(host, str) else b"unknown"
