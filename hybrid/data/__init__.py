"""Data utilities shared by the trainers: one dataset reader (LeRobot's) and the subtask index over it."""

from hybrid.data.episodes import FEATURES, SubtaskIndex, open_dataset

__all__ = ["FEATURES", "SubtaskIndex", "open_dataset"]
