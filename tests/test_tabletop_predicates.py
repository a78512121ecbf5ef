"""Success predicates come from the physics state: blocks inside bowls, blocks resting on blocks."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import pytest

from hybrid.envs.tabletop import TabletopEnv
from hybrid.envs.tabletop.scene import BLOCK_HALF, BOWL_FLOOR


@pytest.fixture
def env():
    env = TabletopEnv(cameras=("front",), image_size=32)
    yield env
    env.close()


def teleport(env: TabletopEnv, block: int, pos) -> None:
    env.scene.set_block_pose(env.scene.data, block, np.asarray(pos, float))
    mujoco.mj_forward(env.scene.model, env.scene.data)


def settle(env: TabletopEnv, steps: int = 5) -> dict:
    for _ in range(steps):
        *_, info = env.step(env.hold_action())
    return info


def test_block_in_bowl_counts_only_when_resting_inside(env):
    _, info = env.reset(seed=0, options={"family": "pick_place"})
    goal = env.scene.spec.goals[0]
    bowl = env.scene.bowl_pos(goal.bowl)
    # Hovering above the bowl is not "in" it.
    teleport(env, goal.block, bowl + (0, 0, 0.15))
    assert not env.scene.in_bowl(goal.block, goal.bowl)
    # Dropped inside, it falls, settles on the floor and counts.
    info = settle(env, 8)
    assert env.scene.in_bowl(goal.block, goal.bowl)
    assert info["subtask_success"] == [True] and info["success"] is True
    assert abs(env.scene.block_pos(goal.block)[2] - (BOWL_FLOOR + BLOCK_HALF)) < 0.003
    # Next to the bowl, on the table, it does not.
    teleport(env, goal.block, bowl + (0.2, 0.0, BLOCK_HALF))
    info = settle(env, 2)
    assert info["subtask_success"] == [False] and info["success"] is False


def test_stack_needs_the_block_resting_on_top(env):
    _, info = env.reset(seed=1, options={"family": "stack"})
    first = env.scene.spec.goals[0]
    base = env.scene.block_pos(first.base)
    teleport(env, first.block, base + (0.0, 0.0, 2 * BLOCK_HALF + 0.01))
    info = settle(env, 5)
    assert env.scene.on_block(first.block, first.base)
    assert info["subtask_success"][0] and info["subtask_index"] == 1 and not info["success"]
    # Half a block off centre it slides off or is not counted.
    teleport(env, first.block, base + (0.035, 0.0, 2 * BLOCK_HALF))
    info = settle(env, 5)
    assert not info["subtask_success"][0] and info["subtask_index"] == 0


def test_gather_counts_blocks_of_the_colour(env):
    _, info = env.reset(seed=2, options={"family": "gather"})
    goals = env.scene.spec.goals
    teleport(env, goals[0].block, env.scene.place_target(goals[0]))
    info = settle(env, 3)
    assert info["subtask_success"][:2] == [True, False] and info["subtask_index"] == 1
    for goal in goals[1:]:
        teleport(env, goal.block, env.scene.place_target(goal))
    info = settle(env, 3)
    assert all(info["subtask_success"]) and info["success"]
    assert info["subtask_index"] == len(goals) - 1


def test_a_held_block_is_not_placed(env):
    _, info = env.reset(seed=0, options={"family": "pick_place"})
    goal = env.scene.spec.goals[0]
    target = env.scene.place_target(goal)
    teleport(env, goal.block, target)
    # Put the cup on the block with suction on: physically in place, but still held.
    d = env.scene.data
    d.qpos[:3] = target + (0, 0, BLOCK_HALF)
    env._target = d.qpos[:3] - (0, 0, 0.005)
    mujoco.mj_forward(env.scene.model, d)
    *_, info = env.step([0, 0, 0, 1.0])
    assert goal.block in env.scene.held_blocks()
    assert info["success"] is False
    for _ in range(3):
        *_, info = env.step([0, 0, 0.02, 0.0])  # let go and lift
    assert info["success"] is True
