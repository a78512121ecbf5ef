"""Calling a tier safely: timing, a deadline, and the output checked against the tier's contract.

A tier that raises, overruns its deadline, or returns the wrong type becomes a `TierFault` value,
never an exception in the control loop. A call that overran keeps its worker thread busy; until it
returns, further calls to that tier fault at once instead of piling up behind it. That thread is a
daemon: a tier that never returns cannot keep the process alive after Ctrl-C. Closing waits a bounded
time for the call in flight: a daemon thread still inside a native library (PyTorch, MuJoCo) when the
interpreter exits aborts the process.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hybrid.types import TierFault

T = TypeVar("T")


@dataclass
class TierResult(Generic[T]):
    value: T | None
    latency_ms: float
    fault: TierFault | None = None


class TierCaller:
    """Runs one tier's calls with an optional deadline (seconds); ``None`` runs inline, without a thread."""

    def __init__(self, tier: str, expected: type, timeout_s: float | None = None):
        self.tier, self.expected, self.timeout_s = tier, expected, timeout_s
        self._pool = _DaemonWorker(f"hybrid-{tier}") if timeout_s else None
        self._pending: Future | None = None

    def __call__(self, fn: Callable[..., Any], *args: Any) -> TierResult:
        start = time.perf_counter()
        try:
            value = self._run(fn, *args)
        except FutureTimeout:
            return self._fault("timeout", f"no reply within {self.timeout_s:.3g} s", start)
        except _StillBusy:
            return self._fault("timeout", "previous call has not returned yet", start)
        except Exception as err:  # a tier's own failure must not stop the loop
            return self._fault("raised", f"{type(err).__name__}: {err}", start)
        if not isinstance(value, self.expected):
            got = type(value).__name__
            return self._fault("bad_output", f"returned {got}, expected {self.expected.__name__}", start)
        return TierResult(value, (time.perf_counter() - start) * 1e3)

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            return fn(*args)
        if self._pending is not None and not self._pending.done():
            raise _StillBusy
        self._pending = self._pool.submit(fn, *args)
        return self._pending.result(timeout=self.timeout_s)

    def _fault(self, kind: str, message: str, start: float) -> TierResult:
        return TierResult(None, (time.perf_counter() - start) * 1e3, TierFault(tier=self.tier, kind=kind, message=message))

    def close(self, timeout_s: float = 0.0) -> bool:
        """End the worker thread after the call in flight; True when it ended within ``timeout_s``."""
        return True if self._pool is None else self._pool.close(timeout_s)


class _DaemonWorker:
    """One daemon thread running submitted calls in order (a one-thread pool whose thread never blocks exit)."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the caller, who decides what is fatal
                future.set_exception(err)

    def close(self, timeout_s: float = 0.0) -> bool:
        self._jobs.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class _StillBusy(Exception):
    pass
