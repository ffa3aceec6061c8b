"""What the DTLS and TLS server endpoints share: handshake worker threads at a lower
priority, rate-limited refusal logs, and giving closed sessions' memory back to the OS."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable

from gateway.transport.memory import release_freed_memory
from gateway.transport.tls_context import Kind, ServerContext

log = logging.getLogger(__name__)

#: Niceness of handshake worker threads (see lower_thread_priority). 19, not 10: on one core
#: under a 32-wide handshake storm the loop waited for a nice-10 worker's time slice often
#: enough to put the p99 of established sessions' requests at ~5 ms; at 19 it is ~2.5 ms,
#: with the same handshake rate (Linux 6.18, EEVDF; measured with bench_transport's storm).
HANDSHAKE_NICE = 19
#: At most one log line per refusal reason in this many seconds (a flood must not flood logs).
LOG_INTERVAL = 10.0


def lower_thread_priority() -> None:
    """Run handshake workers at a lower scheduling priority than the event loop.

    Threads only help when cores are free; when the process has one core (or all are busy),
    a storm of handshakes would otherwise take CPU time from the loop that serves
    established sessions. A nice value applies per thread on Linux (by its native id).
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HANDSHAKE_NICE)
    except OSError:
        pass  # not permitted or not Linux: workers keep the process priority


class EndpointBase:
    KIND: Kind

    def __init__(self, context: ServerContext, threads: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if context.kind is not self.KIND:
            raise ValueError(f"{type(self).__name__} needs a {self.KIND.value.upper()} context")
        self.context = context
        self.clock = clock
        self.executor = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix=f"{self.KIND.value}-handshake",
            initializer=lower_thread_priority)
        self._log_suppressed_until: dict[str, float] = {}
        self._closed_at_last_trim = 0

    def _rate_limited_log(self, key: str, message: str, *args: object) -> None:
        now = self.clock()
        if self._log_suppressed_until.get(key, 0.0) > now:
            return
        self._log_suppressed_until[key] = now + LOG_INTERVAL
        log.warning(message, *args)

    def _trim_after_closes(self, closed_total: int) -> None:
        """After sessions closed, hand their freed memory back (at most every few seconds)."""
        if closed_total != self._closed_at_last_trim and release_freed_memory():
            self._closed_at_last_trim = closed_total
