"""Environments. Importing this package registers them with gymnasium, so after `import hybrid.envs`
`gym.make("hybrid/Tabletop-v0", task="sort")` finds the tabletop; `gym.make("hybrid.envs:hybrid/Tabletop-v0")`
imports this package itself first.
"""

import gymnasium as gym

TABLETOP_ID = "hybrid/Tabletop-v0"

if TABLETOP_ID not in gym.registry:
    # No TimeLimit wrapper: the env truncates at its own `max_steps`.
    gym.register(id=TABLETOP_ID, entry_point="hybrid.envs.tabletop:TabletopEnv", max_episode_steps=None)
