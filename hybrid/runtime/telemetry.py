"""Per-tier latency bookkeeping, summarised as percentiles at the end of a run."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class LatencyLog:
    def __init__(self):
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, ms: float) -> float:
        self.samples[name].append(ms)
        return ms

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, xs in self.samples.items():
            a = np.asarray(xs)
            out[name] = {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
                         "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}
        return out
