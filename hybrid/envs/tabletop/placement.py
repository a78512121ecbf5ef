"""Where released blocks come to rest against where their task wants them: the executor's placement precision.

Success per family says whether the blocks ended up right; it does not say by how much a placement missed.
`stack` needs a block to rest within 2 cm (half a block) of the lower block's centre, a bowl within its rim
(8.4 cm), so an executor that places every block 3 cm off solves the bowl families and never a stack.
`PlacementProbe` is a runtime subscriber that measures each release: `hybrid eval` reports its summary.
Besides the miss, two causes of a failed stack it keeps apart: how far off-centre the cup held the block it let
go of (the block lands off by as much, whatever the cup aimed at) and how far the block fell; and a third, a
finished subtask undone while none of its blocks was held (a tower swept over on the way to it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid.envs.tabletop.scene import BLOCK_HALF, BOWL_INNER
from hybrid.envs.tabletop.tasks import StackOn

SETTLE_STEPS = 20  # control steps (2 s) after a release before a still-moving block is measured anyway
# (also how long a finished subtask stays undone, none of its blocks held, before it counts as knocked over)


class PlacementProbe:
    """For each block let go of, once it rests: its horizontal distance from its target (the lower block's
    centre for a stack subtask, the nearest centre of a bowl its colour is asked into) and whether it is within
    the target's tolerance. A block picked up again before it rests is not a placement; a block no subtask
    asks for is counted apart (``wrong_block``). Also, per release, the held block's horizontal offset from the
    cup the moment it is let go of and how far it then falls; per episode, the finished subtasks undone while
    none of their blocks was held (``knocked``)."""

    def __init__(self, env):
        self.env = env
        self.errors: list[float] = []  # metres, one per measured release of a goal block
        self.on_target: list[bool] = []
        self.wrong_block = 0
        self.grasp_offsets: list[float] = []  # metres, block centre to cup, at each release of a goal block
        self.drops: list[float] = []  # metres, from the release to where the block rests
        self.knocked = 0
        self.episodes = 0
        self._held: set[int] = set()
        self._settling: dict[int, int] = {}  # block -> steps since it was let go of
        self._holding: dict[int, tuple[float, float]] = {}  # held block -> (offset from the cup, height), last step
        self._released: dict[int, tuple[float, float]] = {}  # the same, at the last step before its release
        self._done: list[bool] = []  # each goal finished at the step before
        self._undone: dict[int, int] = {}  # goal -> steps since it came undone, none of its blocks held

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        self.episodes += 1
        self._held, self._settling, self._holding, self._released, self._undone = set(), {}, {}, {}, {}
        self._done = [False] * len(self.env.scene.spec.goals)

    def on_step(self, record) -> None:
        scene = self.env.scene
        held, resting = scene.held_blocks(), scene.resting()
        for i in self._held - held:
            self._settling[i] = 0
            self._released[i] = self._holding.pop(i)
        for i in held:  # read while held: a step after the release the block has fallen up to 5 cm
            pos = scene.block_pos(i)
            self._holding[i] = (float(np.linalg.norm(pos[:2] - scene.effector[:2])), float(pos[2]))
        for i in list(self._settling):
            if i in held:  # picked up again before it came to rest
                del self._settling[i]
                continue
            self._settling[i] += 1
            if resting[i] or self._settling[i] >= SETTLE_STEPS:
                self._measure(i)
                del self._settling[i]
        self._held = held
        self._watch_goals(held)

    def _watch_goals(self, held: set[int]) -> None:
        """Count a finished goal undone for `SETTLE_STEPS` steps while none of its blocks was held as knocked."""
        scene = self.env.scene
        done = scene.subtask_success(held)
        for g, goal in enumerate(scene.spec.goals):
            if done[g] or held & self._blocks_of(goal):  # standing, or taken apart on purpose
                self._undone.pop(g, None)
            elif self._done[g] or g in self._undone:
                self._undone[g] = self._undone.get(g, 0) + 1
                if self._undone[g] >= SETTLE_STEPS:
                    self.knocked += 1
                    del self._undone[g]
        self._done = done

    def _blocks_of(self, goal) -> set[int]:
        spec = self.env.scene.spec
        if isinstance(goal, StackOn):
            return {goal.block, goal.base}
        return {i for i, colour in enumerate(spec.block_colours) if colour == goal.colour}

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
        if i in self._released:
            offset, height = self._released.pop(i)
            self.grasp_offsets.append(offset)
            self.drops.append(max(0.0, height - float(scene.block_pos(i)[2])))

    def summary(self) -> dict[str, float | int | None]:
        """``release_error_cm_p50`` (None without a measured release), ``releases_on_target`` (share within
        tolerance), ``releases_per_episode`` (goal blocks) and ``wrong_block_releases`` (in all);
        ``grasp_offset_cm_p50`` and ``release_drop_cm_p50`` of those releases, ``knocked_per_episode``."""
        def median_cm(values: list[float]) -> float | None:
            return round(100 * float(np.median(values)), 2) if values else None

        return {
            "release_error_cm_p50": median_cm(self.errors),
            "releases_on_target": round(float(np.mean(self.on_target)), 3) if self.on_target else None,
            "releases_per_episode": round(len(self.errors) / max(1, self.episodes), 2),
            "wrong_block_releases": self.wrong_block,
            "grasp_offset_cm_p50": median_cm(self.grasp_offsets),
            "release_drop_cm_p50": median_cm(self.drops),
            "knocked_per_episode": round(self.knocked / max(1, self.episodes), 2),
        }
