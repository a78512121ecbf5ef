"""Per-tier latency and runtime bookkeeping, summarised at the end of a run."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import numpy as np


class LatencyLog:
    def __init__(self):
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, ms: float) -> float:
        self.samples[name].append(ms)
        return ms

    def recent_max(self, name: str, n: int = 10) -> float | None:
        """The slowest of the last ``n`` samples: a cautious estimate of the next call's latency."""
        xs = self.samples.get(name)
        return max(xs[-n:]) if xs else None

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, xs in list(self.samples.items()):  # a worker thread may add a tier meanwhile
            a = np.asarray(list(xs))
            out[name] = {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
                         "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}
        return out


class RuntimeTelemetry:
    """What the async runtime measures about itself: queue depth, seams, deadlines, stale inputs, overhead.

    Counters may be bumped from worker threads, hence the lock; samples are appended by one thread each.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, int] = defaultdict(int)
        self.queue_depth: list[int] = []
        self.seams: list[float] = []
        self.overhead_ms: list[float] = []  # the control loop's wall time per tick, env step and sleep excluded
        self.overhead_cpu_ms: list[float] = []  # the same in CPU time of the loop's thread

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    @property
    def missed_deadlines(self) -> int:
        return self.counts["late_steps"] + self.counts["skipped_steps"] + self.counts["dry_steps"]

    def summary(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(sorted(self.counts.items()))
        out["missed_deadlines"] = self.missed_deadlines
        if self.queue_depth:
            depth = np.asarray(self.queue_depth)
            out["queue_depth"] = {"min": int(depth.min()), "mean": float(depth.mean()), "max": int(depth.max())}
        if self.seams:
            seams = np.asarray(self.seams)
            out["seam"] = {"mean": float(seams.mean()), "p95": float(np.percentile(seams, 95)),
                           "max": float(seams.max()), "n": int(seams.size)}
        for name in ("overhead_ms", "overhead_cpu_ms"):
            ms = np.asarray(getattr(self, name))
            if ms.size:
                out[name] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                             "max": float(ms.max())}
        return out
