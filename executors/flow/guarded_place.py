"""A guarded place: let go of a block stacked on a block only once it rests on something. A run-time rule on the
executor's action chunks, not learned.

The learned actions let go of a block wherever they believe the place is, often from above it: at the oracle agent's
placements onto a block on the table with the held block within 1.5 cm of the lower one, a release with the cup 6 cm
or more above contact stayed 0.61 of the time against 0.94 at contact (578 releases of four held-out `stack`
traces); and where the maps found a bowl or bare table for the lower block, the block was let go of there and the
subtask looked finished to the planner. Pick-and-place cells place by a guarded move instead: come down until the
load stops, then open. Here the cup's position servo stops when the held block meets a support, so the state says it:

- a chunk that would let go before the next chunk is asked for (within ``horizon`` steps), under a subtask that puts
  a block on a block, keeps the suction on and comes straight down ``step`` per step instead;
- the learned chunks that follow are replaced the same way, whether they would let go or not (held back, they come
  back up and down over the place);
- a learned chunk that comes down ``horizon`` x ``step`` or more over those steps, each of them (and of the committed
  prefix) coming down, letting go later, is watched the same way: the chunks expect the place lower than it is (a
  tower a level higher than they believe) and, the cup resting on it, would press down for ever without letting go;
- at the next chunk, the effector having come down less than ``stall`` since (it rests on something), it lets go
  there: one step takes back what the descent pressed on (let go of with the servo's command below the cup, the cup
  drives on into the block and its retreat drags the tower along), then the cup rises straight up ``rise`` with the
  suction off;
- with the effector below ``floor`` (the held block rests on the table, in a bowl or tilted on its rim: nothing of a
  block's height is under it) the place is given up: the cup rises ``rise`` still holding, and the executor keeps that
  spot off its place map for the subtask (as the place check does), up to ``retries`` times per subtask;
- with ``probe``, the cup let go of the block rises only ``probe`` and comes straight back down, the suction off, to
  ``probe_depth`` below where the block rested: stopped where the block's top was, the block stayed (its subtask is
  finished); come down past half of that, nothing is there (the block tipped off its support: its subtask is to be
  done again). Held 1.5-4 cm off the lower block's centre, a block rests on its edge while the cup holds it and falls
  off once let go of, and the planner, told the subtask was finished, moved on: in 56 of the 98 hierarchical `stack`
  failures over 400 held-out seeds the first wrong subtask came after such a miss (the oracle agent, which retries,
  finished the subtask later after 59 of its 76 misses near the lower block).

Oracle agent, 150 held-out `stack` seeds: 0.70 -> 0.853, releases on target 0.66 -> 0.86 (docs/experiments.md).

The embodiment's state starts with the effector's (x, y, z) and its actions with (dx, dy, dz) per step, as the
tabletop's do.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from executors.flow.transit import climb_straight_up
from executors.flow.waypoints import GRIPPER_ON


class GuardedPlaceConfig(BaseModel):
    """`FlowExecutor`'s ``guarded_place`` setting (None: off)."""

    model_config = ConfigDict(extra="forbid")

    step: float = Field(gt=0)  # m per step: the guarded descent's speed
    stall: float = Field(gt=0)  # m: the effector came down less than this since the chunk before: it rests on something
    floor: float  # m, in the state's z: a cup resting lower than this holds its block on the table, not on a block
    rise: float = Field(gt=0)  # m: how far the cup climbs, still holding, after giving a place up
    rise_step: float = Field(gt=0)  # m per step of that climb (the action bound)
    retries: int = Field(ge=0)  # places given up per subtask, after which the learned release runs wherever it is
    # Steps of a chunk that run before the next chunk is asked for (after the first ``committed``): a release
    # planned later is planned again before it runs, so it is left alone.
    horizon: int = Field(4, ge=1)
    # m: how far the cup rises after letting go on a block (clear of it as it tips) before it comes back down to
    # ``probe_depth`` below the block's top, ``probe_step`` per step, to feel whether it stayed; None: it rises
    # ``rise`` at once and the block counts as stayed.
    probe: float | None = Field(None, gt=0)
    probe_depth: float = Field(0.01, gt=0)
    probe_step: float = Field(0.01, gt=0)
    probe_chunks: int = Field(3, ge=2)  # chunks of the probe after which a cup held up elsewhere calls it a miss
    # m, in the state's z: under a bowl subtask too the release waits until the held block rests on something; resting
    # with the cup at or below this the block is on the bowl's floor (the guarded descent stalls there at 5.5-6.1 cm,
    # on a block already in the bowl at 8.3): let go of; higher, the place is given up as on a tower. None: bowl
    # subtasks let go as learned (docs/experiments.md, "A guarded bowl release that lets go low in the bowl").
    bowl_floor: float | None = Field(None, gt=0)
    bowl_step: float | None = Field(None, gt=0)  # m per step of that descent over a bowl (None: ``step``)
    # whether a cup at or below ``bowl_floor`` lets go at once, resting or still coming down: the held block is
    # inside the bowl's wall, and waiting for the stall test costs a chunk a placement (`sort` ran out of steps)
    bowl_low_let_go: bool = False
    # m, in the state's z: where the cup stops on the top of a block lying on a bowl's floor. Set (with ``probe``), a
    # block let go of in a bowl is probed there as one on a tower: felt, its subtask is finished; the cup past it or
    # held up higher (the block tilted on another or on the rim), not placed. None: no probe.
    bowl_probe: float | None = Field(None, gt=0)
    # whether a block let go of on a bowl's floor scores its subtask READ_MIN in the planner's check (read finished)
    bowl_read_finished: bool = False


