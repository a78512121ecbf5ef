"""On-policy planner data from an agent's own tabletop rollouts (DAgger; `planners/subtask/on_policy.py`).

The agent runs on the evaluation's synchronous loop; every time its planner asks the model
(`VLMPlanner.on_ask`), the cameras, the robot state and what the model was told are written with the reply
the simulator's success predicates call right at that moment. One LeRobot episode per rollout (rollouts where
the model was never asked write none).

The loop ends an episode as soon as the sim judges it a success, before the planner is asked again: the one
question whose answer is "done" would never be written, and a planner trained on these data alone never learns
to end an episode. So on a success the planner is asked once more, on the last observation (`ask_again`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from hybrid.envs.tabletop.env import TabletopEnv
from planners.subtask.on_policy import current_done, features, label, situation_frame
from planners.subtask.reply import PlannerFault


class SituationRecorder:
    """A runtime subscriber that also taps the planner: one frame per question the model is asked."""

    def __init__(self, dataset, env: TabletopEnv, ask_again: Callable | None = None,
                 release_view: Callable[[], np.ndarray | None] | None = None):
        """``ask_again(obs, instruction, subtasks)``: the planner's ``plan``, called on a success's last step.
        ``release_view()``: the view of the last release the planner shows its model now (None: none yet, written
        black), for a planner with a release camera."""
        self.dataset, self.env, self.ask_again, self.release_view = dataset, env, ask_again, release_view
        self.plan: list[str] = []
        self.last = None  # the last step's record: what the planner is asked again on a success
        self.frames: list[dict[str, Any]] = []
        self.kinds: Counter = Counter()  # labels: keep the subtask under way / move on / done
        self.written = 0

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        self.plan, self.frames = list(info["subtasks"]), []

    def on_ask(self, obs, instruction: str, done: list[str], current: str | None, releases: int) -> None:
        finished = self.env.scene.subtask_success()
        target, accepted = label(self.plan, finished, done, current)
        self.kinds["done" if target.done else "keep" if target.subtask == current else "move on"] += 1
        viewed = {}  # a release-view planner's view, and whether the subtask under way is done
        if self.release_view is not None:
            view = self.release_view()
            viewed = {"release_view": np.zeros((self.env.height, self.env.width, 3), np.uint8) if view is None
                      else view, "finished": current_done(self.plan, finished, done, current)}
        self.frames.append(situation_frame(obs, instruction, done, current, releases, target, accepted, **viewed))

    def on_step(self, record) -> None:
        self.last = record

    def on_episode_end(self, result) -> None:
        if result.success and self.ask_again is not None and self.last is not None \
                and self.last.observation is not None:
            try:  # through on_ask, as any question (the grip rules may keep the subtask without asking)
                self.ask_again(self.last.observation, self.last.instruction, list(self.last.subtasks))
            except PlannerFault:
                pass
        self.last = None
        if not self.frames:
            return
        for frame in self.frames:
            self.dataset.add_frame(frame)
        self.dataset.save_episode()
        self.written += len(self.frames)
        self.frames = []

    def close(self) -> None:
        pass


def record_planner_rollouts(out, env: TabletopEnv, agent, loop, rollouts: int, seed: int = 0,
                            families: list[str] | None = None, repo_id: str = "hybrid/tabletop_planner",
                            vcodec: str = "h264", video: bool = True, progress: bool = True) -> dict[str, Any]:
    """Roll ``agent`` out ``rollouts`` times (seeds from ``seed``, ``families`` only) on the synchronous
    ``loop`` and write what its planner was asked to a new LeRobot dataset at ``out``."""
    import av
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    from hybrid.envs.tabletop.record import ENCODER_QUEUE, ROBOT_TYPE, family_seeds
    from hybrid.runtime.env_adapter import EnvAdapter, EnvAdapterConfig
    from hybrid.runtime.sync import run_episode

    if not hasattr(agent.planner, "on_ask"):
        raise TypeError(f"planner_rollouts: {type(agent.planner).__name__} has no on_ask hook (a VLMPlanner has)")
    av.logging.set_libav_level(av.logging.ERROR)
    shape = (env.height, env.width, 3)
    viewed = getattr(getattr(agent.planner, "prompt", None), "release_camera", None) is not None
    dataset = LeRobotDataset.create(
        repo_id, fps=round(env.control_hz), root=out, robot_type=ROBOT_TYPE, use_videos=video, vcodec=vcodec,
        features=features({cam: shape for cam in env.cameras}, 4, video, shape if viewed else None),
        streaming_encoding=video, encoder_queue_maxsize=ENCODER_QUEUE,
    )
    adapter = EnvAdapter(env, EnvAdapterConfig(images_key="pixels", state_key="agent_pos"))
    planner = agent.planner
    recorder = SituationRecorder(dataset, env, planner.plan, (lambda: planner.release_view) if viewed else None)
    agent.planner.on_ask = recorder.on_ask
    solved, next_seed = 0, seed
    try:
        with tqdm(total=rollouts, desc="rollouts", unit="episode", disable=not progress) as bar:
            for episode_seed in itertools.islice(family_seeds(env, seed, families), rollouts):
                result = run_episode(agent, adapter, loop, [recorder], seed=episode_seed)
                solved, next_seed = solved + bool(result.success), episode_seed + 1
                bar.update(1)
                bar.set_postfix(frames=recorder.written, solved=solved)
    finally:
        agent.planner.on_ask = None
        dataset.finalize()
    return {"out": str(out), "rollouts": rollouts, "solved": solved, "frames": recorder.written,
            "labels": dict(recorder.kinds), "next_seed": next_seed}
