"""The built-in tabletop: a MuJoCo scene, language task families, a scripted expert, LeRobot recording."""

import os
import sys

if sys.platform.startswith("linux"):
    # Headless rendering by default; MuJoCo reads this when it first creates a GL context.
    os.environ.setdefault("MUJOCO_GL", "egl")

from hybrid.envs.tabletop.env import TabletopEnv  # noqa: E402
from hybrid.envs.tabletop.expert import ScriptedExpert  # noqa: E402
from hybrid.envs.tabletop.tasks import FAMILIES  # noqa: E402

__all__ = ["FAMILIES", "ScriptedExpert", "TabletopEnv"]
