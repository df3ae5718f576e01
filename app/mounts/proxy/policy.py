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
    (L{request_headers}).  Only when the client is itself a trusted proxy
    (C{--trusted-proxy}) are its scheme and host believed, and its list
    read as a chain of addresses, as a proxy in a chain of trusted ones
    does.  The
    client's C{Forwarded} and C{X-Real-IP}, and every header whose name
    holds C{_}, stay here: an upstream would take them for what a proxy
    vouches for (many servers read C{X_Forwarded_For} as
    C{X-Forwarded-For}, since CGI spells both C{HTTP_X_FORWARDED_FOR}).
  - The upstream's C{Location} and C{Content-Location} under its own origin
    and base path are rewritten back under the mount; header names that are
    not tokens and values holding a NUL are dropped (L{response_headers}).
    The path is first resolved as a browser resolves it (RFC 3986
    remove_dot_segments, also reading C{%2e} as C{.} and C{\\} as C{/}), so
    a rewritten location is always under the mount: C{/base/../admin} is
    not made C{/proxy/../admin}, which a browser would take to C{/admin}
    here.  A location that resolves outside the base path is never
    rewritten into the mount.  If it is an absolute URL (or network-path
    reference) at the upstream's origin, it is dropped: the client could
    not follow it, and it would only show the upstream's address.  A path
    reference (C{/other}) is passed unchanged: to a browser it already
    names a path on this server, not on the upstream.  Anything else (a
    URL at another origin, a relative reference) is passed unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.interfaces import IAddress
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from app.http.request import ForwardedRequest

__all__ = [
    "HOP_BY_HOP",
    "Upstream",
    "dot_segment",
    "reason_phrase",
    "remove_dot_segments",
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

#: Request headers of the client that never go upstream (besides those
#: whose names hold "_"): forwarding claims only a proxy may make.
_NOT_PASSED = frozenset({b"forwarded", b"x-real-ip"})

#: Path segments that browsers read as "." and "..", lower-cased.
_DOT = frozenset({b".", b"%2e"})
_DOT_DOT = frozenset({b"..", b".%2e", b"%2e.", b"%2e%2e"})

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

    def rewrite_location(self, value: bytes, mount: bytes) -> bytes | None:
        """
        C{value} (a C{Location} or C{Content-Location}) moved under C{mount}
        (the raw path of the mount, ending in C{/}) when, its dot segments
        resolved, it points at the upstream's base path, by absolute URL or
        by path; C{None} (drop it) when it is an absolute URL at the
        upstream's origin outside the base path; else unchanged.
        """
        lowered = value.lower()
        for origin in self.origins:
            if lowered.startswith(origin):
                rest = value[len(origin) :]
                if rest[:1] in (b"", b"?", b"#"):
                    rest = b"/" + rest
                if rest[:1] in (b"/", b"\\"):
                    return self._under_mount(rest, mount)
        if value.startswith(b"/") and not value.startswith((b"//", b"/\\")):
            return self._under_mount(value, mount) or value
        return value

    def _under_mount(self, reference: bytes, mount: bytes) -> bytes | None:
        """
        The absolute-path C{reference} under C{mount}, its dot segments
        resolved, or C{None} when it resolves outside the base path.
        """
        # Browsers drop tabs and line breaks anywhere in a URL.
        reference = reference.translate(None, b"\t\n\r")
        cut = min(
            (at for at in (reference.find(b"?"), reference.find(b"#")) if at >= 0),
            default=len(reference),
        )
        path = remove_dot_segments(reference[:cut])
        suffix = reference[cut:]
        if path.startswith(self.base_path):
            return mount + path[len(self.base_path) :] + suffix
        bare = self.base_path[:-1]
        if bare and path == bare:
            return mount[:-1] + suffix
        return None


def remove_dot_segments(path: bytes) -> bytes:
    """
    The absolute C{path} with its C{.} and C{..} segments resolved (RFC 3986
    section 5.2.4), reading as browsers do C{%2e} as C{.} and C{\\} as C{/};
    a C{..} never climbs above C{/}.
    """
    segments = path.replace(b"\\", b"/").split(b"/")[1:]
    kept: list[bytes] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        lowered = segment.lower()
        if lowered in _DOT_DOT:
            if kept:
                kept.pop()
        elif lowered not in _DOT:
            kept.append(segment)
            continue
        if last:
            kept.append(b"")
    return b"/" + b"/".join(kept)


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
        if (
            lowered in _SET_BY_PROXY
            or lowered in _NOT_PASSED
            or b"_" in lowered
            or _hop_by_hop(lowered, named)
        ):
            continue
        headers.setRawHeaders(name, values)
    if isinstance(request, ForwardedRequest):
        # From a trusted proxy: its chain goes on, then that proxy.
        forwarding = request.forwarding()
        chain = [*forwarding.chain(), _client_host(request.peer)]
        host = _last(incoming.getRawHeaders(b"x-forwarded-host")) or request.getHeader(
            b"host"
        )
    else:
        # A client's own list goes on, with its address appended (SPEC §8):
        # an upstream that trusts this server reads the right-most address
        # it did not add itself, which is this client's, whatever the list.
        sent = incoming.getRawHeaders(b"x-forwarded-for", [])
        chain = [*sent, _client_host(request.getClientAddress())]
        host = request.getHeader(b"host")
    headers.setRawHeaders(b"x-forwarded-for", [b", ".join(chain)])
    proto = b"https" if request.isSecure() else b"http"
    headers.setRawHeaders(b"x-forwarded-proto", [proto])
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
            moved = (upstream.rewrite_location(value, mount) for value in values)
            values = [value for value in moved if value is not None]
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


def _last(values: Sequence[bytes] | None) -> bytes | None:
    """
    The right-most element of a list header, the one the nearest proxy set.
    """
    if not values:
        return None
    last = values[-1].rpartition(b",")[2].strip(b" \t")
    return last or None


def _client_host(address: IAddress) -> bytes:
    host = getattr(address, "host", None)
    return host.encode("ascii", "replace") if isinstance(host, str) else b"unknown"
