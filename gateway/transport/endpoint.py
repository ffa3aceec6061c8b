"""What the DTLS and TLS server endpoints share: handshake worker threads at a lower
priority, rate-limited refusal logs, and giving closed sessions' memory back to the OS."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.eventlog import log_event
from gateway.transport.memory import release_freed_memory
from gateway.transport.tls_context import Kind, ServerContext

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Niceness of handshake worker threads (see lower_thread_priority). 19, not 10: on one core
#: under a 32-wide handshake storm the loop waited for a nice-10 worker's time slice often
#: enough to put the p99 of established sessions' requests at ~5 ms; at 19 it is ~2.5 ms,
#: with the same handshake rate (Linux 6.18, EEVDF; measured with bench_transport's storm).
HANDSHAKE_NICE = 19
#: At most one log line per refusal reason in this many seconds (a flood must not flood logs).
LOG_INTERVAL = 10.0


def lower_thread_priority(nice: int = HANDSHAKE_NICE) -> None:
    """Run handshake workers at a lower scheduling priority than the event loop.

    Threads only help when cores are free; when the process has one core (or all are busy),
    a storm of handshakes would otherwise take CPU time from the loop that serves
    established sessions. A nice value applies per thread on Linux (by its native id).
    With ``nice`` 0 (or below the process's own) workers keep the process priority.
    """
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        pass  # not permitted or not Linux: workers keep the process priority


class HandshakeWorkers(concurrent.futures.Executor):
    """Threads that run handshake steps, at a lower priority than the event loop.

    ``post`` is the DTLS server's path: one queue hop, no future. A ThreadPoolExecutor
    job costs a Future with its Condition, a work item, a semaphore and two locks: 6% of the
    loop thread's time during a handshake storm (py-spy). ``submit`` (an Executor, for
    run_in_executor) serves the TLS server.
    """

    def __init__(self, threads: int, name: str, nice: int = HANDSHAKE_NICE) -> None:
        self._size = max(1, threads)
        self._nice = nice
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[..., object], tuple[object, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut = False

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on a worker; RuntimeError once shut down."""
        if self._shut:
            raise RuntimeError("handshake workers are shut down")
        if not self._threads:
            self._start()
        self._jobs.put((fn, args))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

        self.post(run)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            threads = list(self._threads)
        if cancel_futures:
            for _ in range(1_000_000):  # bounded: nothing is added once shut
                try:
                    self._jobs.get_nowait()
                except queue.Empty:
                    break
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def _start(self) -> None:
        with self._lock:
            if self._threads or self._shut:
                return
            for index in range(self._size):
                thread = threading.Thread(target=self._work, name=f"{self._name}_{index}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        lower_thread_priority(self._nice)
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # jobs handle their own errors; this one escaped
                log.exception("handshake job failed")
            # Not kept while waiting for the next job: the last connection would stay alive.
            del job, fn, args


class EndpointBase:
    KIND: Kind

    def __init__(self, context: ServerContext, threads: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 nice: int = HANDSHAKE_NICE) -> None:
        if context.kind is not self.KIND:
            raise ValueError(f"{type(self).__name__} needs a {self.KIND.value.upper()} context")
        self.context = context
        self.clock = clock
        self.executor = HandshakeWorkers(threads, f"{self.KIND.value}-handshake", nice)
        self._log_suppressed_until: dict[str, float] = {}
        #: Lines left out per key since its last line, reported on the next one.
        self._log_suppressed: dict[str, int] = {}
        self._closed_at_last_trim = 0
        #: Called with the seconds from a handshake's first message to its completion (the
        #: daemon feeds a histogram with it); a plain callable keeps ``gateway.ops`` out.
        self.observe_handshake: Callable[[float], None] | None = None

    def _rate_limited_event(self, key: str, event: str, message: str,
                            **fields: object) -> None:
        """One warning per ``key`` per LOG_INTERVAL; the next line says how many occurrences
        were left out (``suppressed``) so that a flood is visible without flooding."""
        now = self.clock()
        if self._log_suppressed_until.get(key, 0.0) > now:
            self._log_suppressed[key] = self._log_suppressed.get(key, 0) + 1
            return
        self._log_suppressed_until[key] = now + LOG_INTERVAL
        suppressed = self._log_suppressed.pop(key, 0)
        log_event(log, logging.WARNING, event, message, transport=self.KIND.value,
                  suppressed=suppressed or None, **fields)

    def _handshake_took(self, seconds: float) -> None:
        if self.observe_handshake is not None:
            self.observe_handshake(max(0.0, seconds))

    def _trim_after_closes(self, closed_total: int) -> None:
        """After sessions closed, hand their freed memory back (at most every few seconds)."""
        if closed_total != self._closed_at_last_trim and release_freed_memory():
            self._closed_at_last_trim = closed_total
