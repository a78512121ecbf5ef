"""Where released blocks come to rest against where their task wants them: the executor's placement precision.

Success per family says whether the blocks ended up right; it does not say by how much a placement missed.
`stack` needs a block to rest within 2 cm (half a block) of the lower block's centre, a bowl within its rim
(8.4 cm), so an executor that places every block 3 cm off solves the bowl families and never a stack.
`PlacementProbe` is a runtime subscriber that measures each release: `hybrid eval` reports its summary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid.envs.tabletop.scene import BLOCK_HALF, BOWL_INNER
from hybrid.envs.tabletop.tasks import StackOn

SETTLE_STEPS = 20  # control steps (2 s) after a release before a still-moving block is measured anyway


class PlacementProbe:
    """For each block let go of, once it rests: its horizontal distance from its target (the lower block's
    centre for a stack subtask, the nearest centre of a bowl its colour is asked into) and whether it is within
    the target's tolerance. A block picked up again before it rests is not a placement; a block no subtask
    asks for is counted apart (``wrong_block``)."""

    def __init__(self, env):
        self.env = env
        self.errors: list[float] = []  # metres, one per measured release of a goal block
        self.on_target: list[bool] = []
        self.wrong_block = 0
        self.episodes = 0
        self._held: set[int] = set()
        self._settling: dict[int, int] = {}  # block -> steps since it was let go of

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        self.episodes += 1
        self._held, self._settling = set(), {}

    def on_step(self, record) -> None:
        scene = self.env.scene
        held, resting = scene.held_blocks(), scene.resting()
        for i in self._held - held:
            self._settling[i] = 0
        for i in list(self._settling):
            if i in held:  # picked up again before it came to rest
                del self._settling[i]
                continue
            self._settling[i] += 1
            if resting[i] or self._settling[i] >= SETTLE_STEPS:
                self._measure(i)
                del self._settling[i]
        self._held = held

    def on_episode_end(self, result) -> None:
        for i in self._settling:  # let go of in the last steps: measured where it is
            self._measure(i)
        self._settling = {}

    def close(self) -> None:
        pass

    def _measure(self, i: int) -> None:
        scene = self.env.scene
        spec = scene.spec
        xy = scene.block_pos(i)[:2]
        stacks = [g for g in spec.goals if isinstance(g, StackOn) and g.block == i]
        if stacks:
            error, tolerance = np.linalg.norm(xy - scene.block_pos(stacks[0].base)[:2]), BLOCK_HALF
        else:
            bowls = {g.bowl for g in spec.goals if not isinstance(g, StackOn)
                     and g.colour == spec.block_colours[i]}
            if not bowls:
                self.wrong_block += 1
                return
            error, tolerance = min(np.linalg.norm(xy - scene.bowl_pos(b)[:2]) for b in bowls), BOWL_INNER
        self.errors.append(float(error))
        self.on_target.append(bool(error < tolerance))

    def summary(self) -> dict[str, float | int | None]:
        """``release_error_cm_p50`` (None without a measured release), ``releases_on_target`` (share within
        tolerance), ``releases_per_episode`` (goal blocks) and ``wrong_block_releases`` (in all)."""
        return {
            "release_error_cm_p50": round(100 * float(np.median(self.errors)), 2) if self.errors else None,
            "releases_on_target": round(float(np.mean(self.on_target)), 3) if self.on_target else None,
            "releases_per_episode": round(len(self.errors) / max(1, self.episodes), 2),
            "wrong_block_releases": self.wrong_block,
        }
