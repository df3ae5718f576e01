"""
The one place that reaches into Twisted's private parts, each use named with
what it buys; tests/app/compat/test_twisted.py fails, saying what moved, when
a Twisted release changes one of them.

  - L{sender}: a TCP or UNIX transport queues every write and asks the
    reactor to watch the socket for writing (an C{epoll_ctl} call), sends on
    the reactor's next turn, then stops watching (another call).  For a
    small response to a client that reads, that is most of the cost of
    answering.  As asyncio's transports do, the sender tries the socket at
    once when nothing is queued, and queues only what the socket does not
    take.
  - The channel and request of app.http, which skip twisted.web's own
    constructors and parsers for speed, set and read what those would:
    L{pull_to_push}, L{headers_of}, L{set_request_internals},
    L{kept_session} and L{keep_session}, L{session_clock},
    L{connection_gone}.
  - A shared session store keeps what a session's C{getComponent} made:
    L{adapters_of} and L{set_adapters}.
  - The WSGI mount replaces parts of twisted.web.wsgi's response, whose
    class is private: L{WSGIResponse}, L{wsgi_input}, L{wsgi_errors},
    L{send_wsgi_headers}.
  - Worker processes rebind what an endpoint string configured, which
    twisted's endpoints keep private: L{endpoint_tls_context},
    L{endpoint_address}.  A worker adopts the parent's UNIX socket with
    L{adopt_unix_port}, whose port leaves the socket file to the parent
    (twisted's removes it when it stops listening, in every worker).
  - A CGI script runs in a process group of its own, which Twisted's
    C{spawnProcess} offers only with a terminal: L{spawn_process_group}.
  - The reverse proxy sends its target exactly as given, and reads the
    upstream's C{Connection} header, which Agent keeps to itself:
    L{request_with_target}, L{build_connections_with},
    L{HTTPClientProtocol}, L{response_parser}.  It bounds the response head
    that Twisted's client parser would buffer without end:
    L{limit_response_head}, L{ResponseHeadTooLarge}.
  - A client that cannot be accepted for want of file descriptors gets a
    503 rather than a bare close: L{answer_busy_when_out_of_descriptors}
    wraps twisted.internet.tcp's accept loop.
  - The site stops and starts accepting at its connection limit:
    L{pause_accepting}, L{resume_accepting}.
"""

from __future__ import annotations

import os
import stat
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet._producer_helpers import _PullToPush
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IAddress, IPullProducer, IReactorTime
from twisted.internet.process import Process
from twisted.internet.ssl import ContextFactory
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python import components
from twisted.web import http, server
from twisted.web._newclient import (
    HEADER,
    STATUS,
    HTTP11ClientProtocol,
    HTTPClientParser,
)
from twisted.web.client import URI, Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.wsgi import _ErrorStream, _InputStream, _WSGIResponse
from zope.interface import provider


def sender(transport: Any) -> Callable[[bytes], None]:
    """
    A function that writes to C{transport} as C{transport.write} does,
    sending at once where the transport lets it.
    """
    if not isinstance(transport, FileDescriptor):
        return transport.write  # type: ignore[no-any-return]
    write = transport.write
    write_some = transport.writeSomeData

    def send(data: bytes) -> None:
        if (
            not getattr(transport, "TLS", False)  # TLS started on it: encrypt first
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
        ):
            sent = write_some(data)
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
            # Otherwise the connection is lost: queued, the write fails on
            # the reactor's turn and the transport closes as it always does.
        write(data)

    return send


def pull_to_push(producer: IPullProducer, consumer: Any) -> _PullToPush:
    """
    C{producer} made a streaming one for C{consumer}, as twisted.web's
    channel adapts a pull producer (C{twisted.internet._producer_helpers}).
    Call C{startStreaming()} on it, and C{stopStreaming()} when it is
    unregistered.
    """
    return _PullToPush(producer, consumer)


def headers_of(raw: dict[bytes, list[bytes]]) -> Headers:
    """
    A L{Headers} holding C{raw} itself, whose names must already be spelled
    as L{Headers} spells them and whose values hold no line break (llhttp
    has checked them): C{Headers(raw)} would canonicalise and clean each
    name and value again.  Sets C{Headers._rawHeaders}.
    """
    headers = Headers()
    headers._rawHeaders = raw
    return headers


def raw_headers(headers: Headers) -> dict[bytes, list[bytes]]:
    """
    The dictionary behind C{headers}: names spelled as L{Headers} spells
    them (C{Content-Type}, C{ETag}), each with its values.  Read through
    it, a header costs one dictionary lookup instead of a name's encoding
    and canonical spelling; what is set in it must be spelled so.  Reads
    C{Headers._rawHeaders}.
    """
    return headers._rawHeaders


