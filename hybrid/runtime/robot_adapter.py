"""Any LeRobot `Robot` as a control env: its flat observation/action dicts mapped to the agent's types.

A LeRobot robot observes ``{"<motor>.pos": float, ..., "<camera>": uint8 HxWx3}`` and takes
``{"<motor>.pos": float, ...}``. The mapping says which keys are the agent's cameras, which form its
state vector and which its action vector (in order). Holding position re-sends the current joint
positions (by default each action key read from the observation under the same name).

LeRobot is imported only when a robot is built from its config (`RobotEnv.from_lerobot`).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from hybrid.runtime.env_adapter import ObservationError
from hybrid.types import Observation

log = logging.getLogger(__name__)


class RobotMapping(BaseModel):
    """Which robot keys are the agent's cameras, state and action; the robot's action limits."""

    cameras: dict[str, str] = Field(description="robot observation key -> agent camera name")
    state_keys: list[str] = Field(min_length=1, description="robot observation keys forming the state, in order")
    action_keys: list[str] = Field(min_length=1, description="robot action keys forming the action, in order")
    low: list[float] | float = -np.inf
    high: list[float] | float = np.inf
    # action key -> observation key read to hold still; missing keys hold at the same name.
    hold_keys: dict[str, str] = {}
    instruction: str = ""


class RobotEnv:
    """Drives a connected LeRobot robot one action per control tick (see `hybrid.runtime.control_env`)."""

    def __init__(self, robot, mapping: RobotMapping):
        self.robot, self.mapping = robot, mapping
        self.action_dim = len(mapping.action_keys)
        self.low = np.broadcast_to(np.asarray(mapping.low, np.float32), (self.action_dim,)).copy()
        self.high = np.broadcast_to(np.asarray(mapping.high, np.float32), (self.action_dim,)).copy()
        missing = set(mapping.action_keys) - set(robot.action_features)
        if missing:
            raise ValueError(f"mapping.action_keys: {sorted(missing)} are not actions of {robot} "
                             f"(it takes {sorted(robot.action_features)})")
        self._raw: dict[str, Any] = {}

    @classmethod
    def from_lerobot(cls, robot: dict[str, Any], mapping: dict[str, Any]) -> RobotEnv:
        """Build the robot from a LeRobot robot config given as a dict with its ``type`` (e.g. so101_follower)."""
        return cls(make_robot(robot), RobotMapping(**mapping))

    def reset(self, seed: int | None = None) -> tuple[Observation, dict[str, Any]]:
        if not self.robot.is_connected:
            self.robot.connect()
        return self.observe(), {"instruction": self.mapping.instruction}

    def observe(self) -> Observation:
        self._raw = raw = self.robot.get_observation()
        m = self.mapping
        try:
            images = {cam: np.asarray(raw[key]) for key, cam in m.cameras.items()}
            state = np.asarray([raw[k] for k in m.state_keys], np.float32)
            return Observation(images=images, state=state, timestamp=time.monotonic(), instruction=m.instruction or None)
        except KeyError as err:
            raise ObservationError(f"observation: robot gave no key {err} (has {sorted(raw)})") from None
        except ValidationError as err:
            raise ObservationError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None

    def send(self, action: np.ndarray) -> tuple[bool, bool, dict[str, Any]]:
        self.robot.send_action({k: float(v) for k, v in zip(self.mapping.action_keys, action)})
        return False, False, {}  # a robot episode ends by the planner, the budget or the operator

    def hold_action(self) -> np.ndarray:
        """The robot's current joint positions as an action: sending it keeps the arm where it is."""
        raw = self._raw or self.robot.get_observation()
        keys = [self.mapping.hold_keys.get(k, k) for k in self.mapping.action_keys]
        try:
            return np.clip(np.asarray([raw[k] for k in keys], np.float32), self.low, self.high)
        except KeyError as err:
            raise ObservationError(f"hold: robot observation has no key {err}; set mapping.hold_keys") from None

    def halt(self) -> None:
        """Re-send the hold action, so the arm stops where it is rather than finishing a stale command."""
        if self.robot.is_connected:
            try:
                self._raw = self.robot.get_observation()  # where the arm is now, after the last command
                self.send(self.hold_action())
            except Exception as err:  # halting must never prevent disconnecting
                log.warning("robot: hold on halt failed: %s", err)

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()


def make_robot(config: dict[str, Any]):
    """A LeRobot `Robot` from a config dict with ``type`` and that robot config's fields (decoded by draccus)."""
    import draccus
    from lerobot.robots import RobotConfig
    from lerobot.robots.utils import make_robot_from_config

    config = dict(config)
    _register_lerobot_choice("lerobot.robots", RobotConfig, config.get("type"))
    from lerobot.cameras import CameraConfig

    for cam in (config.get("cameras") or {}).values():
        _register_lerobot_choice("lerobot.cameras", CameraConfig, cam.get("type"))
    return make_robot_from_config(draccus.decode(RobotConfig, config))


def _register_lerobot_choice(package: str, registry, name: str | None) -> None:
    """LeRobot registers a robot/camera config type when its module is imported. Import the few modules
    that may define ``name`` (importing every robot module takes seconds); a type registered by user
    code is used as is."""
    if name is None or name in registry.get_known_choices():
        return
    pkg = importlib.import_module(package)
    mods = [m.name for m in pkgutil.iter_modules(pkg.__path__, package + ".")]
    # so101_follower lives in so_follower, opencv in opencv: try modules whose name shares a word first.
    words = set(name.split("_"))
    mods.sort(key=lambda m: not (words & set(m.rsplit(".", 1)[-1].split("_"))))
    for mod in mods:
        try:
            importlib.import_module(mod)
        except ImportError as err:  # an optional vendor SDK is not installed
            log.debug("lerobot: skipping %s (%s)", mod, err)
        if name in registry.get_known_choices():
            return
