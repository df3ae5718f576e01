"""
What app.compat.twisted relies on in Twisted, checked against a real
connection so that a Twisted release that moves it fails here, by name.
"""

from __future__ import annotations

import os
import socket
import stat
from io import BytesIO
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.ssl import ContextFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.web import http, server, wsgi
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel, DummyRequest
from zope.interface import Interface, implementer, provider

from app.compat.twisted import (
    WSGIResponse,
    adopt_unix_port,
    connection_gone,
    endpoint_address,
    endpoint_tls_context,
    headers_of,
    keep_session,
    kept_session,
    pull_to_push,
    send_wsgi_headers,
    sender,
    session_clock,
    set_request_internals,
    wsgi_errors,
    wsgi_input,
)
from tests.conftest import eventually, listen, port_number


class Collect(Protocol):
    def __init__(self, done: Deferred[bytes], wanted: int) -> None:
        self.received = b""
        self.done = done
        self.wanted = wanted

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.wanted and not self.done.called:
            self.done.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_a_tcp_transport_has_what_the_sender_reads() -> None:
    server_side: list[Protocol] = []

    class Keep(Protocol):
        def connectionMade(self) -> None:
            server_side.append(self)

    # forProtocol is annotated to return a Factory, not one of its own class.
    port = listen(ServerFactory.forProtocol(Keep))  # type: ignore[arg-type]
    done: Deferred[bytes] = Deferred()
    big = b"x" * (8 << 20)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port_number(port))
        client = await connectProtocol(endpoint, Collect(done, 2 + len(big) + 3))
        (accepted,) = await eventually(lambda: server_side, "the server's side")
        transport = accepted.transport
        assert isinstance(transport, FileDescriptor)
        for name in ("_tempDataLen", "dataBuffer", "offset", "connected"):
            assert hasattr(transport, name), f"FileDescriptor.{name} is gone"
        for name in ("disconnecting", "_writeDisconnected", "writeSomeData", "TLS"):
            assert hasattr(transport, name), f"FileDescriptor.{name} is gone"
        send = sender(transport)
        send(b"ab")
        # Sent at once: nothing is queued.
        assert transport._tempDataLen == 0
        assert transport.offset == len(transport.dataBuffer)
        # More than the socket takes: the rest is queued, in order.
        send(big)
        send(b"end")
        assert transport._tempDataLen > 0 or transport.dataBuffer
        received = await done
        assert received == b"ab" + big + b"end"
        client.transport.loseConnection()
    finally:
        await maybeDeferred(port.stopListening)


def test_any_other_transport_is_written_to_as_it_is() -> None:
    transport = StringTransport()
    send = sender(transport)
    send(b"one")
    send(b"two")
    assert transport.value() == b"onetwo"


# -- the channel and request of app.http ------------------------------------


def _present(module: object, name: str) -> None:
    assert hasattr(module, name), (
        f"{getattr(module, '__name__', module)}.{name} is gone"
    )


@pytest_twisted.ensureDeferred
async def test_a_pull_producer_made_streaming_is_pulled() -> None:
    from twisted.internet import _producer_helpers

    _present(_producer_helpers, "_PullToPush")
    pulled: Deferred[None] = Deferred()

    @implementer(IPullProducer)
    class Pull:
        def resumeProducing(self) -> None:
            if not pulled.called:
                pulled.callback(None)

        def stopProducing(self) -> None:
            pass

    pushed = pull_to_push(Pull(), StringTransport())
    pushed.startStreaming()
    try:
        await pulled.addTimeout(5, reactor)
    finally:
        pushed.stopStreaming()


