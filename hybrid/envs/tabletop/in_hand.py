"""Labelled views of a block held off-centre under the suction cup: training data for the in-hand offset.

The cup takes a block wherever it touches its top face, and the block lands as far off its target as it hung off
the cup (oracle agent, 150 held-out `stack` episodes: 1.5 cm median, half the 2 cm a stack allows). The wrist camera
rides on the gantry, so where the held block shows in its image says where the block hangs: `held_block_views`
renders that view for random scenes, cup poses and offsets, each with its label. A held block hangs upright with its
top face on the cup (expert episodes grasping up to 2.5 cm off-centre: tilt under 0.1 degree, top within 0.2 mm of
the cup), so placing it there and rendering, without simulating the grasp, shows what the robot sees.
"""

from __future__ import annotations

import mujoco
import numpy as np
from tqdm.auto import tqdm

from hybrid.envs.tabletop.env import WORKSPACE, TabletopEnv
from hybrid.envs.tabletop.scene import BLOCK_HALF

PER_SCENE = 20  # views rendered in one laid-out scene before the next is drawn


def held_block_views(n: int, seed: int = 0, image_size: int = 96, camera: str = "wrist", max_offset: float = 0.03,
                     heights: tuple[float, float] = (0.07, 0.25), progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, H, W, 3)`` uint8 of ``camera`` with one block of a random tabletop scene under the cup, and
    each block's horizontal offset from the cup ``(n, 2)`` in metres (block centre minus cup, uniform over a disk of
    ``max_offset``). The cup is put anywhere over the table at a height in ``heights`` (metres)."""
    if n < 1 or max_offset <= 0:
        raise ValueError(f"held_block_views: expected n >= 1 and max_offset > 0, got n={n}, max_offset={max_offset}")
    rng = np.random.default_rng(seed)
    env = TabletopEnv(task="all", cameras=(camera,), image_size=image_size)
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    offsets = np.zeros((n, 2), np.float32)
    try:
        for k in tqdm(range(n), desc="in-hand views", disable=not progress):
            if k % PER_SCENE == 0:
                env.reset(seed=int(rng.integers(2**31)))
            scene = env.scene
            cup = np.array([rng.uniform(*WORKSPACE[0]) * 0.9, rng.uniform(*WORKSPACE[1]) * 0.9, rng.uniform(*heights)])
            radius, angle = max_offset * np.sqrt(rng.uniform()), rng.uniform(0.0, 2 * np.pi)
            offsets[k] = radius * np.array([np.cos(angle), np.sin(angle)])
            block, yaw = int(rng.integers(scene.n_blocks())), rng.uniform(0.0, 2 * np.pi)
            scene.data.qpos[:3] = cup
            address = scene.block_qpos[block]
            scene.data.qpos[address : address + 3] = (*(cup[:2] + offsets[k]), cup[2] - BLOCK_HALF)
            scene.data.qpos[address + 3 : address + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
            mujoco.mj_forward(scene.model, scene.data)
            images[k] = env.render_camera(camera)
    finally:
        env.close()
    return images, offsets