def public_port(request: Any) -> int:
    """
    The port of this server as C{request}'s client reached it, for the
    absolute URLs built for it: what the request says (a request from a
    trusted proxy has a C{public_port} method), else the port it came in
    on, else (a UNIX socket) the scheme's default.  twisted.web and Klein
    read C{getHost().port}, the listening port, which behind a proxy is
    not the client's.
    """
    own = getattr(request, "public_port", None)
    if own is not None:
        port: int = own()
        return port
    local = getattr(request.getHost(), "port", None)
    if isinstance(local, int):
        return local
    return 443 if request.isSecure() else 80


def set_request_internals(request: http.Request) -> None:
    """
    Set on C{request} the private attributes that twisted.web's
    C{http.Request} and C{Componentized} constructors set and its methods
    read, for a request made without calling them: no form parsing by
    twisted (C{_parsePOSTFormSubmission}), an empty adapter cache
    (C{_adapterCache}, which C{getComponent} and sessions use).
    """
    request._parsePOSTFormSubmission = False
    request._adapterCache = {}  # type: ignore[attr-defined]


def kept_session(request: object, secure: bool) -> Any:
    """
    The session that C{request} keeps from an earlier lookup, where
    twisted.web's C{server.Request.getSession} keeps it
    (C{_secureSession} or C{_insecureSession}), or C{None}.
    """
    if secure:
        return getattr(request, "_secureSession", None)
    return getattr(request, "_insecureSession", None)


def keep_session(request: object, secure: bool, session: object) -> None:
    """
    Keep C{session} on C{request} where twisted.web's
    C{server.Request.getSession} keeps it, for the next lookup.
    """
    if secure:
        request._secureSession = session  # type: ignore[attr-defined]
    else:
        request._insecureSession = session  # type: ignore[attr-defined]


def session_clock(session: server.Session) -> IReactorTime:
    """
    The clock that twisted.web's C{server.Session} was made with (its
    C{_reactor}: the site's, unless another was passed).
    """
    clock: IReactorTime = session._reactor
    return clock


def connection_gone(request: http.Request) -> bool:
    """
    Whether the connection of C{request} was lost before it finished
    (twisted.web's C{http.Request._disconnected}); its C{notifyFinish}
    never fires then.
    """
    return bool(getattr(request, "_disconnected", False))


#: twisted.web.wsgi's response to one request, which its WSGIResource makes
#: and which a WSGI mount subclasses to change how a response is sent.
WSGIResponse = _WSGIResponse


def wsgi_input(content: Any) -> _InputStream:
    """
    The C{wsgi.input} of a request whose body is the file C{content}, as
    twisted.web.wsgi makes it (C{_InputStream}).
    """
    return _InputStream(content)


def wsgi_errors() -> _ErrorStream:
    """
    The C{wsgi.errors} of a request, which logs what is written to it, as
    twisted.web.wsgi makes it (C{_ErrorStream}).
    """
    return _ErrorStream()


def send_wsgi_headers(response: _WSGIResponse) -> None:
    """
    Set the status and headers that the application gave C{response}'s
    C{startResponse} on its request, without writing them
    (C{_WSGIResponse._sendResponseHeaders}).  In the reactor's thread.
    """
    response._sendResponseHeaders()


def endpoint_tls_context(endpoint: object) -> ContextFactory | None:
    """
    The TLS context factory of a server endpoint parsed from an C{ssl:}
    string (C{SSL4ServerEndpoint._sslContextFactory}), or C{None} for an
    endpoint without one: the only way to reuse exactly what it configured.
    """
    context: ContextFactory | None = getattr(endpoint, "_sslContextFactory", None)
    return context


def endpoint_address(
    endpoint: TCP4ServerEndpoint | SSL4ServerEndpoint,
) -> tuple[str, int, int]:
    """
    The interface (C{""} for all), port and listen backlog of a TCP or TLS
    server endpoint, which twisted keeps private (C{_interface}, C{_port},
    C{_backlog}).
    """
    interface: str = getattr(endpoint, "_interface", "")
    number: int = getattr(endpoint, "_port", 0)
    backlog: int = getattr(endpoint, "_backlog", 50)
    return interface, number, backlog


class _AdoptedUNIXPort(unix.Port):
    """
    A UNIX port on a socket another process bound and will remove.
    """

    def connectionLost(self, reason: Any) -> None:
        # unix.Port.connectionLost without the unlink of the socket file.
        if self.lockFile is not None:
            self.lockFile.unlock()
        tcp.Port.connectionLost(self, reason)


def adopt_unix_port(reactor: Any, fd: int, factory: Any) -> Any:
    """
    Listen with C{factory} on the UNIX socket C{fd} (duplicated), as
    C{reactor.adoptStreamPort} does, but leave the socket file in place when
    the port stops, and its mode as it is (C{unix.Port._fromListeningDescriptor},
    C{_bindPath}).
    """
    port = _AdoptedUNIXPort._fromListeningDescriptor(reactor, fd, factory)
    path = port._bindPath
    if path and path[:1] not in (b"\0", "\0"):
        # startListening chmods the file to the port's mode, 0666 unless set.
        port.mode = stat.S_IMODE(os.stat(path).st_mode)
    port.startListening()
    return port


