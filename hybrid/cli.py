"""`hybrid` console script: a thin dispatcher to one module per subcommand.

Each subcommand lives in its own module (imported only when used, so `hybrid --help` stays fast)
and takes the rest of the command line: Hydra overrides for composed jobs (`run`, `demo`,
`record`, `train`), a few flags for measurement jobs (`bench`, `eval`).
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). The function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hybrid.commands.run:main", "run an agent in an env: hybrid run planner=... world_model=... executor=... env=..."),
    "demo": ("hybrid.commands.demo:main", "the built-in tabletop demo on shipped defaults"),
    "record": ("hybrid.commands.record:main", "record scripted-expert episodes as a LeRobot dataset: env=tabletop task=all episodes=N out=DIR"),
    "train": ("hybrid.commands.train:main", "train a tier on a LeRobot dataset: hybrid train executor=<config> data=DIR"),
    "train-demo": ("hybrid.commands.train_demo:main", "record tabletop data and train every tabletop tier from scratch; ship the checkpoints"),
    "bench": ("hybrid.commands.bench:main", "print one JSON line of speed figures: hybrid bench <sim|executor|world-model|planner|runtime> --json"),
    "eval": ("hybrid.commands.eval:main", "evaluate agents or tiers: hybrid eval [planner|world-model|executor] --data DIR --json"),
}


def load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hybrid <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `hybrid <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hybrid: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(load(COMMANDS[name][0])(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
