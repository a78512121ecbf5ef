"""The final alignment: over a support the wrist camera found, the chunk's sideways steps go straight at the target."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_executor_model import SUBTASK, TOP_DOWN, observation, tiny_config
from test_executor_transit import chunk, path

from executors.flow import FlowExecutor, FlowModel
from executors.flow.align import AlignConfig, align_over_place
from executors.flow.in_hand import InHandConfig, InHandOffset, WristReading
from hybrid.types import Observation

CFG = AlignConfig(radius=0.03, step=0.004)


def test_within_the_radius_the_steps_go_straight_at_the_target_and_stop_at_the_release():
    start = (0.0, 0.0, 0.2)
    actions = chunk(0.01, 0.01, -0.02, n=6)
    actions[4:, 3] = 0.0  # let go at the fifth step: the retreat after it is the policy's
    out = align_over_place(actions, start, np.array([0.01, 0.0]), CFG)
    xy = path(out, start)[:, :2]
    # 1 cm off: 4 mm, 4 mm, then the last 2 mm, then it stays; y comes back nowhere (the target's y is 0)
    assert xy[:4, 0] == pytest.approx([0.004, 0.008, 0.01, 0.01]) and xy[:4, 1] == pytest.approx([0.0] * 4)
    assert out[:, 2].tolist() == pytest.approx([-0.02] * 6)  # the descent is the policy's
    assert out[4:, :2].ravel().tolist() == pytest.approx([0.01] * 4)


def test_outside_the_radius_committed_steps_and_no_target_are_left_alone():
    start = (0.0, 0.0, 0.2)
    actions = chunk(0.01, 0.0, 0.0, n=4)
    assert np.array_equal(align_over_place(actions, start, np.array([0.2, 0.0]), CFG), actions)
    assert np.array_equal(align_over_place(actions, start, np.array([np.nan, 0.0]), CFG), actions)
    out = align_over_place(actions, start, np.array([0.0, 0.0]), CFG, committed=2)
    # two committed steps carry it to 2 cm; from there it comes back 4 mm a step
    assert out[:2, 0].tolist() == pytest.approx([0.01, 0.01]) and out[2:, 0].tolist() == pytest.approx([-0.004] * 2)
    with pytest.raises(ValidationError):
        AlignConfig(radius=0.0, step=0.004)


def test_the_executor_aligns_only_over_a_support_it_snapped_to(tmp_path):
    InHandOffset(InHandConfig(image_size=32, widths=[8, 8], hidden=16)).save_pretrained(tmp_path / "in_hand")
    model = FlowModel(tiny_config(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                                  table_homography=TOP_DOWN, waypoint_target=True, place_lock_distance=0.1,
                                  action_dim=4))  # (dx, dy, dz, gripper), as the tabletop's
    executor = FlowExecutor(model, in_hand=str(tmp_path / "in_hand"), align={"radius": 0.05, "step": 0.004})
    readings = iter([WristReading(np.zeros(2), np.zeros(2), 0.9),  # from afar: no place yet to check the support by
                     WristReading(np.zeros(2), np.zeros(2), 0.1),  # near, nothing under the held block
                     WristReading(np.zeros(2), np.array([0.01, 0.0]), 0.9)])  # the support 1 cm on: 49 cm
    executor.in_hand.read = lambda image: next(readings)
    model.waypoint_head.peak = lambda logits, *a: torch.tensor([[[0.0, 0.0], [0.5, 0.2]]])
    held_still = torch.zeros(1, model.cfg.chunk, model.cfg.action_dim)
    held_still[..., -1] = 1.0  # the policy holds the block where it is
    model.sample_actions = lambda *args, **kwargs: held_still.clone()
    obs = observation()
    chunks = [executor.act(Observation(images=obs.images, state=np.array([x, 0.2, 0.1, 1.0], np.float32)),
                           SUBTASK).actions for x in (0.3, 0.48, 0.48)]
    assert not chunks[0][:, :3].any() and not chunks[1][:, :3].any()  # no support: as the policy says
    # over the support (0.49): 4 mm, 4 mm, the last 2 mm, then still
    assert chunks[2][:4, 0].tolist() == pytest.approx([0.004, 0.004, 0.002, 0.0], abs=1e-6)
    assert not chunks[2][:, 1:3].any()