# -- the reverse proxy's HTTP client ----------------------------------------------

#: Twisted's HTTP/1.1 client protocol, kept in a private module.
HTTPClientProtocol = HTTP11ClientProtocol


def response_parser(protocol: HTTP11ClientProtocol) -> HTTPClientParser | None:
    """
    The parser of the answer that C{protocol} is reading, if any.  Its
    C{connHeaders} hold what Agent keeps out of C{Response.headers},
    C{Connection} among them.
    """
    return protocol._parser


class ResponseHeadTooLarge(Exception):
    """
    An upstream's response head went over the limits that
    L{limit_response_head} set.
    """


def limit_response_head(
    parser: HTTPClientParser, max_bytes: int, max_lines: int
) -> None:
    """
    Make C{parser} give up on a response head (status line, header lines and
    the empty line that ends them; each interim 1xx head counted apart) of
    more than C{max_bytes} bytes or more than C{max_lines} header lines,
    holding no more than C{max_bytes} of it meanwhile.

    Twisted's C{HTTPClientParser} is a C{LineReceiver} that keeps every
    header line it is given, and a line of up to C{MAX_LENGTH} (16 KiB)
    before it has seen its end.  Here its C{MAX_LENGTH} is what is left of
    C{max_bytes}, and its C{lineReceived} and C{lineLengthExceeded} raise
    L{ResponseHeadTooLarge} once a limit is passed:
    C{HTTP11ClientProtocol.dataReceived} then closes the connection and
    fails the request with C{ResponseFailed}.  Reads the parser's C{state}
    (C{_newclient}'s C{STATUS} and C{HEADER}).
    """
    parse_line = parser.lineReceived
    ending = len(parser.delimiter)
    used = 0
    lines = 0

    def line_received(line: bytes) -> None:
        nonlocal used, lines
        used += len(line) + ending
        if parser.state == HEADER and line not in (b"", b"\r"):
            lines += 1
        if used > max_bytes:
            raise ResponseHeadTooLarge(f"response head over {max_bytes} bytes")
        if lines > max_lines:
            raise ResponseHeadTooLarge(f"response head over {max_lines} lines")
        parse_line(line)
        if parser.state == STATUS:  # an interim 1xx head has ended
            used = lines = 0
        parser.MAX_LENGTH = max_bytes - used - ending

    def line_length_exceeded(line: bytes) -> None:
        raise ResponseHeadTooLarge(f"response head over {max_bytes} bytes")

    parser.MAX_LENGTH = max_bytes - ending
    parser.lineReceived = line_received  # type: ignore[method-assign]
    parser.lineLengthExceeded = line_length_exceeded  # type: ignore[method-assign]


def build_connections_with(
    pool: HTTPConnectionPool,
    protocol: Callable[[Callable[[Any], None]], HTTP11ClientProtocol],
) -> None:
    """
    Make C{pool}'s new connections speak the protocol that C{protocol} builds
    from the pool's quiescent callback.  HTTPConnectionPool builds them with
    its private factory class, which also logs a "Starting factory" line for
    every connection; this one is quiet.
    """

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

        def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
            return protocol(self._quiescentCallback)

    pool._factory = QuietFactory


def request_with_target(
    agent: Agent,
    method: bytes,
    origin: URI,
    target: bytes,
    headers: Headers,
    body: IBodyProducer | None,
) -> Deferred[IResponse]:
    """
    What C{agent.request} does once it has parsed its URL, sending C{target}
    to C{origin} exactly as given: C{Agent.request} rebuilds the target from
    the URL's parts, which normalises it (an empty query C{?} is dropped).
    """
    key = (origin.scheme, origin.host, origin.port)
    endpoint = agent._getEndpoint(origin)
    return agent._requestWithEndpoint(
        key, endpoint, method, origin, headers, body, target
    )


# -- the CGI mount ------------------------------------------------------------


def cgi_script_reactor(script: Any) -> Any:
    """
    The reactor that twisted.web.twcgi's C{CGIScript} C{script} spawns its
    processes with (its C{_reactor}): the one it was made with, or the
    global reactor when it was given none.
    """
    return script._reactor


class _GroupLeader(Process):
    """
    A process that starts a session of its own, and so a process group
    whose id is its pid, between C{fork} and C{exec}.
    """

    def _trySpawnInsteadOfFork(self, *args: Any) -> bool:
        # Twisted's posix_spawnp call cannot ask for a new session.
        return False

    def _execChild(self, *args: Any) -> None:
        os.setsid()
        super()._execChild(*args)


