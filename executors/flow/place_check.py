"""A place check: before a stack placement, look under the held block for the block the subtask names. A run-time
rule, not learned.

The place map reads "the yellow block" off the front camera and sometimes lights the yellow *bowl*, or a green block
that looks yellow: at 28% of the oracle agent's placements onto a block on the table the place it steered to was
more than 3 cm off the block (60 held-out `stack` seeds; where such a placement landed nothing stood), and 59 of the
74 placements onto a table block that did not stay were let go of more than 3 cm off. The wrist camera sees what lies
under the held block as the cup comes over the place; an in-hand model with support colours
(`InHandConfig.support_colours`) names its colour, or that there is none (a bowl, bare table). Once per place, at
the first chunk the cup is within ``radius`` of it, a subtask that puts a block on a block ("put the purple block
on the yellow block": two colours, no bowl) whose support reads less likely than ``min_prob`` to be that colour, or
nothing under the held block more likely than ``none_prob``, gives the place up: the place map keeps that spot off
for the rest of the subtask and finds the next one, as the grasp check does for picks. Off in the tabletop config:
the model trained here names the support's colour right in 0.69 of held-out views (the held block hides it) and in
the loop gave right places up (oracle `stack` 0.49 -> 0.26; docs/experiments.md).

The embodiment's state starts with the effector's (x, y, z), as the tabletop's does.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from executors.flow.in_hand import WristReading
from executors.flow.subtask_colours import support_colour


class PlaceCheckConfig(BaseModel):
    """`FlowExecutor`'s ``place_check`` setting (None: off)."""

    model_config = ConfigDict(extra="forbid")

    min_prob: float = Field(gt=0, lt=1)  # the support less likely than this to be the colour named: the wrong place
    none_prob: float = Field(gt=0, le=1)  # nothing under the held block more likely than this: the wrong place
    radius: float = Field(gt=0)  # m: the check reads once the cup is this close (xy) to the place it steers to
    # An in-hand model directory with support colours; None: the grasp check's colour model.
    model: str | None = None


def wrong_place(reading: WristReading | None, text: str | None, cfg: PlaceCheckConfig) -> str | None:
    """Why the support under the held block is not what subtask ``text`` puts its block on (None: it may be, or
    the reading cannot say: no support colours, a subtask naming no block to stack on)."""
    if reading is None or not reading.support_colours:
        return None
    colour = support_colour(text, reading.support_colours)
    if colour is None:
        return None
    if reading.no_support > cfg.none_prob:
        return f"place check: nothing under the held block (p={reading.no_support:.2f}), not the {colour} block"
    if reading.support_colours[colour] < cfg.min_prob:
        seen = max(reading.support_colours, key=reading.support_colours.get)
        return (f"place check: the block under the held one looks {seen} (p={reading.support_colours[seen]:.2f}), "
                f"not {colour}")
    return None
