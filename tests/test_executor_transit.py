"""The transit height: carried blocks climb before they move sideways and stay up until over their place."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_executor_model import SUBTASK, TOP_DOWN, observation, tiny_model

from executors.flow import FlowExecutor
from executors.flow.transit import TransitConfig, hold_transit_height
from hybrid.types import Observation

CFG = TransitConfig(height=0.2, radius=0.03, climb=0.05)


def chunk(dx: float, dy: float, dz: float, grip: float = 1.0, n: int = 6) -> np.ndarray:
    return np.tile(np.array([dx, dy, dz, grip], np.float32), (n, 1))


def path(actions: np.ndarray, start) -> np.ndarray:
    return np.asarray(start, np.float64) + np.cumsum(actions[:, :3], axis=0)


def test_a_held_block_climbs_straight_up_then_travels_at_the_height():
    start = (0.0, 0.0, 0.05)
    out = hold_transit_height(chunk(0.04, 0.0, 0.0), start, np.array([0.3, 0.0]), True, CFG)
    z = path(out, start)[:, 2]
    # 0.05 -> 0.10 -> 0.15 -> 0.20 straight up (no sideways motion below the height), then sideways at it
    assert out[:3, :2].tolist() == [[0.0, 0.0]] * 3
    assert z[:3] == pytest.approx([0.10, 0.15, 0.20])
    assert out[3:, 0].tolist() == pytest.approx([0.04] * 3) and z[3:] == pytest.approx([0.2] * 3)
    assert out[:, 3].tolist() == [1.0] * 6  # the gripper command is the policy's


def test_a_descent_far_from_the_place_is_held_at_the_height_and_left_alone_within_the_radius():
    start = (0.0, 0.0, 0.2)
    out = hold_transit_height(chunk(0.02, 0.0, -0.03, n=5), start, np.array([0.06, 0.0]), True, CFG)
    # 6 and 4 cm from the place the tool may not sink; within 3 cm it descends as the policy says
    assert out[:, 2].tolist() == pytest.approx([0.0, 0.0, -0.03, -0.03, -0.03])
    assert path(out, start)[:, 0] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.10])


def test_unchanged_when_open_without_a_place_or_after_the_release_and_the_committed_prefix_kept():
    actions, start, place = chunk(0.04, 0.0, -0.01), (0.0, 0.0, 0.05), np.array([0.3, 0.0])
    assert np.array_equal(hold_transit_height(actions, start, place, False, CFG), actions)
    assert np.array_equal(hold_transit_height(actions, start, np.array([np.nan, np.nan]), True, CFG), actions)
    released = actions.copy()
    released[2:, 3] = 0.0
    out = hold_transit_height(released, start, place, True, CFG)
    assert np.array_equal(out[2:], released[2:]) and out[:2, 2].tolist() == pytest.approx([0.05, 0.05])
    out = hold_transit_height(actions, start, place, True, CFG, committed=2)
    assert np.array_equal(out[:2], actions[:2])  # on their way already; the climb starts after them
    assert out[2, :2].tolist() == [0.0, 0.0] and out[2, 2] == pytest.approx(0.05)


def test_the_executor_applies_it_while_holding_and_rejects_bad_settings():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, place_lock_distance=0.04)
    obs = observation()

    def at(z: float, gripper: float) -> Observation:
        return Observation(images=obs.images, state=np.array([-0.4, -0.4, z, gripper], np.float32))

    # the place the maps find, and the policy's chunk: sideways at the height it is at, gripper on
    model.waypoint_head.peak = lambda logits, *a: torch.tensor([[[0.0, 0.0], [0.4, 0.4]]]).expand(len(logits), -1, -1)
    model.sample_actions = lambda *a, **k: torch.from_numpy(chunk(0.04, 0.04, 0.0, n=model.cfg.chunk))[None]
    executor = FlowExecutor(model, transit=CFG.model_dump())
    held = executor.act(at(0.1, 1.0), SUBTASK).actions
    assert held[:2, :2].tolist() == [[0.0, 0.0]] * 2 and (0.1 + np.cumsum(held[:, 2]))[1:] == pytest.approx(0.2)
    executor.reset()
    assert np.array_equal(executor.act(at(0.1, 0.0), SUBTASK).actions, chunk(0.04, 0.04, 0.0, n=model.cfg.chunk))
    with pytest.raises(ValidationError):
        FlowExecutor(tiny_model(), transit={"height": -0.1, "radius": 0.03, "climb": 0.05})
    with pytest.raises(ValidationError):
        FlowExecutor(tiny_model(), transit={"height": 0.2, "radius": 0.03})


def test_towers_only_waits_for_a_block_let_go_of_on_a_support(tmp_path):
    from executors.flow.in_hand import InHandConfig, InHandOffset, WristReading

    InHandOffset(InHandConfig(image_size=32, widths=[8, 8], hidden=16)).save_pretrained(tmp_path / "in_hand")
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, place_lock_distance=0.04)
    obs = observation()
    model.waypoint_head.peak = lambda logits, *a: torch.tensor([[[0.0, 0.0], [0.4, 0.4]]]).expand(len(logits), -1, -1)
    policy = chunk(0.04, 0.04, 0.0, n=model.cfg.chunk)
    model.sample_actions = lambda *a, **k: torch.from_numpy(policy)[None]
    executor = FlowExecutor(model, transit={**CFG.model_dump(), "towers_only": True}, in_hand=str(tmp_path / "in_hand"))
    executor.in_hand.read = lambda image: WristReading(np.zeros(2), np.zeros(2), 0.9)  # a support right under the cup

    def act(x: float, gripper: float) -> np.ndarray:
        state = np.array([x, x, 0.1, gripper], np.float32)
        return executor.act(Observation(images=obs.images, state=state), SUBTASK).actions

    assert np.array_equal(act(-0.4, 1.0), policy)  # carried low: nothing stacked yet, no tower to clear
    assert np.array_equal(act(0.39, 1.0), policy)  # over the place, the support seen: the block goes onto it
    act(0.39, 0.0)  # let go of on the support: a tower stands now
    assert act(-0.4, 1.0)[0, :2].tolist() == [0.0, 0.0]  # the next carry climbs first