def spawn_process_group(
    reactor: Any,
    protocol: Any,
    executable: str,
    args: list[str],
    env: dict[bytes, bytes],
    path: str,
) -> Any:
    """
    What C{reactor.spawnProcess(protocol, executable, args, env, path)} does
    on POSIX, the process put in a process group of its own (its id the
    process's pid) so that its own children can be killed with it.
    C{spawnProcess} starts a new session only with C{usePTY}, which joins
    standard output and error on one terminal; so this overrides Twisted's
    C{Process._execChild} (called in the child, after C{fork}) and turns
    off its C{_trySpawnInsteadOfFork}.
    """
    return _GroupLeader(reactor, executable, args, env, path, protocol)


def pause_accepting(port: Any) -> None:
    """
    Stop C{port} accepting connections (they wait in the kernel's backlog):
    a listening TCP or UNIX port is a file descriptor the reactor reads,
    which C{stopReading} takes out of its set.  Twisted accepts a batch of
    clients each time the socket is readable, so the accept loop is told to
    stop the batch too (see L{_accept_loop}).  Other ports are left alone.
    """
    stop = getattr(port, "stopReading", None)
    if stop is not None and getattr(port, "connected", False):
        stop()
        listener = getattr(port, "socket", None)
        if listener is not None:
            _accept_loop()
            _paused.add(listener)


def resume_accepting(port: Any) -> None:
    """
    Let C{port} accept connections again (see L{pause_accepting}).
    """
    start = getattr(port, "startReading", None)
    if start is not None and getattr(port, "connected", False):
        listener = getattr(port, "socket", None)
        if listener is not None:
            _paused.discard(listener)
        start()


def answer_busy_when_out_of_descriptors(
    answer: Callable[[], bytes], clock: Callable[[], float]
) -> None:
    """
    Make every TCP port answer C{answer()} (a whole HTTP response) to the
    clients it cannot take for want of file descriptors, logging that at
    most once a second of C{clock}.

    On EMFILE, twisted.internet.tcp's accept loop releases a descriptor it
    holds in reserve, accepts the waiting clients and closes each at once
    (a reset, to the client), logging a line for each.  Through
    L{_accept_loop}, each such socket is sent C{answer} before Twisted
    closes it, and one line a second of Twisted's is kept.  (The small
    answer fits in any socket's send buffer.)
    """
    _accept_loop()
    _busy[:] = [(answer, clock)]


#: Listening sockets of paused ports (see L{pause_accepting}).
_paused: weakref.WeakSet[Any] = weakref.WeakSet()
#: The answer to clients taken out of descriptors, and the clock of the log.
_busy: list[tuple[Callable[[], bytes], Callable[[], float]]] = []


def watch_accepts() -> None:
    """
    Make Twisted's accept loops stop a batch when their port is paused, and
    answer clients taken out of descriptors (see L{_accept_loop}): before
    the first port listens, since a batch already under way goes on as it
    began.
    """
    _accept_loop()


def _accept_loop() -> None:
    """
    Replace twisted.internet.tcp's module-level C{_accept}, once, by one
    that stops a batch of accepts when the port was paused meanwhile, and
    answers clients taken out of descriptors (L{_busy}).
    """
    if getattr(tcp._accept, "ours", False):
        return
    original = tcp._accept
    told_at: list[float] = []

    def accept(logger: Any, accepts: Any, listener: Any, reserved: Any) -> Any:
        if _busy:
            logger = Logger(namespace=logger.namespace, observer=_rate_limited(logger))
        for client, address in original(logger, accepts, listener, reserved):
            if _busy and not reserved.available():
                # Accepted with the reserve released: Twisted closes it next.
                try:
                    client.send(_busy[0][0]())
                except OSError:
                    pass
            yield client, address
            if listener in _paused:
                # The site has as many connections as it takes.
                return

    def _rate_limited(logger: Any) -> ILogObserver:
        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if "EMFILE" in (event.get("log_format") or ""):
                now = _busy[0][1]()
                if told_at and now - told_at[-1] < 1.0:
                    return
                told_at[:] = [now]
            logger.observer(event)

        return observe  # type: ignore[no-any-return]

    accept.ours = True  # type: ignore[attr-defined]
    tcp._accept = accept


def adapters_of(component: components.Componentized) -> dict[str, Any]:
    """
    The adapters that C{component} made and keeps, by the qualified name of
    their interface (twisted's C{Componentized._adapterCache}, which
    C{getComponent} fills and reads).
    """
    adapters: dict[str, Any] = component._adapterCache
    return adapters


def set_adapters(component: components.Componentized, adapters: dict[str, Any]) -> None:
    """
    Give C{component} the adapters C{adapters}, as L{adapters_of} reads them.
    """
    component._adapterCache = adapters