def test_headers_hold_the_raw_dictionary_given_them() -> None:
    assert "_rawHeaders" in Headers.__slots__, "twisted.web Headers._rawHeaders is gone"
    # Names are kept as Headers spells them: headers_of is given them so.
    assert Headers({b"content-type": [b"text/plain"]})._rawHeaders == {
        b"Content-Type": [b"text/plain"]
    }, "Headers._rawHeaders no longer keys values by the canonical name"
    raw = {b"Content-Type": [b"text/plain"], b"X-Twice": [b"a", b"b"]}
    headers = headers_of(raw)
    assert headers.getRawHeaders(b"content-type") == [b"text/plain"]
    assert headers.getRawHeaders(b"x-twice") == [b"a", b"b"]
    assert list(headers.getAllRawHeaders()) == list(raw.items())


def test_a_request_gets_what_twisted_web_constructors_set() -> None:
    theirs = server.Request(DummyChannel())
    for name in ("_parsePOSTFormSubmission", "_adapterCache"):
        assert name in vars(theirs), f"twisted.web's Request no longer sets {name}"
    ours = server.Request.__new__(server.Request)
    set_request_internals(ours)
    assert ours._parsePOSTFormSubmission is False
    marker = object()
    ours.setComponent(IKnown, marker)
    assert ours.getComponent(IKnown) is marker, "Componentized._adapterCache moved"


class IKnown(Interface):
    pass


def test_a_session_is_kept_where_twisted_web_keeps_it() -> None:
    for name in ("_secureSession", "_insecureSession"):
        _present(server.Request, name)
    site = server.Site(Resource(), reactor=Clock())
    request = server.Request(DummyChannel())
    request.site = site
    request.sitepath = []  # type: ignore[attr-defined]  # set by Site, undeclared
    made = request.getSession()
    assert kept_session(request, False) is made, (
        "server.Request.getSession no longer keeps its session in _insecureSession"
    )
    assert kept_session(request, True) is None
    other = server.Session(site, b"other", reactor=Clock())
    site.sessions[b"other"] = other
    keep_session(request, False, other)
    assert request.getSession() is other


def test_a_session_has_the_clock_it_was_made_with() -> None:
    clock = Clock()
    clock.advance(7)
    session = server.Session(server.Site(Resource()), b"uid", reactor=clock)
    assert session_clock(session) is clock, "server.Session._reactor is gone"


def test_a_request_whose_connection_is_lost_says_so() -> None:
    _present(http.Request, "_disconnected")
    request = server.Request(DummyChannel())
    assert not connection_gone(request)
    request.connectionLost(Failure(ConnectionDone()))
    assert connection_gone(request), "http.Request._disconnected is no longer set"


# -- twisted.web.wsgi ------------------------------------------------------


def test_the_wsgi_response_class_is_twisted_webs() -> None:
    _present(wsgi, "_WSGIResponse")
    assert WSGIResponse is wsgi._WSGIResponse
    _present(WSGIResponse, "_sendResponseHeaders")


def test_wsgi_input_reads_the_request_body() -> None:
    _present(wsgi, "_InputStream")
    stream = wsgi_input(BytesIO(b"one\ntwo\n"))
    assert stream.readline() == b"one\n"
    assert stream.read() == b"two\n"


