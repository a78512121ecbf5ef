"""Per-frame plan structure of a recorded LeRobot dataset.

Every trainer needs the same facts about a frame: which episode and subtask it belongs to, which
subtasks of the episode are already done, and where the current subtask ends (the hindsight
subgoal of Pi-0.7 / SuSIE). They come from the per-frame `subtask` / `subtask_index` columns the
recorder writes, read once without decoding any video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Feature names the recorder writes and every trainer reads.
FEATURES = {
    "cameras": ("observation.images.front", "observation.images.wrist"),
    "state": "observation.state",
    "action": "action",
    "subtask": "subtask",
    "subtask_index": "subtask_index",
}


def open_dataset(root: str | Path, delta_timestamps: dict[str, list[float]] | None = None, **kwargs):
    """A `LeRobotDataset` from a local directory, decoding videos with PyAV (no system FFmpeg needed)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    kwargs.setdefault("video_backend", "pyav")
    return LeRobotDataset(repo_id=f"local/{root.name}", root=root, delta_timestamps=delta_timestamps, **kwargs)


@dataclass(frozen=True)
class SubtaskIndex:
    """Plan structure for every frame of a dataset (arrays indexed by the dataset's frame index)."""

    episode: np.ndarray  # [N] episode index of the frame
    episode_start: np.ndarray  # [N] first frame index of the frame's episode
    episode_end: np.ndarray  # [N] last frame index of the frame's episode (inclusive)
    subtask_index: np.ndarray  # [N] position of the frame's subtask in its episode's plan
    subtask_start: np.ndarray  # [N] first frame index of the frame's subtask
    subtask_end: np.ndarray  # [N] last frame index of the frame's subtask (inclusive)
    subtask_text: list[str]  # [N] the frame's subtask
    instruction: list[str]  # [N] the episode's instruction (LeRobot's task)
    plans: dict[int, list[str]]  # episode index -> its subtasks in order
    fps: float

    @classmethod
    def from_dataset(cls, dataset) -> SubtaskIndex:
        table = dataset.hf_dataset.with_format(None).select_columns(
            ["episode_index", "index", "task_index", FEATURES["subtask"], FEATURES["subtask_index"]]
        )[:]
        episode = np.asarray(table["episode_index"], dtype=np.int64)
        index = np.asarray(table["index"], dtype=np.int64)
        if not np.array_equal(index, np.arange(len(index))):
            raise ValueError("dataset frames are not stored in index order; cannot build the subtask index")
        sub_idx = np.asarray(table[FEATURES["subtask_index"]], dtype=np.int64).reshape(len(index), -1)[:, 0]
        texts = [str(t) for t in table[FEATURES["subtask"]]]
        tasks = dataset.meta.tasks  # DataFrame indexed by task text with a task_index column
        task_text = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"])}
        instruction = [task_text[int(i)] for i in table["task_index"]]

        n = len(index)
        episode_start, episode_end = np.empty(n, np.int64), np.empty(n, np.int64)
        subtask_start, subtask_end = np.empty(n, np.int64), np.empty(n, np.int64)
        plans: dict[int, list[str]] = {}
        # Runs of equal (episode, subtask_index) are the subtask segments, in time order.
        boundaries = np.flatnonzero((np.diff(episode) != 0) | (np.diff(sub_idx) != 0)) + 1
        for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, n]):
            subtask_start[start:stop], subtask_end[start:stop] = start, stop - 1
            plan = plans.setdefault(int(episode[start]), [])
            if int(sub_idx[start]) == len(plan):
                plan.append(texts[start])
        for ep in np.unique(episode):
            rows = np.flatnonzero(episode == ep)
            episode_start[rows], episode_end[rows] = rows[0], rows[-1]
        return cls(episode, episode_start, episode_end, sub_idx, subtask_start, subtask_end, texts, instruction, plans,
                   float(dataset.fps))

    @classmethod
    def concat(cls, indices: list[SubtaskIndex]) -> SubtaskIndex:
        """Several recordings' indices as one, frames and episodes numbered on after each other (their frames are
        concatenated in the same order by the caller)."""
        if len({index.fps for index in indices}) > 1:
            raise ValueError(f"recordings differ in fps: {[index.fps for index in indices]}")
        frames = np.cumsum([0] + [len(index) for index in indices])
        episodes = np.cumsum([0] + [int(index.episode.max()) + 1 if len(index) else 0 for index in indices])

        def joined(field: str, offsets: np.ndarray) -> np.ndarray:
            return np.concatenate([getattr(index, field) + off for index, off in zip(indices, offsets)])

        plans = {ep + int(off): plan for index, off in zip(indices, episodes) for ep, plan in index.plans.items()}
        return cls(joined("episode", episodes), joined("episode_start", frames), joined("episode_end", frames),
                   np.concatenate([index.subtask_index for index in indices]), joined("subtask_start", frames),
                   joined("subtask_end", frames), [t for index in indices for t in index.subtask_text],
                   [t for index in indices for t in index.instruction], plans, indices[0].fps)

    def __len__(self) -> int:
        return len(self.episode)

    def done_subtasks(self, i: int) -> list[str]:
        """Subtasks of frame i's episode finished before frame i's subtask began."""
        return self.plans[int(self.episode[i])][: int(self.subtask_index[i])]

    def is_last_subtask(self, i: int) -> bool:
        return int(self.subtask_index[i]) == len(self.plans[int(self.episode[i])]) - 1

    def hindsight_goal(self, i: int, rng: np.random.Generator, p_subtask_end: float = 0.25,
                       max_ahead_s: float = 4.0) -> int:
        """Frame index of a hindsight subgoal for frame i (Pi-0.7's recipe).

        With probability ``p_subtask_end`` the last frame of the current subtask, otherwise a frame
        uniformly 0..``max_ahead_s`` ahead, clipped to the episode.
        """
        if rng.random() < p_subtask_end:
            return int(self.subtask_end[i])
        ahead = int(rng.integers(0, int(round(max_ahead_s * self.fps)) + 1))
        return int(min(i + ahead, self.episode_end[i]))


def release_events(index: SubtaskIndex, closed: np.ndarray) -> np.ndarray:
    """bool [N]: frame ``i`` is the first with the gripper open after it was closed, in the same episode."""
    event = np.zeros(len(index), bool)
    event[1:] = closed[:-1] & ~closed[1:] & (index.episode[1:] == index.episode[:-1])
    return event


def last_releases(index: SubtaskIndex, events: np.ndarray) -> dict[int, int | None]:
    """Each subtask's last release of the gripper (``events`` from `release_events`), by the subtask's first
    frame: the frame index, or None where the gripper never let go during it."""
    out = {}
    for start in np.unique(index.subtask_start):
        lets_go = np.flatnonzero(events[start: int(index.subtask_end[start]) + 1])
        out[int(start)] = int(start + lets_go[-1]) if len(lets_go) else None
    return out
