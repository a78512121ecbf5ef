"""Maps a gymnasium env's observations and actions to the agent's plan-stack types."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from hybrid.types import Observation


class ObservationError(ValueError):
    """An observation that cannot be given to the tiers (wrong shape/dtype, NaN state, missing key)."""


class EnvAdapterConfig(BaseModel):
    """Where cameras and state live in the env's observation dict (LeRobot gym env layout by default)."""

    images_key: str = "pixels"
    state_key: str = "agent_pos"
    # env camera name -> agent camera name; empty keeps the env's names.
    cameras: dict[str, str] = {}


class EnvAdapter:
    def __init__(self, env, config: EnvAdapterConfig | None = None):
        self.env = env
        self.config = config or EnvAdapterConfig()
        space = env.action_space
        self.action_dim = int(np.prod(space.shape))
        self.low = np.broadcast_to(np.asarray(space.low, np.float32), (self.action_dim,))
        self.high = np.broadcast_to(np.asarray(space.high, np.float32), (self.action_dim,))

    def observation(self, raw: dict[str, Any], instruction: str | None = None) -> Observation:
        cfg = self.config
        try:
            images = raw[cfg.images_key]
            if not isinstance(images, dict):  # single-camera envs give one array
                images = {"front": images}
            if cfg.cameras:
                images = {cfg.cameras[k]: v for k, v in images.items() if k in cfg.cameras}
            return Observation(images=images, state=raw[cfg.state_key], timestamp=time.monotonic(),
                               instruction=instruction)
        except KeyError as err:
            raise ObservationError(f"observation: missing key {err} (have {sorted(raw)})") from None
        except ValidationError as err:
            raise ObservationError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None

    def hold_action(self) -> np.ndarray:
        """The action that keeps the robot where it is (the env's own when it defines one)."""
        hold = getattr(self.env.unwrapped, "hold_action", None)
        return np.asarray(hold(), np.float32) if callable(hold) else np.zeros(self.action_dim, np.float32)
