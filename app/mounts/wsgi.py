"""
The WSGI mount: twisted.web.wsgi on a thread pool the site starts and stops.

L{WSGIResource} is twisted.web.wsgi's, with these of its behaviours
replaced:

  - An application that raises before the first byte of its body is
    answered with the server's own 500 page (twisted sends an empty 500) and
    logged once; after it, the connection is closed.  The iterable's
    C{close()} is called when iterating it raises, too (PEP 3333).
  - A status or header that cannot be sent (not C{NNN reason}, not latin-1,
    control characters, hop-by-hop) fails the application in its own thread,
    so it is a 500; twisted fails later in the reactor thread and leaves the
    request hanging.  A body longer or shorter than the application's own
    C{Content-Length} closes the connection instead of corrupting the next
    response on it.  An application that never calls C{start_response}, or
    writes before it, is a 500 too (twisted leaves the request hanging).
  - A write waits while the client's connection is full (twisted's returns
    at once, so a client that does not read would have the whole body held
    in memory).
  - The environ is built for any listening address (twisted reads C{.host}
    and C{.port} of addresses, which UNIX sockets lack); C{CONTENT_LENGTH}
    is the length of the body received (a chunked body included); header
    names other than letters, digits and C{-} are dropped (C{X_Y} must not
    pose as C{X-Y}), and so is C{Proxy} (httpoxy).
  - The pool's threads are daemons, and stopping the pool does not wait for
    them: C{ThreadPool.stop()} joins every thread, so an application that
    never returns would hold the shutdown, and the exit, forever.
  - At most L{WAITING_PER_THREAD} requests a thread wait for one; past that
    a request is answered at once with 503 and C{Retry-After} (twisted queues
    without bound).  A waiting request whose client goes away leaves the
    line, and is never run.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from threading import Lock, Thread
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import wsgi
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from app.compat.twisted import (
    WSGIResponse,
    send_wsgi_headers,
    wsgi_errors,
    wsgi_input,
)
from app.http.pages import HTML_TYPE, answer, error_page, render_busy
from app.http.request import request_uri
from app.mounts.gateway import request_variables

#: Request headers not passed as C{HTTP_*}: the body's are C{CONTENT_*};
#: C{Proxy} is httpoxy.
WSGI_HIDDEN_HEADERS = frozenset({b"content-type", b"content-length", b"proxy"})

#: Requests that may wait for a thread, for each thread of the pool.
WAITING_PER_THREAD = 8


#: The least time, in seconds, between two log lines about refusals.
_REFUSAL_LOG_INTERVAL = 1.0

_STATUS = re.compile(r"[2-5][0-9][0-9] [^\x00-\x1f\x7f]*[^\x00-\x20\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

log = Logger()


class _DaemonThread(Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A thread stuck in an application must not keep the process alive.
        self.daemon = True


class _PlaceState(enum.Enum):
    WAITING = "waiting"
    STARTED = "started"
    GIVEN_UP = "given up"


class WaitingPlace:
    """
    A call's place among those waiting for a thread of a L{WSGIThreadPool}.
    """

    def __init__(self, pool: WSGIThreadPool) -> None:
        self._pool = pool
        self._state = _PlaceState.WAITING

    def call(self, work: Callable[[], object]) -> None:
        """
        Hand C{work} to the pool: a thread runs it unless the place has been
        given up by then.
        """
        self._pool.callInThread(self._run, work)

    def give_up(self) -> None:
        """
        Leave the line: work not started yet never will be.
        """
        self._pool._leave(self, _PlaceState.GIVEN_UP)

    def _run(self, work: Callable[[], object]) -> None:
        if self._pool._leave(self, _PlaceState.STARTED):
            work()


class WSGIThreadPool(ThreadPool):
    """
    A thread pool of daemon threads, with a bounded line of calls waiting
    for a thread (L{join_line}).
    """

    threadFactory = _DaemonThread

    def __init__(
        self,
        minthreads: int = 5,
        maxthreads: int = 20,
        name: str | None = None,
        *,
        max_waiting: int | None = None,
    ) -> None:
        """
        @param max_waiting: calls that may wait for a thread;
            L{WAITING_PER_THREAD} a thread unless given.
        """
        super().__init__(minthreads, maxthreads, name)
        self.max_waiting = (
            WAITING_PER_THREAD * maxthreads if max_waiting is None else max_waiting
        )
        #: Calls handed to the pool that no thread has started, nor given up.
        self.waiting = 0
        # Places are taken in the reactor's thread and left in the pool's.
        self._line_lock = Lock()

    def join_line(self) -> WaitingPlace | None:
        """
        A place to wait for a thread, or C{None} when C{max_waiting} calls
        already wait.
        """
        with self._line_lock:
            if self.waiting >= self.max_waiting:
                return None
            self.waiting += 1
        return WaitingPlace(self)

    def _leave(self, place: WaitingPlace, state: _PlaceState) -> bool:
        with self._line_lock:
            if place._state is not _PlaceState.WAITING:
                return False
            place._state = state
            self.waiting -= 1
            return True


class ThreadPoolService(Service):
    """
    Runs a thread pool while the site is served.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        # ThreadPool.stop() joins every thread, and one may be in an
        # application that never returns: let idle threads quit, and wait
        # for none of them.
        Thread(target=self.pool.stop, name="wsgi-pool-stop", daemon=True).start()


