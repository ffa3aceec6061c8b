"""The handshake worker threads (endpoint.HandshakeWorkers)."""

from __future__ import annotations

import os
import threading

import pytest

from gateway.transport.endpoint import HANDSHAKE_NICE, HandshakeWorkers


def test_posted_jobs_run_on_lower_priority_threads_and_survive_errors() -> None:
    workers = HandshakeWorkers(2, "test-handshake")
    done = threading.Event()
    seen: list[tuple[str, int]] = []

    def job(tag: str) -> None:
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen.append((tag, nice))
        if tag == "last":
            done.set()

    def broken() -> None:
        raise ValueError("a job whose own error handling failed")

    workers.post(broken)
    workers.post(job, "first")
    workers.post(job, "last")
    assert done.wait(5)
    workers.shutdown(wait=True)
    assert sorted(tag for tag, _ in seen) == ["first", "last"]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert all(nice == min(19, max(base, HANDSHAKE_NICE)) for _, nice in seen)


def test_workers_at_nice_0_keep_the_process_priority() -> None:
    workers = HandshakeWorkers(1, "test-handshake", nice=0)
    nice = workers.submit(os.getpriority, os.PRIO_PROCESS, 0).result(5)
    workers.shutdown(wait=True)
    assert nice == os.getpriority(os.PRIO_PROCESS, 0)


def test_submit_is_an_executor_for_run_in_executor() -> None:
    workers = HandshakeWorkers(1, "test-handshake")
    assert workers.submit(lambda a, b: a + b, 2, 3).result(5) == 5
    with pytest.raises(ZeroDivisionError):
        workers.submit(lambda: 1 / 0).result(5)
    workers.shutdown(wait=True)


def test_shutdown_drops_queued_jobs_and_refuses_new_ones() -> None:
    workers = HandshakeWorkers(1, "test-handshake")
    gate, started, ran = threading.Event(), threading.Event(), []
    workers.post(lambda: (started.set(), gate.wait(5)))
    assert started.wait(5)  # the only worker is busy: the next jobs stay queued
    for index in range(10):
        workers.post(ran.append, index)
    workers.shutdown(wait=False, cancel_futures=True)
    gate.set()
    workers.shutdown(wait=True)
    assert ran == []
    with pytest.raises(RuntimeError):
        workers.post(ran.append, 99)


def test_no_thread_until_the_first_job() -> None:
    workers = HandshakeWorkers(2, "test-idle")
    assert not any(t.name.startswith("test-idle") for t in threading.enumerate())
    workers.shutdown(wait=True)
