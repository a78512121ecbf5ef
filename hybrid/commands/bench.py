"""`hybrid bench <name> ...`: every module's speed benchmark, each printing a final JSON line."""

from __future__ import annotations

import sys

from hybrid.cli import load

# name -> "module:function"; the function takes the remaining argv and returns an exit code.
BENCHES: dict[str, str] = {
    "sim": "hybrid.envs.tabletop.bench:main",
    "runtime": "hybrid.runtime.bench:main",
    "executor": "executors.flow.bench:main",
    "world-model": "planners.subgoal.bench:main",
    "planner": "planners.subtask.bench:main",
    "success": "planners.subtask.bench:success_main",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print(f"usage: hybrid bench <{'|'.join(BENCHES)}> [--json] [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(load(BENCHES[argv[0]])(argv[1:]) or 0)
