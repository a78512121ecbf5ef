"""Planner examples from a recorded dataset: (frame, instruction, done subtasks, current) -> reply.

At frame i of subtask k of a plan P (canonical phrasings), the runtime may be up to date
(done P[:k], current P[k]), starting afresh (done P[:k], no current), or one subtask behind (done
P[:k-1], current P[k-1]: the image shows P[k-1] finished). All three must answer P[k], so the model
has to look at the image to tell "still working on P[k-1]" from "P[k-1] is finished". A fourth,
training-only situation, resuming with the history lost (nothing done, no current: a restarted runtime),
leaves the image as the only evidence of progress on every frame, not just at the boundaries.

A subtask counts as finished from its last release of the gripper on, when the recording's gripper
command is given (``gripper``), else in its last ``done_tail_s``: the recording labels a subtask until the
effector has retreated from the finished placement, so those frames already show it done. Every subtask
is treated alike (the last one's finish is where the answer is "done"); otherwise the retreat of an
intermediate subtask would teach "stay" and the same picture a moment later "advance".

Each example also carries how many times the gripper let go since its current subtask began (the runtime
switched to it when the previous one finished): a planner that tracks the gripper (`PromptConfig.gripper_index`)
sees it in the prompt, as the evidence a single frame lacks that the pick-and-place under way has ended.

Each example names the frame of that last release (`Example.release_frame`): a planner shown a camera as it saw
the release (`PromptConfig.release_camera`) gets that camera's frame a few frames after it (`release_view_frame`).
A release placed its block when it is its subtask's last (`ExampleBuilder.placing`); the others missed.

An auxiliary example asks instead for every subtask still left (`ExampleBuilder.left`): in `sort` that is
which blocks are still out of their bowls, read off the picture alone, a denser signal for the vision tower
than the one next subtask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybrid.data import SubtaskIndex, last_releases, release_events
from hybrid.types import PlanStep

VARIANTS = ("current", "fresh", "behind")  # the runtime situations `hybrid eval planner` scores
# Frames after a release at which the runtime's planner first sees the gripper open (it is asked every chunk of
# 4 actions): training draws 0-3, evaluation shows 2.
RELEASE_LAG = 2
TRAIN_WEIGHTS = {"current": 0.4, "fresh": 0.2, "behind": 0.4}


@dataclass(frozen=True)
class Example:
    frame: int
    instruction: str
    done: list[str]
    current: str | None
    target: PlanStep
    accepted: frozenset[str]  # subtasks that count as right (order-free placements allow any remaining)
    releases: int = 0  # times the gripper let go since ``current`` began (0 without a current subtask)
    left: tuple[str, ...] | None = None  # asked instead which subtasks are left (an auxiliary target): these
    release_frame: int | None = None  # the gripper's last release since ``current`` began (None: no release)
    placed: bool | None = None  # asked instead whether that release placed its block (an auxiliary target): this
    release_placed: bool | None = None  # whether that release placed its block (`placing`; on-policy: the sim's)


class ExampleBuilder:
    """``gripper``: the recording's gripper command per frame (e.g. ``observation.state[:, -1]``), closed at
    or above ``closed_at``; with it a subtask finishes at its last release, and examples count releases."""

    def __init__(self, index: SubtaskIndex, canonical=lambda s: s, done_tail_s: float = 0.5,
                 gripper: np.ndarray | None = None, closed_at: float = 0.5, plan_form=list):
        """``plan_form``: rewrites a whole canonical plan (e.g. `tabletop_language.history_ordinals`)."""
        self.index = index
        self.plans = {ep: plan_form([canonical(s) for s in plan]) for ep, plan in index.plans.items()}
        self.tail = max(1, int(round(done_tail_s * index.fps)))
        events = np.zeros(len(index), bool)
        if gripper is not None:
            events = release_events(index, np.asarray(gripper).reshape(len(index)) >= closed_at)
        self.released = np.cumsum(events)
        self.release_frames = np.flatnonzero(events)
        # (episode, subtask position) -> the frame from which that subtask counts as finished
        self.finish: dict[tuple[int, int], int] = {}
        self.placing: set[int] = set()  # releases that finished their subtask (the others missed)
        for start, released in last_releases(index, events).items():
            end = int(index.subtask_end[start])
            key = (int(index.episode[start]), int(index.subtask_index[start]))
            if released is not None:
                self.finish[key] = released
                self.placing.add(released)
            else:  # the time tail: at most the second half
                self.finish[key] = int(np.floor(max(end - self.tail, (start + end) / 2))) + 1

    def finished(self, i: int) -> int:
        """How many subtasks of its plan are finished at frame ``i``."""
        k = int(self.index.subtask_index[i])
        return k + 1 if i >= self.finish[int(self.index.episode[i]), k] else k

    def releases(self, i: int, current: int) -> int:
        """Releases of the gripper after subtask ``current`` of frame ``i``'s plan began, up to frame ``i``.
        It began when the one before it finished; that release is not counted."""
        began = self.finish[int(self.index.episode[i]), current - 1] if current else int(self.index.episode_start[i])
        return int(self.released[i] - self.released[began])

    def last_release(self, i: int, current: int) -> int | None:
        """The frame of the gripper's last release after subtask ``current`` of frame ``i``'s plan began, up to
        frame ``i`` (the releases `releases` counts), or None."""
        if not self.releases(i, current):
            return None
        return int(self.release_frames[np.searchsorted(self.release_frames, i, side="right") - 1])

    def released_under(self, i: int) -> list[tuple[str, int]]:
        """Each release of frame ``i``'s episode up to frame ``i``: the subtask under way then (in the plan's words)
        and the release's frame, what an executor remembers of where it let go (`FlowExecutor.remember_releases`)."""
        plan = self.plans[int(self.index.episode[i])]
        lo = np.searchsorted(self.release_frames, int(self.index.episode_start[i]), side="left")
        hi = np.searchsorted(self.release_frames, i, side="right")
        return [(plan[int(self.index.subtask_index[r])], int(r)) for r in self.release_frames[lo:hi]]

    def left(self, i: int) -> list[str]:
        """The subtasks of frame ``i``'s plan not finished yet, in the plan's order."""
        return self.plans[int(self.index.episode[i])][self.finished(i):]

    def is_done_frame(self, i: int) -> bool:
        return self.finished(i) == len(self.plans[int(self.index.episode[i])])

    def example(self, i: int, variant: str) -> Example | None:
        """The example of frame ``i`` in ``variant`` (None where the variant does not apply)."""
        plan = self.plans[int(self.index.episode[i])]
        k, n, instr = self.finished(i), len(plan), self.index.instruction[i]

        def release(current: int) -> dict:  # the last release under subtask ``current``, and whether it placed
            frame = self.last_release(i, current)
            return {"release_frame": frame, "release_placed": None if frame is None else frame in self.placing}

        if k == n:
            if variant == "resume":
                return Example(i, instr, [], None, PlanStep(done=True), frozenset())
            if variant == "current":
                return Example(i, instr, plan[:n - 1], plan[n - 1], PlanStep(done=True), frozenset(),
                               self.releases(i, n - 1), **release(n - 1))
            if variant == "fresh":
                return Example(i, instr, plan, None, PlanStep(done=True), frozenset())
            return None
        target = PlanStep(subtask=plan[k])
        # Placing blocks in bowls can be done in any order (sorting), stacking cannot.
        order_free = all(" bowl" in s for s in plan[k:])
        if variant == "current":
            return Example(i, instr, plan[:k], plan[k], target, frozenset({plan[k]}), self.releases(i, k),
                           **release(k))
        accepted = frozenset(plan[k:]) if order_free else frozenset({plan[k]})
        if variant == "fresh":
            return Example(i, instr, plan[:k], None, target, accepted)
        if variant == "resume":
            return Example(i, instr, [], None, target, accepted)
        if variant == "behind" and k >= 1:
            return Example(i, instr, plan[:k - 1], plan[k - 1], target, accepted, self.releases(i, k - 1),
                           **release(k - 1))
        return None

    def sample(self, rng: np.random.Generator, frames: np.ndarray, weights: dict[str, float] = TRAIN_WEIGHTS) -> Example:
        """An example of a random frame of ``frames`` in a variant drawn with ``weights`` (variant -> share)."""
        names = list(weights)
        p = np.array([weights[v] for v in names], np.float64)
        while True:
            ex = self.example(int(rng.choice(frames)), names[int(rng.choice(len(names), p=p / p.sum()))])
            if ex is not None:
                return ex


def release_view_frame(ex: Example, lag: int = RELEASE_LAG) -> int | None:
    """The frame whose release-camera image ``ex`` shows (`PromptConfig.release_camera`): ``lag`` frames after its
    last release, never after the example's own frame; None before any release."""
    return None if ex.release_frame is None else min(ex.release_frame + lag, ex.frame)
