"""Labelled wrist-camera views of a block held under the suction cup: training data for the in-hand model.

The cup takes a block wherever it touches its top face, and the block lands as far off its target as it hung off
the cup (oracle agent, 150 held-out `stack` episodes: 1.5 cm median, half the 2 cm a stack allows). The wrist camera
rides on the gantry, so where the held block shows in its image says where the block hangs: `wrist_views` renders
that view for random scenes, cup poses and offsets, each with its label. A held block hangs upright with its top
face on the cup (expert episodes grasping up to 2.5 cm off-centre: tilt under 0.1 degree, top within 0.2 mm of the
cup), so placing it there and rendering, without simulating the grasp, shows what the robot sees.

With ``support`` > 0 a share of the views also has a *support* under the held block: a block on the table or the
top of a two- or three-block tower, somewhere within ``support_radius`` of the cup, as the wrist camera sees the
block a stack goes on while the cup comes over it. Its offset from the cup is labelled too; the other views look
down on a bowl (empty or holding a block) or on bare table, where there is no support (the executor must not snap a
bowl placement onto a block).

Each view also names the held block's colour (`WristViews.colour`, an index into `COLOURS`): the executor's grasp
check reads it to let go of a block of another colour than its subtask asks for (in `sort`, every hierarchical
episode with such a grasp failed). With ``empty`` > 0 that share of the views holds nothing (colour `NOTHING`): the
cup that came down beside a block, or on one already in its bowl, and rose with the suction on and nothing under it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
from tqdm.auto import tqdm

from hybrid.envs.tabletop.env import WORKSPACE, TabletopEnv
from hybrid.envs.tabletop.scene import BLOCK_HALF, BOWL_FLOOR, BOWL_INNER
from hybrid.envs.tabletop.tasks import COLOURS

PER_SCENE = 20  # views rendered in one laid-out scene before the next is drawn
TOWER_SLIP = 0.008  # m: how far each block of a tower may sit off the one below it
CLEAR = 0.07  # m: no other block within this distance of the cup's xy in a view (one support at a time)
NOTHING = len(COLOURS)  # `WristViews.colour` of a view whose cup holds nothing


@dataclass
class WristViews:
    """``images`` ``(N, H, W, 3)`` uint8; ``held`` ``(N, 2)``: the held block's centre minus the cup's (m);
    ``support`` ``(N, 2)``: the support's top block centre minus the cup's (zero where there is none);
    ``present`` ``(N,)`` bool: whether the view has a support under the held block; ``colour`` ``(N,)`` int: the held
    block's colour, an index into `COLOURS`, or `NOTHING` where the cup holds none (its ``held`` is zero);
    ``support_colour`` ``(N,)`` int: the support's top block's colour, or `NOTHING` where there is no support."""

    images: np.ndarray
    held: np.ndarray
    support: np.ndarray
    present: np.ndarray
    colour: np.ndarray
    support_colour: np.ndarray

    @property
    def holds(self) -> np.ndarray:
        """``(N,)`` bool: whether the cup holds a block in each view."""
        return self.colour != NOTHING


def _disk(rng: np.random.Generator, radius: float) -> np.ndarray:
    r, angle = radius * np.sqrt(rng.uniform()), rng.uniform(0.0, 2 * np.pi)
    return r * np.array([np.cos(angle), np.sin(angle)])


def _over_table(rng: np.random.Generator) -> np.ndarray:
    """A random xy over the table, clear of the workspace's edges."""
    return np.array([rng.uniform(*WORKSPACE[0]) * 0.8, rng.uniform(*WORKSPACE[1]) * 0.8])


def _put(scene, block: int, xyz, yaw: float) -> None:
    address = scene.block_qpos[block]
    scene.data.qpos[address : address + 3] = xyz
    scene.data.qpos[address + 3 : address + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))


def _aside(scene, block: int, cup_xy: np.ndarray) -> None:
    """Put ``block`` far from ``cup_xy``, on the table's opposite side (out of the wrist camera's view)."""
    _put(scene, block, (*(-np.sign(cup_xy) * (0.25, 0.38) + 0.02 * block), BLOCK_HALF), 0.0)


