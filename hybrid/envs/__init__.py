"""Environments. Importing this package registers them with gymnasium:

    import gymnasium as gym
    import hybrid.envs  # noqa: F401
    env = gym.make("hybrid/Tabletop-v0", task="sort")
    env = gym.make("hybrid.envs:hybrid/Tabletop-v0")  # imports this module first, same env
"""

import gymnasium as gym

TABLETOP_ID = "hybrid/Tabletop-v0"

if TABLETOP_ID not in gym.registry:
    # No TimeLimit wrapper: the env truncates at its own `max_steps`.
    gym.register(id=TABLETOP_ID, entry_point="hybrid.envs.tabletop:TabletopEnv", max_episode_steps=None)
