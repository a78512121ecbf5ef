"""`hybrid bench sim`: tabletop speed (env steps/s, rendering every camera, one process) and expert success.

Every family is rolled out by the scripted expert over seeds 0..episodes-1; only `env.step` is timed
for `steps_per_s` (physics + both camera renders + predicates), `expert_steps_per_s` adds the expert.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import mujoco
import numpy as np

from hybrid.envs.tabletop.env import TabletopEnv
from hybrid.envs.tabletop.tasks import FAMILIES


def rollout(env: TabletopEnv, seed: int) -> tuple[bool, int, float, float]:
    """One expert episode: (success, steps, seconds in env.step, seconds in total)."""
    start = time.perf_counter()
    obs, info = env.reset(seed=seed)
    expert = env.expert()
    steps, in_step = 0, 0.0
    while True:
        action = expert.act(obs)
        t = time.perf_counter()
        obs, _, _, truncated, info = env.step(action)
        in_step += time.perf_counter() - t
        steps += 1
        if expert.done or truncated:
            return bool(info["success"]), steps, in_step, time.perf_counter() - start


def breakdown(env: TabletopEnv, n: int = 200) -> dict[str, float]:
    """Milliseconds per control step spent in physics and in rendering all cameras."""
    env.reset(seed=0)
    m, d = env.scene.model, env.scene.data
    t = time.perf_counter()
    for _ in range(n):
        mujoco.mj_step(m, d, nstep=env.n_substeps)
    physics = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        env._observation()
    render = (time.perf_counter() - t) / n
    return {"physics_ms": round(physics * 1e3, 3), "render_ms": round(render * 1e3, 3)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hybrid bench sim", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")
    parser.add_argument("--episodes", type=int, default=20, help="expert episodes per family")
    parser.add_argument("--size", type=int, default=96, help="camera image size (square)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--split", default="train", choices=("train", "heldout"))
    args = parser.parse_args(argv)

    def say(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    result: dict = {
        "image_size": args.size,
        "split": args.split,
        "episodes_per_family": args.episodes,
        "expert_success": {},
    }
    steps = 0
    in_step = total = 0.0
    for family in args.families:
        env = TabletopEnv(task=family, split=args.split, image_size=args.size)
        try:
            outcomes = []
            for seed in range(args.episodes):
                ok, n, t_step, t_all = rollout(env, seed)
                outcomes.append(ok)
                steps, in_step, total = steps + n, in_step + t_step, total + t_all
            if family == args.families[0]:
                result.update(breakdown(env))
        finally:
            env.close()
        result["expert_success"][family] = round(float(np.mean(outcomes)), 3)
        say(f"{family}: expert success {np.mean(outcomes):.2f} over {args.episodes} episodes")
    result["steps"] = steps
    result["steps_per_s"] = round(steps / in_step, 1)
    result["expert_steps_per_s"] = round(steps / total, 1)
    result["cpu_load_1min"] = round(os.getloadavg()[0], 2)  # other processes slow the wall-clock figures
    say(f"{result['steps_per_s']} env steps/s (front + wrist cameras at {args.size}px)")
    print(json.dumps(result))
    return 0
