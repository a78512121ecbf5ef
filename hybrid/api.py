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
from hybrid.runtime.async_runtime import AsyncRuntime, AsyncRuntimeConfig
from hybrid.runtime.env_adapter import EnvAdapter, EnvAdapterConfig
from hybrid.runtime.robot_adapter import RobotEnv
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


def make_env(overrides: list[str] | DictConfig | None = None) -> EnvAdapter | RobotEnv:
    """A gymnasium env in its `EnvAdapter`, or a LeRobot robot (`RobotEnv`, which carries its own key mapping)."""
    cfg = _cfg(overrides)
    env = instantiate(cfg.env)
    return env if isinstance(env, RobotEnv) else EnvAdapter(env, EnvAdapterConfig(**OmegaConf.to_container(cfg.adapter)))


def run(agent: HybridAgent, env: EnvAdapter, episodes: int = 1, seed: int = 0,
        loop: SyncLoopConfig | None = None, subscribers: list[Subscriber] = ()) -> list[EpisodeResult]:
    """Run ``episodes`` episodes with the synchronous loop, seeds ``seed, seed+1, ...``."""
    if isinstance(env, RobotEnv):
        raise ValueError("a LeRobot robot runs with the async runtime: runtime=async (or hybrid.api.run_async)")
    results = []
    for ep in range(episodes):
        results.append(run_episode(agent, env, loop, subscribers, seed=seed + ep))
        if results[-1].status == "interrupted":
            break
    return results


def run_async(agent: HybridAgent, env: EnvAdapter | RobotEnv, episodes: int = 1, seed: int = 0,
              loop: AsyncRuntimeConfig | None = None, subscribers: list[Subscriber] = ()) -> list[EpisodeResult]:
    """Run ``episodes`` episodes with the asynchronous multi-rate runtime, seeds ``seed, seed+1, ...``."""
    runtime = AsyncRuntime(agent, env, loop, subscribers)
    results = []
    try:
        for ep in range(episodes):
            results.append(runtime.run_episode(seed=seed + ep))
            if results[-1].status == "interrupted":
                break
    finally:
        runtime.close()
    return results
