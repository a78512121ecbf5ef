"""Tiers that exist only to build the evaluation's reference agents.

`OracleWorldModel` renders the true end-of-subtask scene from the simulator (the upper bound on what a
world model can give the executor); `OraclePlanner` names the first subtask the physics says is not
done yet (with both oracles the agent measures the executor alone); `InstructionPlanner` hands the raw
instruction to the executor as its only "subtask" (the flat-VLA baseline, which has no planner).

Both oracles take ``phrasing``: the dotted path of a function that writes a subtask the way the agent's
trained planner does (the tabletop planner names its subtasks canonically). The oracle planner then
differs from the trained one only in being right, not in wording the executor was never trained on, and
the oracle world model recognises the planner's wording of a subtask of the reference plan.
"""

from __future__ import annotations

from collections.abc import Callable

from hybrid.types import Observation, PlanStep, Subgoal, Subtask


def _phrasing(path: str | None) -> Callable[[str], str]:
    if path is None:
        return lambda text: text
    from hydra.utils import get_method

    return get_method(path)


class OracleWorldModel:
    """Subgoal = what the simulator renders once the subtask is done (needs an env with `render_subgoal`).

    It renders with the env's GL context, which belongs to the thread that made it: call it inline
    (``world_model_timeout_s=None``), not from a worker thread.
    """

    def __init__(self, phrasing: str | None = None):
        self.env = None
        self.plan: list[str] = []
        self.phrase = _phrasing(phrasing)

    def bind(self, env, plan: list[str]) -> None:
        """Called by the evaluator at every episode start with the env and its reference plan."""
        self.env, self.plan = env.unwrapped, list(plan)
        self.phrased = [self.phrase(text) for text in plan]

    def imagine(self, obs: Observation, subtask: Subtask) -> Subgoal:
        if self.env is None:
            raise RuntimeError("OracleWorldModel: bind(env, plan) must be called before imagine()")
        # The planner's text names the subtask; when it paraphrases, its position in the plan does.
        phrased = self.phrase(subtask.text)
        if subtask.text in self.plan:
            index = self.plan.index(subtask.text)
        elif phrased in self.phrased:
            index = self.phrased.index(phrased)
        else:
            index = min(subtask.index, len(self.plan) - 1)
        images = self.env.render_subgoal(index)
        return Subgoal(images={c: images[c] for c in obs.images}, subtask=subtask.text, model="oracle")

    def reset(self) -> None:
        pass


class OraclePlanner:
    """Next subtask = the first one of the reference plan the simulator's success predicates say is unfinished."""

    def __init__(self, phrasing: str | None = None):
        self.env = None
        self.plan_texts: list[str] = []
        self.phrase = _phrasing(phrasing)

    def bind(self, env, plan: list[str]) -> None:
        self.env, self.plan_texts = env.unwrapped, [self.phrase(text) for text in plan]

    def plan(self, obs: Observation, instruction: str, history: list[Subtask]) -> PlanStep:
        if self.env is None:
            raise RuntimeError("OraclePlanner: bind(env, plan) must be called before plan()")
        done = self.env.scene.subtask_success()
        pending = [text for text, ok in zip(self.plan_texts, done) if not ok]
        return PlanStep(subtask=pending[0]) if pending else PlanStep(done=True)

    def reset(self) -> None:
        pass


class InstructionPlanner:
    """The flat baseline's "planner": the whole instruction is the one subtask, never marked done."""

    def plan(self, obs: Observation, instruction: str, history: list[Subtask]) -> PlanStep:
        return PlanStep(subtask=instruction)

    def reset(self) -> None:
        pass
