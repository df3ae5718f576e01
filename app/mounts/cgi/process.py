"""
One run of a CGI script: its output turned into the response, its failures
answered for.

Built on twcgi's L{CGIProcessProtocol}, with these of its behaviours
replaced:

  - The answer: twcgi keeps all of a script's standard error in memory.
    Here a script that ends, or writes something other than a header,
    before a complete header block is a 500, its standard error (the last
    L{MAX_STDERR_BYTES}) logged; once its header block is out, its own
    status stands.
  - Time: a script that has not finished its header block within the timeout
    is killed (504); one silent that long later on is killed and the
    connection closed; a client that goes away kills its script.
  - Killing: twcgi signals the script's process alone.  A script runs in a
    process group of its own (L{app.compat.twisted.spawn_process_group}),
    and the whole group is killed, so that its children do not outlive it.
  - A script that cannot start for want of file descriptors is a 503 with
    C{Retry-After}, not a 500.

The output is streamed: the script's standard output is read only as fast as
the client takes it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from enum import Enum

from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import twcgi
from twisted.web.iweb import IRequest

from app.http.limits import out_of_descriptors
from app.http.pages import render_error
from app.mounts.cgi.headers import (
    MAX_HEAD_BYTES,
    BadHead,
    parse_head,
    resume_offset,
    split_head,
)
from app.mounts.cgi.slots import answer_busy
from app.mounts.cgi.standard_input import StandardInput

#: How much of a script's standard error is kept for the log (the end of it).
MAX_STDERR_BYTES = 64 * 1024

log = Logger()


class RunState(Enum):
    """
    Where one run of a script is.  A run starts L{AWAITING_HEAD}; then:

      - AWAITING_HEAD -> STREAMING: its header block is out.
      - AWAITING_HEAD -> FAILED: an invalid or overlong header block, none
        in time, or no process at all: answered with an error page.
      - STREAMING -> FAILED: silent too long: the connection is cut.
      - AWAITING_HEAD or STREAMING -> CLIENT_GONE: the client went away.
      - any other -> ENDED: the process ended (L{CGIProcess.processEnded}
        answers for it if nothing else has).

    Only in L{AWAITING_HEAD} and L{STREAMING} is the response still the
    script's to give; in every other state it has been answered, and a timer
    no longer runs.
    """

    #: The script runs (or is being started); its header block is not
    #: complete yet.
    AWAITING_HEAD = "awaiting its header block"
    #: The header block is out; the rest of the output streams.
    STREAMING = "streaming"
    #: Given up on: answered with an error page, or its connection cut.
    FAILED = "failed"
    #: The client went away first.
    CLIENT_GONE = "client gone"
    #: The process has ended.
    ENDED = "ended"


#: The states in which the script still gives the response.
_ANSWERING = frozenset({RunState.AWAITING_HEAD, RunState.STREAMING})


def _describe_end(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exit status 0"
    exit_code = getattr(reason.value, "exitCode", None)
    signal = getattr(reason.value, "signal", None)
    if signal is not None:
        return f"killed by signal {signal}"
    return f"exit status {exit_code}"


class CGIProcess(twcgi.CGIProcessProtocol):
    """
    One run of a script: feeds it the request body, turns its header block
    into the response's status and headers, streams the rest, and answers
    for it when it fails, stalls or outlives its client.
    """

    def __init__(
        self,
        request: IRequest,
        script: str,
        timeout: float,
        clock: IReactorTime,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(request)
        # Called with None once the request is finished, with a Failure when
        # the client went away first.
        self.request.notifyFinish().addBoth(self._request_done)
        self._script = script
        self._timeout = timeout
        self._clock = clock
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._too_slow)
        self._state = RunState.AWAITING_HEAD
        self._head_buffer = b""
        self._head_scan = 0
        self._stderr = bytearray()
        self._stderr_dropped = 0
        #: Why the run failed, once it has: logged when the process ends.
        self._failure: str | None = None
        self._stdin: StandardInput | None = None
        #: The script's process group: its pid, once it runs.
        self._group: int | None = None
        #: Called once, when the run is over: the process ended, or never
        #: started.
        self._on_end = on_end

    # -- process events ---------------------------------------------------

    def connectionMade(self) -> None:
        self._group = getattr(self.transport, "pid", None)
        if self._state not in _ANSWERING:  # answered before the process started
            self._kill()
            return
        self.request.registerProducer(self, True)
        self._stdin = StandardInput(self.request.content, self.transport)
        self._stdin.start()

    def outReceived(self, data: bytes) -> None:
        if self._state is RunState.STREAMING:
            self._restart_timer()
            self.request.write(data)
            return
        if self._state is not RunState.AWAITING_HEAD:
            return
        self._head_buffer += data
        found = split_head(self._head_buffer, self._head_scan)
        if found is None:
            if len(self._head_buffer) > MAX_HEAD_BYTES:
                self._fail(f"a header block longer than {MAX_HEAD_BYTES} bytes", 500)
            else:
                self._head_scan = resume_offset(self._head_buffer)
            return
        block, rest, _ = found
        self._head_buffer = b""
        try:
            head = parse_head(block)
        except BadHead as error:
            self._fail(f"an invalid header block: {error}", 500)
            return
        self._state = RunState.STREAMING
        self._restart_timer()
        request = self.request
        # The script decides every header; no default Content-Type.
        request.defaultContentType = None
        request.setResponseCode(head.code, head.reason)
        for name, value in head.headers:
            request.responseHeaders.addRawHeader(name, value)
        # The headers go out now, even if the body takes its time.
        request.write(rest)

    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        excess = len(self._stderr) - MAX_STDERR_BYTES
        if excess > 0:
            del self._stderr[:excess]
            self._stderr_dropped += excess

    def processEnded(self, reason: Failure) -> None:
        try:
            self._process_ended(reason)
        finally:
            self._end()

    def _process_ended(self, reason: Failure) -> None:
        previous, self._state = self._state, RunState.ENDED
        self._cancel_timer()
        if self._stdin is not None:
            self._stdin.stop()
        end = _describe_end(reason)
        if self._failure is None and previous is RunState.AWAITING_HEAD:
            self._failure = "it ended before a complete header block"
        if self._failure is not None:
            log.error(
                "CGI script {script} failed: {why} ({end}); "
                "its standard error: {stderr}",
                script=self._script,
                why=self._failure,
                end=end,
                stderr=self._stderr_text(),
            )
            if previous in _ANSWERING:
                self._write_error_page(500)
            return
        # A script killed because its client left is no news; its stderr is.
        gone = previous is RunState.CLIENT_GONE
        if self._stderr or not (reason.check(ProcessDone) or gone):
            log.warn(
                "CGI script {script} ended with {end}; its standard error: {stderr}",
                script=self._script,
                end=end,
                stderr=self._stderr_text(),
            )
        if previous in _ANSWERING:
            self.request.unregisterProducer()
            self.request.finish()

    def spawn_failed(self, failure: Failure) -> None:
        """
        The script could not be started at all: 503 when the server is out
        of file descriptors (logged by the caller, which sees them all),
        500 otherwise.
        """
        self._cancel_timer()
        try:
            if not out_of_descriptors(failure.value):
                log.failure(
                    "CGI script {script} could not start", failure, script=self._script
                )
                self._answer_error(500)
            elif self._state in _ANSWERING:
                self._state = RunState.FAILED
                answer_busy(self.request)
        finally:
            self._end()

    # -- the client ---------------------------------------------------------

    def _request_done(self, result: object) -> None:
        if isinstance(result, Failure):
            if self._state in _ANSWERING:
                self._state = RunState.CLIENT_GONE
            self._kill()

    def stopProducing(self) -> None:
        self._kill()

    def pauseProducing(self) -> None:
        # The client is not reading, so the script waits on it: that is no
        # silence of the script's (the connection's idle timeout applies).
        if self._state is RunState.STREAMING:
            self._cancel_timer()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._state is RunState.STREAMING:
            self._restart_timer()

    # -- time ---------------------------------------------------------------

    def _restart_timer(self) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(self._timeout, self._too_slow)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self._state is RunState.AWAITING_HEAD:
            self._fail(f"no header block within {self._timeout:g} seconds", 504)
            return
        self._failure = f"silent for {self._timeout:g} seconds after its headers"
        self._state = RunState.FAILED
        self._kill()
        self.request.loseConnection()

    # -- ending ---------------------------------------------------------------

    def _fail(self, why: str, code: int) -> None:
        """
        Give up on a script that has not printed a valid header block.
        """
        self._failure = why
        self._kill()
        self._answer_error(code)

    def _kill(self) -> None:
        self._cancel_timer()
        if self._stdin is not None:
            self._stdin.stop()
        transport = self.transport
        if self._state is RunState.ENDED or transport is None:
            return
        self._kill_group(transport)
        # Close our ends too: a child of the script may still hold them.
        transport.loseConnection()

    def _kill_group(self, transport: IProcessTransport) -> None:
        # The group outlives its first process while any child is in it, and
        # no new process can take its id meanwhile.
        if self._group is not None:
            try:
                os.killpg(self._group, signal.SIGKILL)
                return
            except ProcessLookupError:
                # No group yet: the child has not reached exec, so has no
                # children of its own either; or no process is left in it.
                pass
        try:
            transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    def _answer_error(self, code: int) -> None:
        """
        Answer with the error page for C{code}, unless the response has
        been answered already.
        """
        if self._state not in _ANSWERING:
            return
        self._state = RunState.FAILED
        self._write_error_page(code)

    def _write_error_page(self, code: int) -> None:
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        detail = (
            "The script did not answer in time."
            if code == 504
            else "The script failed to answer this request."
        )
        body = render_error(request, code, detail)
        request.write(body)
        request.finish()

    def _stderr_text(self) -> str:
        text = self._stderr.decode("utf-8", "replace").rstrip()
        if self._stderr_dropped:
            text = f"[{self._stderr_dropped} bytes dropped] ...{text}"
        return text or "(nothing)"
