"""Calling a tier safely: timing, a deadline, and the output checked against the tier's contract.

A tier that raises, overruns its deadline, or returns the wrong type becomes a `TierFault` value,
never an exception in the control loop. A call that overran keeps its worker thread busy; until it
returns, further calls to that tier fault at once instead of piling up behind it.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hybrid-{tier}") if timeout_s else None
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

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class _StillBusy(Exception):
    pass
