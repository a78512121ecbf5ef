"""The tabletop's MuJoCo model: per-episode randomisation and the physics predicates tasks are judged by.

Success is read from the physics state only (poses, velocities, contacts), never from pixels.
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from hybrid.envs.tabletop.tasks import MAX_BLOCKS, N_BOWLS, PALETTE, Goal, PlaceIn, StackOn, TaskSpec

ASSET = Path(__file__).resolve().parent / "assets" / "tabletop.xml"

BLOCK_HALF = 0.02  # blocks are 4 cm cubes
BOWL_FLOOR = 0.004  # height of a bowl's floor above the table
BOWL_INNER = 0.084  # inner radius of a bowl's rim
SLOT_RADIUS = 0.042  # where blocks go when a bowl receives several: far enough apart for any yaw
RESTING_SPEED = 0.1  # m/s; a block moving faster than this is not "placed" yet
SUCTION_ON = 0.5  # suction commands at or above this count as holding

# Where things may start (the table is 0.64 x 0.9 m); bowls first, then blocks keep clear of them.
BOWL_REGION = ((-0.17, 0.17), (-0.28, 0.28))
BLOCK_REGION = ((-0.21, 0.21), (-0.33, 0.33))
EFFECTOR_START = ((-0.08, 0.08), (-0.1, 0.1), (0.18, 0.24))
BOWL_SPACING, BLOCK_BOWL_CLEARANCE, BLOCK_SPACING = 0.23, 0.125, 0.075
PARK = np.array([1.5, 0.0, 0.0])  # unused blocks float here, out of sight and out of collision
COLOUR_JITTER = 0.06


def _sample_points(rng: np.random.Generator, n: int, region, min_dist: float, avoid=(), avoid_dist=0.0):
    """Rejection-sample n xy points in a box, pairwise >= min_dist apart and >= avoid_dist from `avoid`."""
    for _ in range(200):
        points: list[np.ndarray] = []
        for _ in range(400):
            p = np.array([rng.uniform(*region[0]), rng.uniform(*region[1])])
            if all(np.linalg.norm(p - q) >= min_dist for q in points) and all(
                np.linalg.norm(p - q) >= avoid_dist for q in avoid
            ):
                points.append(p)
                if len(points) == n:
                    return np.array(points)
    raise RuntimeError(f"could not place {n} objects without overlap")


class Scene:
    """One MjModel/MjData pair plus the indices the env, the expert and the predicates need."""

    def __init__(self) -> None:
        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.block_body = np.array([m.body(f"block{i}").id for i in range(MAX_BLOCKS)])
        self.block_geom = np.array([m.geom(f"block{i}").id for i in range(MAX_BLOCKS)])
        self.block_qpos = np.array([m.jnt_qposadr[m.joint(f"block{i}").id] for i in range(MAX_BLOCKS)])
        self.block_qvel = np.array([m.jnt_dofadr[m.joint(f"block{i}").id] for i in range(MAX_BLOCKS)])
        self.bowl_body = np.array([m.body(f"bowl{i}").id for i in range(N_BOWLS)])
        self.bowl_geoms = [np.flatnonzero(m.geom_bodyid == b) for b in self.bowl_body]
        self.cup_geom = m.geom("cup").id
        self.suction = m.actuator("suction").id
        self.light = m.light("key").id
        self.table_geom = m.geom("table").id
        self.n_substeps = 1  # set by the env from its control rate
        self.spec: TaskSpec | None = None
        self._default_light_dir = m.light_dir[self.light].copy()
        self._front = table_homography("front", model=m)

    # ---- episode setup -------------------------------------------------------------------------
    def randomise(self, spec: TaskSpec, rng: np.random.Generator) -> None:
        """Lay out the episode: bowl and block poses, colours, light; the effector above the table."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self.spec = spec
        bowls = _sample_points(rng, N_BOWLS, BOWL_REGION, BOWL_SPACING)
        for body, geoms, xy, name in zip(
            self.bowl_body, self.bowl_geoms, bowls, spec.bowl_colours, strict=True
        ):
            m.body_pos[body] = (*xy, 0.0)
            m.geom_rgba[geoms] = (*self._jitter(rng, PALETTE[name], 0.08), 1.0)
        n = len(spec.block_colours)
        points = _sample_points(rng, n, BLOCK_REGION, BLOCK_SPACING, bowls, BLOCK_BOWL_CLEARANCE)
        blocks = self._left_to_right(spec, points)
        for i in range(MAX_BLOCKS):
            active = i < n
            geom, adr = self.block_geom[i], self.block_qpos[i]
            # A parked block neither collides nor falls: it costs the solver nothing.
            m.geom_contype[geom] = m.geom_conaffinity[geom] = int(active)
            m.body_gravcomp[self.block_body[i]] = 0.0 if active else 1.0
            if active:
                yaw = rng.uniform(-np.pi / 4, np.pi / 4)
                d.qpos[adr : adr + 3] = (*blocks[i], BLOCK_HALF)
                d.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
                m.geom_rgba[geom] = (*self._jitter(rng, PALETTE[spec.block_colours[i]]), 1.0)
            else:
                d.qpos[adr : adr + 3] = PARK + (0.1 * i, 0.0, 0.0)
                d.qpos[adr + 3 : adr + 7] = (1.0, 0.0, 0.0, 0.0)
                m.geom_rgba[geom, 3] = 0.0
        m.geom_rgba[self.table_geom, :3] = self._jitter(rng, (0.62, 0.5, 0.38), 0.05)
        m.light_diffuse[self.light] = rng.uniform(0.45, 0.75)
        m.light_dir[self.light] = self._default_light_dir + rng.uniform(-0.15, 0.15, size=3)
        start = np.array([rng.uniform(*r) for r in EFFECTOR_START])
        d.qpos[:3] = start
        d.ctrl[:3] = start
        mujoco.mj_forward(m, d)

    def _left_to_right(self, spec: TaskSpec, points: np.ndarray) -> np.ndarray:
        """Hand a `sort` episode's sampled block positions [n, 2] to its plan's blocks from the front image's
        left to its right, so the plan takes the leftmost block still on the table next: what to sort next is
        then a fact of the picture, not a coin the planner has to guess. The points are exchangeable draws, so
        no layout changes its probability; other families keep theirs as drawn."""
        if spec.family != "sort":
            return points
        u, _, s = self._front @ np.column_stack([points, np.ones(len(points))]).T
        out = points.copy()
        out[[g.block for g in spec.goals]] = points[np.argsort(u / s, kind="stable")]
        return out

    @staticmethod
    def _jitter(rng: np.random.Generator, rgb, amount: float = COLOUR_JITTER) -> np.ndarray:
        return np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, size=3), 0.0, 1.0)

    # ---- state -----------------------------------------------------------------------------------
    @property
    def effector(self) -> np.ndarray:
        """Tool centre point (bottom of the suction cup), world frame, metres."""
        return self.data.qpos[:3].copy()

    @property
    def suction_command(self) -> float:
        return float(self.data.ctrl[self.suction])

    def block_pos(self, i: int, data: mujoco.MjData | None = None) -> np.ndarray:
        return (self.data if data is None else data).xpos[self.block_body[i]].copy()

    def bowl_pos(self, b: int) -> np.ndarray:
        return self.model.body_pos[self.bowl_body[b]].copy()

    def n_blocks(self) -> int:
        return len(self.spec.block_colours) if self.spec else 0

    def touching_cup(self) -> set[int]:
        """Active blocks the suction cup is in contact with."""
        d = self.data
        pairs = d.contact.geom[: d.ncon]
        touching = pairs[(pairs == self.cup_geom).any(axis=1)].ravel()
        return {i for i, g in enumerate(self.block_geom[: self.n_blocks()]) if g in touching}

    def held_blocks(self) -> set[int]:
        return self.touching_cup() if self.suction_command >= SUCTION_ON else set()

    # ---- predicates ------------------------------------------------------------------------------
    def resting(self) -> np.ndarray:
        """bool[n_blocks]: each active block moves slower than `RESTING_SPEED` (held or not)."""
        n = self.n_blocks()
        vel = self.data.qvel[self.block_qvel[:n, None] + np.arange(3)]
        return np.linalg.norm(vel, axis=1) < RESTING_SPEED

    def _placed(self, held: set[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Active block positions, and which of them are let go of and still (may count as placed)."""
        pos = self.data.xpos[self.block_body[: self.n_blocks()]]
        free = self.resting()
        held = self.held_blocks() if held is None else held
        free[list(held)] = False
        return pos, free

    def in_bowls(self, held: set[int] | None = None) -> np.ndarray:
        """bool[n_blocks, n_bowls]: block rests on the bowl's floor, inside the rim, still, let go of."""
        pos, free = self._placed(held)
        centres = self.model.body_pos[self.bowl_body]
        inside = np.linalg.norm(pos[:, None, :2] - centres[None, :, :2], axis=-1) < BOWL_INNER
        on_floor = np.abs(pos[:, 2] - (BOWL_FLOOR + BLOCK_HALF)) < 0.01
        return inside & (on_floor & free)[:, None]

    def serves(self, goal: Goal, block: int, held: set[int] | None = None) -> bool:
        """Whether bringing ``block`` to the goal counts toward it: a stack's own block; for a bowl any block of its
        colour not resting in it yet (the plan names one block, the predicate counts a colour)."""
        if isinstance(goal, StackOn):
            return block == goal.block
        return self.spec.block_colours[block] == goal.colour and not self.in_bowls(held)[block, goal.bowl]

    def in_bowl(self, i: int, b: int, held: set[int] | None = None) -> bool:
        return bool(self.in_bowls(held)[i, b])

    def on_block(self, i: int, j: int, held: set[int] | None = None) -> bool:
        """Block i rests on top of block j: centred within half a block, one block higher, let go of."""
        pos, free = self._placed(held)
        p, q = pos[i], pos[j]
        return bool(
            np.linalg.norm(p[:2] - q[:2]) < BLOCK_HALF
            and abs(p[2] - q[2] - 2 * BLOCK_HALF) < 0.008
            and free[i]
        )

    def goal_done(self, goal: Goal, held: set[int] | None = None) -> bool:
        return self.subtask_success(held, goals=(goal,))[0]

    def subtask_success(self, held: set[int] | None = None, goals=None) -> list[bool]:
        """One bool per goal (the episode's plan by default), all from one read of the physics state."""
        held = self.held_blocks() if held is None else held
        goals = self.spec.goals if goals is None else goals
        in_bowls = self.in_bowls(held) if any(isinstance(g, PlaceIn) for g in goals) else None
        colours = np.array(self.spec.block_colours)
        done = []
        for goal in goals:
            if isinstance(goal, StackOn):
                done.append(self.on_block(goal.block, goal.base, held))
            else:
                done.append(int(in_bowls[colours == goal.colour, goal.bowl].sum()) >= goal.count)
        return done

    # ---- goal poses (for the expert and the oracle subgoal) -------------------------------------
    def place_target(self, goal: Goal, data: mujoco.MjData | None = None) -> np.ndarray:
        """Where the centre of the goal's block should end up."""
        if isinstance(goal, StackOn):
            base = self.block_pos(goal.base, data)
            return base + (0.0, 0.0, 2 * BLOCK_HALF)
        centre = self.bowl_pos(goal.bowl)
        if goal.slots > 1:
            angle = 2 * np.pi * goal.slot / goal.slots + np.pi / 4
            centre[:2] += SLOT_RADIUS * np.array([np.cos(angle), np.sin(angle)])
        return centre + (0.0, 0.0, BOWL_FLOOR + BLOCK_HALF)

    def set_block_pose(self, data: mujoco.MjData, i: int, pos: np.ndarray) -> None:
        """Teleport block i upright to `pos`, keeping its yaw."""
        adr, vadr = self.block_qpos[i], self.block_qvel[i]
        w, x, y, z = data.qpos[adr + 3 : adr + 7]
        yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        data.qpos[adr : adr + 3] = pos
        data.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        data.qvel[vadr : vadr + 6] = 0.0

    def stack_top(self) -> float:
        """Height of the highest active block's top face (for a safe travel height)."""
        n = self.n_blocks()
        return float(self.data.xpos[self.block_body[:n], 2].max() + BLOCK_HALF) if n else 0.0


def camera_projection(camera: str = "front", model: mujoco.MjModel | None = None) -> np.ndarray:
    """3x4 projection of a fixed camera: world ``(x, y, z, 1)`` (metres) to ``(u s, v s, s)``, image coordinates u
    right and v down, both in [-1, 1] across a square image. ``model``: the tabletop's, already loaded (default:
    loaded here)."""
    m = mujoco.MjModel.from_xml_path(str(ASSET)) if model is None else model
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    cam = m.camera(camera).id
    if m.cam_bodyid[cam] != 0 or m.cam_mode[cam] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:  # not on the world body
        raise ValueError(f"camera {camera!r} moves: no fixed projection")
    rotation, position = d.cam_xmat[cam].reshape(3, 3), d.cam_xpos[cam]  # columns: camera axes in the world
    focal = 1.0 / np.tan(np.deg2rad(m.cam_fovy[cam]) / 2)
    # MuJoCo cameras look along -z with y up; image v grows downward.
    project = np.diag([focal, -focal, -1.0]) @ rotation.T
    return np.concatenate([project, -project @ position[:, None]], axis=1)


def table_homography(
    camera: str = "front", height: float = BLOCK_HALF, model: mujoco.MjModel | None = None
) -> np.ndarray:
    """3x3 homography from table xy (metres, at ``height`` above the table) to a fixed camera's image
    coordinates (u right, v down, both in [-1, 1] across a square image): the camera's calibration, as
    a policy that localises targets in the image needs it to speak in table coordinates. ``model``: the
    tabletop's, already loaded (default: loaded here)."""
    full = camera_projection(camera, model)
    return np.stack([full[:, 0], full[:, 1], full[:, 2] * height + full[:, 3]], axis=1)
