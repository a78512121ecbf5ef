"""Success predicates come from the physics state: blocks inside bowls, blocks resting on blocks."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import pytest

from hybrid.envs.tabletop import TabletopEnv
from hybrid.envs.tabletop.scene import BLOCK_HALF, BOWL_FLOOR
from hybrid.envs.tabletop.tasks import COLOURS


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


def test_grounding_probe_tells_blocks_still_to_move_from_placed_and_absent_ones(env):
    from types import SimpleNamespace

    from hybrid.envs.tabletop.grounding import GroundingProbe
    from hybrid.types import Subtask

    env.reset(seed=0, options={"family": "pick_place"})
    spec, probe = env.scene.spec, GroundingProbe(env)
    goal = spec.goals[0]
    colour, bowl = spec.block_colours[goal.block], spec.bowl_colours[goal.bowl]
    asked = f"put the {colour} block in the {bowl} bowl"
    absent = [c for c in COLOURS if c not in spec.block_colours]
    assert probe.grounded(asked)
    assert not probe.grounded(f"put the {absent[0]} block in the {bowl} bowl")  # no such block on the table
    no_bowl = next(c for c in COLOURS if c not in spec.bowl_colours)
    assert not probe.grounded(f"put the {colour} block in the {no_bowl} bowl")
    assert not probe.grounded("wave at the camera")

    def step(text: str | None, index: int = 0) -> None:  # a control step of the runtime with this subtask current
        probe.on_step(SimpleNamespace(current_subtask=Subtask(text=text, index=index) if text else None,
                                      instruction=spec.instruction))

    probe.on_episode_start(spec.instruction, {})
    for _ in range(3):
        step(asked)
    teleport(env, goal.block, env.scene.bowl_pos(goal.bowl) + (0, 0, 0.1))
    settle(env, 8)
    assert not probe.grounded(asked)  # already in that bowl: nothing left to move
    step(asked, index=1)  # asked again for the block just placed
    step(None)
    step(spec.instruction)  # an agent acting on the instruction itself (the flat one) is not judged
    assert probe.summary() == {"subtasks_per_episode": 2.0, "ungrounded_subtasks": 0.5, "off_task_subtasks": 0.0,
                               "steps_on_ungrounded": 0.25}


def test_grounding_probe_counts_a_sort_subtask_into_another_colours_bowl_as_off_the_task(env):
    from types import SimpleNamespace

    from hybrid.envs.tabletop.grounding import GroundingProbe, goal_pairs, named_pair
    from hybrid.types import Subtask

    env.reset(seed=3, options={"family": "sort"})
    spec, probe = env.scene.spec, GroundingProbe(env)
    colour = spec.block_colours[spec.goals[0].block]
    other = next(c for c in spec.bowl_colours if c != colour)
    assert named_pair(f"put another {colour} block in the {other} bowl") == (colour, f"bowl {other}")
    assert named_pair("stack the red cube on the blue block") == ("red", "on blue")
    assert named_pair("wave at the camera") is None
    assert (colour, f"bowl {colour}") in goal_pairs(spec)
    probe.on_episode_start(spec.instruction, {})
    for index, text in enumerate([f"put the {colour} block in the {colour} bowl",  # what the task asks
                                  f"put the {colour} block in the {other} bowl",   # there, but the wrong bowl
                                  "wave at the camera"]):                            # names no move at all
        probe.on_step(SimpleNamespace(current_subtask=Subtask(text=text, index=index), instruction=spec.instruction))
    summary = probe.summary()
    assert summary["off_task_subtasks"] == round(2 / 3, 3)
    assert summary["ungrounded_subtasks"] == round(1 / 3, 3)  # the wrong bowl still names a block to move


def test_grounding_probe_knows_a_stacked_block_is_done(env):
    from hybrid.envs.tabletop.grounding import GroundingProbe

    env.reset(seed=1, options={"family": "stack"})
    spec, probe = env.scene.spec, GroundingProbe(env)
    first = spec.goals[0]
    asked = f"put the {spec.block_colours[first.block]} block on the {spec.block_colours[first.base]} block"
    assert probe.grounded(asked)
    teleport(env, first.block, env.scene.block_pos(first.base) + (0.0, 0.0, 2 * BLOCK_HALF + 0.01))
    settle(env, 5)
    assert not probe.grounded(asked)


def test_describe_says_in_words_where_each_block_is(env):
    env.reset(seed=0, options={"family": "pick_place"})
    goal = env.scene.spec.goals[0]
    bowl = env.scene.bowl_pos(goal.bowl)
    teleport(env, goal.block, bowl + (0, 0, 0.15))
    settle(env, 8)
    state = env.describe()
    block = state["blocks"][goal.block]
    assert block["colour"] == env.scene.spec.block_colours[goal.block]
    assert block["in_bowl"] == env.scene.spec.bowl_colours[goal.bowl] and block["on"] is None
    assert not block["held"] and abs(block["xyz_cm"][0] - 100 * bowl[0]) < 3.0
    assert state["subtask_success"] == [True] and len(state["tool_cm"]) == 3
    others = [b for i, b in enumerate(state["blocks"]) if i != goal.block]
    assert all(b["in_bowl"] is None for b in others)


def test_placement_probe_counts_a_finished_stack_knocked_over_but_not_one_taken_apart(env):
    from hybrid.envs.tabletop.placement import SETTLE_STEPS, PlacementProbe

    env.reset(seed=1, options={"family": "stack"})
    spec, probe = env.scene.spec, PlacementProbe(env)
    first = spec.goals[0]
    probe.on_episode_start(spec.instruction, {})

    def run(steps: int) -> None:
        for _ in range(steps):
            env.step(env.hold_action())
            probe.on_step(None)

    teleport(env, first.block, env.scene.block_pos(first.base) + (0.0, 0.0, 2 * BLOCK_HALF + 0.005))
    run(10)
    assert env.scene.subtask_success()[0]
    teleport(env, first.block, env.scene.block_pos(first.base) + (0.1, 0.0, 0.0))  # swept off, nothing held
    run(SETTLE_STEPS - 1)
    assert probe.knocked == 0  # not yet: a tower that wobbles as the next block lands stands again
    run(1)
    assert probe.summary()["knocked_per_episode"] == 1.0
    assert probe.summary()["grasp_offset_cm_p50"] is None  # nothing was let go of
