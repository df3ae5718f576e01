"""
The request the channel makes for each request it parses: twisted.web's
C{server.Request}, made in one step, with form bodies parsed when C{args} is
first read (never before routing, never by the email package's quadratic
parser) and cookies when C{received_cookies} is.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from app.compat.twisted import (
    connection_gone,
    public_port,
    raw_headers,
    set_request_internals,
)
from app.http.compression import (
    MIN_SIZE,
    Compressor,
    compresses,
    compressible,
    vary_on_encoding,
    weak,
)
from app.http.forms import FormError, form_fields
from app.http.forwarding import Forwarding, forwarding
from app.http.limits import ALLOWED_METHODS
from app.http.pages import HTML_TYPE, render_error
from app.sessions.backend import Loaded, StoreUnavailable
from app.sessions.records import UnpicklableAdapter
from app.sessions.shared import RETRY_AFTER
from app.sessions.store import refuse_if_sessionless

log = Logger()

if TYPE_CHECKING:
    from app.http.channel import Channel
    from app.http.site import Site


class Request(server.Request):
    """
    twisted.web's request, made by L{Channel}: form bodies are parsed when
    C{args} is first read, cookies when C{received_cookies} is.
    """

    channel: Channel  # type: ignore[assignment]
    site: Site
    defaultContentType = HTML_TYPE
    #: The user name that HTTP authentication accepted, for the access log.
    remote_user: str | None = None
    _cookies: dict[bytes, bytes]
    _cookies_parsed = False
    _args: dict[bytes, list[bytes]]
    #: The Content-Type of a form body not parsed yet.
    _form_type: bytes | None = None
    #: The gzip stream of a body being compressed (see app.http.compression).
    _compressor: Compressor | None = None
    #: With a shared session store: the records its cookies name, fetched
    #: before it was routed, and whether a session it used is to be saved
    #: before its answer is written (see app.sessions.shared).
    session_records: dict[bytes, Loaded | StoreUnavailable | None] | None = None
    session_pending = False
    #: Whether its route is marked as never using its session
    #: (L{app.sessions.sessionless}).
    session_refused = False
    #: What the handler wrote while its sessions were being saved, and
    #: whether it finished meanwhile.
    _held: list[bytes] | None = None
    _finish_held = False
    #: Set once the handler's answer was replaced by an error page: what it
    #: writes after that is dropped.
    _discarding = False

    def __init__(self, channel: Channel, *args: Any, **kwargs: Any) -> None:
        # What twisted.web's http.Request and server.Request constructors
        # set, in one step: one is made for every request.  (A test compares
        # the two, should a Twisted release set more.)
        self.notifications: list[Deferred[None]] = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = Headers()
        self._cookies = {}
        self._cookies_parsed = False
        self.responseHeaders = Headers()
        self.cookies: list[bytes] = []
        self.transport = channel.transport
        self.queued = False
        set_request_internals(self)
        self._args = {}

    # twisted.web parses the Cookie headers of every request as its head
    # arrives; here they are parsed when received_cookies is first read.

    @property
    def received_cookies(self) -> dict[bytes, bytes]:
        if not self._cookies_parsed:
            self._cookies_parsed = True
            server.Request.parseCookies(self)
        return self._cookies

    @received_cookies.setter
    def received_cookies(self, cookies: dict[bytes, bytes]) -> None:
        self._cookies = cookies
        self._cookies_parsed = True

    def parseCookies(self) -> None:
        pass

    # twisted.web parses a form body into args before the request is even
    # routed, with the email package's parser; here it is parsed, by a
    # linear parser, when a handler first asks for args.

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        form_type = self._form_type
        if form_type is not None:
            self._form_type = None
            content = self.content
            assert content is not None
            try:
                fields = form_fields(form_type, content)
            except FormError as error:
                self._args = {}
                if error.code == 413:
                    raise RequestEntityTooLarge(str(error)) from None
                raise BadRequest(str(error)) from None
            # As in twisted.web, a field replaces a query argument of its name.
            self._args.update(fields)
        return self._args

    @args.setter
    def args(self, value: dict[bytes, list[bytes]]) -> None:
        self._form_type = None
        self._args = value

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # As twisted.web's, less the form parsing (see args).
        self.method, self.uri, self.clientproto = command, path, version
        path, question, query = path.partition(b"?")
        self.path = path
        self._args = http.parse_qs(query, 1) if question else {}
        if command == b"POST":
            content_type = self.requestHeaders.getRawHeaders(b"content-type")
            if content_type and _FORM_TYPE.match(content_type[0]):
                self._form_type = content_type[0]
        self.process()

    def process(self) -> None:
        # twisted.web's, less the Server and Date headers it sets here only
        # for them to be replaced: the channel writes the server's own
        # (Channel.writeHeaders).  The root resource is the router, never an
        # encoding resource, so there is no encoder to look for either.
        site = self.site = self.channel.site
        if self.path == b"*":
            # OPTIONS * (the channel refuses any other method with *).
            self.setHeader(b"allow", ALLOWED_METHODS)
            self.setHeader(b"content-length", b"0")
            self.write(b"")
            self.finish()
            return
        if (
            site.sessions.prefetches
            and not self.path.startswith(site.sessionless_paths)
            and not site.takes_no_session(self)
        ):
            # The store answers later: the session the cookie names is
            # fetched first, so that getSession() can answer at once.
            if site.sessions.prefetch(self, self._route_unless_gone):
                return
        self._route()

    def _route_unless_gone(self) -> None:
        if not connection_gone(self):
            self._route()

    def _route(self) -> None:
        path = self.path
        segments = path[1:].split(b"/")
        self.prepath = []
        self.postpath = (
            [unquote_to_bytes(segment) for segment in segments]
            if b"%" in path
            else segments
        )
        try:
            self.render(self.site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> Failure:
        # A malformed form body found by a resource that is not a route.
        error = reason.value
        if isinstance(error, HTTPException) and error.code is not None:
            if not self.startedWriting:
                body = render_error(self, error.code)
                self.write(body)
                self.finish()
                return reason
        return super().processingFailed(reason)  # type: ignore[no-any-return]

    # The head is settled on the first write, the one place every response
    # passes through: its freshness and its content coding.

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            if self._held is not None:
                self._held.append(data)
                return
            if self.session_pending:
                held = self._save_sessions(data)
                if held is None:
                    return
                data = held
            data = self._settle_head(data)
        elif self._discarding:
            return
        elif self._compressor is not None:
            data = self._compressor.compress(data)
        server.Request.write(self, data)

    def finish(self) -> None:
        if self._held is not None:
            self._finish_held = True
            return
        if self._discarding and self.finished:
            return
        if self.session_pending and self.startedWriting:
            self._save_sessions_late()
        if not (self.startedWriting or self.finished or connection_gone(self)):
            self.write(b"")
        compressor = self._compressor
        if compressor is not None:
            self._compressor = None
            if not connection_gone(self):
                server.Request.write(self, compressor.finish())
        server.Request.finish(self)

    # With a shared store, the sessions a handler used are saved before its
    # answer goes out (SPEC §13): the client's next request, on whichever
    # process or host, finds them.

    def _save_sessions(self, data: bytes) -> bytes | None:
        """
        Save the sessions used; return what to write of C{data} now, or
        L{None} to hold it (and what follows) until they are saved.
        """
        self.session_pending = False
        try:
            if not self.site.sessions.settle(self, self._saved):
                return data
        except HTTPException as error:
            return self._answer_instead(error.code or 503)
        self._held = [data]
        return None

    def _save_sessions_late(self) -> None:
        """
        Save the sessions a handler used after its answer's head was
        written (a resource writing its own response): too late to answer
        otherwise, so a failure is logged.
        """
        self.session_pending = False
        try:
            self.site.sessions.settle(self, self._saved_late)
        except HTTPException as error:
            self._saved_late(error)

    def _saved_late(self, error: Exception | None) -> None:
        if error is not None:
            log.error(
                "Saving the session of {uri} failed: {error}",
                uri=request_uri(self),
                error=str(error),
            )

    def _saved(self, error: Exception | None) -> None:
        """
        The sessions are saved (or failed to be, with C{error}): write what
        was held, or an error page instead.
        """
        held, self._held = self._held or [], None
        if connection_gone(self):
            return
        if error is not None:
            if isinstance(error, HTTPException):
                body = self._answer_instead(error.code or 503)
            elif isinstance(error, UnpicklableAdapter):
                self._saved_late(error)
                body = self._answer_instead(500)
            else:
                log.failure(
                    "Saving the session of {uri} failed",
                    Failure(error),
                    uri=request_uri(self),
                )
                body = self._answer_instead(500)
            held = [body]
        # The head and body go out in one send, as an answer given at once.
        channel = self.channel
        gathering = channel.gather()
        try:
            for data in held:
                self.write(data)
            if self._finish_held:
                self.finish()
        finally:
            if gathering:
                channel.flush()

    def _answer_instead(self, code: int) -> bytes:
        """
        Replace the handler's answer, not yet written, by the error page of
        C{code}; what the handler writes after it is dropped.
        """
        self.responseHeaders = Headers()
        self.cookies = []
        body = render_error(self, code)
        self.setHeader(b"cache-control", b"no-store")
        if code == 503:
            self.setHeader(b"retry-after", RETRY_AFTER)
        self._discarding = True
        return body

    def _settle_head(self, data: bytes) -> bytes:
        """
        Before the head of the response goes out: state its freshness if no
        one did, and compress its body if it should be (SPEC §15); return
        what to write of C{data}.
        """
        headers = self.responseHeaders
        # Read once per response, through the dictionary the names are
        # spelled in (see app.compat.twisted.raw_headers).
        raw = raw_headers(headers)
        # A gateway (CGI, WSGI, proxy) says none to have its upstream's
        # headers sent as they are: those decide about caching.
        if self.defaultContentType is not None and not raw.get(b"Cache-Control"):
            raw[b"Cache-Control"] = [b"no-store"]
        code = self.code
        if code < 200 or code in _UNCODED_STATUSES:
            return data
        lengths = raw.get(b"Content-Length")
        size = None
        if lengths:
            try:
                size = int(lengths[0])
            except ValueError:
                return data
            if size < MIN_SIZE:
                return data
        if raw.get(b"Content-Encoding"):
            return data
        types = raw.get(b"Content-Type")
        content_type = types[0] if types else self.defaultContentType
        if content_type is None or not compressible(content_type):
            return data
        vary_on_encoding(headers)
        if not compresses(self.requestHeaders, self.method):
            return data
        headers.setRawHeaders(b"content-encoding", [b"gzip"])
        etags = headers.getRawHeaders(b"etag")
        if etags:
            headers.setRawHeaders(b"etag", [weak(etags[0])])
        if size is not None and len(data) == size:
            # The whole body at once: sent with its compressed length.
            data = Compressor.whole(data)
            headers.setRawHeaders(b"content-length", [b"%d" % (len(data),)])
            return data
        headers.removeHeader(b"content-length")
        compressor = self._compressor = Compressor()
        return compressor.compress(data)

    def _prePathURL(self, prepath: list[bytes]) -> bytes:
        # twisted.web's (behind prePathURL, URLPath and rememberRootURL),
        # with the port the client reached (see public_port) rather than the
        # listening one, and an IPv6 host in brackets.
        secure = self.isSecure()
        host = self.getRequestHostname()
        if b":" in host:
            host = b"[%s]" % (host,)
        port = public_port(self)
        if port != (443 if secure else 80):
            host += b":%d" % (port,)
        path = b"/".join(quote(segment, safe="").encode("ascii") for segment in prepath)
        return b"%s://%s/%s" % (b"https" if secure else b"http", host, path)

    def getSession(
        self, sessionInterface: Any = None, forceNotSecure: bool = False
    ) -> Any:
        # twisted.web's touches a session found by its cookie only on the
        # second lookup within a request, and its cookie lacks HttpOnly and
        # SameSite: see app.sessions.store and app.sessions.shared.
        if self.session_refused:
            refuse_if_sessionless(self)
        return self.site.sessions.session_for(self, sessionInterface, forceNotSecure)


class ForwardedRequest(Request):
    """
    A request from a trusted proxy (C{--trusted-proxy}): its client and
    scheme are those the forwarding headers name (see
    L{app.http.forwarding}), worked out when first asked for, once.  The
    channel makes these only on connections from a trusted peer, so that
    other requests pay nothing for them.
    """

    #: The other end of the connection: the proxy in front.
    peer: IAddress
    _forwarding: Forwarding | None = None

    # Twisted reads the client from the attribute as often as through
    # getClientAddress(); both see the forwarded one.
    @property
    def client(self) -> IAddress:
        return self.forwarding().client

    @client.setter
    def client(self, peer: IAddress) -> None:
        # Set to the channel's peer as the request is made.
        self.peer = peer
        self._forwarding = None

    def forwarding(self) -> Forwarding:
        """
        What the forwarding headers say, read once the head is in.
        """
        found = self._forwarding
        if found is None:
            channel = self.channel
            trusted = channel.site.trusted_proxies
            assert trusted is not None
            found = self._forwarding = forwarding(
                self.requestHeaders, self.peer, channel.isSecure(), trusted
            )
        return found

    def isSecure(self) -> bool:
        return self.forwarding().secure

    def public_port(self) -> int:
        """
        The port the client's own request was made to (see
        L{app.http.forwarding}).
        """
        port = self.forwarding().port
        if port is not None:
            return port
        host = self.getHeader(b"host")
        found = None if host is None else _HOST_PORT.search(host)
        if found is not None and 0 < int(found.group(1)) <= 65535:
            return int(found.group(1))
        return 443 if self.isSecure() else 80


#: The port at the end of a C{Host} header.
_HOST_PORT = re.compile(rb":([0-9]{1,5})$")

#: Statuses whose body, if any, is never compressed: a part of the
#: representation (206), or none at all.
_UNCODED_STATUSES = frozenset({204, 206, 304})

#: Media types whose bodies become form fields.
_FORM_TYPE = re.compile(
    rb"\s*(application/x-www-form-urlencoded|multipart/form-data)\s*(;|$)", re.I
)


def request_uri(request: server.Request) -> str:
    """
    The request target as sent, for log messages.
    """
    return bytes(request.uri).decode("latin-1")
