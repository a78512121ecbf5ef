"""A bowl subtask whose block the executor let go of where it steered to is read finished: its check scores it the
least it gives what it reads (`READ_MIN`); 0 stays for what it felt."""

from types import SimpleNamespace

import numpy as np
import pytest
from test_executor_model import TOP_DOWN, observation, tiny_model

from executors.flow import FlowExecutor
from executors.flow.modeling_flow import READ_MIN
from hybrid.types import Observation, Subtask

BOWL = Subtask(text="put the red block in the blue bowl", index=0)
OTHER = "put the green block in the blue bowl"


def at(x: float, gripper: float) -> Observation:
    return Observation(images=observation().images, state=np.array([x, 0.2, 0.1, gripper], np.float32))


@pytest.fixture
def executor():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, action_dim=4, place_lock_distance=0.04)
    return FlowExecutor(model, affordance={"contrast_at": 0.0, "reach_at": 0.0}, bowl_release_radius=0.07)


def carry_and_release(executor: FlowExecutor, offset: float) -> None:
    """Hold the block from afar, then let it go ``offset`` (m, in x) from the place steered to from afar."""
    executor.act(at(-0.4, 1.0), BOWL)  # held, far from any place the map can find: the place is seen from afar
    place = executor._place[1][0].tolist()
    state = np.array([place[0] + offset, place[1], 0.1, 1.0], np.float32)
    executor.act(Observation(images=observation().images, state=state), BOWL)
    executor.act(Observation(images=observation().images, state=state * [1, 1, 1, 0]), BOWL)  # let go


def test_a_block_let_go_of_where_the_executor_steered_finishes_its_bowl_subtask(executor):
    before = executor.affordance(at(0.0, 0.0), [BOWL.text, OTHER])
    assert before[0] > READ_MIN
    carry_and_release(executor, 0.02)
    finished, other = executor.affordance(at(0.0, 0.0), [BOWL.text, OTHER])
    assert finished == READ_MIN and other == pytest.approx(before[1], rel=1e-5)
    executor.reset()  # a new episode forgets it
    assert executor.affordance(at(0.0, 0.0), [BOWL.text])[0] > READ_MIN


def test_a_block_let_go_of_far_from_the_place_steered_to_is_not_finished(executor):
    carry_and_release(executor, 0.12)  # past a bowl's rim
    assert executor.affordance(at(0.0, 0.0), [BOWL.text])[0] > READ_MIN


def test_a_runtime_told_its_releases_and_aims_scores_alike(executor):
    release = np.array([0.3, 0.2, 0.05, 0.0])
    stack = "put the red block on the blue block"
    aims = [np.array([0.32, 0.19]), np.array([0.3, 0.2])]
    executor.remember_releases([(BOWL.text, release), (stack, release)], aims)
    bowl, other, tower = executor.affordance(at(0.0, 0.0), [BOWL.text, OTHER, stack])
    assert bowl == READ_MIN and other > READ_MIN and tower > READ_MIN  # a tower's level is finished by what the guard felt, not this
    executor.remember_releases([(BOWL.text, release)], [np.array([0.45, 0.2])])  # 15 cm off: a miss
    assert executor.affordance(at(0.0, 0.0), [BOWL.text])[0] > READ_MIN
    executor.remember_releases([(BOWL.text, release)])  # where it aimed unknown: nothing felt
    assert executor.affordance(at(0.0, 0.0), [BOWL.text])[0] > READ_MIN
    executor.bowl_release_radius = None  # off
    executor.remember_releases([(BOWL.text, release)], [release[:2]])
    assert executor.affordance(at(0.0, 0.0), [BOWL.text])[0] > READ_MIN


def test_the_radius_must_be_a_distance():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True)
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="bowl_release_radius"):
            FlowExecutor(model, bowl_release_radius=bad)


def test_the_planner_evaluation_reads_the_aim_where_the_effector_was_still_afar():
    from planners.subtask.evaluate import aimed_place

    states = np.zeros((10, 4), np.float32)
    states[:, 0] = [0.3, 0.25, 0.2, 0.15, 0.1, 0.08, 0.07, 0.06, 0.05, 0.05]  # carried to x = 0.05, let go at 9
    read = []

    def aim(obs, text):
        read.append(float(obs.state[0]))
        return np.array([0.05, 0.0])

    executor = SimpleNamespace(cfg=SimpleNamespace(place_lock_distance=0.04), aimed_place=aim)
    index = SimpleNamespace(episode_start=np.zeros(10, int))
    frames, cache = {"front": np.zeros((10, 2, 2, 3), np.uint8)}, {}
    assert aimed_place(executor, BOWL.text, 9, frames, states, index, cache).tolist() == [0.05, 0.0]
    assert read == [pytest.approx(0.1)]  # the last frame 4 cm or more from where it let go
    assert aimed_place(executor, BOWL.text, 9, frames, states, index, cache) is cache[9] and len(read) == 1
    assert aimed_place(executor, "put the red block on the blue block", 8, frames, states, index, cache) is None
