"""`hybrid demo [--rerun spawn|save PATH|serve|off] [overrides]`: the built-in demo on shipped defaults.

The tabletop with the planner, world model and executor trained by `hybrid train-demo` (shipped under
demos/tabletop/checkpoints), on the asynchronous runtime, on held-out instructions.
"""

from __future__ import annotations

from hybrid.commands.run import execute, rerun_overrides
from hybrid.config import compose, print_config_help, wants_help

DOUBLES_WARNING = (
    "hybrid demo: some tiers are TEST DOUBLES from hybrid.testing ({names}); they exercise the plan stack,\n"
    "the runtime and the Rerun view, and do not solve the task."
)


def main(argv: list[str]) -> int:
    overrides = rerun_overrides(argv)
    if wants_help(overrides):
        print(__doc__)
        print_config_help("demo", overrides)
        return 0
    cfg = compose("demo", overrides)
    tiers = {t: str(cfg[t].get("_target_", "")) for t in ("planner", "world_model", "executor")}
    doubles = [t for t, target in tiers.items() if target.startswith("hybrid.testing")]
    banner = "hybrid demo: " + ", ".join(f"{t}={target.rsplit('.', 2)[-2]}" for t, target in tiers.items())
    banner += f"; runtime={cfg.runtime.kind}; env split={cfg.env.get('split', '-')}"
    if doubles:
        banner += "\n" + DOUBLES_WARNING.format(names=", ".join(doubles))
    return execute(cfg, banner=banner)
