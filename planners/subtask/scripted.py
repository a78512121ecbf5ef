"""A planner that walks a fixed subtask list: for teleoperation (an operator advances it) and tests."""

from __future__ import annotations

from typing import Literal

from hybrid.types import Observation, PlanStep, Subtask

# history: the next subtask is the first one not yet reported done by the runtime.
# per_call: move on every `calls_per_subtask` plan calls. manual: move on only when `advance()` is called.
Advance = Literal["history", "per_call", "manual"]


class ScriptedPlanner:
    def __init__(self, subtasks: list[str], advance: Advance = "history", calls_per_subtask: int = 1):
        subtasks = [" ".join(s.split()) for s in subtasks]
        if not subtasks or not all(subtasks):
            raise ValueError("subtasks: expected a non-empty list of non-empty subtasks")
        if advance not in ("history", "per_call", "manual"):
            raise ValueError(f"advance: expected history, per_call or manual, got {advance!r}")
        if calls_per_subtask < 1:
            raise ValueError("calls_per_subtask: expected >= 1")
        self.subtasks, self.mode, self.calls_per_subtask = list(subtasks), advance, int(calls_per_subtask)
        self.reset()

    def reset(self) -> None:
        self.position, self.calls = 0, 0

    def advance(self, steps: int = 1) -> None:
        """Move the script on (an operator's 'next' button); past the end the plan is done."""
        self.position = min(self.position + steps, len(self.subtasks))

    def plan(self, obs: Observation, instruction: str, history: list[Subtask]) -> PlanStep:
        if self.mode == "history":
            done = {s.text for s in history if s.status == "done"}
            pending = [s for s in self.subtasks if s not in done]
            return PlanStep(subtask=pending[0]) if pending else PlanStep(done=True, reason="script finished")
        if self.mode == "per_call":
            self.position = min(self.calls // self.calls_per_subtask, len(self.subtasks))
            self.calls += 1
        if self.position >= len(self.subtasks):
            return PlanStep(done=True, reason="script finished")
        return PlanStep(subtask=self.subtasks[self.position])