def _check_start(status: object, headers: object) -> int | None:
    """
    Check what an application passes to C{start_response}; return the
    C{Content-Length} it declares, if any.

    @raise ValueError: for a status or header that cannot be sent.
    """
    if isinstance(status, str) and not (_STATUS.fullmatch(status) and _latin1(status)):
        raise ValueError(f"not a status line: {status[:80]!r}")
    declared = None
    if isinstance(headers, list | tuple):
        for header in headers:
            if not (isinstance(header, tuple | list) and len(header) == 2):
                continue  # twisted's start_response says what is wrong
            name, value = header
            if not isinstance(name, str) or not isinstance(value, str):
                continue
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"not a header name: {name[:80]!r}")
            if not (_FIELD_VALUE.fullmatch(value) and _latin1(value)):
                raise ValueError(f"header {name!r} has a value that cannot be sent")
            if name.lower() in _HOP_BY_HOP:
                raise ValueError(f"hop-by-hop header {name!r} (PEP 3333)")
            if name.lower() == "content-length":
                if not value.isdigit() or not value.isascii() or declared is not None:
                    raise ValueError(f"Content-Length {value[:80]!r}")
                declared = int(value)
    return declared


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


@implementer(IPushProducer)
class _Response(WSGIResponse):
    """
    One request through the application (see the module's docstring).
    """

    _declared: int | None = None
    _written = 0
    #: Whether start_response was called: twisted reads the status it saves
    #: in the reactor thread, where its absence leaves the request hanging.
    _status_given = False
    #: Whether the request has finished, or its connection is gone.
    _request_finished = False

    def __init__(
        self,
        reactor: Any,
        threadpool: ThreadPool,
        application: Callable[..., Any],
        request: Request,
        settings: _Settings,
    ) -> None:
        # Not twisted's __init__: it reads .host and .port of the addresses,
        # which UNIX sockets lack.  What the rest of the class uses is set here.
        self.started = False
        self.reactor = reactor
        self.threadpool = threadpool
        self.application = application
        self.request = request
        self._settings = settings
        request.notifyFinish().addBoth(self._on_finish)
        # The application decides every header; no default Content-Type.
        request.defaultContentType = None
        self.environ = self._environ(request)

    def _environ(self, request: Request) -> dict[str, Any]:
        variables = request_variables(request, WSGI_HIDDEN_HEADERS)
        environ: dict[str, Any] = {
            name: value.decode("latin-1") for name, value in variables.items()
        }
        prepath: list[bytes] = request.prepath or []
        postpath: list[bytes] = request.postpath or []
        # Empty for an application mounted at / (PEP 3333), not "/".
        environ["SCRIPT_NAME"] = (
            (b"/" + b"/".join(prepath)).decode("latin-1") if prepath else ""
        )
        environ["PATH_INFO"] = (
            (b"/" + b"/".join(postpath)).decode("latin-1") if postpath else ""
        )
        environ.setdefault("CONTENT_LENGTH", "")
        environ.setdefault("CONTENT_TYPE", "")
        # No port for a client behind a proxy that did not forward one.
        port = getattr(request.getClientAddress(), "port", None)
        if port:
            environ["REMOTE_PORT"] = str(port)
        environ.update(
            {
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "https" if request.isSecure() else "http",
                "wsgi.input": wsgi_input(request.content),
                "wsgi.input_terminated": True,
                "wsgi.errors": wsgi_errors(),
                "wsgi.multithread": True,
                "wsgi.multiprocess": self._settings.multiprocess,
                "wsgi.run_once": False,
            }
        )
        return environ

    # -- in the application's thread ----------------------------------------

    def startResponse(
        self, status: str, headers: list[tuple[str, str]], excInfo: Any = None
    ) -> Callable[[bytes], None]:
        if self.started and excInfo is not None:
            # Too late to change the answer (PEP 3333): re-raise.
            raise excInfo[1].with_traceback(excInfo[2])
        declared = _check_start(status, headers)
        write: Callable[[bytes], None] = super().startResponse(status, headers, excInfo)
        self._declared = declared
        self._status_given = True
        return write

    def write(self, data: bytes) -> None:
        if not self._status_given:
            raise RuntimeError("the application wrote before start_response")
        if self._declared is not None and self.request.method != b"HEAD":
            if self._written + len(data) > self._declared:
                raise ValueError(
                    f"the application wrote more than its Content-Length "
                    f"({self._declared})"
                )
            self._written += len(data)

        def write_when_read(started: bool) -> Deferred[None] | None:
            if self._request_finished:
                return None  # the client is gone: nothing goes anywhere
            if not started:
                send_wsgi_headers(self)
                self.request.registerProducer(self, True)
            self.request.write(data)
            return self._resumed

        try:
            blockingCallFromThread(self.reactor, write_when_read, self.started)
        finally:
            self.started = True

    def run(self) -> None:
        try:
            result = self.application(self.environ, self.startResponse)
            try:
                for chunk in result:
                    if chunk:
                        self.write(chunk)
                    if self._request_finished:
                        break
                if not self._status_given:
                    raise RuntimeError("the application never called start_response")
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except BaseException:
            self.reactor.callFromThread(self._failed, self.started, Failure())
        else:
            self.reactor.callFromThread(self._done, self.started)
        self.started = True

    # -- in the reactor's thread ----------------------------------------------

    #: While the client's connection is full: fires when it takes more.
    _resumed: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    def _on_finish(self, result: object) -> None:
        self._request_finished = True
        # A write waiting for the client is let go: the client is gone.
        self.resumeProducing()

    def _let_go(self) -> None:
        if self.request.producer is self:
            self.request.unregisterProducer()

    def _done(self, started: bool) -> None:
        if self._request_finished:
            return
        self._let_go()
        if not started:
            send_wsgi_headers(self)
        request = self.request
        short = (
            self._declared is not None
            and self._written < self._declared
            and request.method != b"HEAD"
            and request.code not in (204, 304)
        )
        if short:
            log.error(
                "WSGI application wrote {written} of the {declared} bytes "
                "of its Content-Length on {uri}",
                written=self._written,
                declared=self._declared,
                uri=request_uri(request),
            )
            if not started:
                request.write(b"")
            request.loseConnection()
            return
        request.finish()

    def _failed(self, started: bool, failure: Failure) -> None:
        request = self.request
        log.failure(
            "WSGI application failed on {uri}", failure, uri=request_uri(request)
        )
        if self._request_finished:
            return
        self._let_go()
        if started:
            request.loseConnection()
            return
        extra = ""
        if self._settings.display_tracebacks:
            extra = f"\n<pre>{escape(failure.getTraceback())}</pre>"
        body = error_page(500, extra_html=extra)
        request.setResponseCode(500)
        request.setHeader(b"content-type", HTML_TYPE)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        # The server's own page, though the application's headers were due.
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()


