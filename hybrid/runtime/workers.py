"""Background workers of the async runtime: a daemon thread per tier, woken on demand or on a timer.

The control loop never waits on a worker: it hands over the latest observation and wakes workers;
workers write their results where the loop reads them (the plan stack, the subgoal board, the queue).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hybrid.types import Observation

log = logging.getLogger(__name__)


class LatestObservation:
    """The newest observation and the control step it was taken at; older ones are simply overwritten."""

    def __init__(self):
        self._value: tuple[Observation | None, int] = (None, 0)

    def put(self, obs: Observation, step: int) -> None:
        self._value = (obs, step)  # one tuple swap: readers never see a torn pair

    def get(self) -> tuple[Observation | None, int]:
        return self._value


class Worker:
    """Runs ``job()`` on a daemon thread whenever woken and, with ``period_s``, at least that often."""

    def __init__(self, name: str, job: Callable[[], None], period_s: float | None = None):
        self.name, self.job, self.period_s = name, job, period_s
        self.error: BaseException | None = None  # a bug in a job ends the episode instead of dying silently
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"hybrid-{name}", daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 0.0) -> bool:
        """Ask the thread to end after its current job; True when it ended within ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            timeout = None if self.period_s is None else max(0.0, due - time.monotonic())
            self._wake.wait(timeout)
            if self._stop.is_set():
                return
            self._wake.clear()
            due = time.monotonic() + (self.period_s or 0.0)
            try:
                self.job()
            except Exception as err:
                log.exception("%s worker failed", self.name)
                self.error = err
                return
