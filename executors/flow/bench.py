"""`hybrid bench executor [--config tabletop|flat|robot|<yaml>] [--device cpu|cuda] [--json]`.

Latency of one action chunk (batch 1, after warm-up) through `FlowExecutor.act`, at K flow steps and at
one step, with random weights of the configured architecture. On CUDA it also reports the attention
kernel that runs, the largest difference of its chunk from the math kernel's, and the speed of the
fast kernels against the math and memory-efficient ones. Needs torch and transformers, not lerobot.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train" / "executor"


def load_model_config(name: str):
    import yaml

    from executors.flow.configuration_flow import FlowConfig

    path = Path(name) if name.endswith(".yaml") else CONFIGS / f"{name}.yaml"
    model = yaml.safe_load(path.read_text()).get("model") or {}
    return FlowConfig(**{k: _calibration(v) for k, v in model.items()})


def _calibration(value):
    """The one interpolation the executor configs use, `${tabletop_homography:<camera>}`, resolved without
    Hydra (the bench runs where only torch is installed); identity without MuJoCo: it costs the same."""
    prefix = "${tabletop_homography:"
    if not (isinstance(value, str) and value.startswith(prefix)):
        return value
    try:
        from hybrid.envs.tabletop.scene import table_homography
    except ImportError:
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    return table_homography(value[len(prefix):-1]).tolist()


def inputs(cfg, seed: int = 0):
    from hybrid.types import Observation, Subgoal, Subtask

    rng = np.random.default_rng(seed)
    image = lambda: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    obs = Observation(images={cam: image() for cam in cfg.cameras}, state=rng.standard_normal(cfg.state_dim),
                      instruction="put the red block in the blue bowl")
    subtask = Subtask(text="pick up the red block", index=0)
    subgoal = Subgoal(images={cam: image() for cam in cfg.subgoal_cameras}, subtask=subtask.text)
    return obs, subtask, subgoal


def timed(fn, iters: int, warmup: int, cuda: bool) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return np.asarray(times)


def attention_report(executor, obs, subtask, subgoal, iters: int) -> dict:
    """Which kernel runs, its chunk's distance from the math kernel's, and kernel speed ratios (CUDA)."""
    from hybrid.attention import attention, select_backend, use_backend

    cfg, device, dtype = executor.cfg, executor.device, next(executor.model.parameters()).dtype
    head_dim = cfg.width // cfg.heads
    chosen = select_backend(device, dtype, head_dim)

    def chunk(backend):
        with use_backend(backend):
            executor.reset()
            return executor.act(obs, subtask, subgoal).actions

    # The model's attention shape: H action queries over [prefix; chunk] keys, batch 1.
    with torch.inference_mode():
        keys = executor.model.encode_prefix(_batch(executor, obs, subtask, subgoal)).shape[1] + cfg.chunk
    q = torch.randn(1, cfg.chunk, cfg.heads, head_dim, device=device, dtype=dtype)
    k, v = (torch.randn(1, keys, cfg.heads, head_dim, device=device, dtype=dtype) for _ in range(2))
    # A long self-attention too, where the kernels differ most (the prefix mixer, a vision tower).
    qs, ks, vs = (torch.randn(8, 1024, cfg.heads, head_dim, device=device, dtype=dtype) for _ in range(3))

    def kernel_ms(backend, a, b, c):
        with use_backend(backend):
            return float(np.median(timed(lambda: attention(a, b, c), iters, 5, device.type == "cuda")))

    report = {"attention_backend": chosen,
              "max_abs_diff_vs_math": float(np.abs(chunk(chosen) - chunk("sdpa_math")).max())}
    with torch.inference_mode():
        with use_backend("sdpa_math"):
            ref = attention(qs, ks, vs).float()
        report["attention_max_abs_diff_vs_math"] = float((attention(qs, ks, vs).float() - ref).abs().max())
        for name, (a, b, c) in {"chunk": (q, k, v), "long": (qs, ks, vs)}.items():
            fast = kernel_ms(chosen, a, b, c)
            report[f"attn_{name}_ms_{chosen}"] = fast
            for other in ("sdpa_math", "sdpa_efficient"):
                if other != chosen:
                    report[f"attn_{name}_speedup_vs_{other.removeprefix('sdpa_')}"] = kernel_ms(other, a, b, c) / fast
    return report


def _batch(executor, obs, subtask, subgoal):
    from executors.flow.processor_flow import observation_batch

    batch = observation_batch(executor.cfg, executor.tokenizer, obs, subtask, subgoal)
    return {k: v.to(executor.device) for k, v in batch.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hybrid bench executor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tabletop", help="configs/train/executor/<name>.yaml or a yaml path")
    parser.add_argument("--checkpoint", help="a saved executor directory instead of random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="flow steps K (default: the config's)")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    # One intra-op thread by default: at batch 1 the matrices are small (H action tokens), the hot path is
    # bound by per-op overhead, and a second thread mostly adds barrier waits, badly so on a shared machine.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-subgoal", action="store_true", help="act language-only")
    # The run-time settings of configs/executor/flow_tabletop.yaml (default: the checkpoint's, usually off).
    for flag in ("pick-persistence", "place-inhibition", "place-lock-distance", "place-persistence"):
        parser.add_argument(f"--{flag}", type=float, default=None, help=f"FlowConfig.{flag.replace('-', '_')}")
    parser.add_argument("--in-hand", default=None, help="an in-hand model directory (executors/flow/in_hand.py): "
                        "chunks are timed with a block held, the wrist camera read each chunk")
    parser.add_argument("--grasp-check", default=None, metavar="DIR",
                        help="an in-hand model with colours: the grasp check (executors/flow/grasp_check.py) on, "
                             "its reading timed too (it reads once per grasp)")
    parser.add_argument("--eager", action="store_true", help="on CUDA, do not replay the chunk as a CUDA graph")
    parser.add_argument("--json", action="store_true", help="only the final JSON line on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads or threads)
        result = run(args)
    finally:
        torch.set_num_threads(threads)  # an in-process call leaves the caller's setting as it was
    if not args.json:
        print("\n".join(f"{k:>32}: {v}" for k, v in result.items()))
    print(json.dumps(result))
    return 0


def run(args) -> dict:
    from executors.flow.modeling_flow import FlowExecutor, FlowModel

    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    settings = {name: getattr(args, name, None) for name in ("pick_persistence", "place_inhibition",
                                                              "place_lock_distance", "place_persistence")}
    in_hand, colours = getattr(args, "in_hand", None), getattr(args, "grasp_check", None)
    check = None if colours is None else {"min_prob": 0.1, "min_height": 0.0, "rise": 0.08, "step": 0.02,
                                          "model": colours}
    if args.checkpoint:
        executor = FlowExecutor.from_pretrained(args.checkpoint, device=args.device, dtype=dtype, in_hand=in_hand,
                                                grasp_check=check, **settings)
    else:
        executor = FlowExecutor(FlowModel(load_model_config(args.config)), device=args.device, dtype=dtype,
                                in_hand=in_hand, grasp_check=check, **settings)
    cfg = executor.cfg
    steps = args.steps or cfg.flow_steps
    obs, subtask, subgoal = inputs(cfg)
    subgoal = None if args.no_subgoal else subgoal

    def latency(k: int) -> np.ndarray:
        executor.flow_steps = k
        return timed(lambda: executor.act(obs, subtask, subgoal), args.iters, args.warmup, cuda)

    result = {"config": args.checkpoint or args.config, "device": args.device, "dtype": dtype,
              "threads": torch.get_num_threads(),
              "params_m": round(sum(p.numel() for p in executor.model.parameters()) / 1e6, 2),
              "chunk": cfg.chunk, "action_dim": cfg.action_dim, "flow_steps": steps,
              "subgoal": subgoal is not None and cfg.use_subgoal,
              **{name: getattr(cfg, name) for name in settings}}
    if in_hand or colours:  # chunks timed with a block held: the wrist camera is read every chunk
        state = np.array(obs.state, copy=True)
        state[cfg.gripper_index] = 1.0
        obs = obs.model_copy(update={"state": state})
        for name, reader, path in (("in_hand", executor.in_hand, in_hand),
                                   ("grasp_check", executor.colour_reader, colours)):
            if reader is not None:
                image = obs.images[reader.cfg.camera]
                result[name] = path
                result[f"{name}_ms_p50"] = round(float(np.percentile(
                    timed(lambda r=reader, i=image: r.read(i), args.iters, args.warmup, cuda), 50)), 2)
    eager_ms = latency(steps)
    chunk_ms, one_step_ms = eager_ms, latency(1)
    if cuda and not args.eager:
        executor.cuda_graph = True
        try:
            chunk_ms, one_step_ms = latency(steps), latency(1)
            result["eager_latency_ms_p50"] = round(float(np.percentile(eager_ms, 50)), 2)
        except RuntimeError as err:  # report eager figures rather than nothing
            executor.cuda_graph = False
            result["cuda_graph_error"] = f"{type(err).__name__}: {err}"[:300]
    result.update({
        "cuda_graph": executor.cuda_graph,
        "latency_ms_p50": round(float(np.percentile(chunk_ms, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(chunk_ms, 95)), 2),
        "latency_ms_1step": round(float(np.percentile(one_step_ms, 50)), 2),
    })
    executor.flow_steps = steps
    result["steps_cost_ratio"] = round(result["latency_ms_p50"] / result["latency_ms_1step"], 2)
    if cuda:
        executor.cuda_graph = False  # the kernel comparison switches kernels between calls
        result.update({k: round(v, 4) if isinstance(v, float) else v
                       for k, v in attention_report(executor, obs, subtask, subgoal, args.iters).items()})
    return result