@dataclass(frozen=True)
class _Settings:
    display_tracebacks: bool
    multiprocess: bool


class WSGIResource(wsgi.WSGIResource):
    """
    A WSGI application as a leaf resource: C{SCRIPT_NAME} is the path that
    led here, C{PATH_INFO} the rest.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: WSGIThreadPool,
        application: Callable[..., Any],
        *,
        clock: IReactorTime,
        display_tracebacks: bool = False,
        multiprocess: bool = False,
    ) -> None:
        super().__init__(reactor, threadpool, application)
        self._settings = _Settings(display_tracebacks, multiprocess)
        self._pool_reactor = reactor
        self._pool = threadpool
        self._wsgi_application = application
        self._clock = clock
        #: Requests refused since the last log line about it, and its time.
        self._refused = 0
        self._refusal_logged: float | None = None

    def render(self, request: Request) -> int:
        place = self._pool.join_line()
        if place is None:
            return self._refuse(request)
        response = _Response(
            self._pool_reactor,
            self._pool,
            self._wsgi_application,
            request,
            self._settings,
        )
        request.notifyFinish().addBoth(lambda _: place.give_up())
        place.call(response.run)
        return NOT_DONE_YET

    def _refuse(self, request: Request) -> int:
        self._refused += 1
        now = self._clock.seconds()
        last = self._refusal_logged
        if last is None or now - last >= _REFUSAL_LOG_INTERVAL:
            log.warn(
                "WSGI: {waiting} requests wait for {threads} threads; "
                "{refused} refused with 503 since the last such line",
                waiting=self._pool.waiting,
                threads=self._pool.max,
                refused=self._refused,
            )
            self._refused, self._refusal_logged = 0, now
        return answer(request, render_busy(request))
