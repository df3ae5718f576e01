"""
A small pool of threads for password hashing, with a bounded queue.

bcrypt at the costs people use takes tens to hundreds of milliseconds of CPU;
on the reactor thread it would stall every connection.  Unlike twisted's
C{ThreadPool}, whose C{stop} joins every thread, this pool's threads are
daemons that the stop does not wait for: a queue of checks cannot hold up
the server's exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from auth._errors import HashPoolBusy

T = TypeVar("T")

#: Threads hashing at once.
POOL_THREADS = 2
#: Checks waiting for a thread at most; past it the answer is 503.
POOL_QUEUE = 64

_Job = tuple[Callable[[], Any], Deferred[Any]]


class HashPool(Service):
    """
    Run functions in C{threads} daemon threads; at most C{queue_size} wait.
    Started and stopped as one of the site's services.
    """

    name = "password-hashing"

    def __init__(
        self,
        reactor: IReactorFromThreads,
        threads: int = POOL_THREADS,
        queue_size: int = POOL_QUEUE,
    ) -> None:
        self._reactor = reactor
        self._thread_count = threads
        self._queue_size = queue_size
        # Unbounded itself: only the reactor thread puts, so checking its size
        # first bounds it, and the stop's sentinels never block.
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def startService(self) -> None:
        super().startService()
        for index in range(self._thread_count):
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stopService(self) -> None:
        super().stopService()
        # Fail what still waits, then let each thread stop after its current
        # job; nobody joins them.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[1].errback(Failure(CancelledError("the server is stopping")))
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Call C{function(*args)} in a pool thread.

        @return: a Deferred of its result, fired in the reactor thread.
        @raise HashPoolBusy: when the queue is full or the pool not running.
        """
        if not self.running:
            raise HashPoolBusy("the password-hashing pool is not running")
        if self._queue.qsize() >= self._queue_size:
            raise HashPoolBusy("the password-hashing pool is full")
        result: Deferred[T] = Deferred()
        self._queue.put((lambda: function(*args), result))
        return result

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            function, result = job
            try:
                value = function()
            except BaseException:
                self._reactor.callFromThread(result.errback, Failure())
            else:
                self._reactor.callFromThread(result.callback, value)
