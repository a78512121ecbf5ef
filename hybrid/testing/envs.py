"""A tiny gymnasium env with the tabletop's observation layout, for runtime tests that need no physics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class PointEnv(gym.Env):
    """A point in the unit square moved by (dx, dy); a camera image shows it as a bright square.

    Observation: ``{"pixels": {"front": uint8 HxWx3}, "agent_pos": float32[2]}``; success when the
    point is within 0.05 of the goal. ``info`` carries an instruction and a two-step plan.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size: int = 32, max_steps: int = 200):
        self.size, self.max_steps = size, max_steps
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Dict({"front": gym.spaces.Box(0, 255, (size, size, 3), np.uint8)}),
            "agent_pos": gym.spaces.Box(0.0, 1.0, (2,), np.float32),
        })
        self.action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)
        self.pos = np.zeros(2, np.float32)
        self.goal = np.ones(2, np.float32)
        self.steps = 0

    def _obs(self):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        x, y = (self.pos * (self.size - 3)).astype(int)
        img[y:y + 3, x:x + 3] = 255
        return {"pixels": {"front": img}, "agent_pos": self.pos.copy()}

    def _info(self):
        success = bool(np.linalg.norm(self.pos - self.goal) < 0.05)
        return {"instruction": "move the point to the goal", "subtasks": ["go right", "go up"],
                "success": success, "subtask_success": [bool(self.pos[0] >= self.goal[0] - 0.05), success]}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(0.0, 0.3, 2).astype(np.float32)
        self.goal = self.np_random.uniform(0.7, 1.0, 2).astype(np.float32)
        self.steps = 0
        return self._obs(), self._info()

    def step(self, action):
        action = np.asarray(action, np.float32)
        if action.shape != self.action_space.shape or not np.isfinite(action).all():
            raise ValueError(f"action: expected finite float32 {self.action_space.shape}, got {action!r}")
        self.pos = np.clip(self.pos + np.clip(action, -0.1, 0.1), 0.0, 1.0).astype(np.float32)
        self.steps += 1
        info = self._info()
        return self._obs(), float(info["success"]), info["success"], self.steps >= self.max_steps, info

    def hold_action(self) -> np.ndarray:
        return np.zeros(2, np.float32)

    def render(self):
        return self._obs()["pixels"]["front"]
