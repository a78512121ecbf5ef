"""`hybrid bench runtime [--json] [options]`: the async runtime against the synchronous loop, same tiers.

Test-double tiers with configurable latency (no model is run): the figures are the runtime's own
cost and what blocking on slow tiers does to a fixed control rate. The env is the tiny PointEnv, so
the env step does not dominate. The last line printed is one JSON object:

    {"control_hz", "steps", "missed_deadlines", "overhead_ms_p99", "latency_s", "async": {...}, "sync": {...}}

``missed_deadlines`` counts control slots whose action came late or not at all (a hold). The sync
loop (SuSIE-style: plan, imagine, act, execute, every call blocking) is paced to the same rate by a
wrapper that counts the slots it misses while a tier blocks it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np

from hybrid.agent import AgentConfig, HybridAgent
from hybrid.runtime.async_runtime import AsyncRuntimeConfig, run_async_episode
from hybrid.runtime.env_adapter import EnvAdapter
from hybrid.runtime.sync import SyncLoopConfig, run_episode
from hybrid.testing import MockPlanner, MockWorldModel, PointEnv
from hybrid.types import ActionChunk, Observation, Subgoal, Subtask


class WaveExecutor:
    """Executor double: a slow sine per action dimension, each chunk offset by a little noise, so that
    chunk seams are visible; with a prefix it starts with the prefix and eases back onto its wave (RTC)."""

    supports_prefix = True

    def __init__(self, horizon: int, action_dim: int, dt: float, latency_s: float, amplitude: float = 0.02,
                 noise: float = 0.005, seed: int = 0):
        self.horizon, self.action_dim, self.dt, self.latency_s = horizon, action_dim, dt, latency_s
        self.amplitude, self.noise = amplitude, noise
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, obs: Observation, subtask: Subtask, subgoal: Subgoal | None,
            prefix: np.ndarray | None = None) -> ActionChunk:
        time.sleep(self.latency_s)
        t = obs.timestamp + np.arange(self.horizon)[:, None] * self.dt
        phase = np.arange(self.action_dim)[None, :]
        actions = self.amplitude * np.sin(2 * np.pi * 0.5 * t + phase) + self.rng.normal(0, self.noise, self.action_dim)
        if prefix is not None and len(prefix):
            d = len(prefix)
            ease = np.clip((np.arange(self.horizon) - d + 1) / 10.0, 0, 1)[:, None]  # back onto the wave in 10 steps
            actions = (1 - ease) * prefix[-1] + ease * actions
            actions[:d] = prefix
        return ActionChunk(actions=actions.astype(np.float32), dt=self.dt, start_time=obs.timestamp, subtask=subtask.text)


class EndlessPointEnv(PointEnv):
    """PointEnv that never reports success: the bench measures the runtime, not the task."""

    def _info(self):
        return {**super()._info(), "success": False}


class RealTimeEnv(gym.Wrapper):
    """Paces a synchronous loop's env steps to a control rate and counts the slots it misses."""

    def __init__(self, env: gym.Env, control_hz: float, late_tolerance: float = 0.5):
        super().__init__(env)
        self.period, self.tolerance = 1.0 / control_hz, late_tolerance
        self.t0 = self.last_end = None
        self.slot = 0
        self.missed = 0
        self.overhead_ms: list[float] = []

    def reset(self, **kw):
        self.t0, self.slot, self.last_end = None, 0, None
        return super().reset(**kw)

    def step(self, action):
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        else:
            self.overhead_ms.append((now - self.last_end) * 1e3)  # the loop's time between two env steps
        slot_time = self.t0 + self.slot * self.period
        if now < slot_time:
            time.sleep(slot_time - now)
        else:
            late = now - slot_time
            if late >= self.period:  # a blocked loop cannot drop actions: the schedule restarts from now
                self.missed += int(late // self.period)
                self.t0, self.slot = now, 0
            elif late > self.tolerance * self.period:
                self.missed += 1
        self.slot += 1
        out = super().step(action)
        self.last_end = time.perf_counter()
        return out


_TIMER_LOOP = """
import sys, time
period, steps, tol = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
t0, k, missed = time.perf_counter(), 0, 0
while k < steps:
    slot = t0 + k * period
    wait = slot - time.perf_counter()
    if wait > 0:
        time.sleep(wait)
    late = time.perf_counter() - slot
    skipped = int(late // period)
    missed += skipped + (late - skipped * period > tol * period)
    k += 1 + skipped
print(missed)
"""


def start_timer_baseline(control_hz: float, steps: int) -> subprocess.Popen:
    """A bare timer loop at the same rate, in its own process, run alongside: the deadlines this machine's
    scheduler alone misses under its current load, to read the runtime's figure against."""
    return subprocess.Popen([sys.executable, "-c", _TIMER_LOOP, str(1.0 / control_hz), str(steps), "0.5"],
                            stdout=subprocess.PIPE, text=True)


def build_agent(args, chunk_dt: float) -> HybridAgent:
    # The planner never finishes: it moves on every few calls, so the world model is exercised too.
    planner = MockPlanner([f"subtask {i}" for i in range(100_000)], calls_per_subtask=args.calls_per_subtask,
                          latency_s=args.planner_latency)
    world_model = MockWorldModel(latency_s=args.world_model_latency)
    executor = WaveExecutor(args.chunk, 2, chunk_dt, args.executor_latency)
    timeouts = dict(planner_timeout_s=max(5.0, 4 * args.planner_latency),
                    world_model_timeout_s=max(5.0, 4 * args.world_model_latency),
                    executor_timeout_s=max(1.0, 4 * args.executor_latency))
    return HybridAgent(planner, world_model, executor, AgentConfig(**timeouts))


def bench_async(args) -> dict:
    period = 1.0 / args.control_hz
    agent = build_agent(args, period)
    cfg = AsyncRuntimeConfig(control_hz=args.control_hz, max_steps=args.steps, planner_hz=args.planner_hz,
                             blend=args.blend, max_obs_age_s=max(0.5, 10 * period))
    start = time.perf_counter()
    result = run_async_episode(agent, EnvAdapter(EndlessPointEnv(max_steps=10 * args.steps)), cfg, seed=0)
    wall = time.perf_counter() - start
    agent.close()
    rt = result.info["runtime"]
    return {"status": result.status, "steps": result.steps, "wall_s": round(wall, 2),
            "achieved_hz": round(result.steps / wall, 2), "missed_deadlines": rt["missed_deadlines"],
            "overhead_ms_p50": round(rt["overhead_ms"]["p50"], 4), "overhead_ms_p99": round(rt["overhead_ms"]["p99"], 4),
            "overhead_cpu_ms_p99": round(rt["overhead_cpu_ms"]["p99"], 4),
            "queue_depth": rt.get("queue_depth"), "seam": rt.get("seam"), "chunks": rt.get("chunks", 0),
            "warmup_steps": rt.get("first_chunk_step"),
            "counts": {k: rt[k] for k in ("late_steps", "skipped_steps", "dry_steps", "holds", "stale_observations",
                                          "dropped_elapsed_actions") if k in rt}, "faults": len(result.faults),
            "tier_calls": {k: v["n"] for k, v in result.latency_ms.items()},
            "tier_latency_ms_p50": {k: round(v["p50"], 2) for k, v in result.latency_ms.items()}}


def bench_sync(args) -> dict:
    period = 1.0 / args.control_hz
    agent = build_agent(args, period)
    env = RealTimeEnv(EndlessPointEnv(max_steps=10 * args.sync_steps), args.control_hz)
    start = time.perf_counter()
    result = run_episode(agent, EnvAdapter(env), SyncLoopConfig(max_steps=args.sync_steps), seed=0)
    wall = time.perf_counter() - start
    agent.close()
    over = np.asarray(env.overhead_ms or [0.0])
    return {"status": result.status, "steps": result.steps, "wall_s": round(wall, 2),
            "achieved_hz": round(result.steps / wall, 2), "missed_deadlines": env.missed,
            "overhead_ms_p50": round(float(np.percentile(over, 50)), 4),
            "overhead_ms_p99": round(float(np.percentile(over, 99)), 4), "faults": len(result.faults),
            "tier_calls": {k: v["n"] for k, v in result.latency_ms.items()}}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hybrid bench runtime", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the final JSON line")
    p.add_argument("--control-hz", type=float, default=50.0)
    p.add_argument("--steps", type=int, default=3000, help="control steps of the async run")
    p.add_argument("--sync-steps", type=int, default=None, help="steps of the sync run (default: --steps; 0 skips it)")
    p.add_argument("--planner-latency", type=float, default=1.0, help="seconds per planner call")
    p.add_argument("--world-model-latency", type=float, default=0.5, help="seconds per world-model call")
    p.add_argument("--executor-latency", type=float, default=0.03, help="seconds per executor call")
    p.add_argument("--chunk", type=int, default=50, help="actions per chunk")
    p.add_argument("--planner-hz", type=float, default=1.0, help="async planner rate")
    p.add_argument("--calls-per-subtask", type=int, default=5, help="planner calls before the subtask changes")
    p.add_argument("--blend", choices=["rtc", "replace", "ensemble"], default="rtc")
    args = p.parse_args(argv)
    args.sync_steps = args.steps if args.sync_steps is None else args.sync_steps
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not args.json:
        print(f"async runtime: {args.steps} steps at {args.control_hz:g} Hz ...", file=sys.stderr)
    baseline = start_timer_baseline(args.control_hz, args.steps)
    out_async = bench_async(args)
    out_async["timer_baseline_missed_deadlines"] = int(baseline.communicate()[0])
    out_sync = None
    if args.sync_steps:
        if not args.json:
            print(f"sync loop: {args.sync_steps} steps ...", file=sys.stderr)
        out_sync = bench_sync(args)
    line = {"control_hz": args.control_hz, "steps": out_async["steps"], "missed_deadlines": out_async["missed_deadlines"],
            "overhead_ms_p99": out_async["overhead_ms_p99"], "blend": args.blend, "chunk": args.chunk,
            "latency_s": {"planner": args.planner_latency, "world_model": args.world_model_latency,
                          "executor": args.executor_latency},
            "async": out_async, "sync": out_sync}
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
