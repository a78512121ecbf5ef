"""A scripted expert for the tabletop: waypoint pick-and-place with privileged state, plus noise.

It works through the episode's subtasks in order. Each is one pick-and-place, a fixed sequence of
phases (rise, over the block, descend, grip, lift, over the goal, lower, release, retreat) whose
waypoints are recomputed from the physics state every step, so it is closed-loop: a dropped block
sends it back to pick it again, a phase that stalls starts its subtask over, and an unfinished
subtask after the retreat is retried. It labels each step with the subtask it is working on; the
label advances only after the retreat that ends a subtask, so a subtask's last frames show it done.

With ``miss`` > 0 some first placements are aimed beside the goal on purpose: the block is let go where
it does not count, and the retry that follows is recorded under the same subtask. Such episodes teach a
planner that a release is not a placement, and an executor how to recover.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from hybrid.envs.tabletop.scene import BLOCK_HALF, BOWL_INNER, Scene
from hybrid.envs.tabletop.tasks import StackOn

PHASES = ("rise", "over_block", "descend", "grip", "lift", "over_goal", "lower", "release", "retreat")
MAX_DELTA = 0.05  # the env's per-axis action limit (metres per step)
REACHED = 0.004  # metres: close enough to a waypoint
FINE_SPEED = 0.02  # metres per step for the last centimetres of a descent
ACCEL = 0.012  # metres per step per step (1.2 m/s^2): how fast the expert changes speed
MIN_SPEED = 0.004  # metres per step: the slowest it moves while a waypoint is still ahead
DWELL = 2  # control steps to let the suction build up or let go
PHASE_BUDGET = 40  # control steps; a phase that takes longer is stuck, so the subtask starts over
MISS_BY = (0.03, 0.05)  # metres beyond a bowl's rim, or from the lower block's centre, a missed placement lands


def check_grasp_spread(grasp_spread: float | None) -> None:
    if grasp_spread is not None and not grasp_spread >= 0.0:  # NaN too
        raise ValueError(f"grasp_spread: expected a distance in metres >= 0, got {grasp_spread}")


class ScriptedExpert:
    """`act(obs) -> action`; `subtask_index` / `subtask_text` say what it is doing now."""

    def __init__(
        self,
        scene: Scene,
        rng: np.random.Generator,
        commanded: Callable[[], np.ndarray],
        noise: float = 0.004,
        miss: float = 0.0,
        grasp_spread: float | None = None,
    ) -> None:
        """``miss``: probability that a subtask's first placement is aimed beside its goal (then retried);
        ``grasp_spread``: grasp the block up to this far (metres) from its centre, in a random direction (None:
        within 3 mm per axis). The placement still puts the *block* on its target: the cup is moved by the
        offset the block is held at, which is what a policy that grasps off-centre has to learn."""
        # `commanded` reads the env's commanded tool position: actions move the command, which the
        # servo tracks with some lag, so steering the command (not the measured position) avoids
        # overshooting waypoints at speed.
        check_grasp_spread(grasp_spread)
        self.scene, self.rng, self.noise, self.commanded = scene, rng, noise, commanded
        self.miss, self._tried = float(miss), set()
        self.grasp_spread = grasp_spread
        self.spec = scene.spec
        self.speed = rng.uniform(0.035, MAX_DELTA)  # per-episode cruise speed, for diversity
        self._speed_now = 0.0
        self.subtask_index = 0
        self.done = False
        self._taken_over: dict[int, object] = {}  # subtask index -> its goal with the block `take_over` chose
        self._start_subtask()

    @property
    def subtask_text(self) -> str:
        return self.spec.subtasks[self.subtask_index]

    def _start_subtask(self) -> None:
        self._phase = 0
        self._dwell = 0
        self._phase_steps = 0
        self._last_z = np.inf
        # Clear everything on the table, plus the block we will carry under the cup.
        self._travel_z = (
            max(self.scene.stack_top(), 2 * BLOCK_HALF) + 2 * BLOCK_HALF + self.rng.uniform(0.03, 0.06)
        )
        if self.grasp_spread is None:  # the draw recordings were made with
            self._grasp_offset = self.rng.uniform(-0.003, 0.003, size=2)
        else:
            angle, radius = self.rng.uniform(0.0, 2 * np.pi), self.rng.uniform(0.0, self.grasp_spread)
            self._grasp_offset = radius * np.array([np.cos(angle), np.sin(angle)])
        tol = 0.002 if isinstance(self.goal, StackOn) else 0.006
        self._place_offset = self.rng.uniform(-tol, tol, size=2)
        first = self.subtask_index not in self._tried
        self._tried.add(self.subtask_index)
        if self.miss and first and self.rng.random() < self.miss:  # no draw at miss=0: recordings stay as they were
            rim = 0.0 if isinstance(self.goal, StackOn) else BOWL_INNER
            angle = self.rng.uniform(0.0, 2 * np.pi)
            self._place_offset = (rim + self.rng.uniform(*MISS_BY)) * np.array([np.cos(angle), np.sin(angle)])

    @property
    def goal(self):
        return self._taken_over.get(self.subtask_index, self.spec.goals[self.subtask_index])

    def take_over(self, subtask_index: int) -> None:
        """Work on ``subtask_index`` from wherever another policy left the scene (DAgger's expert relabelling).

        The phase comes from the physics: holding a block that serves the subtask, it carries it from the lift on;
        holding another block, it lets go of it first (then retreats and starts the subtask over); holding nothing, it
        starts the subtask from the rise, as after a retry."""
        if not 0 <= subtask_index < len(self.spec.goals):
            raise ValueError(f"subtask_index: expected 0..{len(self.spec.goals) - 1}, got {subtask_index}")
        goal, held = self.spec.goals[subtask_index], self.scene.held_blocks()
        # The plan names one block, a bowl's predicate counts its colour: the block in the cup if it serves, else
        # the planned one if it is still out, else another of that colour (the other policy may have placed it).
        candidates = [*sorted(held), goal.block, *range(self.scene.n_blocks())]
        block = next((b for b in candidates if self.scene.serves(goal, b, held)), goal.block)
        self._taken_over = {subtask_index: dataclasses.replace(goal, block=block)}
        self.subtask_index, self.done, self._speed_now = subtask_index, False, 0.0
        self._start_subtask()
        if block in held:
            self._phase = PHASES.index("lift")
        elif held:
            self._phase = PHASES.index("release")

    def act(self, obs: dict) -> np.ndarray:
        ee = np.asarray(obs["agent_pos"][:3], dtype=np.float64)
        for _ in range(len(PHASES) + 1):  # advance through phases already satisfied, then move
            step = self._phase_step(ee)
            if step is not None:
                return step
        return self._hold(0.0)

    def _next(self) -> None:
        self._phase += 1
        self._dwell = 0
        self._phase_steps = 0
        self._last_z = np.inf
        if self._phase == len(PHASES):
            done = self.scene.subtask_success()
            if all(done):
                self.done = True
                self._phase = len(PHASES) - 1
                return
            if done[self.subtask_index]:
                # Normally the next one; an earlier one if this placement knocked it over.
                self.subtask_index = done.index(False)
            self._start_subtask()

    def _phase_step(self, ee: np.ndarray) -> np.ndarray | None:
        """The action for the current phase, or None after advancing to the next one."""
        if self.done:
            return self._hold(0.0)
        name = PHASES[self._phase]
        self._phase_steps += 1
        if self._phase_steps > PHASE_BUDGET:
            self._start_subtask()
            return None
        block = self.goal.block
        if name in ("rise", "over_block", "descend") and self.scene.goal_done(self.goal):
            # Done before it was picked: after a takeover (`take_over`), a block let go of by another policy can
            # settle on its goal. Only the retreat is left.
            self._phase = PHASES.index("retreat")
            return None
        b = self.scene.block_pos(block)
        held = block in self.scene.held_blocks()
        if name in ("lift", "over_goal", "lower") and not held and ee[2] > b[2] + 0.03:
            self._start_subtask()  # dropped it: start this subtask over
            return None
        if name == "rise":
            if ee[2] >= self._travel_z - 0.01:
                return self._next()
            return self._move(ee, np.array([ee[0], ee[1], self._travel_z]), 0.0)
        if name == "over_block":
            wp = np.array([*(b[:2] + self._grasp_offset), self._travel_z])
            if np.linalg.norm(wp[:2] - ee[:2]) < REACHED:
                return self._next()
            return self._move(ee, wp, 0.0)
        if name == "descend":
            top = b[2] + BLOCK_HALF
            if block in self.scene.touching_cup() or ee[2] < top - 0.004:
                return self._next()
            return self._move(ee, np.array([*(b[:2] + self._grasp_offset), top - 0.01]), 0.0, fine_z=top)
        if name in ("grip", "release"):
            suction = 1.0 if name == "grip" else 0.0
            self._dwell += 1
            if self._dwell > DWELL:
                return self._next()
            return self._hold(suction)
        if name == "lift":
            if ee[2] >= self._travel_z - 0.01:
                return self._next()
            return self._move(ee, np.array([ee[0], ee[1], self._travel_z]), 1.0)
        target = self.scene.place_target(self.goal)
        under = b - ee  # where the held block sits relative to the cup
        if name == "over_goal":
            wp = np.array([*(target[:2] - under[:2] + self._place_offset), self._travel_z])
            if np.linalg.norm(wp[:2] - ee[:2]) < REACHED * 0.75:
                return self._next()
            return self._move(ee, wp, 1.0)
        if name == "lower":
            z = target[2] + 0.004 - under[2]  # the block's bottom 4 mm above its support
            stalled = ee[2] > self._last_z - 0.001  # something already supports the block
            self._last_z = ee[2]
            if ee[2] <= z + 0.002 or stalled:
                return self._next()
            wp = np.array([*(target[:2] - under[:2] + self._place_offset), z])
            return self._move(ee, wp, 1.0, fine_z=z + 0.02)
        # retreat
        if ee[2] >= self._travel_z - 0.01:
            return self._next()
        return self._move(ee, np.array([ee[0], ee[1], self._travel_z]), 0.0)

    def _hold(self, suction: float) -> np.ndarray:
        self._speed_now = 0.0
        return np.array([0.0, 0.0, 0.0, suction], np.float32)

    def _move(self, ee, wp, suction: float, fine_z: float | None = None) -> np.ndarray:
        """Steer the command toward `wp` on a trapezoidal speed profile, plus transit noise."""
        delta = wp - self.commanded()
        dist = float(np.linalg.norm(delta))
        # Ramp up, cruise, and brake in time: a jerky cup makes a held block swing.
        speed = min(self.speed, self._speed_now + ACCEL, np.sqrt(2 * ACCEL * dist))
        if fine_z is not None and ee[2] < fine_z + 0.03:
            speed = min(speed, FINE_SPEED)  # slow for the last few centimetres above a contact
        speed = max(speed, min(dist, MIN_SPEED))  # but never stall short of the waypoint
        if dist > speed:
            delta *= speed / dist
        self._speed_now = min(speed, dist)
        # Jitter the path in transit, not the final approach: diversity without losing precision.
        delta += self.rng.normal(0.0, self.noise * min(1.0, dist / 0.05), size=3)
        delta = np.clip(delta, -MAX_DELTA, MAX_DELTA)
        return np.array([*delta, suction], np.float32)
