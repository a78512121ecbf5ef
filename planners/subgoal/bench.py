"""`hybrid bench world-model --config tabletop --json`: latency of one subgoal (batch 1, default steps).

Loads the world model from `configs/world_model/<config>.yaml` (or ``--model DIR``). When the tabletop
checkpoint is not there yet, times a randomly initialised tabletop pipeline of the trained architecture
instead (latency does not depend on the weights) and says so in the output (`"weights": "random"`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from hybrid.testing import fake_observation
from hybrid.types import Subtask

log = logging.getLogger(__name__)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hybrid bench world-model", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tabletop", help="configs/world_model/<config>.yaml")
    p.add_argument("--model", help="pipeline directory (overrides the config's path)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the config's)")
    p.add_argument("--size", type=int, default=96, help="camera image size (square)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: a tiny model gains nothing from more, and shared cores make them spin)")
    p.add_argument("--device", help="cpu, cuda, auto (default: the config's)")
    p.add_argument("--json", action="store_true", help="print only the final JSON line")
    return p.parse_args(argv)


def load_world_model(config: str, model: str | None = None, **overrides):
    """The world model a config describes; (model, True) when its weights exist, else a random tabletop one."""
    from hybrid.config import compose, instantiate

    node = compose(f"world_model/{config}").world_model
    if model:
        node.path = model
    for key, value in overrides.items():
        if value is not None:
            node[key] = value
    if Path(str(node.path)).joinpath("model_index.json").is_file() or config != "tabletop":
        return instantiate(node), True
    from planners.subgoal.configuration import WorldModelConfig
    from planners.subgoal.tabletop_model import build_tabletop_pipeline, words_of
    from planners.subgoal.train import PROMPT_TEMPLATE
    from planners.subgoal.world_model import SubgoalWorldModel

    log.warning("%s has no trained pipeline: timing a randomly initialised tabletop model", node.path)
    fields = {k: v for k, v in node.items() if k not in ("_target_", "_convert_", "path")}
    cfg = WorldModelConfig(backend="tabletop", prompt_template=PROMPT_TEMPLATE, **fields)
    pipe = build_tabletop_pipeline(words_of(["front wrist: pick up the red block"]))
    from planners.subgoal.diffusers_backend import resolve_device

    return SubgoalWorldModel(pipe.to(resolve_device(cfg.device)), cfg, name="tabletop:random"), False


def main(argv: list[str]) -> int:
    args = parse(argv)
    import torch

    from planners.subgoal.tabletop_model import image_size_of

    if args.threads:
        torch.set_num_threads(args.threads)
    wm, trained = load_world_model(args.config, args.model, num_inference_steps=args.steps, device=args.device)
    subtask = Subtask(text="pick up the red block", index=0)

    def timed(cameras: tuple[str, ...]) -> list[float]:
        obs = fake_observation(cameras=cameras, size=args.size)
        # Time exactly these cameras, to completion: a deadline would turn slow calls into faults.
        wm.config = wm.config.model_copy(update={"cameras": list(cameras), "timeout_s": None})
        for _ in range(args.warmup):
            wm.imagine(obs, subtask)
        out = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            goal = wm.imagine(obs, subtask)
            out.append((time.perf_counter() - start) * 1e3)
        assert all(img.shape == (args.size, args.size, 3) for img in goal.images.values())
        return out

    one = timed(("front",))
    both = timed(("front", "wrist"))
    result = {
        "bench": "world-model", "config": args.config, "model": wm.name, "backend": wm.config.backend,
        "weights": "trained" if trained else "random", "device": str(getattr(wm.pipeline, "device", "cpu")),
        "threads": torch.get_num_threads(), "steps": wm.config.num_inference_steps,
        "guidance_scale": wm.config.guidance_scale, "image_guidance_scale": wm.config.image_guidance_scale,
        "image_size": [args.size, args.size],
        "internal_size": image_size_of(wm.pipeline.unet) if wm.config.backend == "tabletop" else wm.config.resolution,
        "latency_ms_p50": round(float(np.percentile(one, 50)), 2),
        "latency_ms_p90": round(float(np.percentile(one, 90)), 2),
        "latency_ms_p50_two_cameras": round(float(np.percentile(both, 50)), 2),
        "repeats": args.repeats,
    }
    if not args.json:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    print(json.dumps(result))
    return 0
