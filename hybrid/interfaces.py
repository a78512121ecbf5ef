"""The three tier interfaces. Any object with these methods is a tier; nothing needs to subclass.

Tiers never import each other: the runtime hands each one the plan-stack records it needs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from hybrid.types import ActionChunk, Observation, PlanStep, Subgoal, Subtask


@runtime_checkable
class SubtaskPlanner(Protocol):
    """Decides what to do next: given the instruction and what is done, the subtask to work on now."""

    def plan(self, obs: Observation, instruction: str, history: list[Subtask]) -> PlanStep: ...

    def reset(self) -> None: ...


@runtime_checkable
class WorldModel(Protocol):
    """Imagines the scene once ``subtask`` is done: one subgoal image per camera of ``obs``."""

    def imagine(self, obs: Observation, subtask: Subtask) -> Subgoal: ...

    def reset(self) -> None: ...


@runtime_checkable
class Executor(Protocol):
    """Acts: an action chunk from the current observation, the subtask and (optionally) its subgoal."""

    def act(self, obs: Observation, subtask: Subtask, subgoal: Subgoal | None) -> ActionChunk: ...

    def reset(self) -> None: ...


@runtime_checkable
class PrefixConditionedExecutor(Executor, Protocol):
    """An executor that can continue a chunk already in motion (real-time chunking, RTC).

    ``prefix`` holds the actions already committed to the robot that the new chunk must start with
    ([d, A], in the action space); the returned chunk's first d actions reproduce them and the rest
    continue smoothly from them. The async runtime uses this when an executor offers it.
    """

    supports_prefix: bool

    def act(self, obs: Observation, subtask: Subtask, subgoal: Subgoal | None,
            prefix: np.ndarray | None = None) -> ActionChunk: ...


TIER_INTERFACES: dict[str, type] = {
    "planner": SubtaskPlanner,
    "world_model": WorldModel,
    "executor": Executor,
}
