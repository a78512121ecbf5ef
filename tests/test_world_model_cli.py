"""`hybrid bench world-model` and `hybrid eval world-model` print their final JSON line, and the metrics are right."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid.testing.datasets import PLAN, make_tiny_dataset

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from planners.subgoal import SubgoalWorldModel, WorldModelConfig
    from planners.subgoal.tabletop_model import build_tabletop_pipeline, words_of
    from planners.subgoal.train import PROMPT_TEMPLATE

    path = tmp_path_factory.mktemp("wm")
    words = words_of([PROMPT_TEMPLATE.format(camera=c, subtask=s) for c in ("front", "wrist") for s in PLAN])
    pipe = build_tabletop_pipeline(words, sample_size=16, channels=(8, 16), text_dim=16, text_layers=1)
    config = WorldModelConfig(backend="tabletop", cameras=["front", "wrist"], prompt_template=PROMPT_TEMPLATE,
                              num_inference_steps=2)
    SubgoalWorldModel(pipe, config).save_pretrained(path)
    return path


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_prints_latency_per_subgoal_and_image_size(tiny_model, capsys):
    from hybrid.cli import main

    assert main(["bench", "world-model", "--config", "tabletop", "--model", str(tiny_model), "--repeats", "3",
                 "--warmup", "1", "--size", "32", "--steps", "2", "--json"]) == 0
    out = last_json(capsys)
    assert out["weights"] == "trained" and out["image_size"] == [32, 32] and out["steps"] == 2
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_p90"] and out["latency_ms_p50_two_cameras"] > 0


def test_eval_scores_model_and_current_frame_baseline(tiny_model, tmp_path, capsys):
    from hybrid.cli import main

    make_tiny_dataset(tmp_path / "heldout", episodes=2, frames_per_subtask=6, size=32, seed=1)
    assert main(["eval", "world-model", "--data", str(tmp_path / "heldout"), "--model", str(tiny_model),
                 "--stride", "2", "--json"]) == 0
    out = last_json(capsys)
    assert set(out["cameras"]) == {"front", "wrist"} and out["episodes"] == 2
    assert out["pairs_per_camera"] == 10  # 24 frames minus 4 subtask ends, every 2nd
    for cam in out["cameras"].values():
        for key in ("model", "baseline_current_frame"):
            assert np.isfinite(cam[key]["psnr_db"]) and -1 <= cam[key]["ssim"] <= 1
    # The square moves during each subtask, so the current frame is not its subtask's last frame.
    assert out["baseline_current_frame"]["ssim"] < 1


def test_ssim_and_psnr_behave():
    from planners.subgoal.evaluate import scores, ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(ssim(a, a), 1.0)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8)
    s1, s2 = scores(noisy, a), scores(noisier, a)
    assert s1["psnr_db"] > s2["psnr_db"] and s1["ssim"] > s2["ssim"]
    assert abs(s1["psnr_db"] - 10 * np.log10(255 ** 2 / np.mean((noisy - a.astype(float)) ** 2))) < 1e-2
