"""A tiny LeRobot dataset with the tabletop recorder's schema, for trainer tests that need no sim.

Frames are synthetic (a coloured square that moves toward a corner per subtask), but the dataset is
written and read through LeRobot's own API exactly as a recording is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybrid.data.episodes import FEATURES

PLAN = ["pick up the red block", "put it in the blue bowl"]


def tiny_features(size: int, state_dim: int = 4, action_dim: int = 4, use_videos: bool = False) -> dict:
    img = {"dtype": "video" if use_videos else "image", "shape": (size, size, 3), "names": ["height", "width", "channels"]}
    return {
        **{cam: dict(img) for cam in FEATURES["cameras"]},
        FEATURES["state"]: {"dtype": "float32", "shape": (state_dim,), "names": None},
        FEATURES["action"]: {"dtype": "float32", "shape": (action_dim,), "names": None},
        FEATURES["subtask"]: {"dtype": "string", "shape": (1,), "names": None},
        FEATURES["subtask_index"]: {"dtype": "int64", "shape": (1,), "names": None},
    }


def make_tiny_dataset(root: str | Path, episodes: int = 2, frames_per_subtask: int = 6, size: int = 32,
                      plan: list[str] = PLAN, fps: int = 10, use_videos: bool = False, seed: int = 0):
    """Write a LeRobotDataset under ``root`` (which must not exist) and return it."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(seed)
    ds = LeRobotDataset.create(repo_id=f"local/{Path(root).name}", fps=fps, root=root,
                               features=tiny_features(size, use_videos=use_videos), use_videos=use_videos)
    for _ in range(episodes):
        pos = rng.uniform(0.2, 0.4, 2)
        for k, subtask in enumerate(plan):
            target = np.array([0.8, 0.2]) if k % 2 == 0 else np.array([0.8, 0.8])
            for _ in range(frames_per_subtask):
                step = np.clip(target - pos, -0.1, 0.1)
                frame = {cam: _render(pos, size, shift) for shift, cam in enumerate(FEATURES["cameras"])}
                frame[FEATURES["state"]] = np.r_[pos, 0.0, float(k)].astype(np.float32)
                frame[FEATURES["action"]] = np.r_[step, 0.0, float(k)].astype(np.float32)
                frame[FEATURES["subtask"]] = subtask
                frame[FEATURES["subtask_index"]] = np.array([k], np.int64)
                frame["task"] = "put the red block in the blue bowl"
                ds.add_frame(frame)
                pos = pos + step
        ds.save_episode()
    ds.finalize()
    return ds


def _render(pos: np.ndarray, size: int, shift: int) -> np.ndarray:
    img = np.full((size, size, 3), 40 * shift, np.uint8)
    x, y = (np.clip(pos, 0, 1) * (size - 4)).astype(int)
    img[y:y + 4, x:x + 4] = (255, 0, 0)
    return img
