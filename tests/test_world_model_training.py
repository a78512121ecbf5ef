"""Training the tabletop world model: the loss falls on a fixed batch, and `hybrid train` runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid.testing.datasets import PLAN, make_tiny_dataset
from hybrid.types import Subtask

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm") / "ds"
    make_tiny_dataset(root, episodes=2, frames_per_subtask=6, size=32)
    return root


def test_frame_cache_pairs_frames_with_the_end_of_their_subtask(tiny_dataset):
    from planners.subgoal.data import FrameCache

    cache = FrameCache.from_dataset(tiny_dataset)
    assert cache.cameras == ["front", "wrist"]
    assert cache.frames["front"].shape == (24, 32, 32, 3) and cache.frames["front"].dtype == np.uint8
    rng = np.random.default_rng(0)
    assert cache.goal_of(0, "subtask_end", 0, rng) == 5  # 6 frames per subtask
    assert cache.goal_of(7, "subtask_end", 0, rng) == 11
    assert cache.goal_of(10, "ahead", 3, rng) == 11  # clipped to the episode's last frame
    # The recorded square sits in a different place at the subtask's end than at its start.
    assert np.abs(cache.frames["front"][0].astype(int) - cache.frames["front"][5]).sum() > 0


@pytest.mark.parametrize("patch_size", [1, 2])
def test_training_steps_reduce_the_loss_on_a_fixed_batch(tiny_dataset, patch_size):
    from planners.subgoal.data import FrameCache
    from planners.subgoal.tabletop_model import ConditionalDenoiser, build_tabletop_pipeline, words_of
    from planners.subgoal.train import PROMPT_TEMPLATE, PairSampler, flow_matching_loss

    cache = FrameCache.from_dataset(tiny_dataset, size=16)
    pipe = build_tabletop_pipeline(words_of([PROMPT_TEMPLATE.format(camera="front", subtask=s) for s in PLAN]),
                                   sample_size=16, channels=(16, 32), text_dim=32, text_layers=1,
                                   patch_size=patch_size)
    denoiser = ConditionalDenoiser(pipe.unet, pipe.text_encoder)
    batch = PairSampler(cache, pipe.tokenizer, p_drop_text=0.0, p_drop_image=0.0).batch(8)
    assert batch["goal"].abs().sum() > 0  # the subgoal differs from the current frame

    def loss() -> torch.Tensor:  # same noise and times every call: only the weights change
        return flow_matching_loss(denoiser, **batch, generator=torch.Generator().manual_seed(0))

    optimizer = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    with torch.no_grad():
        before = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.7 * before, (before, after)


def test_hybrid_train_world_model_runs_end_to_end_and_resumes(tiny_dataset, tmp_path, capsys):
    from hybrid.cli import main
    from planners.subgoal import SubgoalWorldModel

    out = tmp_path / "wm"
    args = ["train", "world_model=tabletop", f"data={tiny_dataset}", f"out={out}", "steps=3", "batch_size=4",
            "sample_size=16", "channels=[16,32]", "text_dim=32", "text_layers=1", "checkpoint_every=2",
            "progress=false", "num_inference_steps=2"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]
    saved = json.loads((out / "world_model.json").read_text())
    assert saved["backend"] == "tabletop" and saved["cameras"] == ["front", "wrist"]

    capsys.readouterr()
    assert main(args[:4] + ["steps=5"] + args[5:]) == 0  # resume=true by default: continues at step 3
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["resumed_from"] == 3 and summary["steps"] == 5 and np.isfinite(summary["loss"])
    assert json.loads((out / "checkpoints" / "step_0000005" / "state.json").read_text())["step"] == 5

    wm = SubgoalWorldModel.from_pretrained(out, device="cpu")
    from hybrid.testing import fake_observation

    obs = fake_observation(cameras=("front", "wrist"), size=32)
    goal = wm.imagine(obs, Subtask(text=PLAN[0], index=0))
    assert {c: g.shape for c, g in goal.images.items()} == {"front": (32, 32, 3), "wrist": (32, 32, 3)}
    assert wm.config.num_inference_steps == 2 and wm.config.prompt_template == "{camera}: {subtask}"


def test_colour_swap_repaints_both_images_and_renames_the_subtask(tiny_dataset):
    from planners.subgoal.data import FrameCache
    from planners.subgoal.tabletop_model import build_tabletop_pipeline, words_of
    from planners.subgoal.train import PairSampler

    cache = FrameCache.from_dataset(tiny_dataset, size=16)
    pipe = build_tabletop_pipeline(words_of(["front: put the red block in the blue bowl"]), sample_size=16,
                                   channels=(16, 32), text_dim=32, text_layers=1)
    plain = PairSampler(cache, pipe.tokenizer, p_drop_text=0.0, p_drop_image=0.0, seed=0).batch(16)
    swapped_sampler = PairSampler(cache, pipe.tokenizer, p_drop_text=0.0, p_drop_image=0.0, colour_swap=1.0, seed=0)
    known = set(swapped_sampler._tokens)
    swapped = swapped_sampler.batch(16)
    renamed = set(swapped_sampler._tokens) - known
    assert renamed and all("red" not in p for p in renamed if "pick up" in p)  # red became another colour
    # Same pairs drawn (same seed), other pixels: the red square is repainted in the image and its subgoal.
    assert not torch.equal(plain["current"], swapped["current"]) and not torch.equal(plain["goal"], swapped["goal"])
