"""Recovery data from the executor's own states: it acts, the scripted expert takes over, the takeover is kept.

Behaviour cloning trains on the expert's states only, so the executor never sees the states its own mistakes
lead to: a block held off-centre, a placement beside the goal, the wrong block in the cup. DAgger (Ross et al.,
2011) rolls the learner out and asks the expert what it would do there; HG-DAgger hands control to the expert
when the learner goes wrong and keeps the expert's part. The scripted expert can do that because it plans its
waypoints from the physics (`ScriptedExpert.take_over`): from any state it finishes the subtask.

Each subtask of a rollout is the executor's (given the true subtask, worded as the trained planner words it,
and the true end-of-subtask image, like the evaluation's oracle agent) until one of:
- a random number of its steps (``after_steps``), so the expert starts from every stage of the executor's attempt;
- it let go of the block and the subtask is not done once the block has settled (a placement that missed);
- it holds a block that does not serve the subtask (`Scene.serves`: another colour's; a stack's other block).
Then the expert finishes the subtask, and only those frames are written, one LeRobot episode per takeover, with
the expert's actions and its subtask labels (`record.expert_frame`, as in a recording of the expert). The
executor's own frames are not kept: its actions are what the recovery corrects. A subtask the executor finishes
before its draw gives no frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid.envs.tabletop.env import TabletopEnv
from hybrid.envs.tabletop.expert import ScriptedExpert
from hybrid.envs.tabletop.record import expert_frame
from hybrid.envs.tabletop.scene import SUCTION_ON
from hybrid.types import Observation, Subgoal, Subtask

SETTLE_STEPS = 3  # control steps after a release before the placement is judged (a let-go block is still falling)


@dataclass
class TakeoverConfig:
    after_steps: tuple[int, int] = (0, 80)  # the expert takes a subtask over after U[lo, hi) executor steps
    execute_horizon: int = 4  # actions run from each executor chunk (the evaluation's)
    max_steps: int = 300  # env steps per rollout, executor's and expert's together (the evaluation's budget)
    min_frames: int = 8  # shorter takeovers are not written (too short for an action chunk to mean much)

    def __post_init__(self):
        lo, hi = (int(v) for v in self.after_steps)
        if not 0 <= lo < hi:
            raise ValueError(f"takeover.after_steps: expected [lo, hi) with 0 <= lo < hi, got {self.after_steps}")
        if self.execute_horizon < 1 or self.max_steps < 1 or self.min_frames < 1:
            raise ValueError("takeover: execute_horizon, max_steps and min_frames must be >= 1")
        self.after_steps = (lo, hi)


@dataclass
class Takeover:
    reason: str  # why the expert took over: "draw" (its random step came), "missed" (a placement), "wrong_block"
    frames: list[dict[str, Any]]  # LeRobot frames of the expert, from the takeover to the end of the subtask


def run_takeover_episode(env: TabletopEnv, seed: int, executor, rng: np.random.Generator,
                         cfg: TakeoverConfig | None = None, phrase: Callable[[str], str] = str,
                         ) -> tuple[list[Takeover], dict[str, Any]]:
    """Roll ``executor`` out for one episode with the expert taking over; return the takeovers the expert finished
    and the final info. ``phrase``: how the executor is told the subtask."""
    cfg = cfg or TakeoverConfig()
    raw, info = env.reset(seed=seed)
    spec, scene = env.scene.spec, env.scene
    instruction = info["instruction"]
    expert = env.expert()
    executor.reset()
    takeovers: list[Takeover] = []
    steps, current, budget, subgoal, judge_at, reason = 0, None, 0, None, None, "draw"

    def step(action: np.ndarray) -> dict:
        nonlocal raw, info, steps
        raw, _, _, _, info = env.step(action)
        steps += 1
        return raw

    while steps < cfg.max_steps and not info["success"]:
        index = scene.subtask_success().index(False)
        if index != current:  # a new subtask for the executor: a fresh draw of when the expert takes it
            current, budget, judge_at = index, steps + int(rng.integers(*cfg.after_steps)), None
            reason = "draw"
            images = env.render_subgoal(index)
            subgoal = Subgoal(images=images, subtask=spec.subtasks[index], model="oracle")
        if judge_at is not None and steps >= judge_at:  # the block let go of has settled, and not on its goal
            budget, judge_at, reason = steps, None, "missed"
        held = scene.held_blocks()
        if held and not any(scene.serves(spec.goals[index], b, held) for b in held):
            budget, reason = steps, "wrong_block"
        if steps >= budget:
            before = steps
            frames = _expert_finishes(env, expert, index, raw, cfg.max_steps - steps, instruction, step)
            if frames is not None and len(frames) >= cfg.min_frames:
                takeovers.append(Takeover(reason, frames))
            if steps == before:  # the expert had nothing to do here: nothing would change by asking again
                break
            current = None  # the next subtask (or this one again, if the expert did not finish it) is drawn anew
            continue
        obs = Observation(images=raw["pixels"], state=raw["agent_pos"], instruction=instruction)
        chunk = executor.act(obs, Subtask(text=phrase(spec.subtasks[index]), index=index), subgoal)
        for action in chunk.actions[: cfg.execute_horizon]:
            was_on = scene.suction_command >= SUCTION_ON
            step(env.check_action(np.clip(action, env.action_space.low, env.action_space.high)))
            if was_on and scene.suction_command < SUCTION_ON:  # a release: judged once the block has come to rest
                judge_at = steps + SETTLE_STEPS
            if info["success"] or steps >= cfg.max_steps:
                break
    return takeovers, info


def _expert_finishes(env: TabletopEnv, expert: ScriptedExpert, index: int, raw: dict, steps_left: int,
                     instruction: str, step: Callable[[np.ndarray], dict]) -> list[dict[str, Any]] | None:
    """The expert's frames from here to the end of subtask ``index`` (its retreat), or None if it runs out of steps."""
    expert.take_over(index)
    frames = []
    for _ in range(steps_left):
        action = expert.act(raw)
        if expert.subtask_index != index:  # it moved on: that frame belongs to the next subtask
            return frames
        frames.append(expert_frame(raw, action, expert, instruction))
        raw = step(action)
        if expert.done:
            return frames
    return None
