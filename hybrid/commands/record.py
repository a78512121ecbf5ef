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

    takeover = None
    if cfg.takeover.enabled:
        from hybrid.envs.tabletop.takeover import TakeoverConfig

        settings = {k: v for k, v in OmegaConf.to_container(cfg.takeover).items() if k not in ("enabled", "executor")}
        takeover = (instantiate(cfg.takeover.executor), TakeoverConfig(**settings))
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
            takeover=takeover,
        )
    finally:
        env.close()
    print(json.dumps(summary))
    return 0
