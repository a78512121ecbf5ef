"""Tier doubles with configurable latency and failure."""

from __future__ import annotations

import threading
import time
from typing import Literal

import numpy as np

from hybrid.types import ActionChunk, Observation, PlanStep, Subgoal, Subtask

# raise: throw RuntimeError; hang: block until `release()` (or 1 h); bad_output: return a wrong type.
FailureMode = Literal["raise", "hang", "bad_output"]


def fake_observation(cameras=("front",), size: int = 32, state_dim: int = 4, seed: int = 0,
                     instruction: str | None = None) -> Observation:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cameras}
    return Observation(images=images, state=rng.standard_normal(state_dim).astype(np.float32),
                       instruction=instruction)


class _Double:
    """Latency and scripted failures shared by the doubles.

    ``fail_on`` lists the 0-based call numbers that fail (``"always"`` for every call).
    """

    def __init__(self, latency_s: float = 0.0, fail_on: list[int] | Literal["always"] = (),
                 failure: FailureMode = "raise"):
        self.latency_s = float(latency_s)
        self.fail_on = fail_on if fail_on == "always" else set(fail_on)
        self.failure = failure
        self.calls = 0
        self._released = threading.Event()

    def release(self) -> None:
        """Unblock calls that are hanging (a hung tier in a test is released at teardown)."""
        self._released.set()

    def _call(self) -> bool:
        """Sleep the configured latency; return True when this call must return bad output."""
        n, self.calls = self.calls, self.calls + 1
        if self.latency_s:
            time.sleep(self.latency_s)
        if self.fail_on == "always" or n in self.fail_on:
            if self.failure == "raise":
                raise RuntimeError(f"{type(self).__name__}: scripted failure on call {n}")
            if self.failure == "hang":
                self._released.wait(timeout=3600)
            return self.failure == "bad_output"
        return False

    def reset(self) -> None:
        self.calls = 0


class MockPlanner(_Double):
    """Walks a fixed subtask list, moving on every ``calls_per_subtask`` plan calls, then says done."""

    def __init__(self, subtasks: list[str], calls_per_subtask: int = 1, **kw):
        super().__init__(**kw)
        if not subtasks:
            raise ValueError("subtasks: expected at least one subtask")
        self.subtasks = list(subtasks)
        self.calls_per_subtask = int(calls_per_subtask)

    def plan(self, obs: Observation, instruction: str, history: list[Subtask]) -> PlanStep:
        k = self.calls
        if self._call():
            return "not a plan step"  # type: ignore[return-value]
        i = k // self.calls_per_subtask
        if i >= len(self.subtasks):
            return PlanStep(done=True, reason="script finished")
        return PlanStep(subtask=self.subtasks[i])


class MockWorldModel(_Double):
    """Returns a given image as the subgoal for every camera (the current frame when none is given)."""

    def __init__(self, image: np.ndarray | None = None, **kw):
        super().__init__(**kw)
        self.image = image

    def imagine(self, obs: Observation, subtask: Subtask) -> Subgoal:
        if self._call():
            return np.zeros((2, 2), np.float32)  # type: ignore[return-value]
        images = {c: (img if self.image is None else self.image) for c, img in obs.images.items()}
        return Subgoal(images=images, subtask=subtask.text, model="mock")


class MockExecutor(_Double):
    """Returns a given chunk (default: H zero actions of dimension A)."""

    def __init__(self, actions: np.ndarray | None = None, horizon: int = 8, action_dim: int = 4,
                 dt: float = 0.1, **kw):
        super().__init__(**kw)
        self.actions = np.zeros((horizon, action_dim), np.float32) if actions is None else np.asarray(actions)
        self.dt = dt

    def act(self, obs: Observation, subtask: Subtask, subgoal: Subgoal | None) -> ActionChunk:
        if self._call():
            return {"actions": self.actions}  # type: ignore[return-value]
        return ActionChunk(actions=self.actions, dt=self.dt, start_time=obs.timestamp, subtask=subtask.text,
                           subgoal_created_at=None if subgoal is None else subgoal.created_at)
