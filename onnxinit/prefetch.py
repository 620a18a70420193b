"""Draw unit weight samples ahead of propagation, on a background thread.

The raw samples of a tensor, and their centering across output units, depend only
on the seed, the tensor's name (``tensor_rng``) and its layout, not on the statistics
propagation computes, so they can be prepared while propagation works on earlier layers. numpy's generators release
the GIL while filling large arrays, so this uses the second core. At most
``budget`` bytes are drawn ahead of use, which bounds the extra memory.
"""
from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BUDGET = 64 << 20


def _nbytes(shape) -> int:
    return 4 * int(np.prod(shape, dtype=np.int64))


class Prefetcher:
    def __init__(self, jobs, draw, budget: int = BUDGET):
        """jobs: [(name, shape)] in the order they will be asked for; draw(name, shape) -> float32 array."""
        self._queue = list(dict.fromkeys(jobs))
        self._draw = draw
        self._budget = budget
        self._in_flight: OrderedDict = OrderedDict()
        self._bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxinit-draw") if self._queue else None
        self._fill()

    def _fill(self):
        while self._queue and (not self._in_flight or
                               self._bytes + _nbytes(self._queue[0][1]) <= self._budget):
            name, shape = self._queue.pop(0)
            self._in_flight[name] = (shape, self._pool.submit(self._draw, name, shape))
            self._bytes += _nbytes(shape)

    def take(self, name: str, shape: tuple) -> np.ndarray:
        """The samples for ``name`` (drawn now if they were not planned with this shape)."""
        entry = self._in_flight.pop(name, None)
        if entry is None:
            self._queue = [job for job in self._queue if job[0] != name]
            return self._draw(name, shape)
        planned, future = entry
        self._bytes -= _nbytes(planned)
        self._fill()
        samples = future.result()
        return samples if tuple(planned) == tuple(shape) else self._draw(name, shape)

    def close(self):
        if self._pool is not None:
            for _, future in self._in_flight.values():
                future.cancel()
            self._pool.shutdown(wait=True)
            self._in_flight.clear()
