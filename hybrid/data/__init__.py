"""Data utilities shared by the trainers: one dataset reader (LeRobot's) and the subtask index over it."""

from hybrid.data.episodes import FEATURES, SubtaskIndex, last_releases, open_dataset, release_events
from hybrid.data.frames import action_chunks, decode_camera, numeric_column

__all__ = ["FEATURES", "SubtaskIndex", "action_chunks", "decode_camera", "last_releases", "numeric_column",
           "open_dataset", "release_events"]
