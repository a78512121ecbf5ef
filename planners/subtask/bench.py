"""`hybrid bench planner --config tabletop --json`: latency of one plan call, as the runtime makes it.

A planner that checks its candidates against the executor's affordance (`affordance.candidates`) is timed with
that check, on the executor of ``--executor`` (configs/executor/<name>.yaml), as the agent would bind it (and, with
`affordance.widen`, its search of the whole vocabulary wherever the random test image affords no candidate)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from hybrid.report import print_result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hybrid bench planner", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tabletop", help="configs/planner/<config>.yaml")
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--size", type=int, default=224, help="camera image side fed to the planner")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--model", help="model directory (the config's planner.model)")
    p.add_argument("--executor", default="flow_tabletop", help="configs/executor/<name>.yaml, for the affordance")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. planner.max_new_tokens=32")
    args = p.parse_args(argv)

    from hybrid.config import compose, instantiate
    from hybrid.testing.doubles import fake_observation
    from hybrid.types import Subtask
    from planners.subtask.prompting import cameras as planner_cameras
    from planners.subtask.reply import PlannerFault

    overrides = list(args.overrides) + ([f"planner.model={args.model}"] if args.model else [])
    planner = instantiate(compose(f"planner/{args.config}", overrides).planner)
    prompt = getattr(planner, "prompt", None)
    shown = set(planner_cameras(prompt)) if prompt is not None else {"front"}
    if prompt is not None and prompt.release_camera is not None:
        shown.add(prompt.release_camera)
    if getattr(planner, "wants_affordance", False):
        executor = instantiate(compose(f"executor/{args.executor}").executor)
        planner.use_affordance(executor.affordance)
        shown |= set(executor.cfg.cameras)
    if getattr(planner, "detector", None) is not None:
        shown |= set(planner.detector.cfg.cameras)
    obs = fake_observation(cameras=tuple(sorted(shown)), size=args.size, seed=0)
    grip = getattr(prompt, "gripper_index", None)
    if grip is not None:  # asked with the gripper open, as the agent asks (it keeps a held block's subtask unasked)
        state = obs.state.copy()
        state[grip] = 0.0
        obs = obs.model_copy(update={"state": state})
    instruction = "put the red block in the blue bowl"
    history: list[Subtask] = []
    times, faults = [], 0
    for i in range(args.warmup + args.calls):
        planner.reset()
        t = time.perf_counter()
        try:
            planner.plan(obs, instruction, history)
        except PlannerFault:  # a fault still costs a call; it is counted, not hidden
            faults += 1
        if i >= args.warmup:
            times.append((time.perf_counter() - t) * 1e3)
    t = np.asarray(times)
    result = {"bench": "planner", "config": args.config, "calls": len(t),
              "candidates": int(getattr(getattr(planner, "affordance", None), "candidates", 0)),
              "widen": int(getattr(getattr(planner, "affordance", None), "widen", 0)),
              "latency_ms_p50": round(float(np.percentile(t, 50)), 2),
              "latency_ms_p90": round(float(np.percentile(t, 90)), 2),
              "latency_ms_mean": round(float(t.mean()), 2), "faults": faults}
    print_result(result, args.json)
    return 0


def success_main(argv: list[str]) -> int:
    """`hybrid bench success --json`: latency of one success detector reading (both cameras, one instruction)."""
    p = argparse.ArgumentParser(prog="hybrid bench success", description=success_main.__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="detector directory (default: configs/planner/tabletop.yaml's)")
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the agent's planner runs beside others)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)

    import torch

    from hybrid.config import compose
    from hybrid.testing.doubles import fake_observation
    from planners.subtask.success import SuccessDetector

    model = args.model or (compose("planner/tabletop").planner.get("success") or {}).get("model")
    if not model:
        raise SystemExit("hybrid bench success: configs/planner/tabletop.yaml has no success detector; give --model")
    torch.set_num_threads(args.threads)
    net = SuccessDetector.from_pretrained(model)
    obs = fake_observation(cameras=tuple(net.cfg.cameras), size=net.cfg.image_size, seed=0)
    times = []
    for i in range(args.warmup + args.calls):
        t = time.perf_counter()
        net.prob(obs.images, "sort the blocks into the bowls by colour")
        if i >= args.warmup:
            times.append((time.perf_counter() - t) * 1e3)
    t = np.asarray(times)
    print_result({"bench": "success", "model": str(model), "calls": len(t), "threads": args.threads,
                  "parameters": sum(p.numel() for p in net.parameters()),
                  "latency_ms_p50": round(float(np.percentile(t, 50)), 2),
                  "latency_ms_p90": round(float(np.percentile(t, 90)), 2)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
