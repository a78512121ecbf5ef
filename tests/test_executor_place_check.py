"""The place check: the support colour the subtask names, the rule that gives a place up, and the executor keeping
that spot off its place map for the rest of the subtask."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_executor_in_hand import TINY, spy_on_place
from test_executor_model import TOP_DOWN, at, tiny_model

from executors.flow import FlowExecutor
from executors.flow.in_hand import InHandOffset, WristReading
from executors.flow.place_check import PlaceCheckConfig, wrong_place
from executors.flow.subtask_colours import support_colour
from hybrid.types import Subtask

CHECK = {"min_prob": 0.1, "none_prob": 0.8, "radius": 0.04}
STACK = Subtask(text="put the red block on the blue block", index=0)
SUPPORTS = replace(TINY, colours=["red", "blue"], support=True, support_colours=True)


def under(blue: float, none: float = 0.0) -> WristReading:
    """A reading whose support is blue with probability ``blue``, nothing with ``none``, red otherwise."""
    return WristReading(np.zeros(2, np.float32), np.zeros(2, np.float32), 0.9,
                        support_colours={"red": 1.0 - blue - none, "blue": blue}, no_support=none)


def test_the_support_is_the_second_colour_of_a_subtask_without_a_bowl():
    assert support_colour("put the red block on the Blue block", ["red", "blue"]) == "blue"
    assert support_colour("stack the blue cube on top of the red cube", {"red": 0.5, "blue": 0.5}) == "red"
    assert support_colour("put the red block in the blue bowl", ["red", "blue"]) is None  # a bowl: no support
    assert support_colour("put the red block on the green block", ["red", "blue"]) is None  # a colour not known
    assert support_colour("pick up the red block", ["red"]) is None and support_colour(None, ["red"]) is None


def test_only_a_sure_reading_of_another_support_or_of_none_is_the_wrong_place():
    cfg = PlaceCheckConfig(**CHECK)
    assert wrong_place(under(0.05), STACK.text, cfg) == "place check: the block under the held one looks red " \
                                                        "(p=0.95), not blue"
    assert wrong_place(under(0.1, none=0.85), STACK.text, cfg).startswith("place check: nothing under the held block")
    assert wrong_place(under(0.3), STACK.text, cfg) is None  # the support may be blue
    assert wrong_place(under(0.05, none=0.7), "put the red block in the blue bowl", cfg) is None  # no block asked for
    assert wrong_place(WristReading(np.zeros(2)), STACK.text, cfg) is None  # no support colours
    assert wrong_place(None, STACK.text, cfg) is None  # the gripper is open
    with pytest.raises(ValueError, match="none_prob"):
        PlaceCheckConfig(**{**CHECK, "none_prob": 0.0})


def test_the_executor_gives_a_wrong_place_up_and_keeps_it_off_the_place_map(tmp_path, caplog):
    supports = tmp_path / "supports"
    InHandOffset(SUPPORTS).save_pretrained(supports)
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, action_dim=4, place_lock_distance=0.04)
    executor = FlowExecutor(model, place_check={**CHECK, "model": str(supports)})
    readings = iter([under(0.02), under(0.9), under(0.02)])
    reads = []
    executor.support_reader.read = lambda image: reads.append(None) or next(readings)
    # the place map's peak: at x = 0.5 until that place is given up, then the next one at 0.6
    model.waypoint_head.peak = lambda logits, *a: torch.tensor([[[0.0, 0.0], [0.6 if rejected[-1] else 0.5, 0.2]]])
    rejected, inhibit = [], model.waypoint_head.inhibit

    def spy(logits, size, avoid, penalty, which=0):
        if which == 1:
            rejected.append(avoid[0].tolist())
        return inhibit(logits, size, avoid, penalty, which)

    model.waypoint_head.inhibit = spy
    executor.act(at(0.3, 1.0), STACK)  # held, 20 cm from the place: remembered, not read
    assert reads == [] and rejected[-1] == []
    with caplog.at_level("INFO", logger="executors.flow.modeling_flow"):
        chunk = executor.act(at(0.48, 1.0), STACK)  # 2 cm from it: read, a red block under the held one
    assert chunk.note == "place check: the block under the held one looks red (p=0.98), not blue"
    assert "looks red" in caplog.text and len(reads) == 1
    assert np.allclose(rejected[-1], [[0.5, 0.2]]) and np.allclose(executor._place[1], [[0.6, 0.2]])
    executor.act(at(0.5, 1.0), STACK)  # 10 cm from the next place: not read yet
    executor.act(at(0.58, 1.0), STACK)  # near it: read, blue
    executor.act(at(0.59, 1.0), STACK)  # checked once: a red reading now is not read at all
    assert len(reads) == 2 and np.allclose(rejected[-1], [[0.5, 0.2]])
    executor.act(at(0.59, 0.0), STACK)  # placed
    executor.act(at(0.3, 1.0), Subtask(text="put the blue block on the red block", index=1))
    assert rejected[-1] == []  # another subtask may place there
    bowl = FlowExecutor(model, place_check={**CHECK, "model": str(supports)})
    bowl.support_reader.read = lambda image: pytest.fail("a bowl placement is not checked")
    for x in (0.3, 0.59):
        assert bowl.act(at(x, 1.0), Subtask(text="put the red block in the blue bowl", index=0)).note is None
    InHandOffset(replace(TINY, colours=["red", "blue"])).save_pretrained(tmp_path / "colours")
    with pytest.raises(ValueError, match="support colours"):
        FlowExecutor(model, place_check={**CHECK, "model": str(tmp_path / "colours")})
    with pytest.raises(ValueError, match="support colours"):
        FlowExecutor(model, place_check=CHECK)  # no model of its own and no grasp check to borrow one from
    with pytest.raises(ValueError, match="InHandConfig"):
        replace(TINY, support_colours=True)  # the support's colours need colours and supports


def test_a_towers_next_level_goes_where_the_block_below_was_let_go_of(tmp_path):
    InHandOffset(replace(TINY, colours=["red", "blue", "green"])).save_pretrained(tmp_path / "in_hand")
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, action_dim=4, place_lock_distance=0.04)
    executor = FlowExecutor(model, in_hand=str(tmp_path / "in_hand"), place_on_released=True)
    executor.in_hand.read = lambda image: WristReading(np.array([0.01, 0.0], np.float32))  # held 1 cm +x of the cup
    model.waypoint_head.peak = lambda logits, *a: torch.tensor([[[0.0, 0.0], [0.3, 0.1]]])  # the place map's place
    steered = spy_on_place(model)
    for x, gripper in ((0.0, 1.0), (0.49, 1.0), (0.49, 0.0)):  # red let go of on blue, the cup at x = 0.49
        executor.act(at(x, gripper), STACK)
    assert steered[0] == [0.3, 0.1]  # nothing let go of yet: the place map's place
    executor.act(at(0.0, 1.0), Subtask(text="put the green block on the red block", index=1))
    assert steered[-1] == [0.49, 0.2]  # where red was let go of (0.5: cup + offset), less the offset held now
    executor.act(at(0.0, 1.0), Subtask(text="put the green block in the blue bowl", index=2))
    assert steered[-1] == [0.3, 0.1]  # a bowl: the place map's
    executor.reset()
    executor.act(at(0.0, 1.0), Subtask(text="put the green block on the red block", index=1))
    assert steered[-1] == [0.3, 0.1]  # a new episode remembers nothing
    with pytest.raises(ValueError, match="colours"):
        FlowExecutor(model, place_on_released=True)
