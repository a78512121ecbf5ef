"""`hybrid train <tier>=<config> data=DIR [key=value ...]`.

Composes `configs/train/<tier>/<config>.yaml` with the remaining Hydra overrides and calls its
`_target_` (the tier's own training entry point, kept beside its model) with the composed fields.
"""

from __future__ import annotations

import sys

from hybrid.config import CONFIG_DIR, compose, print_config_help, wants_help

TIERS = ("planner", "world_model", "executor")


def main(argv: list[str]) -> int:
    picks = [a for a in argv if a.split("=", 1)[0] in TIERS]
    if len(picks) != 1:
        choices = {t: sorted(p.stem for p in (CONFIG_DIR / "train" / t).glob("*.yaml")) for t in TIERS}
        print(f"usage: hybrid train <tier>=<config> data=DIR [key=value ...]; configs: {choices}", file=sys.stderr)
        return 0 if wants_help(argv) else 2
    tier, name = picks[0].split("=", 1)
    config_name = f"train/{tier}/{name}"
    overrides = [a for a in argv if a != picks[0]]
    if wants_help(overrides):
        print_config_help(config_name, overrides)
        return 0
    from hydra.utils import call

    call(compose(config_name, overrides))
    return 0
