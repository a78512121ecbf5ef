"""`hybrid demo [--rerun spawn|save PATH|serve|off] [overrides]`: the built-in demo on shipped defaults."""

from __future__ import annotations

from hybrid.commands.run import execute, rerun_overrides
from hybrid.config import compose, print_config_help, wants_help

DOUBLES_BANNER = (
    "hybrid demo: trained tabletop tiers are not shipped yet, so this demo runs the agent loop with the\n"
    "TEST-DOUBLE tiers from hybrid.testing (a scripted subtask list, the current frame as subgoal, a fixed\n"
    "action chunk). It shows the plan stack, the runtime and the Rerun view; it does not solve the task."
)


def main(argv: list[str]) -> int:
    overrides = rerun_overrides(argv)
    if wants_help(overrides):
        print(__doc__)
        print_config_help("demo", overrides)
        return 0
    cfg = compose("demo", overrides)
    doubles = any(str(cfg[t].get("_target_", "")).startswith("hybrid.testing") for t in ("planner", "world_model", "executor"))
    return execute(cfg, banner=DOUBLES_BANNER if doubles else None)
