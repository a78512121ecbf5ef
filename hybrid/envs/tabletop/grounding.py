"""Whether each subtask the agent takes on names a block that is still to be moved: the planner's grounding.

Success and the placement probe judge where blocks end up; they do not say whose fault a failure is. A planner
that asks for "the blue block in the blue bowl" when no blue block is left outside that bowl (or none is on
the table at all) costs the episode the steps the executor spends looking for it. `GroundingProbe` is a
runtime subscriber that checks every subtask the agent switches to against the physics at that moment:
`hybrid eval` reports the share of such subtasks and of the steps spent on them, and the share that would move a
block where the task does not want it (`sort`'s blue block into the red bowl: grounded, yet off the task).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from hybrid.envs.tabletop.scene import BLOCK_HALF, BOWL_INNER
from hybrid.envs.tabletop.tasks import StackOn

_BLOCK = re.compile(r"\b([a-z]+)\s+(?:block|cube)s?\b")
_BOWL = re.compile(r"\b([a-z]+)\s+bowl\b")


class GroundingProbe:
    """Counts the subtasks the agent works on (a new one each time its current subtask changes) and those that
    name no block still to be moved: for "<colour> block ... <colour> bowl", no block of that colour is outside
    that bowl; for "<colour> block on the <colour> block", either block is missing or the first already rests
    on the second. Text that names neither counts as ungrounded too. Off the task: the (block colour, bowl or
    lower block colour) pair the text names is no goal's of the episode's task."""

    def __init__(self, env):
        self.env = env
        self.asked = self.ungrounded = self.off_task = self.steps = self.steps_ungrounded = self.episodes = 0
        self._goals: set[tuple[str, str]] = set()
        self._current: tuple[int, str] | None = None
        self._grounded = True

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        self.episodes += 1
        self._current, self._grounded = None, True
        self._goals = goal_pairs(self.env.scene.spec)

    def on_step(self, record) -> None:
        subtask = record.current_subtask
        if subtask is None or subtask.text == record.instruction:  # no planner (the flat agent): nothing to judge
            return
        if (subtask.index, subtask.text) != self._current:
            self._current = (subtask.index, subtask.text)
            self._grounded = self.grounded(subtask.text)
            self.asked += 1
            self.ungrounded += not self._grounded
            self.off_task += named_pair(subtask.text) not in self._goals
        self.steps += 1
        self.steps_ungrounded += not self._grounded

    def on_episode_end(self, result) -> None:
        pass

    def close(self) -> None:
        pass

    def grounded(self, text: str) -> bool:
        """Whether ``text`` names a block that is still to be moved, in the scene as it is now."""
        pair = named_pair(text)
        if pair is None:
            return False
        block, (where, target) = pair[0], pair[1].split(" ", 1)
        scene = self.env.scene
        spec = scene.spec
        colours = np.array(spec.block_colours)
        pos = np.array([scene.block_pos(i) for i in range(len(colours))])
        loose = np.ones(len(colours), bool)  # let go of: a held block is still being moved
        loose[list(scene.held_blocks())] = False
        if where == "bowl":
            if target not in spec.bowl_colours:
                return False
            centre = scene.bowl_pos(spec.bowl_colours.index(target))
            inside = np.linalg.norm(pos[:, :2] - centre[:2], axis=1) < BOWL_INNER
            low = pos[:, 2] < 3 * BLOCK_HALF  # on the floor, not passing over the rim
            return bool(np.any((colours == block) & ~(inside & low & loose)))
        upper, lower = np.flatnonzero(colours == block), np.flatnonzero(colours == target)
        if len(upper) == 0 or len(lower) == 0:
            return False
        on = np.linalg.norm(pos[upper[0], :2] - pos[lower[0], :2]) < BLOCK_HALF and loose[upper[0]] \
            and pos[upper[0], 2] - pos[lower[0], 2] > BLOCK_HALF
        return not on

    def summary(self) -> dict[str, float | None]:
        """``subtasks_per_episode`` (subtasks taken on), ``ungrounded_subtasks`` (their share naming no block
        still to be moved), ``off_task_subtasks`` (their share naming a move no goal of the task asks for) and
        ``steps_on_ungrounded`` (the share of steps spent on ungrounded ones); None without a subtask (an agent
        that acts on the instruction itself)."""
        return {
            "subtasks_per_episode": round(self.asked / max(1, self.episodes), 2),
            "ungrounded_subtasks": round(self.ungrounded / self.asked, 3) if self.asked else None,
            "off_task_subtasks": round(self.off_task / self.asked, 3) if self.asked else None,
            "steps_on_ungrounded": round(self.steps_ungrounded / self.steps, 3) if self.steps else None,
        }


def named_pair(text: str) -> tuple[str, str] | None:
    """(block colour, "bowl <colour>" | "on <colour>") of a subtask's text, or None when it names no such move."""
    t = text.lower()
    blocks, bowl = _BLOCK.findall(t), _BOWL.search(t)
    if bowl and blocks:
        return blocks[0], f"bowl {bowl.group(1)}"
    if len(blocks) >= 2:
        return blocks[0], f"on {blocks[1]}"
    return None


def goal_pairs(spec) -> set[tuple[str, str]]:
    """The (block colour, destination) pairs of a task's goals, as `named_pair` spells them."""
    pairs = set()
    for goal in spec.goals:
        if isinstance(goal, StackOn):
            pairs.add((spec.block_colours[goal.block], f"on {spec.block_colours[goal.base]}"))
        else:
            pairs.add((goal.colour, f"bowl {spec.bowl_colours[goal.bowl]}"))
    return pairs
