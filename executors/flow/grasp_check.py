"""A grasp check: let go of a block of another colour than the subtask asks for. A run-time rule, not learned.

Two blocks of look-alike colours light up alike on the pick map, and the cup sometimes takes the wrong one: 14 of
360 grasps in the hierarchical agent's `sort`, and every episode with such a grasp failed (12 of 25 and 12 of 32
failures on two held-out seed ranges), since the executor carries whatever it holds to the place. The in-hand model
(`executors/flow/in_hand.py`, with ``colours``) names the held block's colour off the wrist camera; where the
colour the subtask names first (the block to move: "put the red block in the blue bowl") is unlikely, the chunk
lets go, rises clear of the block and the pick map keeps the spot where it falls off for the rest of the subtask (a
look-alike lit up there; at the same block the policy would take it again at once). It reads once per grasp, just
after the lift: carried on over a support or at transit height the view is misread more often. Hierarchical agent,
200 held-out seeds: `sort` 0.715 -> 0.80, 17 episodes won and none lost (docs/experiments.md, "Sort: a grasp check
off the wrist camera"). With a model that also knows an empty cup (`InHandConfig.empty`) the same rule lets go of
nothing: the cup that rose with the suction on and no block would otherwise carry nothing to the place and count it
as a placement, and the spot it tried (a block's edge, a block already in its bowl) stays off for that subtask.

The embodiment's state starts with the effector's (x, y, z) and its actions with (dx, dy, dz) per step, as the
tabletop's do.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from executors.flow.in_hand import WristReading
from executors.flow.subtask_colours import subtask_colour
from executors.flow.transit import climb_straight_up


class GraspCheckConfig(BaseModel):
    """`FlowExecutor`'s ``grasp_check`` setting (None: off)."""

    model_config = ConfigDict(extra="forbid")

    min_prob: float = Field(gt=0, lt=1)  # the subtask's colour less likely than this in the reading: the wrong block
    # m, state z: the block is read once per grasp, at the first chunk the cup holds it this high. Carried on, over
    # a support or a bowl of another colour, the view is read wrong more often.
    min_height: float = Field(ge=0)
    rise: float = Field(gt=0)  # m: how far the cup rises after letting go
    step: float = Field(gt=0)  # m per step: the most it rises in one step (the action bound)
    # An in-hand model directory with colours to read the held block's with; None: the executor's in_hand model.
    model: str | None = None


def wrong_block(reading: WristReading | None, text: str | None, min_prob: float) -> bool:
    """Whether the held block, as ``reading`` names its colour, is not the one subtask ``text`` moves: that colour
    less likely than ``min_prob`` (so is every colour where the cup holds nothing, `WristReading.nothing`). Unsure
    means no: without a colour head, or a subtask naming no colour the model knows."""
    if reading is None or not reading.colours:
        return False
    colour = subtask_colour(text, reading.colours)
    return colour is not None and reading.colours[colour] < min_prob


def let_go_and_rise(actions: np.ndarray, cfg: GraspCheckConfig, committed: int = 0,
                    gripper_index: int = -1) -> np.ndarray:
    """``actions`` ``(H, A)`` replaced, after the first ``committed`` (real-time chunking's prefix, already on their
    way), by a release that rises straight up by ``cfg.rise`` and then holds still."""
    return climb_straight_up(actions, cfg.rise, cfg.step, 0.0, committed, gripper_index)