def test_wsgi_errors_is_logged() -> None:
    _present(wsgi, "_ErrorStream")
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observer(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        errors = wsgi_errors()
        errors.write("went wrong\n")
        errors.writelines(["and again\n"])
        errors.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    logged = "".join(formatEvent(event) for event in events)
    assert "went wrong" in logged and "and again" in logged


def test_wsgi_headers_are_set_on_the_request() -> None:
    request = DummyRequest([b""])
    response = WSGIResponse.__new__(WSGIResponse)
    response.started = False
    response.request = request
    response.startResponse("201 Made", [("X-Made", "yes"), ("Server", "app")])
    send_wsgi_headers(response)
    assert request.responseCode == 201
    assert request.responseHeaders.getRawHeaders(b"x-made") == [b"yes"]
    # twisted keeps Server and Date its own.
    assert request.responseHeaders.getRawHeaders(b"server") is None


# -- endpoints -------------------------------------------------------------


def test_a_tcp_endpoint_tells_its_address() -> None:
    endpoint = TCP4ServerEndpoint(MemoryReactor(), 8080, backlog=7, interface="::1")
    assert endpoint_address(endpoint) == ("::1", 8080, 7), (
        "TCP4ServerEndpoint._interface, _port or _backlog moved"
    )
    assert endpoint_tls_context(endpoint) is None


def test_a_tls_endpoint_tells_its_address_and_context() -> None:
    context = ContextFactory()
    endpoint = SSL4ServerEndpoint(
        MemoryReactor(), 8443, context, backlog=5, interface="127.0.0.1"
    )
    assert endpoint_address(endpoint) == ("127.0.0.1", 8443, 5), (
        "SSL4ServerEndpoint._interface, _port or _backlog moved"
    )
    assert endpoint_tls_context(endpoint) is context, (
        "SSL4ServerEndpoint._sslContextFactory is gone"
    )


@pytest_twisted.ensureDeferred
async def test_an_adopted_unix_port_leaves_the_socket_file_and_its_mode(
    tmp_path: Path,
) -> None:
    path = tmp_path / "adopted.sock"
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(path))
    bound.listen()
    os.chmod(path, 0o640)
    try:
        port = adopt_unix_port(reactor, bound.fileno(), ServerFactory())
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, (
            "unix.Port._bindPath moved: the adopted port chmods the file"
        )
        await maybeDeferred(port.stopListening)
        assert path.exists(), "unix.Port.connectionLost changed"
    finally:
        bound.close()


# -- twisted.web.twcgi -----------------------------------------------------


def test_a_cgi_script_keeps_the_reactor_it_was_made_with() -> None:
    from twisted.web import twcgi

    from app.compat.twisted import cgi_script_reactor

    given = object()
    script = twcgi.CGIScript("/bin/true", reactor=given)
    assert hasattr(script, "_reactor"), "twcgi.CGIScript._reactor is gone"
    assert cgi_script_reactor(script) is given, (
        "twcgi.CGIScript._reactor no longer holds the reactor it was made with"
    )


@pytest_twisted.ensureDeferred
async def test_a_process_group_leader_is_spawned() -> None:
    import os
    import sys

    from twisted.internet.process import Process
    from twisted.internet.protocol import ProcessProtocol

    from app.compat.twisted import spawn_process_group

    for name in ("_execChild", "_trySpawnInsteadOfFork"):
        assert hasattr(Process, name), f"twisted's Process.{name} is gone"

    class Output(ProcessProtocol):
        def __init__(self) -> None:
            self.output = b""
            self.ended: Deferred[None] = Deferred()

        def outReceived(self, data: bytes) -> None:
            self.output += data

        def processEnded(self, reason: Failure) -> None:
            self.ended.callback(None)

    protocol = Output()
    report = "import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"
    # In the current directory, Twisted would otherwise use posix_spawnp.
    spawn_process_group(
        reactor, protocol, sys.executable, [sys.executable, "-c", report], {}, "."
    )
    await protocol.ended
    pid, group, session = protocol.output.split()
    assert pid == group == session, (
        "Process._execChild is no longer called in the child before exec"
    )
    assert int(group) != os.getpgid(0)


