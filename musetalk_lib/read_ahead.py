"""Reading source frames ahead of need on a worker thread, so decoding overlaps the models.

:class:`ReadAhead` is given the index batches a loop will ask for, in order,
and reads them from a :class:`~musetalk_lib.frame_source.FrameSource` on one
worker thread, a few batches ahead of the loop. Only that thread reads the
source while the loop runs (a PyAV container is used from one thread at a
time), and at most ``depth`` decoded batches wait in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .frame_source import FrameSource

__all__ = ["ReadAhead"]


class ReadAhead(Iterator[list[np.ndarray]]):
    """Yields ``source.frames(batch)`` for each of ``batches``, read ``depth`` batches ahead on a worker thread.

    Use it as a context manager (or call :meth:`close`): leaving early cancels
    the reads not started and waits for the one in progress.
    """

    def __init__(self, source: FrameSource, batches: Iterable[Sequence[int]], depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._source = source
        self._batches = iter(batches)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="musetalk-read")
        self._reads: deque[Future[list[np.ndarray]]] = deque()
        for _ in range(depth):
            self._read_next_batch()

    def _read_next_batch(self) -> None:
        batch = next(self._batches, None)
        if batch is not None:
            self._reads.append(self._reader.submit(self._source.frames, batch))

    def __next__(self) -> list[np.ndarray]:
        """The frames of the next batch (waits for its read; raises what the read raised)."""
        if not self._reads:
            raise StopIteration
        read = self._reads.popleft()
        self._read_next_batch()
        return read.result()

    def close(self) -> None:
        """Cancel the reads not started and wait for the one in progress."""
        for read in self._reads:
            read.cancel()
        self._reads.clear()
        self._reader.shutdown(wait=True)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
