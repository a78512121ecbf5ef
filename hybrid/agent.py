"""`HybridAgent`: composes any planner, world model and executor that meet the tier interfaces.

The agent owns the plan stack (instruction, subtask list, current subgoal, current chunk) and the
three guarded tier calls. It does not own a loop: the synchronous loop (`hybrid.runtime.sync`) and
the asynchronous runtime drive the same agent, so the tiers and the plan logic are written once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from hybrid.interfaces import TIER_INTERFACES
from hybrid.runtime.tier_call import TierCaller, TierResult
from hybrid.types import ActionChunk, Observation, PlanStep, Subgoal, Subtask

log = logging.getLogger(__name__)


class AgentConfig(BaseModel):
    """Deadlines per tier call (seconds; ``None`` calls inline with no deadline) and fallbacks."""

    planner_timeout_s: float | None = Field(30.0, gt=0)
    world_model_timeout_s: float | None = Field(30.0, gt=0)
    executor_timeout_s: float | None = Field(10.0, gt=0)
    # When the world model faults: keep the last subgoal made for this same subtask, else act without one.
    keep_last_subgoal: bool = True
    use_subgoals: bool = True


def check_tier(tier: str, obj: object) -> None:
    """Raise a TypeError naming what ``obj`` lacks to serve as ``tier``."""
    proto = TIER_INTERFACES[tier]
    missing = [m for m in ("plan", "imagine", "act", "reset") if hasattr(proto, m) and not callable(getattr(obj, m, None))]
    if missing:
        raise TypeError(f"{tier}: {type(obj).__name__} does not meet {proto.__name__}; missing {', '.join(missing)}()")


@dataclass
class PlanStack:
    """What the agent currently believes, from the instruction down to the action chunk."""

    instruction: str = ""
    subtasks: list[Subtask] = field(default_factory=list)
    subgoal: Subgoal | None = None
    chunk: ActionChunk | None = None
    finished: bool = False

    @property
    def current(self) -> Subtask | None:
        return self.subtasks[-1] if self.subtasks and self.subtasks[-1].status == "active" else None

    @property
    def history(self) -> list[Subtask]:
        return [s for s in self.subtasks if s.status == "done"]

    def apply(self, step: PlanStep) -> bool:
        """Fold a planner reply into the stack; True when the active subtask changed."""
        cur = self.current
        if step.done:
            if cur is not None:
                self.subtasks[-1] = cur.model_copy(update={"status": "done"})
            self.finished = True
            return cur is not None
        text = step.subtask.strip()
        if cur is not None and cur.text == text:
            return False
        if cur is not None:
            self.subtasks[-1] = cur.model_copy(update={"status": "done"})
        self.subtasks.append(Subtask(text=text, index=len(self.subtasks), status="active"))
        return True


def check_subgoal(obs: Observation, res: TierResult[Subgoal]) -> TierResult[Subgoal]:
    """A subgoal must have one image per camera of ``obs``, each the camera's shape; else it is a fault."""
    if res.value is None:
        return res
    missing = set(obs.images) - set(res.value.images)
    if missing:
        return TierResult(None, res.latency_ms, _bad("world_model", f"subgoal lacks cameras {sorted(missing)}"))
    if any(res.value.images[c].shape != obs.images[c].shape for c in obs.images):
        shapes = {c: res.value.images[c].shape for c in obs.images}
        return TierResult(None, res.latency_ms, _bad("world_model", f"subgoal image shapes {shapes} differ from the cameras'"))
    return res


