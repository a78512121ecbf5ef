"""Safety filter between the executor and the robot: finite, within limits, bounded change per step."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field


class UnsafeAction(ValueError):
    pass


class SafetyConfig(BaseModel):
    """Limits on top of the env's/robot's own: the tighter of the two wins. ``None`` keeps the env's."""

    low: list[float] | float | None = None
    high: list[float] | float | None = None
    max_delta: list[float] | float | None = Field(None, description="largest change per control step")


class SafetyFilter:
    """Rejects NaN/Inf, clamps to ``[low, high]`` and, when ``max_delta`` is set, limits per-step change."""

    def __init__(self, low: np.ndarray, high: np.ndarray, max_delta: np.ndarray | float | None = None):
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.max_delta = None if max_delta is None else np.broadcast_to(np.asarray(max_delta, np.float32), self.low.shape)
        self.last: np.ndarray | None = None
        self.clamped = 0

    @classmethod
    def from_config(cls, config: SafetyConfig, low: np.ndarray, high: np.ndarray) -> SafetyFilter:
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if config.low is not None:
            low = np.maximum(low, np.broadcast_to(np.asarray(config.low, np.float32), low.shape))
        if config.high is not None:
            high = np.minimum(high, np.broadcast_to(np.asarray(config.high, np.float32), high.shape))
        if (low > high).any():
            raise ValueError(f"safety: limits low {low.tolist()} exceed high {high.tolist()}")
        return cls(low, high, config.max_delta)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, np.float32)
        if action.shape != self.low.shape:
            raise UnsafeAction(f"action: expected shape {self.low.shape}, got {action.shape}")
        if not np.isfinite(action).all():
            raise UnsafeAction(f"action: non-finite values {action.tolist()}")
        safe = np.clip(action, self.low, self.high)
        if self.max_delta is not None and self.last is not None:
            safe = np.clip(safe, self.last - self.max_delta, self.last + self.max_delta)
        self.clamped += int(not np.array_equal(safe, action))
        self.last = safe
        return safe

    def held(self, action: np.ndarray) -> None:
        """The robot was told to hold at ``action``: later actions are rate-limited from there."""
        self.last = np.asarray(action, np.float32)

    def reset(self) -> None:
        self.last, self.clamped = None, 0
