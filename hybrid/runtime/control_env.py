"""What the async control loop drives: a gymnasium env (through `EnvAdapter`) or a robot, one interface.

The loop reads an observation, sends one action, and at the end halts: for a simulator halting is a
no-op, for a robot it re-sends the hold action. Both give the loop the same plan-stack types.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from hybrid.runtime.env_adapter import EnvAdapter
from hybrid.types import Observation


class ControlEnv(Protocol):
    action_dim: int
    low: np.ndarray
    high: np.ndarray

    def reset(self, seed: int | None = None) -> tuple[Observation, dict[str, Any]]: ...

    def observe(self) -> Observation: ...

    def send(self, action: np.ndarray) -> tuple[bool, bool, dict[str, Any]]: ...  # terminated, truncated, info

    def hold_action(self) -> np.ndarray: ...

    def halt(self) -> None: ...

    def close(self) -> None: ...


class GymControlEnv:
    """A gymnasium env stepped one action per control tick; its step's observation is the next tick's."""

    def __init__(self, adapter: EnvAdapter):
        self.adapter = adapter
        self.action_dim, self.low, self.high = adapter.action_dim, adapter.low, adapter.high
        self._raw: dict[str, Any] = {}
        self.instruction: str | None = None

    def reset(self, seed: int | None = None) -> tuple[Observation, dict[str, Any]]:
        self._raw, info = self.adapter.env.reset(seed=seed)
        self.instruction = info.get("instruction")
        return self.observe(), info

    def observe(self) -> Observation:
        return self.adapter.observation(self._raw, self.instruction)

    def send(self, action: np.ndarray) -> tuple[bool, bool, dict[str, Any]]:
        self._raw, _, terminated, truncated, info = self.adapter.env.step(action)
        return bool(terminated), bool(truncated), info

    def hold_action(self) -> np.ndarray:
        return self.adapter.hold_action()

    def halt(self) -> None:
        pass

    def close(self) -> None:
        self.adapter.env.close()


def as_control_env(env: Any) -> ControlEnv:
    """An `EnvAdapter` is wrapped; anything already a control env (a robot) passes through."""
    return GymControlEnv(env) if isinstance(env, EnvAdapter) else env