def first_release(actions: np.ndarray, committed: int = 0, gripper_index: int = -1) -> int | None:
    """The index of the chunk's first release command at or after ``committed`` (None: it holds throughout)."""
    open_ = np.flatnonzero(np.asarray(actions)[committed:, gripper_index] < GRIPPER_ON)
    return None if len(open_) == 0 else committed + int(open_[0])


def descend_holding(actions: np.ndarray, start: int, step: float, gripper_index: int = -1) -> np.ndarray:
    """``actions`` ``(H, A)`` with every step from ``start`` on replaced by a straight descent of ``step`` per step,
    the suction kept on."""
    out = np.array(actions, dtype=np.float32, copy=True)
    out[start:] = 0.0
    out[start:, 2] = -step
    out[start:, gripper_index] = 1.0
    return out


def let_go(actions: np.ndarray, cfg: GuardedPlaceConfig, pressed: float, committed: int = 0,
           gripper_index: int = -1, rise: float | None = None) -> np.ndarray:
    """``actions`` ``(H, A)`` replaced, after the first ``committed``, by one step that takes back what the descent of
    the chunk before pressed on (``pressed``: how far its commands went below where the cup stopped), then a release
    rising straight up by ``rise`` (None: ``cfg.rise``). Let go of with the command still below the cup, the servo
    drives the cup on down onto the block, and a retreat sideways drags the tower along; and the learned chunks,
    held back from letting go, come back up and down over the place instead of letting go there."""
    out = climb_straight_up(actions, cfg.rise if rise is None else rise, cfg.rise_step, 0.0, committed, gripper_index)
    out[committed + 1:] = out[committed:-1]
    out[committed] = 0.0
    out[committed, 2], out[committed, gripper_index] = max(0.0, pressed), 1.0
    return out


def rise_holding(actions: np.ndarray, cfg: GuardedPlaceConfig, committed: int = 0,
                 gripper_index: int = -1) -> np.ndarray:
    """``actions`` ``(H, A)`` replaced, after the first ``committed``, by a climb straight up by ``cfg.rise`` with the
    suction on, then holding still."""
    return climb_straight_up(actions, cfg.rise, cfg.rise_step, 1.0, committed, gripper_index)


def probe_down(actions: np.ndarray, z: float, bottom: float, step: float, committed: int = 0,
               gripper_index: int = -1) -> np.ndarray:
    """``actions`` ``(H, A)`` replaced, after the first ``committed``, by a straight descent with the suction off from
    ``z`` (the effector's height now) to ``bottom`` at ``step`` per step, then holding still: a block under the cup
    stops it above ``bottom``."""
    out = climb_straight_up(actions, z - bottom, step, 0.0, committed, gripper_index)
    out[committed:, 2] *= -1.0  # the climb's profile, downwards
    return out
