"""
How many scripts of a CGI mount run at once, and the requests waiting for
one to end.

twcgi starts a process for every request it is given, however many are
running already.  Here at most C{running_max} scripts of a mount run at
once; up to L{MAX_WAITING} more requests wait, first come first served, for
at most the script timeout, and leave the queue when their client goes
away.  A request that finds the queue full, or waits too long, is answered
503 with C{Retry-After}; so is one whose script cannot start because the
server is out of file descriptors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from app.http.pages import answer, render_busy

#: Requests that wait for a script to end, past the ones running.
MAX_WAITING = 64

log = Logger()

#: Called once when a script's run is over, to let the next one start.
Release = Callable[[], None]


def answer_busy(request: IRequest) -> None:
    """
    Answer C{request} with the server's 503 page and C{Retry-After}.
    """
    answer(request, render_busy(request))


@dataclass(eq=False)
class _Waiting:
    """
    A request waiting for a place, and what starts its script.
    """

    request: Request
    start: Callable[[Release], None]
    timer: IDelayedCall | None = field(default=None)


class ScriptSlots:
    """
    The places for running scripts of one mount, and the queue for them;
    its timers run on C{clock}.
    """

    def __init__(
        self,
        running_max: int,
        timeout: float,
        clock: IReactorTime,
        waiting_max: int = MAX_WAITING,
    ) -> None:
        self.running_max = running_max
        self.waiting_max = waiting_max
        self._timeout = timeout
        self._clock = clock
        self._running = 0
        self._queue: deque[_Waiting] = deque()
        self._starting = False
        self._last_out_of_descriptors: float | None = None

    @property
    def running(self) -> int:
        """
        The scripts running now.
        """
        return self._running

    @property
    def waiting(self) -> int:
        """
        The requests waiting for a place.
        """
        return len(self._queue)

    def run(self, request: Request, start: Callable[[Release], None]) -> None:
        """
        Call C{start} with a L{Release} now if a place is free, or once one
        is if C{request} may wait; otherwise answer C{request} 503.
        C{start} must call its L{Release} once the script's run is over,
        whether or not the script could be started.
        """
        if self._running < self.running_max and not self._queue:
            self._start(start)
            return
        if len(self._queue) >= self.waiting_max:
            answer_busy(request)
            return
        waiting = _Waiting(request, start)
        waiting.timer = self._clock.callLater(self._timeout, self._expire, waiting)
        self._queue.append(waiting)
        request.notifyFinish().addErrback(self._gone, waiting)

    def note_out_of_descriptors(self, script: str, error: OSError) -> None:
        """
        Log that C{script} could not start for want of file descriptors: one
        line, and at most one a second.
        """
        now = self._clock.seconds()
        last = self._last_out_of_descriptors
        if last is not None and now - last < 1:
            return
        self._last_out_of_descriptors = now
        log.error(
            "CGI script {script} could not start: {error}; answering 503",
            script=script,
            error=error.strerror or error,
        )

    def _start(self, start: Callable[[Release], None]) -> None:
        self._running += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._running -= 1
                self._start_waiting()

        start(release)

    def _start_waiting(self) -> None:
        # A script that fails to start releases its place at once, from
        # inside this loop: the loop goes on, rather than a nested one.
        if self._starting:
            return
        self._starting = True
        try:
            while self._queue and self._running < self.running_max:
                waiting = self._queue.popleft()
                self._cancel(waiting)
                self._start(waiting.start)
        finally:
            self._starting = False

    def _expire(self, waiting: _Waiting) -> None:
        waiting.timer = None
        self._queue.remove(waiting)
        answer_busy(waiting.request)

    def _gone(self, reason: Failure, waiting: _Waiting) -> None:
        # The client went away: if still waiting, its place is given up.
        if waiting in self._queue:
            self._queue.remove(waiting)
            self._cancel(waiting)

    @staticmethod
    def _cancel(waiting: _Waiting) -> None:
        if waiting.timer is not None and waiting.timer.active():
            waiting.timer.cancel()
        waiting.timer = None
