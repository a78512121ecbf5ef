"""The asynchronous multi-rate runtime: the control loop runs at the robot's rate and never waits on a tier.

    planner worker      (planner_hz)          ─► plan stack: current subtask
    world-model worker  (on a new subtask)    ─► subgoal board: subgoal per subtask (+ prefetch of the next)
    executor worker     (when the queue runs low, or the subtask/subgoal changed) ─► chunk queue
    control loop        (control_hz)          ─► observe, pop one action, safety filter, send

The loop hands each worker the latest observation and wakes it; it sends the hold action whenever it
has nothing safe to send (queue dry, executor fault, unsafe action), and halts the robot on any stop.
Ctrl-C ends the episode at the next tick with status ``interrupted``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from hybrid.agent import HybridAgent
from hybrid.runtime.chunk_queue import BlendMode, ChunkQueue
from hybrid.runtime.control_env import as_control_env
from hybrid.runtime.env_adapter import ObservationError
from hybrid.runtime.safety import SafetyConfig, SafetyFilter, UnsafeAction
from hybrid.runtime.subgoals import SubgoalBoard
from hybrid.runtime.subscriber import EpisodeResult, Subscriber
from hybrid.runtime.tier_jobs import EpisodeState, TierJobs, make_callers
from hybrid.runtime.workers import Worker
from hybrid.types import Observation, StepRecord, TierFault

log = logging.getLogger(__name__)


class AsyncRuntimeConfig(BaseModel):
    control_hz: float = Field(20.0, gt=0, le=1000, description="control rate: one action sent per tick (10-50 Hz for arms)")
    max_steps: int = Field(400, gt=0, description="step budget: control ticks per episode")
    planner_hz: float = Field(1.0, gt=0, description="how often the planner worker may re-plan (its replan policy "
                              "decides whether it is asked)")
    stall_tolerance: float = Field(1e-3, ge=0, description="state change below which the robot counts as still "
                                   "(the stall signal of the planner's replan policy)")
    blend: BlendMode = Field("rtc", description="joining overlapping chunks: rtc | replace | ensemble")
    ensemble_decay: float = Field(0.01, ge=0, description="temporal ensembling: weight exp(-decay * k) of the k-th prediction")
    refill_margin_steps: int = Field(2, ge=0, description="request a chunk this many ticks before the queue would run dry")
    max_obs_age_s: float = Field(0.5, gt=0, description="an observation older than this never reaches a tier")
    subgoal_gap: Literal["keep_last", "none"] = Field("keep_last", description="subgoal used until a new subtask's lands")
    prefetch_subgoals: bool = Field(True, description="imagine the next subtask's subgoal when the planner knows it")
    world_model_retry_s: float = Field(1.0, gt=0, description="retry period after a world-model fault")
    max_consecutive_faults: int = Field(3, gt=0, description="end the episode after this many executor faults in a row")
    late_tolerance: float = Field(0.5, gt=0, description="a tick later than this fraction of a period misses its deadline")
    settle_steps: int = Field(0, ge=0, description="ticks the robot holds still (the env's hold action) once the "
                              "planner says done, before the episode is judged: a block let go of a moment before "
                              "comes to rest (the sync loop's settle_steps)")
    instruction: str | None = Field(None, description="overrides the env's info['instruction']")
    shutdown_timeout_s: float = Field(5.0, ge=0, description="at an episode's end and on close, how long to wait for "
                                      "tier calls in flight (one left inside PyTorch at interpreter exit aborts it)")
    safety: SafetyConfig = SafetyConfig()


def time_left(timeout_s: float):
    """Seconds left of one deadline shared by several waits (each thread stopped gets what the last left)."""
    deadline = time.monotonic() + timeout_s
    return lambda: max(0.0, deadline - time.monotonic())


class AsyncRuntime:
    """Drives a `HybridAgent` on a gymnasium env (`EnvAdapter`) or a robot (`RobotEnv`) at a fixed control rate."""

    def __init__(self, agent: HybridAgent, env, config: AsyncRuntimeConfig | None = None,
                 subscribers: list[Subscriber] = ()):
        self.agent, self.env = agent, as_control_env(env)
        self.config = config or AsyncRuntimeConfig()
        self.subscribers = list(subscribers)
        self.callers = make_callers(agent.config)
        self.rtc = self.config.blend == "rtc" and bool(getattr(agent.executor, "supports_prefix", False))
        if self.config.blend == "rtc" and not self.rtc:
            log.info("executor %s takes no prefix: chunks replace the queue without real-time chunking",
                     type(agent.executor).__name__)

    def close(self) -> None:
        left = time_left(self.config.shutdown_timeout_s)
        for caller in self.callers.values():
            caller.close(left())

    def run_episode(self, seed: int | None = None) -> EpisodeResult:
        """One episode; never raises for a tier fault, a bad observation or Ctrl-C: the result says why it ended."""
        cfg, env = self.config, self.env
        obs, info = env.reset(seed=seed)
        instruction = cfg.instruction or info.get("instruction") or ""
        self.agent.reset(instruction)
        s = EpisodeState(stack=self.agent.stack, queue=ChunkQueue(cfg.blend if cfg.blend != "rtc" or self.rtc else "replace",
                                                                   cfg.ensemble_decay),
                         subgoals=SubgoalBoard(cfg.subgoal_gap))
        safety = SafetyFilter.from_config(cfg.safety, env.low, env.high)
        s.latest.put(obs, 0)
        workers = self._start_workers(s)
        for sub in self.subscribers:
            sub.on_episode_start(instruction, dict(info))
        status, stop = "budget", threading.Event()
        try:
            with _sigint_sets(stop):  # agent.reset gave this episode its own PlanStack: late writers can't reach the next
                status, info = self._loop(s, safety, workers, stop, instruction, info)
        except ObservationError as err:
            s.fault(TierFault(tier="observation", kind="bad_input", message=str(err)))
            status = "fault"
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            left = time_left(cfg.shutdown_timeout_s)
            for w in workers.values():
                w.stop(left())
            env.halt()  # a robot is told to hold where it is, whatever ended the episode
            result = EpisodeResult(
                status=status, success=bool(info.get("success", False)), steps=s.queue.next_step, instruction=instruction,
                subtasks_completed=sum(t.status == "done" for t in s.stack.subtasks),
                subtasks=[t.text for t in s.stack.subtasks], faults=list(s.faults), latency_ms=s.latency.summary(),
                info={"runtime": self._summary(s), **{k: v for k, v in info.items()
                                                       if isinstance(v, (bool, int, float, str, list))}})
            for sub in self.subscribers:
                sub.on_episode_end(result)
        return result

    def _start_workers(self, s: EpisodeState) -> dict[str, Worker]:
        cfg, workers = self.config, {}
        jobs = TierJobs(self.agent, self.callers, s, control_hz=cfg.control_hz, max_obs_age_s=cfg.max_obs_age_s,
                        refill_margin_steps=cfg.refill_margin_steps, rtc=self.rtc, prefetch=cfg.prefetch_subgoals,
                        action_dim=self.env.action_dim, stall_tolerance=cfg.stall_tolerance,
                        wake_world_model=lambda: "world_model" in workers and workers["world_model"].wake(),
                        wake_executor=lambda: workers["executor"].wake())
        workers["executor"] = Worker("executor", jobs.act)
        if self.agent.config.use_subgoals:
            workers["world_model"] = Worker("world_model", jobs.imagine, cfg.world_model_retry_s)
        workers["planner"] = Worker("planner", jobs.plan, 1.0 / cfg.planner_hz)
        self.jobs = jobs
        for w in workers.values():
            w.start()
        workers["planner"].wake()
        return workers

    def _loop(self, s: EpisodeState, safety: SafetyFilter, workers: dict[str, Worker], stop: threading.Event,
              instruction: str, info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        cfg, env, queue, tel = self.config, self.env, s.queue, s.telemetry
        period = 1.0 / cfg.control_hz
        t0 = time.perf_counter()
        step = 0
        while step < cfg.max_steps:
            slot = t0 + step * period
            wait = slot - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            tick, tick_cpu = time.perf_counter(), time.thread_time()
            late = tick - slot
            if late >= period:  # whole control slots passed without a tick: their actions have elapsed
                skipped = min(int(late // period), cfg.max_steps - step - 1)
                queue.skip(skipped)
                step += skipped
                late -= skipped * period
                tel.count("skipped_steps" if s.first_chunk_step is not None else "warmup_skipped", skipped)
            if stop.is_set():
                return "interrupted", info
            if s.stack.finished:
                return "done", self._settle(s, step, t0, instruction, info)
            if s.executor_fault_streak >= cfg.max_consecutive_faults:
                return "fault", info
            broken = next((w for w in workers.values() if w.error is not None), None)
            if broken is not None:
                s.fault(TierFault(tier="executor" if broken.name == "executor" else broken.name, kind="raised",
                                  message=f"{broken.name} worker crashed: {broken.error!r}"))
                return "fault", info

            t_env, c_env = time.perf_counter(), time.thread_time()
            obs = env.observe()
            env_s, env_cpu = time.perf_counter() - t_env, time.thread_time() - c_env
            if time.monotonic() - obs.timestamp > cfg.max_obs_age_s:
                tel.count("stale_observations")  # the tiers keep the last fresh one; they refuse it once too old
            else:
                s.latest.put(obs, step)

            started = s.first_chunk_step is not None
            planned = queue.pop()
            action = None
            if planned is not None:
                try:
                    action = safety(planned)
                except UnsafeAction as err:
                    s.fault(TierFault(tier="executor", kind="bad_output", message=str(err)))
                    tel.count("unsafe_actions")
                    queue.clear()
            elif started:
                tel.count("dry_steps")
            if action is None:  # nothing safe to send: hold position
                action = env.hold_action()
                safety.held(action)
                tel.count("holds" if started else "warmup_holds")
            queue.sent(action)
            if started and late > cfg.late_tolerance * period:
                tel.count("late_steps")
            if queue.depth() <= self.jobs.refill_at():
                workers["executor"].wake()

            t_env, c_env = time.perf_counter(), time.thread_time()
            terminated, truncated, info = env.send(action)
            env_s, env_cpu = env_s + time.perf_counter() - t_env, env_cpu + time.thread_time() - c_env
            step += 1
            self._publish(s, step, instruction, obs, action)
            # Wall time includes being preempted by other processes; CPU time is the loop's own work only.
            tel.overhead_ms.append((time.perf_counter() - tick - env_s) * 1e3)
            tel.overhead_cpu_ms.append((time.thread_time() - tick_cpu - env_cpu) * 1e3)
            if info.get("success"):
                return "success", info
            if terminated or truncated:
                return "terminated", info
        return "budget", info

    def _settle(self, s: EpisodeState, step: int, t0: float, instruction: str, info: dict[str, Any]) -> dict[str, Any]:
        """After "done": `settle_steps` more ticks at the control rate sending the hold action, so that what the robot
        let go of comes to rest before the env judges the episode; the info of the last tick sent."""
        period, env = 1.0 / self.config.control_hz, self.env
        for _ in range(self.config.settle_steps):
            wait = t0 + step * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            obs, hold = env.observe(), env.hold_action()
            s.queue.pop()  # the step is the hold's, whatever was queued
            s.queue.sent(hold)
            terminated, truncated, info = env.send(hold)
            step += 1
            self._publish(s, step, instruction, obs, hold)
            if terminated or truncated:  # an env is not stepped past its episode's end
                break
        return info

    def _publish(self, s: EpisodeState, step: int, instruction: str, obs: Observation, action: np.ndarray) -> None:
        depth = s.queue.depth()
        s.telemetry.queue_depth.append(depth)
        if not self.subscribers:
            s.pending_faults.clear()
            s.pending_latency = {}
            return
        faults, s.pending_faults = s.pending_faults, []
        latency, s.pending_latency = s.pending_latency, {}
        record = StepRecord(step=step, wall_time=time.time(), instruction=instruction, subtasks=list(s.stack.subtasks),
                            observation=obs, subgoal=s.stack.subgoal, chunk=s.stack.chunk, action=action,
                            latency_ms=latency, faults=faults)
        gauges = {"queue_depth": float(depth), "missed_deadlines": float(s.telemetry.missed_deadlines)}
        if s.new_seam is not None:
            gauges["seam"], s.new_seam = s.new_seam, None
        for sub in self.subscribers:
            sub.on_step(record)
            if callable(getattr(sub, "on_runtime", None)):
                sub.on_runtime(step, gauges)

    def _summary(self, s: EpisodeState) -> dict[str, Any]:
        out = s.telemetry.summary()
        out.update(control_hz=self.config.control_hz, blend=s.queue.mode, rtc=self.rtc,
                   first_chunk_step=s.first_chunk_step)
        return out


def run_async_episode(agent: HybridAgent, env, config: AsyncRuntimeConfig | None = None,
                      subscribers: list[Subscriber] = (), seed: int | None = None) -> EpisodeResult:
    """One episode with the async runtime (the async twin of `hybrid.runtime.sync.run_episode`)."""
    runtime = AsyncRuntime(agent, env, config, subscribers)
    try:
        return runtime.run_episode(seed)
    finally:
        runtime.close()


@contextmanager
def _sigint_sets(stop: threading.Event):
    """While running, the first Ctrl-C asks the loop to stop at its next tick; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
