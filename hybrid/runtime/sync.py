"""The synchronous agent loop: plan → imagine → act → execute the chunk → observe (SuSIE-style).

Every tier call blocks the loop. It is the reference behaviour, the loop for tests and debugging,
and the baseline the asynchronous runtime is measured against.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from hybrid.agent import HybridAgent
from hybrid.runtime.env_adapter import EnvAdapter, ObservationError
from hybrid.runtime.safety import SafetyFilter, UnsafeAction
from hybrid.runtime.stall import StallClock
from hybrid.runtime.subscriber import EpisodeResult, Subscriber
from hybrid.runtime.telemetry import LatencyLog
from hybrid.types import Observation, StepRecord, TierFault

log = logging.getLogger(__name__)


class SyncLoopConfig(BaseModel):
    max_steps: int = Field(400, gt=0, description="step budget: env steps per episode")
    execute_horizon: int | None = Field(None, gt=0, description="actions of each chunk to execute; None = all")
    replan_every: int = Field(1, gt=0, description="offer the planner a call before every n-th chunk (its own "
                              "replan policy, if it has one, decides whether it is asked)")
    stall_tolerance: float = Field(1e-3, ge=0, description="state change below which the robot counts as still "
                                   "(the stall signal of the planner's replan policy)")
    max_consecutive_faults: int = Field(3, gt=0, description="end the episode after this many faults in a row")
    instruction: str | None = Field(None, description="overrides the env's info['instruction']")
    settle_steps: int = Field(0, ge=0, description="steps the robot holds still (the env's hold action) once the "
                              "agent says \"done\", before the episode is judged: a block just let go of comes to "
                              "rest")
    # A robot has no simulator to say the task is solved: the agent must say "done" itself, and leave the scene
    # as it is until it does.
    after_success_steps: int = Field(0, ge=0, description="steps the episode goes on once the env reports "
                                     "success, for the agent to say \"done\" (0: it ends at success); the "
                                     "result's success is then the env's at the end, and success_step when "
                                     "it was first reached")


def run_episode(agent: HybridAgent, env: EnvAdapter, config: SyncLoopConfig | None = None,
                subscribers: list[Subscriber] = (), seed: int | None = None) -> EpisodeResult:
    """Run one episode; never raises for a tier fault, a bad observation or Ctrl-C: the result says why it ended."""
    cfg = config or SyncLoopConfig()
    safety = SafetyFilter(env.low, env.high)
    latency = LatencyLog()
    faults: list[TierFault] = []
    raw, info = env.env.reset(seed=seed)
    instruction = cfg.instruction or info.get("instruction") or ""
    agent.reset(instruction)
    for sub in subscribers:
        sub.on_episode_start(instruction, dict(info))

    steps, chunks, streak, status = 0, 0, 0, "budget"
    budget, success_step, done_step = cfg.max_steps, None, None
    clock, stalled_s, stall = 0.0, 0.0, StallClock(cfg.stall_tolerance)  # env time: the chunks' dt per step
    terminated = truncated = False
    step_faults: list[TierFault] = []

    def fault(f: TierFault) -> None:
        log.warning("%s", f)
        faults.append(f)
        step_faults.append(f)

    def publish(obs: Observation | None, action: np.ndarray | None, lat: dict[str, float]) -> None:
        record = StepRecord(step=steps, wall_time=time.time(), instruction=instruction,
                            subtasks=list(agent.stack.subtasks), observation=obs, subgoal=agent.stack.subgoal,
                            chunk=agent.stack.chunk, action=action, latency_ms=lat, faults=list(step_faults))
        step_faults.clear()
        for sub in subscribers:
            sub.on_step(record)

    try:
        obs = env.observation(raw, instruction)
        while steps < budget:
            lat: dict[str, float] = {}
            if agent.stack.current is None or (chunks % cfg.replan_every == 0 and agent.plan_due(clock, stalled_s)):
                res = agent.plan(obs, now=clock)
                lat["planner"] = latency.add("planner", res.latency_ms)
                if res.fault:
                    fault(res.fault)
            if agent.stack.finished:
                status, done_step = "done", steps
                publish(obs, None, lat)
                for _ in range(cfg.settle_steps):  # the robot holds still while what it let go of comes to rest
                    hold = env.hold_action()
                    raw, _, terminated, truncated, info = env.env.step(hold)
                    steps += 1
                    success_step = steps if info.get("success") and success_step is None else success_step
                    obs = env.observation(raw, instruction)
                    publish(obs, hold, {})
                    if terminated or truncated:  # a gymnasium env is not stepped past its episode's end
                        break
                break
            if agent.stack.current is None:  # no subtask yet: nothing to act on, hold
                streak += 1
                publish(obs, None, lat)
                if streak >= cfg.max_consecutive_faults:
                    status = "fault"
                    break
                continue
            if agent.config.use_subgoals and (agent.stack.subgoal is None
                                              or agent.stack.subgoal.subtask != agent.stack.current.text):
                res = agent.imagine(obs)
                lat["world_model"] = latency.add("world_model", res.latency_ms)
                if res.fault:
                    fault(res.fault)  # acts on the last subgoal for this subtask, or language-only
            res = agent.act(obs, env.action_dim)
            lat["executor"] = latency.add("executor", res.latency_ms)
            chunks += 1
            if res.fault:
                fault(res.fault)
                streak += 1
                publish(obs, None, lat)  # hold: no action is sent
                if streak >= cfg.max_consecutive_faults:
                    status = "fault"
                    break
                continue
            actions, dt = res.value.actions[: cfg.execute_horizon], res.value.dt
            for action in actions:
                try:
                    safe = safety(action)
                except UnsafeAction as err:  # hold: the rest of this chunk is not trusted either
                    fault(TierFault(tier="executor", kind="bad_output", message=str(err)))
                    streak += 1
                    publish(obs, None, lat)
                    break
                streak = 0
                raw, _, terminated, truncated, info = env.env.step(safe)
                steps += 1
                clock += dt
                obs = env.observation(raw, instruction)
                stalled_s = stall.update(obs.state, clock)
                publish(obs, safe, lat)
                lat = {}
                if info.get("success") and success_step is None:
                    success_step = steps
                    if cfg.after_success_steps:  # the agent's "done" ends the episode, or this many steps
                        budget = steps + cfg.after_success_steps
                    else:
                        status = "success"
                if cfg.after_success_steps and info.get("success"):
                    terminated = False  # ended by success, which the agent must now tell by itself
                if terminated or truncated or status == "success" or steps >= budget:
                    break
            if status == "success" or terminated or truncated:
                status = status if status == "success" else "terminated"
                break
            if streak >= cfg.max_consecutive_faults:
                status = "fault"
                break
    except ObservationError as err:
        fault(TierFault(tier="observation", kind="bad_input", message=str(err)))
        status = "fault"
        publish(None, None, {})
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        result = EpisodeResult(
            status=status, success=bool(info.get("success", False)), steps=steps, instruction=instruction,
            subtasks_completed=sum(s.status == "done" for s in agent.stack.subtasks),
            subtasks=[s.text for s in agent.stack.subtasks], faults=faults, latency_ms=latency.summary(),
            info=_jsonable(info), success_step=success_step, done_step=done_step,
        )
        for sub in subscribers:
            sub.on_episode_end(result)
    return result


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str, list))}
