"""`TabletopEnv`: the built-in MuJoCo tabletop as a gymnasium env.

Observation (mirrors LeRobot's gym envs):
    pixels: {camera: uint8 HxWx3} for each of `cameras` ("front": fixed scene view, "wrist": on the effector)
    agent_pos: float32[4] = (x, y, z) of the tool centre point in metres, world frame (table top is z = 0),
               and the suction state in [0, 1]
Action: float32[4] = (dx, dy, dz, gripper)
    dx, dy, dz: change of the commanded tool position, metres per control step, each in [-0.05, 0.05]
               (0.5 m/s at 10 Hz). A position servo tracks the command; the command is clamped to the
               workspace and kept within 5 cm of the measured position, so a blocked effector does not
               wind up an ever larger force.
    gripper:   suction command in [0, 1]; it scales the suction force (0 = off, 1 = full, >= 0.5 holds).
Control runs at `control_hz` (10 Hz default) over 2 ms physics steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from hybrid.envs.tabletop.expert import ScriptedExpert
from hybrid.envs.tabletop.grounding import GroundingProbe
from hybrid.envs.tabletop.placement import PlacementProbe
from hybrid.envs.tabletop.scene import BLOCK_HALF, Scene
from hybrid.envs.tabletop.tasks import FAMILIES, sample_task

CAMERAS = ("front", "wrist")
MAX_DELTA = 0.05  # metres per control step, per axis
WORKSPACE = np.array([[-0.28, 0.28], [-0.4, 0.4], [0.0, 0.4]])  # tool centre point limits, metres
# The command stays this close to the measured position: more than the servo's ~3 cm lag at full speed,
# little enough that pushing against the table or a block presses with a bounded force (kp x 5 cm = 75 N).
WINDUP = 0.05
# agent_pos bounds: the gantry's joint ranges, padded for the servo's overshoot and contact penetration.
STATE_LOW = np.array([-0.31, -0.43, -0.01, 0.0], np.float32)
STATE_HIGH = np.array([0.31, 0.43, 0.46, 1.0], np.float32)
ACTION_NAMES = ("dx", "dy", "dz", "gripper")


class TabletopEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str = "all",
        split: str = "train",
        image_size: int | tuple[int, int] = 96,
        cameras: tuple[str, ...] | list[str] = CAMERAS,
        control_hz: float = 10,
        max_steps: int = 300,
        render_mode: str | None = None,
    ) -> None:
        if task != "all" and task not in FAMILIES:
            raise ValueError(f"task: expected 'all' or one of {FAMILIES}, got {task!r}")
        if split not in ("train", "heldout"):
            raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras:
            raise ValueError(f"cameras: expected a non-empty subset of {CAMERAS}, got {list(cameras)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.task, self.split, self.render_mode = task, split, render_mode
        self.cameras = tuple(cameras)
        self.height, self.width = (
            (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        )
        self.control_hz, self.max_steps = float(control_hz), int(max_steps)
        self.metadata = {**self.metadata, "render_fps": self.control_hz}

        self.scene = Scene()
        dt = self.scene.model.opt.timestep
        self.n_substeps = max(1, round(1.0 / (self.control_hz * dt)))
        self._renderer: mujoco.Renderer | None = None
        self._scratch = mujoco.MjData(
            self.scene.model
        )  # for oracle subgoals; the episode's data is untouched

        image = spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Dict({cam: image for cam in self.cameras}),
                "agent_pos": spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32),
            }
        )
        self.action_space = spaces.Box(
            np.array([-MAX_DELTA] * 3 + [0.0], np.float32), np.array([MAX_DELTA] * 3 + [1.0], np.float32)
        )
        self._target = np.zeros(3)
        self._steps = 0
        self._expert_seed = 0

    # ---- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; `options={"family": name}` picks the family when the env was made with "all"."""
        super().reset(seed=seed)
        family = (options or {}).get("family") or self.task
        if family == "all":
            family = FAMILIES[int(self.np_random.integers(len(FAMILIES)))]
        spec = sample_task(family, self.np_random, self.split)
        self.scene.randomise(spec, self.np_random)
        self._target = self.scene.effector
        self._steps = 0
        self._expert_seed = int(self.np_random.integers(2**31))
        return self._observation(), self._info()

    def step(self, action):
        a = self.check_action(action)  # before touching any state: a bad action leaves the episode intact
        d = self.scene.data
        pos = self.scene.effector
        target = np.clip(self._target + a[:3], WORKSPACE[:, 0], WORKSPACE[:, 1])
        self._target = np.clip(target, pos - WINDUP, pos + WINDUP)
        d.ctrl[:3] = self._target
        d.ctrl[self.scene.suction] = a[3]
        mujoco.mj_step(self.scene.model, d, nstep=self.n_substeps)
        self._steps += 1
        info = self._info()
        truncated = self._steps >= self.max_steps
        return self._observation(), float(info["success"]), info["success"], truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self._render_camera(self.scene.data, "front")
        return None

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- contract extras -----------------------------------------------------------------------
    def check_action(self, action) -> np.ndarray:
        """Validate an action; raise ValueError naming the offending component, change nothing."""
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"action: expected 4 numbers {ACTION_NAMES}, got {type(action).__name__} ({err})"
            ) from None
        if a.shape != (4,):
            raise ValueError(f"action: expected shape (4,) = {ACTION_NAMES}, got shape {a.shape}")
        low, high = self.action_space.low, self.action_space.high
        for i, name in enumerate(ACTION_NAMES):
            unit = "suction command" if i == 3 else "metres per step"
            if not np.isfinite(a[i]):
                raise ValueError(f"action[{i}] ({name}): expected a finite number, got {a[i]}")
            if not low[i] - 1e-6 <= a[i] <= high[i] + 1e-6:
                raise ValueError(
                    f"action[{i}] ({name}) = {a[i]:.4g} is outside [{low[i]:g}, {high[i]:g}] ({unit})"
                )
        return np.clip(a, low, high)

    def hold_action(self) -> np.ndarray:
        """The action that keeps the robot still: no motion, suction as it is now."""
        return np.array([0.0, 0.0, 0.0, self.scene.suction_command], np.float32)

    def expert(self, miss: float = 0.0, grasp_spread: float | None = None) -> ScriptedExpert:
        """The scripted expert for the current episode (seeded by it, so its noise is reproducible);
        ``miss``: probability that a subtask's first placement is aimed beside its goal; ``grasp_spread``: how
        far from a block's centre it may grasp (`ScriptedExpert`)."""
        return ScriptedExpert(self.scene, np.random.default_rng(self._expert_seed), lambda: self._target.copy(),
                              miss=miss, grasp_spread=grasp_spread)

    def eval_probes(self) -> list:
        """Runtime subscribers whose ``summary()`` `hybrid eval` reports per family: where released blocks come to
        rest (`PlacementProbe`) and whether the subtasks taken on name blocks still to be moved (`GroundingProbe`)."""
        return [PlacementProbe(self), GroundingProbe(self)]

    def describe(self) -> dict[str, Any]:
        """The physics state in words and centimetres, for traces: each block's colour, where it is, whether it
        is held and which bowl it rests in (or which block it rests on); the tool and the subtasks done."""
        scene, spec = self.scene, self.scene.spec
        held, in_bowls = scene.held_blocks(), scene.in_bowls()
        blocks = []
        for i, colour in enumerate(spec.block_colours):
            on = [spec.block_colours[j] for j in range(scene.n_blocks()) if j != i and scene.on_block(i, j, held)]
            bowl = [spec.bowl_colours[b] for b in np.flatnonzero(in_bowls[i])]
            blocks.append({"colour": colour, "xyz_cm": [round(100 * float(v), 1) for v in scene.block_pos(i)],
                           "held": i in held, "in_bowl": bowl[0] if bowl else None, "on": on[0] if on else None})
        return {"blocks": blocks, "tool_cm": [round(100 * float(v), 1) for v in scene.effector],
                "suction": round(scene.suction_command, 2), "subtask_success": scene.subtask_success(held)}

    def render_subgoal(self, subtask_index: int) -> dict[str, np.ndarray]:
        """Images of the scene once subtasks 0..subtask_index are done (the oracle subgoal).

        Blocks of unfinished subtasks are teleported to their goal poses in a scratch copy of the state,
        the effector hovers above the last one; the episode's own state is not touched.
        """
        spec = self.scene.spec
        if not 0 <= subtask_index < len(spec.goals):
            raise ValueError(f"subtask_index: expected 0..{len(spec.goals) - 1}, got {subtask_index}")
        m, s = self.scene.model, self._scratch
        mujoco.mj_copyData(s, m, self.scene.data)
        done = self.scene.subtask_success()
        goal_pos = self.scene.effector
        for j in range(subtask_index + 1):
            goal = spec.goals[j]
            goal_pos = self.scene.place_target(goal, s)
            if not done[j]:
                self.scene.set_block_pose(s, goal.block, goal_pos)
                mujoco.mj_kinematics(m, s)  # so the next goal sees this block where it now is
        s.qpos[:3] = goal_pos + (0.0, 0.0, BLOCK_HALF + 0.06)
        s.ctrl[self.scene.suction] = 0.0
        mujoco.mj_forward(m, s)
        return {cam: self._render_camera(s, cam) for cam in self.cameras}

    @property
    def instruction(self) -> str:
        return self.scene.spec.instruction

    def render_camera(self, camera: str) -> np.ndarray:
        """The current state seen by ``camera`` (one of the env's `cameras`), uint8 ``(H, W, 3)``."""
        if camera not in self.cameras:
            raise ValueError(f"camera: expected one of {list(self.cameras)}, got {camera!r}")
        return self._render_camera(self.scene.data, camera)

    # ---- internals -----------------------------------------------------------------------------
    def _render_camera(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.scene.model, self.height, self.width)
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render()

    def _observation(self) -> dict[str, Any]:
        state = np.append(self.scene.effector, self.scene.suction_command).astype(np.float32)
        return {
            "pixels": {cam: self._render_camera(self.scene.data, cam) for cam in self.cameras},
            "agent_pos": state,
        }

    def _info(self) -> dict[str, Any]:
        spec = self.scene.spec
        done = self.scene.subtask_success()
        success = all(done)
        # The first unfinished subtask; the last one once everything is done.
        current = next((i for i, ok in enumerate(done) if not ok), len(done) - 1)
        return {
            "instruction": spec.instruction,
            "subtasks": list(spec.subtasks),
            "subtask_index": current,
            "subtask_success": done,
            "success": success,
            "is_success": success,  # the key LeRobot's eval loop reads
            "family": spec.family,
        }
