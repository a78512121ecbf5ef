"""Camera frames of a LeRobot dataset decoded once into memory, and the (frame, subtask) -> subgoal pairs.

The world-model trainer and evaluator read every frame many times: they work on the shared frame cache
(`hybrid.data.decode_camera`), area-downsampled to the model's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

import hybrid.data as hybrid_data
from hybrid.data import SubtaskIndex

GoalRule = Literal["subtask_end", "ahead", "hindsight"]


def camera_name(key: str) -> str:
    """`observation.images.front` -> `front` (the name observations and prompts use)."""
    return key.rsplit(".", 1)[-1]


def decode_camera(dataset, key: str, size: int | None = None, progress: bool = False) -> np.ndarray:
    """All frames of one camera as uint8 [N, H, W, 3] in dataset index order, optionally downsampled.

    Downsampled a chunk at a time as frames are decoded: memory holds the model-size frames only.
    """
    resize = None if size is None else (lambda frames: downsample(frames, size))
    return hybrid_data.decode_camera(dataset, key, progress, resize=resize)


def downsample(frames: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Area-resample uint8 [N, H, W, 3] to [N, size, size, 3], as the pipeline does at inference."""
    import torch

    from planners.subgoal.tabletop_model import to_model_space

    if frames.shape[1:3] == (size, size):
        return frames
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for s in range(0, len(frames), chunk):
        x = to_model_space(torch.from_numpy(frames[s:s + chunk]), size)
        out[s:s + chunk] = x.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


@dataclass
class FrameCache:
    """uint8 frames per camera (name -> [N, H, W, 3]) and the plan structure of every frame."""

    frames: dict[str, np.ndarray]
    index: SubtaskIndex

    @classmethod
    def from_dataset(cls, root: str | Path, cameras: list[str] | None = None, size: int | None = None,
                     progress: bool = False) -> FrameCache:
        from hybrid.data import open_dataset

        dataset = open_dataset(root)
        keys = [k for k in dataset.meta.camera_keys if cameras is None or camera_name(k) in cameras]
        if not keys:
            raise ValueError(f"{root}: no camera among {cameras}; has {dataset.meta.camera_keys}")
        frames = {camera_name(k): decode_camera(dataset, k, size, progress) for k in keys}
        return cls(frames, SubtaskIndex.from_dataset(dataset))

    @property
    def cameras(self) -> list[str]:
        return list(self.frames)

    def goal_of(self, i: int, rule: GoalRule, ahead: int, rng: np.random.Generator) -> int:
        """Frame index of frame i's subgoal: end of its subtask, ``ahead`` frames later, or Pi-0.7's hindsight mix."""
        if rule == "subtask_end":
            return int(self.index.subtask_end[i])
        if rule == "ahead":
            return int(min(i + ahead, self.index.episode_end[i]))
        return self.index.hindsight_goal(i, rng)
