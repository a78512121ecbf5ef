"""Shared test helpers: an env that records what the agent sent, and reading a saved Rerun recording."""

from __future__ import annotations

import numpy as np

from hybrid.testing import PointEnv


class RecordingPointEnv(PointEnv):
    """PointEnv that keeps every action it was sent, and can be told to emit a bad observation."""

    def __init__(self, bad_obs_at: int | None = None, bad: str = "nan", **kw):
        super().__init__(**kw)
        self.sent: list[np.ndarray] = []
        self.bad_obs_at, self.bad = bad_obs_at, bad

    def step(self, action):
        self.sent.append(np.asarray(action).copy())
        obs, *rest = super().step(action)
        if self.bad_obs_at is not None and len(self.sent) >= self.bad_obs_at:
            if self.bad == "nan":
                obs["agent_pos"] = np.array([np.nan, 0.0], np.float32)
            elif self.bad == "chw":
                obs["pixels"]["front"] = np.zeros((3, self.size, self.size), np.float32)
        return (obs, *rest)


def rrd_entities(path) -> set[str]:
    import rerun.dataframe as rdf

    return {c.entity_path for c in rdf.load_recording(str(path)).schema().component_columns()}
