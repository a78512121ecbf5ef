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
    if cfg.planner_rollouts.enabled:
        return _planner_rollouts(cfg)
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


def _planner_rollouts(cfg) -> int:
    """`planner_rollouts.enabled=true`: the agent's own rollouts, every question its planner asks written down."""
    from hybrid.agent import AgentConfig, HybridAgent
    from hybrid.envs.tabletop.planner_rollouts import record_planner_rollouts
    from hybrid.runtime.sync import SyncLoopConfig

    if cfg.expert_miss or cfg.expert_grasp_spread is not None or cfg.takeover.enabled:
        print("hybrid record: planner_rollouts records the agent, not the expert (expert_miss, expert_grasp_spread "
              "and takeover stay unset)", file=sys.stderr)
        return 2
    spec = cfg.planner_rollouts
    # The planner runs inline: its hook reads the simulator, which only the loop's thread may touch.
    agent = HybridAgent(instantiate(spec.planner), instantiate(spec.world_model) if spec.use_subgoals else None,
                        instantiate(spec.executor), AgentConfig(planner_timeout_s=None, use_subgoals=spec.use_subgoals))
    loop = SyncLoopConfig(max_steps=spec.max_steps, execute_horizon=spec.execute_horizon, max_consecutive_faults=5,
                          after_success_steps=spec.after_success_steps)
    env = instantiate(cfg.env, task=cfg.task, split=cfg.split)
    try:
        summary = record_planner_rollouts(cfg.out, env, agent, loop, cfg.episodes, cfg.seed,
                                          list(cfg.families) if cfg.families else None, cfg.repo_id, cfg.vcodec,
                                          cfg.video, cfg.progress)
    finally:
        agent.close()
        env.close()
    print(json.dumps(summary))
    return 0
