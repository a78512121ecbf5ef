"""`hybrid eval [planner|world-model|executor|compare] ...`: offline tier metrics, closed-loop agent success, or
two closed-loop traces compared seed by seed."""

from __future__ import annotations

import sys

from hybrid.cli import load

# name -> "module:function"; "agents" is what a bare `hybrid eval --episodes N` runs.
EVALS: dict[str, str] = {
    "agents": "hybrid.eval.closed_loop:main",
    "planner": "planners.subtask.evaluate:main",
    "world-model": "planners.subgoal.evaluate:main",
    "executor": "executors.flow.evaluate:main",
    "compare": "hybrid.eval.compare:main",
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in EVALS:
        return int(load(EVALS[argv[0]])(argv[1:]) or 0)
    if argv and not argv[0].startswith(("-", "~", "+")) and "=" not in argv[0]:  # else agents' overrides
        print(f"usage: hybrid eval [{'|'.join(EVALS)}] [options]", file=sys.stderr)
        return 2
    return int(load(EVALS["agents"])(argv) or 0)
