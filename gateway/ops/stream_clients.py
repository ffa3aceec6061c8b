"""The connections of a small local stream server (control socket, metrics endpoint).

Both serve a handful of operators' tools at a time: each connection is a task, at most
``limit`` of them, and stopping the server must end them all rather than leave a task
waiting on a client that never speaks.
"""

from __future__ import annotations

import asyncio
import contextlib


class ClientTasks:
    """The tasks serving connections, bounded; ``close`` ends the server and all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def admit(self) -> asyncio.Task[None] | None:
        """The current connection's task, counted; None when ``limit`` are already served
        (the caller refuses the connection and does not call ``release``)."""
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= self.limit:
            return None
        self._tasks.add(task)  # type: ignore[arg-type]
        return task  # type: ignore[return-value]

    def release(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            self._tasks.discard(task)

    async def close(self, server: asyncio.Server) -> None:
        """Stop accepting, cancel every connection's task and wait for them."""
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a connection without waiting long for a peer that does not read."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1)
