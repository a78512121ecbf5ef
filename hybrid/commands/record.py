"""`hybrid record env=tabletop task=<family|all> episodes=N out=DIR`: expert demonstrations as a LeRobot dataset."""

from __future__ import annotations

import json
import sys

from omegaconf import OmegaConf

from hybrid.config import compose, instantiate, print_config_help, wants_help


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print_config_help("record", argv)
        return 0
    cfg = compose("record", argv)
    if OmegaConf.is_missing(cfg, "out"):
        print("hybrid record: out=DIR is required (a new dataset directory)", file=sys.stderr)
        return 2
    from hybrid.envs.tabletop.record import record

    env = instantiate(cfg.env, task=cfg.task, split=cfg.split)
    try:
        summary = record(
            cfg.out,
            env,
            episodes=cfg.episodes,
            seed=cfg.seed,
            repo_id=cfg.repo_id,
            vcodec=cfg.vcodec,
            progress=cfg.progress,
            families=list(cfg.families) if cfg.families else None,
            video=cfg.video,
            expert_miss=cfg.expert_miss,
            expert_grasp_spread=cfg.expert_grasp_spread,
        )
    finally:
        env.close()
    print(json.dumps(summary))
    return 0