def compose_view(scene, rng: np.random.Generator, max_offset: float = 0.03,
                 heights: tuple[float, float] = (0.07, 0.25), support: float = 0.0,
                 support_radius: float = 0.05,
                 empty: bool = False) -> tuple[np.ndarray, np.ndarray, bool, int, int | None]:
    """Pose the cup, a held block and (with probability ``support``) a support in ``scene`` as laid out; returns the
    held block's offset from the cup, the support's (zero without one), whether there is one, the held block and the
    support's top block (None without one). ``empty``: the cup holds nothing (the block that would have been held is
    put aside, its offset zero)."""
    blocks = [int(b) for b in rng.permutation(scene.n_blocks())]
    held, rest = blocks[0], blocks[1:]
    held_offset, support_offset, present = _disk(rng, max_offset), np.zeros(2), False
    bottom, used, top = 0.0, [], None  # the height the held block must stay above; blocks posed under the cup
    if rng.uniform() < support and rest:
        levels = int(rng.integers(1, min(3, len(rest)) + 1))
        cup_xy = _over_table(rng)
        support_offset, present = _disk(rng, support_radius), True
        xy = cup_xy + support_offset
        for level, block in reversed(list(enumerate(rest[:levels]))):  # the top first, then down the tower
            _put(scene, block, (*xy, BLOCK_HALF * (2 * level + 1)), rng.uniform(0.0, 2 * np.pi))
            xy = xy + rng.uniform(-TOWER_SLIP, TOWER_SLIP, 2)
        bottom, used, top = 2 * BLOCK_HALF * levels, rest[:levels], rest[levels - 1]
    elif rng.uniform() < 0.5:  # over a bowl, with a block lying in it half of the time
        bowl = scene.bowl_pos(int(rng.integers(len(scene.bowl_body))))[:2]
        cup_xy = bowl + _disk(rng, BOWL_INNER * 0.6)
        if rest and rng.uniform() < 0.5:
            _put(scene, rest[0], (*(bowl + _disk(rng, 0.045)), BOWL_FLOOR + BLOCK_HALF), rng.uniform(0.0, 2 * np.pi))
            used, bottom = rest[:1], BOWL_FLOOR + 2 * BLOCK_HALF
    else:  # bare table
        cup_xy = _over_table(rng)
    for other in set(rest) - set(used):  # one thing under the cup at a time: the others go far aside
        address = scene.block_qpos[other]
        if np.linalg.norm(scene.data.qpos[address : address + 2] - cup_xy) < CLEAR:
            _aside(scene, other, cup_xy)
    low = max(heights[0], bottom + 2 * BLOCK_HALF + 0.002)
    cup = np.array([*cup_xy, rng.uniform(low, max(low, heights[1]))])
    scene.data.qpos[:3] = cup
    if empty:
        held_offset = np.zeros(2)
        _aside(scene, held, cup_xy)
    else:
        _put(scene, held, (*(cup[:2] + held_offset), cup[2] - BLOCK_HALF), rng.uniform(0.0, 2 * np.pi))
    mujoco.mj_forward(scene.model, scene.data)
    return held_offset, support_offset, present, held, top


def wrist_views(n: int, seed: int = 0, image_size: int = 96, camera: str = "wrist", max_offset: float = 0.03,
                heights: tuple[float, float] = (0.07, 0.25), support: float = 0.0, support_radius: float = 0.05,
                empty: float = 0.0, progress: bool = False) -> WristViews:
    """``n`` labelled views of ``camera`` with one block of a random tabletop scene held under the cup (its offset
    uniform over a disk of ``max_offset``); the cup anywhere over the table, its height in ``heights`` (metres; over a
    support, at least 2 mm above it). A share ``support`` of the views puts a support within ``support_radius``, a
    share ``empty`` holds nothing."""
    if n < 1 or max_offset <= 0 or not 0.0 <= support <= 1.0 or support_radius <= 0 or not 0.0 <= empty < 1.0:
        raise ValueError(f"wrist_views: expected n >= 1, max_offset > 0, 0 <= support <= 1, support_radius > 0, "
                         f"0 <= empty < 1, got n={n}, max_offset={max_offset}, support={support}, "
                         f"support_radius={support_radius}, empty={empty}")
    rng = np.random.default_rng(seed)
    env = TabletopEnv(task="all", cameras=(camera,), image_size=image_size)
    out = WristViews(np.zeros((n, image_size, image_size, 3), np.uint8), np.zeros((n, 2), np.float32),
                     np.zeros((n, 2), np.float32), np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int64))
    try:
        home = None
        for k in tqdm(range(n), desc="wrist views", disable=not progress):
            if k % PER_SCENE == 0:
                env.reset(seed=int(rng.integers(2**31)))
                home = env.scene.data.qpos.copy()
            env.scene.data.qpos[:] = home  # every view starts from the scene as laid out
            nothing = bool(empty) and rng.uniform() < empty  # no draw without empty views: the same views as before
            out.held[k], out.support[k], out.present[k], held, top = compose_view(env.scene, rng, max_offset, heights,
                                                                                  support, support_radius, nothing)
            colours = env.scene.spec.block_colours
            out.colour[k] = NOTHING if nothing else COLOURS.index(colours[held])
            out.support_colour[k] = NOTHING if top is None else COLOURS.index(colours[top])
            out.images[k] = env.render_camera(camera)
    finally:
        env.close()
    return out

