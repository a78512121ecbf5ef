"""Record scripted-expert episodes of the tabletop as a LeRobot v3 dataset, through LeRobot's own API.

Per frame: both camera images (stored as video), `observation.state` (the env's `agent_pos`), the
`action` the expert took, LeRobot's `task` (the instruction), `subtask` (the text the expert was
working on) and `subtask_index` (its index in the episode's plan). A subtask's frames run until the
effector has retreated from the finished placement, so the frame at the end of a subtask shows it done;
the episode's plan is the `subtask` column grouped by `subtask_index`. Episodes the expert fails are
dropped and replaced by the next seed, so the dataset holds exactly `episodes` successes.

`families` keeps only the episodes of those families out of a `task=all` recording, with the seeds they
have there: `families=[pick_place]` re-records exactly the `pick_place` episodes of a mixed recording made
from the same seed (a single-task baseline's data). `video=False` stores the images as PNG frames instead
of video, which trainers that read every sample through LeRobot's loader decode far faster on a CPU.

`subtask_index` is per-episode, so no `meta/subtasks.parquet` is written: LeRobot would otherwise
read that column as an index into it.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hybrid.envs.tabletop.env import TabletopEnv
from hybrid.envs.tabletop.expert import ScriptedExpert, check_grasp_spread

if TYPE_CHECKING:
    from hybrid.envs.tabletop.takeover import TakeoverConfig

log = logging.getLogger(__name__)

ROBOT_TYPE = "hybrid_tabletop"


def dataset_features(env: TabletopEnv, video: bool = True) -> dict[str, dict[str, Any]]:
    """The LeRobot feature spec of a recording (the names trainers read)."""
    features: dict[str, dict[str, Any]] = {
        f"observation.images.{cam}": {
            "dtype": "video" if video else "image",
            "shape": (env.height, env.width, 3),
            "names": ["height", "width", "channels"],
        }
        for cam in env.cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]}
    features["action"] = {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "gripper"]}
    features["subtask"] = {"dtype": "string", "shape": (1,), "names": None}
    features["subtask_index"] = {"dtype": "int64", "shape": (1,), "names": None}
    return features


def expert_frame(obs: dict, action: np.ndarray, expert: ScriptedExpert, instruction: str) -> dict[str, Any]:
    """One LeRobot frame: the observation, the expert's action and the subtask it is working on."""
    frame = {f"observation.images.{cam}": img for cam, img in obs["pixels"].items()}
    frame["observation.state"] = obs["agent_pos"]
    frame["action"] = action
    frame["subtask"] = expert.subtask_text
    frame["subtask_index"] = np.array([expert.subtask_index], dtype=np.int64)
    frame["task"] = instruction
    return frame


def run_episode(env: TabletopEnv, seed: int, families: list[str] | None = None,
                miss: float = 0.0, grasp_spread: float | None = None
                ) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """Roll the expert out for one episode; return LeRobot frames and the final info (no frames when the
    seed's family is not one of ``families``). ``miss``, ``grasp_spread``: `ScriptedExpert`'s."""
    obs, info = env.reset(seed=seed)
    if families and info["family"] not in families:
        return None, info
    expert = env.expert(miss, grasp_spread)
    frames = []
    while True:
        action = expert.act(obs)
        frames.append(expert_frame(obs, action, expert, info["instruction"]))
        obs, _, _, truncated, info = env.step(action)
        if expert.done or truncated:
            return frames, info


# LeRobot's streaming video encoder drops a frame, with a warning, when its queue stays full for 0.1 s: on a loaded
# machine that left videos shorter than their episodes, a recording no trainer can read. Unbounded (0, as
# `queue.Queue` takes it), the queue holds what the encoder is behind by, at most an episode, and drops nothing.
ENCODER_QUEUE = 0


