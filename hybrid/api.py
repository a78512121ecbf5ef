"""The Python face of the configs: the same objects `hybrid run` builds, for scripts and notebooks.

    planner, world_model, executor = load_tiers(["world_model=tabletop"])
    agent = HybridAgent(MyPlanner(), world_model, executor)   # swap one tier
    results = run(agent, make_env(["env=tabletop"]), episodes=3)
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from hybrid.agent import AgentConfig, HybridAgent
from hybrid.config import compose, instantiate
from hybrid.runtime.env_adapter import EnvAdapter, EnvAdapterConfig
from hybrid.runtime.subscriber import EpisodeResult, Subscriber
from hybrid.runtime.sync import SyncLoopConfig, run_episode


def _cfg(overrides: list[str] | DictConfig | None) -> DictConfig:
    return overrides if isinstance(overrides, DictConfig) else compose("run", list(overrides or []))


def load_tiers(overrides: list[str] | DictConfig | None = None) -> tuple[Any, Any, Any]:
    """(planner, world_model, executor) as the composed config describes them."""
    cfg = _cfg(overrides)
    return instantiate(cfg.planner), instantiate(cfg.world_model), instantiate(cfg.executor)


def load_agent(overrides: list[str] | DictConfig | None = None) -> HybridAgent:
    cfg = _cfg(overrides)
    return HybridAgent(*load_tiers(cfg), AgentConfig(**OmegaConf.to_container(cfg.runtime.agent)))


def make_env(overrides: list[str] | DictConfig | None = None) -> EnvAdapter:
    cfg = _cfg(overrides)
    return EnvAdapter(instantiate(cfg.env), EnvAdapterConfig(**OmegaConf.to_container(cfg.adapter)))


def run(agent: HybridAgent, env: EnvAdapter, episodes: int = 1, seed: int = 0,
        loop: SyncLoopConfig | None = None, subscribers: list[Subscriber] = ()) -> list[EpisodeResult]:
    """Run ``episodes`` episodes with the synchronous loop, seeds ``seed, seed+1, ...``."""
    results = []
    for ep in range(episodes):
        results.append(run_episode(agent, env, loop, subscribers, seed=seed + ep))
        if results[-1].status == "interrupted":
            break
    return results
