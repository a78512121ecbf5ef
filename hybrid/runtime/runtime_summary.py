"""Console lines for the async runtime's own figures, one per episode, beside `ConsoleSummary`'s."""

from __future__ import annotations

from typing import Any

from hybrid.runtime.subscriber import EpisodeResult
from hybrid.types import StepRecord


class RuntimeSummary:
    def __init__(self, print_fn=print):
        self.print = print_fn

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        pass

    def on_step(self, record: StepRecord) -> None:
        pass

    def on_episode_end(self, result: EpisodeResult) -> None:
        rt = result.info.get("runtime")
        if not rt:
            return
        depth, seam, over = rt.get("queue_depth", {}), rt.get("seam", {}), rt.get("overhead_ms", {})
        self.print(f"  runtime: {rt['control_hz']:g} Hz, blend={rt['blend']}, chunks={rt.get('chunks', 0)}, "
                   f"missed deadlines={rt['missed_deadlines']}, holds={rt.get('holds', 0)}, "
                   f"queue depth min/mean={depth.get('min', 0)}/{depth.get('mean', 0.0):.1f}, "
                   f"seam mean/max={seam.get('mean', 0.0):.4f}/{seam.get('max', 0.0):.4f}, "
                   f"stale obs={rt.get('stale_observations', 0)}, overhead p99={over.get('p99', 0.0):.3f} ms")

    def close(self) -> None:
        pass
