"""`hybrid eval world-model --data DIR [--model DIR] --json`: subgoal quality on held-out episodes.

For frames of the held-out episodes (every ``--stride``-th, skipping a subtask's last frame, whose
subgoal is itself), the world model imagines the end of the current subtask for every camera; the
images are scored against the true end-of-subtask frames with PSNR and SSIM, next to the trivial
baseline "subgoal = current frame". PSNR is computed from the MSE pooled over all pairs (a pair with
no change would make a per-image PSNR infinite); SSIM is the mean over pairs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hybrid eval world-model", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out LeRobot dataset directory")
    p.add_argument("--model", help="pipeline directory (overrides the config's path)")
    p.add_argument("--config", default="tabletop", help="configs/world_model/<config>.yaml")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--stride", type=int, default=8, help="evaluate every n-th frame")
    p.add_argument("--max-pairs", type=int, help="cap on evaluated frames (evenly spaced)")
    p.add_argument("--batch", type=int, default=32, help="pairs per generation batch")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print only the final JSON line")
    return p.parse_args(argv)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per image pair of uint8 [N, H, W, 3] (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, per channel)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(a).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11).contiguous()

    def blur(z):
        return F.conv2d(z, window, groups=3)  # "valid" windows, as the reference implementation

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    mse = float(np.mean((pred.astype(np.float64) - true.astype(np.float64)) ** 2))
    return {"psnr_db": round(float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12))), 3),
            "ssim": round(float(np.mean(ssim(pred, true))), 4)}


def main(argv: list[str]) -> int:
    args = parse(argv)
    import torch

    from planners.subgoal.bench import load_world_model
    from planners.subgoal.data import FrameCache

    if args.threads:
        torch.set_num_threads(args.threads)
    wm, trained = load_world_model(args.config, args.model, num_inference_steps=args.steps)
    if not trained:
        raise SystemExit(f"hybrid eval world-model: no trained model for config {args.config!r}; pass --model DIR")
    wm.config = wm.config.model_copy(update={"timeout_s": None})  # batches of many pairs: no per-subgoal deadline
    cache = FrameCache.from_dataset(args.data, cameras=wm.config.cameras, progress=not args.json)
    idx = cache.index
    frames = np.flatnonzero(np.arange(len(idx)) != idx.subtask_end)[:: args.stride]
    if args.max_pairs and len(frames) > args.max_pairs:
        frames = frames[np.linspace(0, len(frames) - 1, args.max_pairs).round().astype(int)]

    result: dict = {"eval": "world-model", "model": wm.name, "data": str(args.data), "steps": wm.config.num_inference_steps,
                    "episodes": len(np.unique(idx.episode[frames])), "pairs_per_camera": len(frames),
                    "cameras": {}}
    start = time.perf_counter()
    for cam in cache.cameras:
        current, target = cache.frames[cam][frames], cache.frames[cam][idx.subtask_end[frames]]
        imagined = np.empty_like(current)
        for s in range(0, len(frames), args.batch):
            rows = frames[s:s + args.batch]
            prompts = [wm.config.prompt_template.format(subtask=idx.subtask_text[i], camera=cam) for i in rows]
            imagined[s:s + len(rows)] = np.stack(wm.generate(list(current[s:s + len(rows)]), prompts))
        result["cameras"][cam] = {"model": scores(imagined, target), "baseline_current_frame": scores(current, target)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    cams = result["cameras"].values()
    for key in ("model", "baseline_current_frame"):
        result[key] = {m: round(float(np.mean([c[key][m] for c in cams])), 4) for m in ("psnr_db", "ssim")}
    result["beats_baseline"] = bool(result["model"]["psnr_db"] > result["baseline_current_frame"]["psnr_db"]
                                    and result["model"]["ssim"] > result["baseline_current_frame"]["ssim"])
    if not args.json:
        for cam, c in result["cameras"].items():
            print(f"{cam:>8}: model {c['model']}  baseline {c['baseline_current_frame']}")
    print(json.dumps(result))
    return 0
