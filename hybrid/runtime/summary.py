"""Console summary of a run: one line per episode, then success and per-tier latency over all."""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid.runtime.subscriber import EpisodeResult
from hybrid.types import StepRecord


class ConsoleSummary:
    def __init__(self, print_fn=print):
        self.results: list[EpisodeResult] = []
        self.print = print_fn

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        self.print(f"episode {len(self.results) + 1}: {instruction}")

    def on_step(self, record: StepRecord) -> None:
        pass

    def on_episode_end(self, result: EpisodeResult) -> None:
        self.results.append(result)
        lat = " ".join(f"{k}={v['p50']:.1f}ms" for k, v in result.latency_ms.items())
        self.print(f"  -> {result.status} success={result.success} steps={result.steps} "
                   f"subtasks={'/'.join(map(str, result.achieved()))} faults={len(result.faults)} p50[{lat}]")
        for fault in result.faults[:5]:
            self.print(f"     fault: {fault}")

    def close(self) -> None:
        if not self.results:
            return
        rate = np.mean([r.success for r in self.results])
        subtasks = np.mean([r.achieved()[0] for r in self.results])
        self.print(f"summary: {len(self.results)} episodes, success {rate:.2f}, subtasks completed {subtasks:.2f} on average")