def record(
    out: str | Path,
    env: TabletopEnv,
    episodes: int,
    seed: int = 0,
    repo_id: str = "hybrid/tabletop",
    vcodec: str = "h264",
    max_failures: int | None = None,
    progress: bool = True,
    families: list[str] | None = None,
    video: bool = True,
    expert_miss: float = 0.0,
    expert_grasp_spread: float | None = None,
    takeover: tuple[Any, TakeoverConfig] | None = None,
) -> dict[str, Any]:
    """Write `episodes` successful expert episodes to a new LeRobot dataset at `out` (``expert_miss``: the
    probability that a subtask's first placement misses on purpose and is retried; ``expert_grasp_spread``:
    how far from a block's centre it may grasp; `ScriptedExpert`).

    ``takeover``: ``(executor, TakeoverConfig)``: roll that executor out for `episodes` episodes instead and
    write each takeover of the expert as an episode of its own (`hybrid.envs.tabletop.takeover`)."""
    if families and env.task != "all" and env.task not in families:
        raise ValueError(f"families={families}: the env only makes {env.task!r} episodes (use task=all)")
    check_grasp_spread(expert_grasp_spread)  # before the dataset directory is created
    if takeover is not None and (expert_miss or expert_grasp_spread is not None):
        raise ValueError("takeover: the expert takes over as recorded (expert_miss / expert_grasp_spread unset)")
    import av
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    av.logging.set_libav_level(av.logging.ERROR)  # FFmpeg would otherwise print a report per video file
    dataset = LeRobotDataset.create(
        repo_id,
        fps=round(env.control_hz),
        features=dataset_features(env, video),
        root=out,
        robot_type=ROBOT_TYPE,
        use_videos=video,
        vcodec=vcodec,
        streaming_encoding=video,  # encode while stepping instead of writing PNGs first
        encoder_queue_maxsize=ENCODER_QUEUE,
    )
    if takeover is not None:
        summary = _record_takeovers(dataset, env, episodes, seed, families, *takeover, progress)
        dataset.finalize()
        return {"out": str(out), **summary}
    max_failures = episodes if max_failures is None else max_failures
    saved, failures, frames_written, next_seed = 0, 0, 0, seed
    with tqdm(total=episodes, desc="recording", unit="episode", disable=not progress) as bar:
        while saved < episodes:
            frames, info = run_episode(env, next_seed, families, expert_miss, expert_grasp_spread)
            next_seed += 1
            if frames is None:
                continue
            if not info["success"]:
                failures += 1
                log.warning("expert failed seed %d (%s); skipping it", next_seed - 1, info["family"])
                if failures > max_failures:
                    raise RuntimeError(f"the expert failed {failures} episodes; giving up")
                continue
            for frame in frames:
                dataset.add_frame(frame)
            dataset.save_episode()
            frames_written += len(frames)
            saved += 1
            bar.update(1)
    dataset.finalize()
    return {"out": str(out), "episodes": episodes, "frames": frames_written, "expert_failures": failures}


def family_seeds(env: TabletopEnv, seed: int, families: list[str] | None = None) -> Iterator[int]:
    """Seeds from ``seed`` on, skipping those whose episode is of none of ``families`` (None: every seed)."""
    for next_seed in itertools.count(seed):
        if families:
            _, info = env.reset(seed=next_seed)
            if info["family"] not in families:
                continue
        yield next_seed


def _record_takeovers(dataset, env: TabletopEnv, rollouts: int, seed: int, families: list[str] | None, executor,
                      cfg: TakeoverConfig, progress: bool) -> dict[str, Any]:
    """``rollouts`` executor rollouts (seeds from ``seed``, of ``families`` only); every finished takeover is saved."""
    from tqdm import tqdm

    from hybrid.envs.tabletop.takeover import run_takeover_episode  # it builds its frames with `expert_frame`
    from planners.subtask.tabletop_language import canonical_subtask

    rng = np.random.default_rng(seed)
    solved, frames_written, reasons = 0, 0, Counter()
    with tqdm(total=rollouts, desc="rollouts", unit="episode", disable=not progress) as bar:
        for episode_seed in itertools.islice(family_seeds(env, seed, families), rollouts):
            takeovers, info = run_takeover_episode(env, episode_seed, executor, rng, cfg, phrase=canonical_subtask)
            for takeover in takeovers:
                for frame in takeover.frames:
                    dataset.add_frame(frame)
                dataset.save_episode()
                frames_written += len(takeover.frames)
                reasons[takeover.reason] += 1
            solved += bool(info["success"])
            bar.update(1)
            bar.set_postfix(takeovers=reasons.total(), solved=solved)
    # `episodes` in the dataset are the takeovers; `solved`: rollouts that ended in success, with the expert's help
    return {"rollouts": rollouts, "episodes": reasons.total(), "frames": frames_written, "solved": solved,
            "takeovers": dict(reasons)}
