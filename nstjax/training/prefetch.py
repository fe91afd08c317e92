"""Device prefetch: batches are transferred ahead of use, overlapping the copy with the step."""
from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import jax


class DevicePrefetchIterator:
    """Keeps `size` batches already transferred with ``jax.device_put`` (async), so the
    host->device copy of the next batches overlaps the current train step.

    ``get_state()`` is the wrapped iterator's state as of the last batch *returned* (not the
    ones queued ahead), so checkpointing through this wrapper resumes without losing batches.
    """

    def __init__(self, iterator: Iterable, size: int = 2, sharding: Any = None):
        if size < 0:
            raise ValueError(f"prefetch size must be >= 0, got {size}")
        self._it = iter(iterator)
        self._size = size
        self._sharding = sharding
        self._queue: collections.deque = collections.deque()
        self._has_state = hasattr(self._it, "get_state")
        self._state = self._it.get_state() if self._has_state else None

    def _put(self, batch: Any) -> Any:
        if self._sharding is None:
            return jax.device_put(batch)
        if jax.process_count() > 1:  # each process holds its own part of the global batch
            return jax.make_array_from_process_local_data(self._sharding, batch)
        return jax.device_put(batch, self._sharding)

    def _fill(self, n: int) -> None:
        while len(self._queue) < n:
            try:
                batch = next(self._it)
            except StopIteration:
                return
            state = self._it.get_state() if self._has_state else None
            self._queue.append((self._put(batch), state))

    def __iter__(self) -> "DevicePrefetchIterator":
        return self

    def __next__(self) -> Any:
        self._fill(1)
        if not self._queue:
            raise StopIteration
        batch, self._state = self._queue.popleft()
        self._fill(self._size)
        return batch

    def get_state(self) -> Any:
        if not self._has_state:
            raise TypeError(f"{type(self._it).__name__} has no get_state()")
        return self._state

    def set_state(self, state: Any) -> None:
        self._it.set_state(state)
        self._queue.clear()
        self._state = state

    @property
    def skipped(self) -> int:
        return getattr(self._it, "skipped", 0)

    def close(self) -> None:
        self._queue.clear()
        if hasattr(self._it, "close"):
            self._it.close()


def prefetch_to_device(iterator: Iterable, size: int = 2, sharding: Any = None) -> DevicePrefetchIterator:
    """Wrap a host batch iterator so `size` batches are on the device ahead of use.

    `sharding` (a ``jax.sharding.Sharding``) places each batch; None means the default device.
    """
    return DevicePrefetchIterator(iterator, size, sharding)
