"""
A small pool of threads for password hashing, with a bounded queue shared
fairly between client addresses.

bcrypt at the costs people use takes tens to hundreds of milliseconds of CPU;
on the reactor thread it would stall every connection.  Unlike twisted's
C{ThreadPool}, whose C{stop} joins every thread, this pool's threads are
daemons that the stop does not wait for: a queue of checks cannot hold up
the server's exit.

Unlike a plain FIFO, the waiting checks are kept in one queue per client
address and taken round-robin, one from each address in turn, and each
address holds a few places at most: a client flooding the pool with wrong
passwords fills its own places only, and a check from another address waits
for at most one check of each address ahead of it, not for the whole flood.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
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
#: Checks waiting at most from one client address; past it the answer is 503.
POOL_PER_CLIENT = 4

_Job = tuple[Callable[[], Any], Deferred[Any]]


class HashPool(Service):
    """
    Run functions in C{threads} daemon threads; at most C{queue_size} wait,
    at most C{per_client} of them from one client address, and they are
    taken from each address in turn.  Started and stopped as one of the
    site's services.
    """

    name = "password-hashing"

    def __init__(
        self,
        reactor: IReactorFromThreads,
        threads: int = POOL_THREADS,
        queue_size: int = POOL_QUEUE,
        per_client: int = POOL_PER_CLIENT,
    ) -> None:
        self._reactor = reactor
        self._thread_count = threads
        self._queue_size = queue_size
        self._per_client = per_client
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        #: The waiting jobs of each client address that has some, the
        #: addresses in the order they take their turns.
        self._waiting: OrderedDict[str | None, deque[_Job]] = OrderedDict()
        self._waiting_count = 0
        #: Bumped by each stop: a thread of an older generation exits
        #: after its current job.
        self._generation = 0

    def startService(self) -> None:
        super().startService()
        for index in range(self._thread_count):
            thread = threading.Thread(
                target=self._work,
                args=(self._generation,),
                name=f"{self.name}-{index}",
                daemon=True,
            )
            thread.start()

    def stopService(self) -> None:
        super().stopService()
        # Fail what still waits, then let each thread stop after its current
        # job; nobody joins them.
        with self._ready:
            self._generation += 1
            waiting = [job for jobs in self._waiting.values() for job in jobs]
            self._waiting.clear()
            self._waiting_count = 0
            self._ready.notify_all()
        for _, result in waiting:
            result.errback(Failure(CancelledError("the server is stopping")))

    def run(
        self, function: Callable[..., T], *args: Any, client: str | None = None
    ) -> Deferred[T]:
        """
        Call C{function(*args)} in a pool thread, on behalf of the client
        at address C{client} (checks with no address share one queue).

        @return: a Deferred of its result, fired in the reactor thread.
        @raise HashPoolBusy: when the queue is full, C{client} already has
            C{per_client} checks waiting, or the pool is not running.
        """
        if not self.running:
            raise HashPoolBusy("the password-hashing pool is not running")
        result: Deferred[T] = Deferred()
        with self._ready:
            if self._waiting_count >= self._queue_size:
                raise HashPoolBusy("the password-hashing pool is full")
            jobs = self._waiting.get(client)
            if jobs is None:
                # A new address takes its turn after every address waiting.
                jobs = self._waiting[client] = deque()
            elif len(jobs) >= self._per_client:
                raise HashPoolBusy("this client has too many checks waiting")
            jobs.append((lambda: function(*args), result))
            self._waiting_count += 1
            self._ready.notify()
        return result

    @property
    def queued(self) -> int:
        """
        How many checks wait for a thread, from every address.
        """
        return self._waiting_count

    def waiting(self, client: str | None) -> int:
        """
        How many checks from C{client} wait for a thread.
        """
        with self._lock:
            return len(self._waiting.get(client, ()))

    def _next(self, generation: int) -> _Job | None:
        """
        Wait for a job, and take it from the address whose turn it is;
        C{None} once the pool has stopped.
        """
        with self._ready:
            while not self._waiting and generation == self._generation:
                self._ready.wait()
            if generation != self._generation:
                return None
            client, jobs = self._waiting.popitem(last=False)
            job = jobs.popleft()
            self._waiting_count -= 1
            if jobs:
                # Its next check waits for one of every other address.
                self._waiting[client] = jobs
            return job

    def _work(self, generation: int) -> None:
        while (job := self._next(generation)) is not None:
            function, result = job
            try:
                value = function()
            except BaseException:
                self._reactor.callFromThread(result.errback, Failure())
            else:
                self._reactor.callFromThread(result.callback, value)
