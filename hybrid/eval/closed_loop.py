"""`hybrid eval [--episodes N] [--json] [overrides]`: success per agent per task family, side by side.

Composes `configs/eval.yaml`: the env, the held-out split and seeds, and one entry per agent (three tier
nodes + whether it uses subgoals + the families it applies to). Tiers shared by several agents are
loaded once. Every agent meets the same seeds, so the table compares like with like.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from hybrid.agent import AgentConfig, HybridAgent
from hybrid.config import compose, instantiate
from hybrid.eval.trace import EpisodeTrace
from hybrid.runtime.env_adapter import EnvAdapter, EnvAdapterConfig
from hybrid.runtime.sync import SyncLoopConfig, run_episode


class _TierCache:
    """Instantiate each distinct tier config once (the hierarchical, oracle and language-only agents share tiers)."""

    def __init__(self):
        self.built: dict[str, object] = {}

    def __call__(self, node):
        if node is None:
            return None
        key = OmegaConf.to_yaml(node, resolve=True)
        if key not in self.built:
            self.built[key] = instantiate(node)
        return self.built[key]


def _build_all(cfg, tiers: _TierCache) -> None:
    """Every agent's tiers, before the first episode: a checkpoint that is missing (e.g. a `hybrid train-demo` run's
    flat baseline, trained only with `baselines=true`) stops the run at once, not after the agents before it ran."""
    for name, spec in cfg.agents.items():
        for role in ("planner", "world_model", "executor"):
            try:
                tiers(spec.get(role))
            except Exception as e:
                raise RuntimeError(f"agent {name!r}: its {role} cannot be built: {e}\n"
                                   f"(evaluate without it: '~agents.{name}')") from e


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson's score interval of a success rate (at ``z``: 1.96 for 95%), [lo, hi] rounded to 3 places."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 3), round(float(centre + half), 3)]


def evaluate(cfg) -> dict:
    tiers = _TierCache()
    _build_all(cfg, tiers)
    loop = SyncLoopConfig(**OmegaConf.to_container(cfg.loop))
    adapter_cfg = EnvAdapterConfig(**OmegaConf.to_container(cfg.adapter))
    # the env must not truncate an episode before the loop's window after success has run out (success at the
    # loop's last step opens a window to one step past the budget)
    env_steps = {"max_steps": max(int(cfg.env.max_steps), loop.max_steps + loop.after_success_steps + 1)} \
        if loop.after_success_steps and "max_steps" in cfg.env else {}
    report: dict = {"episodes": cfg.episodes, "split": cfg.split, "agents": {}}
    trace = EpisodeTrace(cfg.trace) if cfg.get("trace") else None
    for name, spec in cfg.agents.items():
        families = [f for f in cfg.families if f in spec.get("families", cfg.families)]
        settings = OmegaConf.to_container(OmegaConf.merge(cfg.agent, spec.get("agent") or {}))
        agent = HybridAgent(tiers(spec.planner), tiers(spec.get("world_model")), tiers(spec.executor),
                            AgentConfig(**settings, use_subgoals=bool(spec.use_subgoals)))
        per_family: dict[str, dict] = {}
        latency: dict[str, list[float]] = defaultdict(list)
        for family in families:
            env = EnvAdapter(instantiate(cfg.env, task=family, split=cfg.split, **env_steps), adapter_cfg)
            oracles = [t for t in (agent.planner, agent.world_model) if hasattr(t, "bind")]
            subscribers = [_BindOracle(oracles, env.env)] if oracles else []
            # Envs that can judge more than success (the tabletop: how far placements missed, whether the
            # subtasks asked for were possible) hand eval probes for it.
            probes = env.env.eval_probes() if hasattr(env.env, "eval_probes") else []
            subscribers += probes
            if trace is not None:
                trace.env, trace.agent = env.env, agent
                subscribers.append(trace)
            results = []
            for ep in tqdm(range(cfg.episodes), desc=f"{name}/{family}", leave=False):
                seed = cfg.seed + ep
                if trace is not None:
                    trace.context = {"agent": name, "family": family, "seed": seed}
                results.append(run_episode(agent, env, loop, subscribers, seed=seed))
            env.env.close()
            per_family[family] = {
                "success": float(np.mean([r.success for r in results])),
                # Wilson's 95% interval: 50 episodes at 0.7 span 0.56-0.81
                "success_ci95": wilson_interval(sum(r.success for r in results), len(results)),
                # what the physics says is done: the planner's own bookkeeping is what is being judged
                "subtasks_completed": float(np.mean([r.achieved()[0] for r in results])),
                "faults": int(sum(len(r.faults) for r in results)),
                # how episodes ended: success, done (the planner said so too early), budget (out of steps), fault
                "ended": dict(Counter(r.status for r in results)),
                **{key: value for probe in probes for key, value in probe.summary().items()},
                **(stopping(results) if loop.after_success_steps else {}),
            }
            for r in results:
                for tier, stats in r.latency_ms.items():
                    latency[tier].append(stats["p50"])
        agent.close()
        report["agents"][name] = {"families": per_family,
                                  "latency_ms_p50": {t: float(np.median(v)) for t, v in latency.items()}}
    if trace is not None:
        trace.close()
    return report


def stopping(results: list) -> dict:
    """How the agent ended episodes that went on after success (`SyncLoopConfig.after_success_steps`): solved (the
    env reported success at some step), stopped (it said "done" and the scene was solved: what a robot without a
    simulator needs), steps from success to its "done" (median; below 0 where it said so as the last block came
    to rest), and solved scenes it left unsolved at the end (it moved a placed block)."""
    solved = [r for r in results if r.success_step is not None]
    stopped = [r for r in solved if r.status == "done" and r.success]
    return {"solved": round(len(solved) / max(len(results), 1), 4),
            "stopped": round(len(stopped) / max(len(results), 1), 4),
            "stop_steps_p50": float(np.median([r.done_step - r.success_step for r in stopped])) if stopped else None,
            "undone": int(sum(not r.success for r in solved))}


class _BindOracle:
    """Hands the oracle tiers the env and its reference plan as each episode starts (no second reset)."""

    def __init__(self, oracles: list, env):
        self.oracles, self.env = oracles, env

    def on_episode_start(self, instruction: str, info: dict) -> None:
        for tier in self.oracles:
            tier.bind(self.env, info["subtasks"])

    def on_step(self, record) -> None:
        pass

    def on_episode_end(self, result) -> None:
        pass

    def close(self) -> None:
        pass


def print_table(report: dict) -> None:
    agents = report["agents"]
    families = sorted({f for a in agents.values() for f in a["families"]})
    print(f"{'agent':<18}" + "".join(f"{f:>12}" for f in families))
    for name, a in agents.items():
        cells = [f"{a['families'][f]['success']:>12.2f}" if f in a["families"] else f"{'-':>12}" for f in families]
        print(f"{name:<18}" + "".join(cells))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hybrid eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=None, help="episodes per agent per family")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/eval.yaml")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"episodes={args.episodes}"] if args.episodes else [])
    cfg = compose("eval", overrides)
    start = time.perf_counter()
    report = evaluate(cfg)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    print_table(report)
    if args.json:
        print(json.dumps(report))
    return 0