class HybridAgent:
    """Planner → world model → executor, each swappable by any object that meets its interface."""

    def __init__(self, planner, world_model, executor, config: AgentConfig | None = None):
        """``world_model`` may be None for an agent that acts language-only (``use_subgoals=False``)."""
        self.config = config or AgentConfig()
        if world_model is None and self.config.use_subgoals:
            raise TypeError("world_model: None is only allowed with use_subgoals=False (a language-only agent)")
        for tier, obj in (("planner", planner), ("world_model", world_model), ("executor", executor)):
            if obj is not None:
                check_tier(tier, obj)
        self.planner, self.world_model, self.executor = planner, world_model, executor
        if getattr(planner, "wants_affordance", False):  # grounded decoding (planners/subtask/affordance.py)
            supported = getattr(executor, "supports_affordance", False)
            planner.use_affordance(executor.affordance if supported else None)
            if not supported:
                log.warning("planner: affordance check asked for, but %s cannot score subtasks; plain decoding",
                            type(executor).__name__)
        if callable(getattr(planner, "use_unplaced_releases", None)):  # e.g. a grasp check's let-go placed nothing
            counts = isinstance(getattr(executor, "unplaced_releases", None), int)
            planner.use_unplaced_releases((lambda: executor.unplaced_releases) if counts else None)
        self._call = {
            "planner": TierCaller("planner", PlanStep, self.config.planner_timeout_s),
            "world_model": TierCaller("world_model", Subgoal, self.config.world_model_timeout_s),
            "executor": TierCaller("executor", ActionChunk, self.config.executor_timeout_s),
        }
        self.stack = PlanStack()
        self._last_plan: float | None = None  # the loop's clock at the last plan call
        self._done_reported = False
        self.last_reply: PlanStep | None = None  # the planner's last valid reply (its reason, for traces)

    def reset(self, instruction: str) -> None:
        self.stack = PlanStack(instruction=instruction)
        self._last_plan, self._done_reported, self.last_reply = None, False, None
        for tier in (self.planner, self.world_model, self.executor):
            if tier is not None:
                tier.reset()

    def report_subtask_done(self) -> None:
        """Something outside the planner (an operator, an executor that detects completion) says the current
        subtask is finished: a planner whose replan policy has ``on_subtask_done`` is asked at the next chance."""
        self._done_reported = True

    def plan_due(self, now: float, stalled_s: float = 0.0) -> bool:
        """Whether the loop should ask the planner at ``now`` (seconds on the loop's clock): always without a
        current subtask; otherwise as the planner's own `ReplanPolicy` (its ``replan``) says, from the time of
        the last plan call, a reported finish and how long the robot has not moved (``stalled_s``). A planner
        without a policy is asked whenever the loop offers."""
        policy = getattr(self.planner, "replan", None)
        if self.stack.current is None or policy is None or self._last_plan is None:
            return True
        # still since the planner was last asked: a stall asks once, then again after as long again
        stalled_s = min(stalled_s, now - self._last_plan)
        return policy.should_replan(now, self._last_plan, self._done_reported, stalled_s)

    def mark_planned(self, now: float) -> None:
        """The planner is being asked at ``now`` (the clock `plan_due` is given)."""
        self._last_plan, self._done_reported = now, False

    def plan(self, obs: Observation, now: float | None = None) -> TierResult[PlanStep]:
        """Ask the planner (``now``: the loop's clock, for `plan_due`); on a fault the current subtask is kept."""
        self.mark_planned(time.monotonic() if now is None else now)
        res = self._call["planner"](self.planner.plan, obs, self.stack.instruction, self.stack.history)
        self.last_reply = res.value or self.last_reply
        if res.value is not None and self.stack.apply(res.value) and self.stack.subgoal is not None:
            # A subgoal made for the previous subtask is stale for the new one.
            if self.stack.current is None or self.stack.subgoal.subtask != self.stack.current.text:
                self.stack.subgoal = None
        return res

    def imagine(self, obs: Observation) -> TierResult[Subgoal]:
        """Ask the world model for the current subtask's subgoal; on a fault keep the last valid one."""
        cur = self.stack.current
        res = check_subgoal(obs, self._call["world_model"](self.world_model.imagine, obs, cur))
        if res.value is not None:
            self.stack.subgoal = res.value
        elif not self.config.keep_last_subgoal:
            self.stack.subgoal = None
        return res

    def act(self, obs: Observation, action_dim: int | None = None) -> TierResult[ActionChunk]:
        """Ask the executor for a chunk on the current subtask and subgoal (or none)."""
        subgoal = self.stack.subgoal if self.config.use_subgoals else None
        res = self._call["executor"](self.executor.act, obs, self.stack.current, subgoal)
        if res.value is not None and action_dim is not None and res.value.actions.shape[1] != action_dim:
            got = res.value.actions.shape
            res = TierResult(None, res.latency_ms, _bad("executor", f"chunk actions {got}, expected [H, {action_dim}]"))
        self.stack.chunk = res.value
        return res

    def close(self) -> None:
        for caller in self._call.values():
            caller.close()


def _bad(tier: str, message: str):
    from hybrid.types import TierFault

    return TierFault(tier=tier, kind="bad_output", message=message)
