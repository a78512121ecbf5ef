"""`hybrid run [--rerun spawn|save PATH|serve|off] [hydra overrides...]`: an agent in an env."""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from hybrid.config import compose, print_config_help, wants_help


def rerun_overrides(argv: list[str]) -> list[str]:
    """Turn `--rerun MODE [PATH]` into Hydra overrides of the `viz` group."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] != "--rerun":
            out.append(argv[i])
            i += 1
            continue
        mode = argv[i + 1] if i + 1 < len(argv) else ""
        if mode not in ("spawn", "save", "serve", "off"):
            raise SystemExit(f"--rerun: expected spawn|save PATH|serve|off, got {mode!r}")
        out.append(f"viz={mode}")
        i += 2
        if mode == "save":
            if i >= len(argv) or "=" in argv[i]:
                raise SystemExit("--rerun save: expected a PATH for the .rrd file")
            out.append(f"viz.path={argv[i]}")
            i += 1
    return out


def execute(cfg, banner: str | None = None) -> int:
    """Build everything the config names, run its episodes, print the summary; 0 on success."""
    from hybrid.api import load_agent, make_env, run, run_async
    from hybrid.runtime.async_runtime import AsyncRuntimeConfig
    from hybrid.runtime.runtime_summary import RuntimeSummary
    from hybrid.runtime.summary import ConsoleSummary
    from hybrid.runtime.sync import SyncLoopConfig
    from hybrid.viz import RerunView, RerunViewConfig

    if banner:
        print(banner)
    agent, env = load_agent(cfg), make_env(cfg)
    view = RerunView(RerunViewConfig(**OmegaConf.to_container(cfg.viz)))
    summary = ConsoleSummary()
    try:
        loop_cfg = OmegaConf.to_container(cfg.runtime.loop)
        if cfg.runtime.get("kind", "sync") == "async":
            results = run_async(agent, env, cfg.episodes, cfg.seed, AsyncRuntimeConfig(**loop_cfg),
                                [view, summary, RuntimeSummary()])
        else:
            results = run(agent, env, cfg.episodes, cfg.seed, SyncLoopConfig(**loop_cfg), [view, summary])
    finally:
        summary.close()
        view.close()
        agent.close()
        (env.close if hasattr(env, "close") else env.env.close)()  # a robot disconnects here
    if view.config.mode == "save":
        print(f"Rerun recording: {view.config.path}")
    return 130 if results and results[-1].status == "interrupted" else 0


def main(argv: list[str]) -> int:
    overrides = rerun_overrides(argv)
    if wants_help(overrides):
        print(__doc__)
        print_config_help("run", overrides)
        return 0
    return execute(compose("run", overrides))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
