"""The resident memory of a server process while a test attacks it: its peak growth over a baseline."""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

from tests.conftest import rss_mib


class PeakRss:
    """Samples the RSS of ``pid`` every few milliseconds while the ``with`` block runs; ``growth`` is the peak
    minus the RSS on entry, in MiB (the peak, not the value at the end: memory the attack made the server hold for
    a moment counts)."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._pid, self._interval = pid, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.baseline = self.peak = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.peak = max(self.peak, rss_mib(self._pid))
            except (FileNotFoundError, ProcessLookupError):
                return  # the process ended: the test says so on its own

    @property
    def growth(self) -> float:
        return self.peak - self.baseline

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = rss_mib(self._pid)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            self.peak = max(self.peak, rss_mib(self._pid))
