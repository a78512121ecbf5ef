"""The contract every tier implementation must pass; run it on your own module:

    from hybrid.testing.contract import check_executor
    check_executor(MyExecutor(), fake_observation(cameras=("front",)), action_dim=7)
"""

from __future__ import annotations

import numpy as np

from hybrid.interfaces import Executor, SubtaskPlanner, WorldModel
from hybrid.types import ActionChunk, Observation, PlanStep, Subgoal, Subtask


def check_planner(planner, obs: Observation, instruction: str = "put the red block in the bowl") -> PlanStep:
    assert isinstance(planner, SubtaskPlanner), f"{type(planner).__name__} does not meet SubtaskPlanner"
    planner.reset()
    step = planner.plan(obs, instruction, [])
    assert isinstance(step, PlanStep), f"plan() returned {type(step).__name__}, expected PlanStep"
    assert step.done or step.subtask.strip(), "plan() returned neither a subtask nor done"
    done = [Subtask(text=step.subtask or "x", index=0, status="done")]
    assert isinstance(planner.plan(obs, instruction, done), PlanStep), "plan() with history must return a PlanStep"
    return step


def check_world_model(world_model, obs: Observation, subtask: str = "pick up the red block") -> Subgoal:
    assert isinstance(world_model, WorldModel), f"{type(world_model).__name__} does not meet WorldModel"
    world_model.reset()
    goal = world_model.imagine(obs, Subtask(text=subtask, index=0))
    assert isinstance(goal, Subgoal), f"imagine() returned {type(goal).__name__}, expected Subgoal"
    assert set(goal.images) == set(obs.images), f"subgoal cameras {sorted(goal.images)} != {sorted(obs.images)}"
    for cam, img in obs.images.items():
        assert goal.images[cam].shape == img.shape, f"subgoal[{cam!r}] {goal.images[cam].shape} != camera {img.shape}"
    assert goal.subtask == subtask, "subgoal must name the subtask it serves"
    return goal


def check_executor(executor, obs: Observation, action_dim: int, subgoal: Subgoal | None = None) -> ActionChunk:
    assert isinstance(executor, Executor), f"{type(executor).__name__} does not meet Executor"
    executor.reset()
    subtask = Subtask(text="pick up the red block", index=0)
    chunks = [executor.act(obs, subtask, subgoal), executor.act(obs, subtask, None)]
    for chunk in chunks:
        assert isinstance(chunk, ActionChunk), f"act() returned {type(chunk).__name__}, expected ActionChunk"
        assert chunk.actions.ndim == 2 and chunk.actions.shape[1] == action_dim, f"actions {chunk.actions.shape}"
        assert chunk.horizon >= 1 and np.isfinite(chunk.actions).all()
    return chunks[0]
