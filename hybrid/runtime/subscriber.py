"""Subscribers watch a run: the Rerun view, the console summary and user hooks are all one of these."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from hybrid.types import StepRecord, TierFault


class EpisodeResult(BaseModel):
    """How an episode ended and what it cost."""

    status: str  # success | done | budget | fault | interrupted | terminated
    success: bool
    steps: int
    instruction: str
    subtasks_completed: int
    subtasks: list[str]
    faults: list[TierFault] = Field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = Field(default_factory=dict)  # tier -> {p50, p95, mean, n}
    info: dict[str, Any] = Field(default_factory=dict)
    # the step at which the env first reported success (None: never, or not tracked); with the sync loop's
    # after_success_steps the episode went on from there, and ``success`` is the env's at the end
    success_step: int | None = None
    done_step: int | None = None  # the step at which the agent said "done" (None: it never did)

    def achieved(self) -> tuple[int, int]:
        """(subtasks done, subtasks): from the env's own judgement (``info["subtask_success"]``) when it gives
        one, since the plan's count is the planner's belief; else from the plan."""
        done = self.info.get("subtask_success")
        if isinstance(done, list):
            return int(sum(bool(d) for d in done)), len(done)
        return self.subtasks_completed, len(self.subtasks)


class Subscriber(Protocol):
    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None: ...

    def on_step(self, record: StepRecord) -> None: ...

    def on_episode_end(self, result: EpisodeResult) -> None: ...

    def close(self) -> None: ...


class RuntimeSubscriber(Subscriber, Protocol):
    """A subscriber that also watches the async runtime's own gauges (queue depth, seams, deadlines).

    Optional: the async runtime calls ``on_runtime`` only on subscribers that define it.
    """

    def on_runtime(self, step: int, metrics: dict[str, float]) -> None: ...
