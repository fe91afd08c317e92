"""Graceful stop: SIGTERM / Ctrl-C become a flag the training loop checks between steps."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any


class GracefulStop:
    """Turn SIGTERM / Ctrl-C into a flag so the loop can save a checkpoint and exit cleanly.

    A second Ctrl-C raises KeyboardInterrupt as usual, for a user who does not want to wait
    for the final save. Outside the main thread (where Python cannot install handlers) this
    is a no-op and ``requested`` stays False.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.requested = False
        self.signal_name: str | None = None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        self.signal_name = signal.Signals(signum).name

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process ended by the signal (128 + N: 143 for SIGTERM)."""
        return 128 + (self.signum or 0)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            # None means the old handler was installed from C and cannot be reinstated.
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._previous.clear()
