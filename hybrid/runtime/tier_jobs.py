"""The async runtime's three background jobs: plan, imagine (and prefetch), compute the next chunk.

Each job reads the latest observation, calls its tier through a guarded `TierCaller` (deadline,
contract check, faults as values) and writes into this episode's state. State is per episode, so a
call still running when an episode ends writes into that finished episode, never into the next one.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial

from hybrid.agent import PlanStack, check_subgoal
from hybrid.runtime.chunk_queue import ChunkQueue
from hybrid.runtime.stall import StallClock
from hybrid.runtime.subgoals import SubgoalBoard
from hybrid.runtime.telemetry import LatencyLog, RuntimeTelemetry
from hybrid.runtime.tier_call import TierCaller, TierResult
from hybrid.runtime.workers import LatestObservation
from hybrid.types import ActionChunk, Observation, PlanStep, Subgoal, Subtask, TierFault


@dataclass
class EpisodeState:
    """Everything the control loop and the workers share during one episode."""

    stack: PlanStack
    queue: ChunkQueue
    subgoals: SubgoalBoard
    latest: LatestObservation = field(default_factory=LatestObservation)
    latency: LatencyLog = field(default_factory=LatencyLog)
    telemetry: RuntimeTelemetry = field(default_factory=RuntimeTelemetry)
    faults: list[TierFault] = field(default_factory=list)
    pending_faults: list[TierFault] = field(default_factory=list)  # not yet in a published StepRecord
    pending_latency: dict[str, float] = field(default_factory=dict)
    refresh_chunk: threading.Event = field(default_factory=threading.Event)  # subtask/subgoal changed
    executor_fault_streak: int = 0
    first_chunk_step: int | None = None
    new_seam: float | None = None  # the seam of the last merge, until the loop logs it

    def fault(self, fault: TierFault) -> None:
        self.faults.append(fault)
        self.pending_faults.append(fault)

    def latency_ms(self, tier: str, ms: float) -> None:
        self.pending_latency[tier] = self.latency.add(tier, ms)


class TierJobs:
    """The planner, world-model and executor jobs for one episode, run by `Worker` threads."""

    def __init__(self, agent, callers: dict[str, TierCaller], state: EpisodeState, *, control_hz: float,
                 max_obs_age_s: float, refill_margin_steps: int, rtc: bool, prefetch: bool, action_dim: int,
                 stall_tolerance: float = 1e-3, wake_world_model=lambda: None, wake_executor=lambda: None):
        self.agent, self.callers, self.s = agent, callers, state
        self.hz, self.max_obs_age_s, self.margin = control_hz, max_obs_age_s, refill_margin_steps
        self.rtc, self.prefetch, self.action_dim = rtc, prefetch, action_dim
        self.wake_world_model, self.wake_executor = wake_world_model, wake_executor
        self.stall = StallClock(stall_tolerance)  # how long the robot has been still, for the replan policy

    # ---- shared helpers -------------------------------------------------------------------------

    def fresh_observation(self, tier: str) -> tuple[Observation | None, int]:
        """The latest observation, or None when it is older than the bound (it never reaches a tier)."""
        obs, step = self.s.latest.get()
        if obs is None:
            return None, step
        age = time.monotonic() - obs.timestamp
        if age > self.max_obs_age_s:
            self.s.telemetry.count("stale_observations")
            self.s.fault(TierFault(tier="observation", kind="bad_input",
                                   message=f"{tier}: observation is {age:.3f} s old (bound {self.max_obs_age_s} s)"))
            return None, step
        return obs, step

    def upcoming(self) -> str | None:
        """The next subtask when the planner can tell (an optional ``next_subtask(current_text)``)."""
        peek = getattr(self.agent.planner, "next_subtask", None)
        cur = self.s.stack.current
        return peek(cur.text) if callable(peek) and cur is not None else None

    def delay_steps(self, obs_step: int) -> int:
        """Control steps between the observation a chunk is conditioned on and the chunk landing."""
        est = self.s.latency.recent_max("executor") or 0.0
        return (self.s.queue.next_step - obs_step) + math.ceil(est * self.hz / 1e3)

    def refill_at(self) -> int:
        """Queue depth at which the next chunk must be requested so that it lands before the queue is dry."""
        est = self.s.latency.recent_max("executor") or 0.0
        return math.ceil(est * self.hz / 1e3) + self.margin

    # ---- planner --------------------------------------------------------------------------------

    def plan(self) -> None:
        obs, _ = self.fresh_observation("planner")
        stack = self.s.stack
        if obs is None or stack.finished:
            return
        now = time.monotonic()
        if not self.agent.plan_due(now, self.stall.update(obs.state, now)):  # the planner's replan policy
            return
        self.agent.mark_planned(now)
        res = self.callers["planner"](self.agent.planner.plan, obs, stack.instruction, stack.history)
        self.s.latency_ms("planner", res.latency_ms)
        if res.fault:  # keep the current subtask
            self.s.fault(res.fault)
            return
        if stack.apply(res.value) and stack.current is not None:
            stack.subgoal = self.s.subgoals.for_executor(stack.current) if self.agent.config.use_subgoals else None
            self.s.refresh_chunk.set()
            self.wake_world_model()
            self.wake_executor()

    # ---- world model ----------------------------------------------------------------------------

    def imagine(self) -> None:
        stack, board = self.s.stack, self.s.subgoals
        cur = stack.current
        if cur is None or stack.finished:
            return
        nxt = self.upcoming() if self.prefetch else None
        if not board.has(cur.text):
            target = cur
        elif nxt is not None and not board.has(nxt):
            target = Subtask(text=nxt, index=cur.index + 1, status="pending")
        else:
            return
        obs, _ = self.fresh_observation("world_model")
        if obs is None:
            return
        res = check_subgoal(obs, self.callers["world_model"](self.agent.world_model.imagine, obs, target))
        self.s.latency_ms("world_model", res.latency_ms)
        if res.fault:  # the executor keeps the last valid subgoal (or none); the worker's timer retries
            self.s.fault(res.fault)
            return
        verdict = board.offer(res.value, stack.current, self.upcoming() if self.prefetch else None)
        self.s.telemetry.count(f"subgoals_{verdict}")
        if verdict == "current":
            stack.subgoal = board.for_executor(stack.current)
            self.s.refresh_chunk.set()
            self.wake_executor()
        self.wake_world_model()  # a prefetch may be due next

    # ---- executor -------------------------------------------------------------------------------

    def act(self) -> None:
        s, stack = self.s, self.s.stack
        cur = stack.current
        if cur is None or stack.finished:
            return
        if not s.refresh_chunk.is_set() and s.queue.depth() > self.refill_at():
            return  # the queue holds enough; woken early
        obs, obs_step = self.fresh_observation("executor")
        if obs is None:
            return
        s.refresh_chunk.clear()
        subgoal = s.subgoals.for_executor(cur) if self.agent.config.use_subgoals else None
        act = self.agent.executor.act
        if self.rtc:  # the actions the robot commits to while this chunk is computed start the new chunk
            act = partial(act, prefix=s.queue.committed(obs_step, self.delay_steps(obs_step)))
        res = self.callers["executor"](act, obs, cur, subgoal)
        s.latency_ms("executor", res.latency_ms)
        if res.value is not None and res.value.actions.shape[1] != self.action_dim:
            got = res.value.actions.shape
            res = TierResult(None, res.latency_ms, TierFault(tier="executor", kind="bad_output",
                                                             message=f"chunk actions {got}, expected [H, {self.action_dim}]"))
        if res.fault:  # hold: the queued future was planned by a tier that is now failing
            s.fault(res.fault)
            s.executor_fault_streak += 1
            s.queue.clear()
            return
        s.executor_fault_streak = 0
        chunk: ActionChunk = res.value
        start = obs_step + round((chunk.start_time - obs.timestamp) * self.hz)
        report = s.queue.merge(chunk.actions, start)
        stack.chunk = chunk
        s.telemetry.count("chunks")
        s.telemetry.count("dropped_elapsed_actions", report.dropped)
        if report.seam is not None:
            s.telemetry.seams.append(report.seam)
            s.new_seam = report.seam
        if s.first_chunk_step is None:
            s.first_chunk_step = s.queue.next_step


def make_callers(config) -> dict[str, TierCaller]:
    """One guarded caller per tier with the agent's deadlines (`AgentConfig`)."""
    return {"planner": TierCaller("planner", PlanStep, config.planner_timeout_s),
            "world_model": TierCaller("world_model", Subgoal, config.world_model_timeout_s),
            "executor": TierCaller("executor", ActionChunk, config.executor_timeout_s)}