@pytest_twisted.ensureDeferred
async def test_the_proxy_client_has_what_it_reaches_for() -> None:
    from typing import Any

    from twisted.web.client import URI as ClientURI
    from twisted.web.client import Agent, HTTPConnectionPool, readBody

    from app.compat.twisted import (
        HTTPClientProtocol,
        build_connections_with,
        request_with_target,
        response_parser,
    )

    for name in ("_getEndpoint", "_requestWithEndpoint"):
        assert hasattr(Agent, name), f"Agent.{name} is gone"
    assert hasattr(HTTPConnectionPool, "_factory"), (
        "HTTPConnectionPool._factory is gone"
    )
    assert hasattr(HTTPClientProtocol, "_parser"), (
        "HTTP11ClientProtocol._parser is gone"
    )

    heads: list[bytes] = []

    class Canned(Protocol):
        def dataReceived(self, data: bytes) -> None:
            heads.append(data)
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\n"
                b"Content-Length: 2\r\n\r\nok"
            )

    parsers: list[Any] = []

    class Recording(HTTPClientProtocol):
        def request(self, request: Any) -> Any:
            answer = super().request(request)
            parsers.append(response_parser(self))
            return answer

    port = listen(ServerFactory.forProtocol(Canned))  # type: ignore[arg-type]
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        build_connections_with(pool, Recording)
        origin = ClientURI.fromBytes(b"http://127.0.0.1:%d/" % port_number(port))
        response = await request_with_target(
            Agent(reactor, pool=pool), b"GET", origin, b"/x?", Headers(), None
        )
        assert await readBody(response) == b"ok"
        assert heads and heads[0].startswith(b"GET /x? HTTP/1.1\r\n"), (
            "Agent._requestWithEndpoint no longer sends the target as given"
        )
        assert parsers, "HTTPConnectionPool._factory no longer builds connections"
        parser = parsers[0]
        assert parser is not None, "HTTP11ClientProtocol._parser is not set by request"
        assert parser.connHeaders.getRawHeaders(b"connection") == [
            b"keep-alive, X-Hop"
        ], "HTTPClientParser.connHeaders no longer holds the Connection header"
    finally:
        await pool.closeCachedConnections()
        await maybeDeferred(port.stopListening)


def test_a_client_accepted_out_of_descriptors_gets_the_busy_answer() -> None:
    import errno
    import os
    import socket

    from twisted.internet import tcp

    from app.compat.twisted import answer_busy_when_out_of_descriptors

    assert hasattr(tcp, "_accept"), "twisted.internet.tcp._accept is gone"
    assert hasattr(tcp, "_FileDescriptorReservation"), (
        "twisted.internet.tcp._FileDescriptorReservation is gone"
    )
    clock = Clock()
    answer_busy_when_out_of_descriptors(
        lambda: b"HTTP/1.1 503 x\r\n\r\n", clock.seconds
    )
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    clients = [socket.create_connection(server.getsockname()) for _ in range(2)]

    class OutOfDescriptorsOnce:
        """A listener whose first accept finds no descriptor left."""

        failed = False

        def accept(self) -> tuple[socket.socket, object]:
            if not self.failed:
                self.failed = True
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return server.accept()

    reserved = tcp._FileDescriptorReservation(lambda: open(os.devnull))
    reserved.reserve()
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    logger = Logger(namespace="test", observer=observe)
    try:
        accepted = list(
            tcp._accept(logger, range(10), OutOfDescriptorsOnce(), reserved)
        )
        assert accepted == []  # Twisted closed them: none reached a factory
        for client in clients:
            client.settimeout(5)
            assert client.recv(100) == b"HTTP/1.1 503 x\r\n\r\n"
        assert reserved.available(), "the reserve is held again"
        lines = [e for e in events if "EMFILE" in (e.get("log_format") or "")]
        assert len(lines) == 1, "at most one EMFILE line a second"
    finally:
        for client in clients:
            client.close()
        server.close()


def test_the_dictionary_behind_headers_spells_names_canonically() -> None:
    from app.compat.twisted import raw_headers

    headers = Headers({b"content-type": [b"text/plain"], b"etag": [b'"x"']})
    raw = raw_headers(headers)
    assert raw == {b"Content-Type": [b"text/plain"], b"ETag": [b'"x"']}, (
        "Headers._rawHeaders no longer holds canonically spelled names"
    )
    raw[b"Vary"] = [b"Accept-Encoding"]
    assert headers.getRawHeaders(b"vary") == [b"Accept-Encoding"]
