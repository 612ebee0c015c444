"""The group commit's own worker thread: writes and fsyncs off the event loop, started once.

`trio.to_thread.run_sync` takes a cached thread per call and runs a fair amount of Python in it around the
job (its context, the thread's name set and reset, the result reported through `run_sync_soon`, which wakes
the loop into trio's own task before the waiting one). Here the loop hands the job through a queue and
sleeps on a pipe that the thread writes one byte to when the job is done: less work per commit on both
sides, at a commit per message at a steady rate of persistent publishes.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import trio


class CommitThread:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._done_read, self._done_write = os.pipe()
        os.set_blocking(self._done_read, False)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="leveret-commit", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException as error:  # handed to the loop, which raises it where trio's would
                self._error = error
            os.write(self._done_write, b".")

    async def run(self, job: Callable[[], None]) -> None:
        """Run `job` in the thread; return (or raise what it raised) when it is done. One at a time."""
        self._jobs.put(job)
        while True:
            await trio.lowlevel.wait_readable(self._done_read)
            try:
                os.read(self._done_read, 1)
                break
            except BlockingIOError:
                continue
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop the thread once its job (if any) is done, and release the pipe."""
        self._jobs.put(None)
        self._thread.join()
        os.close(self._done_read)
        os.close(self._done_write)
