"""The built-in tabletop: a MuJoCo scene, language task families, a scripted expert, LeRobot recording."""

import os
import sys

if sys.platform.startswith("linux"):
    # Headless rendering by default. MuJoCo reads this when it is first imported, so a program that
    # imports mujoco before this package must set MUJOCO_GL itself.
    os.environ.setdefault("MUJOCO_GL", "egl")

from hybrid.envs.tabletop.env import TabletopEnv
from hybrid.envs.tabletop.expert import ScriptedExpert
from hybrid.envs.tabletop.tasks import FAMILIES

__all__ = ["FAMILIES", "ScriptedExpert", "TabletopEnv"]
