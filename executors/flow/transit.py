"""A transit height for carried blocks: a run-time rule on the executor's action chunks, not learned.

The tabletop executor carries a block at the height most of its recordings carry one (11-14 cm, the height
that clears blocks lying on the table), whatever stands on the table: a two-block tower's top is grazed on the
way to it, a three-block one swept over (oracle agent, 12 held-out `stack` episodes: clearance under the
held block at its 10th percentile 0.1 cm past a two-block tower, -5.4 cm past a three-block one; in 28 of 50
episodes a stacked block was knocked off). Pick-and-place cells keep a safe transit plane for this: while the
gripper holds and the effector is farther than ``radius`` from the place the executor steers to, the chunk
climbs straight to ``height`` before it moves sideways and does not sink below it; within ``radius`` the
learned descent and release run as they are.

The embodiment's state starts with the effector's (x, y, z) and its actions with (dx, dy, dz) per step, as the
tabletop's do.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from executors.flow.waypoints import GRIPPER_ON


class TransitConfig(BaseModel):
    """`FlowExecutor`'s ``transit`` setting (None: off)."""

    model_config = ConfigDict(extra="forbid")

    height: float = Field(gt=0)  # m, in the state's z: the effector's lowest height while carrying away from the place
    radius: float = Field(gt=0)  # m: within this xy distance of the place the learned descent takes over
    climb: float = Field(gt=0)  # m per step: how fast the chunk climbs to ``height`` (the action bound)
    # Only once a block has been let go of on a support this episode (`FlowExecutor`'s in-hand model saw one): before,
    # no tower stands to sweep over, and the climb costs every bowl placement its time.
    towers_only: bool = False


def hold_transit_height(actions: np.ndarray, position: np.ndarray, place: np.ndarray, held: bool,
                        cfg: TransitConfig, committed: int = 0, gripper_index: int = -1) -> np.ndarray:
    """``actions`` ``(H, A)`` with the carrying steps kept at or above ``cfg.height``.

    ``position``: the effector's (x, y, z) when the chunk starts; ``place``: the place xy steered to (NaN:
    none, the chunk is left as it is); ``held``: whether the gripper holds now. The first ``committed``
    actions (real-time chunking's prefix, already on their way) are integrated but not changed. The rule
    stops at the chunk's first release command."""
    if not held or not np.isfinite(place).all():
        return actions
    out = np.array(actions, dtype=np.float32, copy=True)
    for k, a, p in held_steps(out, position, gripper_index):
        if k >= committed and np.linalg.norm(p[:2] - place) > cfg.radius:
            below = cfg.height - p[2]
            if below > 1e-3:  # climb straight up first: moving sideways down here sweeps what stands on the table
                a[:2] = 0.0
                a[2] = max(float(a[2]), min(cfg.climb, below))
            else:
                a[2] = max(float(a[2]), below)
    return out


def held_steps(actions: np.ndarray, position: np.ndarray, gripper_index: int = -1):
    """Walk a chunk up to its first release command: yields (step, its action row, the effector's (x, y, z) before
    it). A rule edits the row in place; the position then moves by the edited action."""
    p = np.asarray(position, np.float64)[:3].copy()
    for k, a in enumerate(actions):
        if a[gripper_index] < GRIPPER_ON:
            return
        yield k, a, p
        p += a[:3]


def climb_straight_up(actions: np.ndarray, rise: float, step: float, suction: float, committed: int = 0,
                      gripper_index: int = -1) -> np.ndarray:
    """``actions`` ``(H, A)`` replaced, after the first ``committed`` (real-time chunking's prefix, already on their
    way), by a climb straight up by ``rise`` at ``step`` per step with the suction command ``suction``, then holding
    still."""
    out = np.array(actions, dtype=np.float32, copy=True)
    rest = out[committed:]
    rest[:] = 0.0  # no sideways motion
    rest[:, 2] = np.minimum(step, np.maximum(0.0, rise - step * np.arange(len(rest))))
    rest[:, gripper_index] = suction
    return out
