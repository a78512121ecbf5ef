"""Training the flow executor on a tiny recorded LeRobot dataset, end to end through `hybrid train`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from executors.flow import FlowExecutor
from executors.flow.configuration_flow import FlowConfig
from executors.flow.processor_flow import ByteTokenizer
from executors.flow.train import FlowDataset, dataset_config, train, warmup_cosine
from executors.flow.waypoints import pick_place_waypoints, release_heights
from hybrid.cli import main as hybrid
from hybrid.data import FEATURES, SubtaskIndex, open_dataset
from hybrid.testing.datasets import PLAN, make_tiny_dataset
from hybrid.types import Observation, Subgoal, Subtask

TINY = ["model.chunk=4", "model.image_size=16", "model.vision_width=16", "model.vision_depth=1",
        "model.text_width=16", "model.text_depth=1", "model.max_text_len=24", "model.width=32", "model.depth=2",
        "model.heads=2", "batch_size=8", "warmup=2", "log_every=1"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "ds"
    make_tiny_dataset(root)  # 2 episodes x 2 subtasks x 6 frames, 32 px, fps 10
    return root


def observation_from(dataset, i: int) -> Observation:
    item = dataset[i]
    images = {cam.removeprefix("observation.images."): (item[cam].permute(1, 2, 0).numpy() * 255).round()
              .astype(np.uint8) for cam in FEATURES["cameras"]}
    return Observation(images=images, state=item[FEATURES["state"]].numpy(), instruction=item["task"])


def test_hybrid_train_produces_a_loadable_checkpoint_and_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["train", "executor=tabletop", f"data={tiny_dataset}", f"out={out}", *TINY]
    assert hybrid([*args, "steps=3", "save_every=2"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]

    executor = FlowExecutor.from_pretrained(out / "model")
    cfg = executor.cfg
    assert (cfg.cameras, cfg.subgoal_cameras, cfg.state_dim, cfg.action_dim) == (["front", "wrist"], ["front"], 4, 4)
    assert cfg.dt == pytest.approx(0.1) and cfg.chunk == 4
    stats = open_dataset(tiny_dataset).meta.stats
    np.testing.assert_allclose(executor.model.normalizer.state_mean.numpy(),
                               np.asarray(stats[FEATURES["state"]]["mean"]).reshape(-1), rtol=1e-6)
    obs = observation_from(open_dataset(tiny_dataset), 3)
    subgoal = Subgoal(images={"front": obs.images["front"]}, subtask=PLAN[0])
    chunk = executor.act(obs, Subtask(text=PLAN[0], index=0), subgoal)
    assert chunk.actions.shape == (4, 4) and np.isfinite(chunk.actions).all()

    assert hybrid([*args, "steps=5", "save_every=100", "resume=true"]) == 0
    state = torch.load(out / "checkpoints" / "step_0000005" / "training_state.pt", weights_only=False)
    assert state["step"] == 5 and state["scheduler"]["last_epoch"] == 5
    assert json.loads((out / "model" / "config.json").read_text())["chunk"] == 4


def test_flat_baseline_trains_on_instructions_without_subgoals(tiny_dataset, tmp_path):
    out = tmp_path / "flat"
    assert hybrid(["train", "executor=flat", f"data={tiny_dataset}", f"out={out}", *TINY, "steps=2"]) == 0
    executor = FlowExecutor.from_pretrained(out / "model")
    assert executor.cfg.conditioning == "instruction" and not executor.cfg.use_subgoal
    obs = observation_from(open_dataset(tiny_dataset), 0)
    assert executor.act(obs, None, None).actions.shape == (4, 4)


def test_path_actions_train_with_per_step_statistics_of_the_recording(tiny_dataset, tmp_path):
    from hybrid.data import numeric_column

    out = tmp_path / "path"
    assert hybrid(["train", "executor=tabletop", f"data={tiny_dataset}", f"out={out}", *TINY, "steps=2",
                   "model.path_dims=[0,1,2]"]) == 0
    executor = FlowExecutor.from_pretrained(out / "model")
    dataset = open_dataset(tiny_dataset)
    actions = numeric_column(dataset, FEATURES["action"])
    assert executor.model.normalizer.action_mean.shape == (4, 4)
    # A path's first step is the chunk's first action, so its statistics are the recording's per-frame ones.
    np.testing.assert_allclose(executor.model.normalizer.action_mean[0].numpy(), actions.mean(0), atol=1e-5)
    obs = observation_from(dataset, 0)
    assert executor.act(obs, Subtask(text=PLAN[0], index=0), None).actions.shape == (4, 4)


def test_training_samples_carry_chunks_padding_and_hindsight_subgoals(tiny_dataset):
    dataset = open_dataset(tiny_dataset, delta_timestamps={FEATURES["action"]: [k / 10 for k in range(4)]})
    cfg = dataset_config(dataset, {"chunk": 4, "image_size": 16, "patch_size": 8, "subgoal_dropout": 0.5})
    index = SubtaskIndex.from_dataset(dataset)
    samples = FlowDataset(dataset, index, cfg, ByteTokenizer(cfg.max_text_len))
    assert samples.images.shape == (24, 2, 3, 16, 16) and samples.images.dtype == torch.uint8

    last = int(index.episode_end[0])  # the last frame of episode 0: its chunk runs past the end
    item = samples[last]
    assert item["action_is_pad"].tolist() == [False, True, True, True]
    assert not samples[0]["action_is_pad"].any()
    torch.testing.assert_close(item["actions"][0], torch.as_tensor(dataset[last][FEATURES["action"]][0]))
    assert item["text_ids"].shape == (48,)
    assert bytes(t for t in item["text_ids"].tolist() if t).decode() == index.subtask_text[last]

    # The subgoal is a frame of the same episode at or after the current one (hindsight).
    torch.manual_seed(0)
    later = {i: [k for k in range(i, int(index.episode_end[i]) + 1)] for i in (0, 7)}
    has = []
    for i, frames in later.items():
        for _ in range(20):
            sample = samples[i]
            has.append(bool(sample["has_subgoal"]))
            assert any(torch.equal(sample["subgoal"][0], samples.images[k][0]) for k in frames)
    assert 0 < sum(has) < len(has)  # subgoal dropout hides some

    # The in-memory cache gives the same sample as LeRobot's delta-timestamp reads.
    uncached = FlowDataset(dataset, index, cfg, ByteTokenizer(cfg.max_text_len), cache=False)
    for i in (0, last):
        a, b = samples._frame(i), uncached._frame(i)
        assert set(a) == set(b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1 if key == "images" else 1e-6, rtol=0)


def test_instruction_conditioning_reads_the_episode_task(tiny_dataset):
    dataset = open_dataset(tiny_dataset, delta_timestamps={FEATURES["action"]: [0.0, 0.1]})
    cfg = dataset_config(dataset, {"chunk": 2, "image_size": 16, "conditioning": "instruction",
                                   "subgoal_dropout": 1.0})
    samples = FlowDataset(dataset, SubtaskIndex.from_dataset(dataset), cfg, ByteTokenizer(48), cache=False)
    item = samples[5]
    assert "subgoal" not in item
    assert bytes(t for t in item["text_ids"].tolist() if t).decode() == "put the red block in the blue bowl"


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup=10, steps=110, floor=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55) and factor(110) == pytest.approx(0.1)


def test_dataset_config_keeps_explicit_fields(tiny_dataset):
    cfg = dataset_config(open_dataset(tiny_dataset), {"cameras": ["front"], "state_dim": 4})
    assert isinstance(cfg, FlowConfig) and cfg.cameras == ["front"] and cfg.subgoal_cameras == ["front"]


@pytest.mark.slow
def test_training_on_a_recorded_tabletop_episode_runs_end_to_end(tmp_path):
    """The real path: `hybrid record` writes a tabletop dataset (videos), `hybrid train` fits it, the executor acts."""
    data, out = tmp_path / "tabletop", tmp_path / "run"
    assert hybrid(["record", "env=tabletop", "task=pick_place", "episodes=1", f"out={data}", "progress=false",
                   "env.image_size=32"]) == 0
    assert hybrid(["train", "executor=tabletop", f"data={data}", f"out={out}", *TINY, "steps=3"]) == 0
    executor = FlowExecutor.from_pretrained(out / "model")
    assert executor.cfg.cameras == ["front", "wrist"] and executor.cfg.action_dim == 4
    chunk = executor.act(observation_from(open_dataset(data), 0), None, None)
    assert chunk.actions.shape == (4, 4) and np.isfinite(chunk.actions).all()


def test_open_loop_eval_scores_a_trained_executor_against_the_expert(tmp_path, capsys):
    data, out = tmp_path / "tabletop", tmp_path / "run"
    assert hybrid(["record", "env=tabletop", "task=stack", "episodes=2", f"out={data}", "progress=false",
                   "env.image_size=32"]) == 0
    assert hybrid(["train", "executor=tabletop", f"data={data}", f"out={out}", *TINY, "steps=3"]) == 0
    capsys.readouterr()
    assert hybrid(["eval", "executor", "--data", str(data), "--model", str(out / "model"), "--frames", "6",
                   "--horizon", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["starts"] == 6 and 0 < result["frames"] <= 6
    for key in ("direction_cosine", "start_cosine_own_images", "start_cosine_other_images"):
        assert -1.0 <= result[key] <= 1.0
    # The tabletop config has a waypoint head: most frames still have their placement ahead, so it is scored.
    assert result["place_error_cm_p50"] >= 0 and result["place_error_cm_p50_stack"] >= 0  # every place is a stack


def test_pick_place_waypoints_come_from_the_last_grasp_and_release_of_each_subtask():
    # Two subtasks of 6 frames; the first grasps twice (a retry), the second never releases.
    state = np.stack([np.arange(12.0), 100 + np.arange(12.0)], axis=1)
    gripper = np.array([0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], np.float32)[:, None]
    subtask_end = np.array([5] * 6 + [11] * 6)
    targets, valid = pick_place_waypoints(state, gripper, subtask_end)
    # Segment 0 is frames 0..5 but its release lies in segment 1's run: frames 0..5 have grasps at 1 and 4,
    # releases at 2 only; the last release (2) precedes the last grasp (4), so nothing is supervised.
    assert not valid[:6].any()
    subtask_end = np.array([7] * 8 + [11] * 4)
    targets, valid = pick_place_waypoints(state, gripper, subtask_end)
    np.testing.assert_array_equal(targets[0], [4, 104, 6, 106])  # last grasp at frame 4, release at 6
    assert valid[:5, :2].all() and not valid[5:8, :2].any()  # the pick lies ahead only up to the grasp
    assert valid[:7, 2:].all() and not valid[7, 2:].any()  # the place up to the release
    assert not valid[8:].any()  # the second subtask grasps but never lets go
    # Frames whose effector is already near a waypoint do not supervise it.
    _, far = pick_place_waypoints(state, gripper, subtask_end, min_distance=3.0)
    assert far[:2, :2].all() and not far[2:5, :2].any()  # |(k, 100 + k) - (4, 104)| < 3 for k = 2, 3, 4
    assert far[:4, 2:].all() and not far[4:7, 2:].any()


def test_release_heights_are_the_effectors_height_at_each_subtasks_last_release():
    gripper = np.array([0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], np.float32)[:, None]
    state = np.stack([np.zeros(12), np.zeros(12), 0.01 * np.arange(12.0)], axis=1)
    heights = release_heights(state, gripper, np.array([7] * 8 + [11] * 4))
    np.testing.assert_allclose(heights[:8], 0.06)  # released at frame 6 (an earlier release at 2 was a retry)
    assert np.isnan(heights[8:]).all()  # the second subtask never lets go


def test_waypoint_labels_and_colour_swap_reach_the_training_samples(tiny_dataset, monkeypatch):
    dataset = open_dataset(tiny_dataset, delta_timestamps={FEATURES["action"]: [0.0, 0.1]})
    cfg = dataset_config(dataset, {"chunk": 2, "image_size": 16, "vision_stem": "conv", "keypoints": 4,
                                   "waypoint_loss": 1.0, "subgoal_dropout": 0.0})
    index = SubtaskIndex.from_dataset(dataset)
    plain = FlowDataset(dataset, index, cfg, ByteTokenizer(48))
    swapped = FlowDataset(dataset, index, cfg, ByteTokenizer(48), colour_swap=1.0)
    red_blue = {name: name for name in swapped.swap.names} | {"red": "blue", "blue": "red"}
    monkeypatch.setattr(swapped.swap, "draw", lambda rng: red_blue)

    item = swapped[0]
    assert item["waypoints"].shape == (4,) and item["waypoints_valid"].dtype == torch.bool
    # Known: every label of the subtask's approach, also near the waypoint where it supervises nothing.
    assert item["waypoints_known"].dtype == torch.bool
    assert (swapped.waypoints_known >= swapped.waypoints_valid).all()
    text = bytes(t for t in item["text_ids"].tolist() if t).decode()
    assert text == swapped.swap.text(index.subtask_text[0], red_blue) != index.subtask_text[0]
    # The red marker is repainted blue in the observation images; the grey background is not touched.
    before, after = plain.images[0, 0].int(), item["images"][0].int()
    red = (before[0] > 200) & (before[2] < 50)
    grey = (before[0] == before[1]) & (before[1] == before[2])
    assert red.any() and grey.any()
    assert (after[2][red] > 200).all() and (after[0][red] < 50).all()
    torch.testing.assert_close(after[:, grey], before[:, grey])


def test_executor_with_keypoints_and_waypoint_loss_trains_and_acts(tiny_dataset, tmp_path):
    out = tmp_path / "kp"
    assert hybrid(["train", "executor=tabletop", f"data={tiny_dataset}", f"out={out}", *TINY, "steps=2",
                   "model.keypoints=4", "model.waypoint_loss=1.0", "colour_swap=0.5"]) == 0
    executor = FlowExecutor.from_pretrained(out / "model")
    assert executor.cfg.keypoints == 4 and executor.cfg.waypoint_loss == 1.0
    obs = observation_from(open_dataset(tiny_dataset), 0)
    assert executor.act(obs, Subtask(text=PLAN[0], index=0), None).actions.shape == (4, 4)
    waypoints = executor.waypoints(obs, Subtask(text=PLAN[0], index=0), None)
    assert waypoints.shape == (4,) and np.isfinite(waypoints).all()


def test_fine_tuning_loads_the_weights_that_fit_and_starts_a_new_head_fresh(tiny_dataset, tmp_path, caplog):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    common = ["train", "executor=tabletop", f"data={tiny_dataset}", *TINY, "model.keypoints=4", "model.waypoint_loss=1.0"]
    assert hybrid([*common, f"out={base}", "steps=2", "model.waypoint_head=mlp"]) == 0
    with caplog.at_level("INFO", logger="executors.flow.train"):
        # lr 0 and no warm-up: what the fine-tune saves is exactly what it loaded
        assert hybrid([*common, f"out={tuned}", "steps=1", f"init={base}", "model.waypoint_head=heatmap",
                       "lr=0.0", "warmup=0"]) == 0
    before = FlowExecutor.from_pretrained(base / "model").model.state_dict()
    after = FlowExecutor.from_pretrained(tuned / "model").model.state_dict()
    torch.testing.assert_close(after["text.embed.weight"], before["text.embed.weight"])
    assert "waypoint_head.query.key.weight" in after and "waypoint_head.query.key.weight" not in before
    assert "start fresh (waypoint_head.query.key.bias" in caplog.text


def test_a_fine_tune_can_freeze_modules_and_refuses_ones_the_model_lacks(tiny_dataset, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    common = ["train", "executor=tabletop", f"data={tiny_dataset}", *TINY, "steps=2"]
    assert hybrid([*common, f"out={base}"]) == 0
    assert hybrid([*common, f"out={tuned}", f"init={base}", "freeze=[vision,text]", "lr=1e-2", "warmup=0"]) == 0
    before = FlowExecutor.from_pretrained(base / "model").model.state_dict()
    after = FlowExecutor.from_pretrained(tuned / "model").model.state_dict()
    frozen = [name for name in before if name.startswith(("vision.", "text."))]
    assert frozen and all(torch.equal(after[name], before[name]) for name in frozen)
    assert any(not torch.equal(after[n], before[n]) for n in before if n.startswith("blocks."))
    with pytest.raises(ValueError, match=r"freeze: \['visoin'\] are not modules"):
        train(str(tiny_dataset), str(tmp_path / "typo"), model={"image_size": 16}, steps=1, freeze=["visoin"])


def test_train_only_changes_the_named_modules_and_nothing_else(tiny_dataset, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    common = ["train", "executor=tabletop", f"data={tiny_dataset}", *TINY, "steps=2"]
    assert hybrid([*common, f"out={base}"]) == 0
    assert hybrid([*common, f"out={tuned}", f"init={base}", "train_only=[waypoint_head]", "init_stats=true",
                   "lr=1e-2", "warmup=0"]) == 0
    before = FlowExecutor.from_pretrained(base / "model").model.state_dict()
    after = FlowExecutor.from_pretrained(tuned / "model").model.state_dict()
    trained = [n for n in before if n.startswith("waypoint_head.")]
    assert trained and any(not torch.equal(after[n], before[n]) for n in trained)
    # the learned tokens that are no module's (action positions, image slots) stay too: the expert is as it was
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trained)
    with pytest.raises(ValueError, match=r"train_only: \['waypoint_haed'\] are not modules"):
        train(str(tiny_dataset), str(tmp_path / "typo"), model={"image_size": 16}, steps=1,
              train_only=["waypoint_haed"])
    with pytest.raises(ValueError, match="freeze and train_only"):
        train(str(tiny_dataset), str(tmp_path / "both"), steps=1, freeze=["text"], train_only=["waypoint_head"])


def test_fine_tuning_from_a_model_with_nothing_in_common_is_refused(tmp_path):
    from safetensors.torch import save_file

    from executors.flow.modeling_flow import WEIGHTS_NAME, FlowModel
    from executors.flow.train import load_matching

    save_file({"something.else": torch.zeros(3)}, str(tmp_path / WEIGHTS_NAME))
    net = FlowModel(FlowConfig(image_size=16, vision_width=16, text_width=16, width=32, depth=1, heads=2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="no weight of that model fits"):
        load_matching(net, tmp_path)
    for k, v in net.state_dict().items():  # the model is left as it was
        torch.testing.assert_close(v, before[k])


def test_training_on_two_recordings_that_do_not_match_is_refused_naming_the_second(tiny_dataset, tmp_path):
    other = tmp_path / "other_fps"
    make_tiny_dataset(other, episodes=1, fps=5)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="other_fps does not match"):
        train([str(tiny_dataset), str(other)], str(out), steps=1)
    assert not (out / "model").exists()


def test_training_on_two_recordings_samples_both(tiny_dataset, tmp_path, monkeypatch):
    from torch.utils.data import ConcatDataset

    import executors.flow.train as flow_train

    seen, real = {}, flow_train.DataLoader

    def spy(samples, **kw):
        seen["samples"] = samples
        return real(samples, **kw)

    monkeypatch.setattr(flow_train, "DataLoader", spy)
    second = tmp_path / "second"
    make_tiny_dataset(second, episodes=1, seed=1)
    assert hybrid(["train", "executor=tabletop", f"data=[{tiny_dataset},{second}]", f"out={tmp_path / 'run'}",
                   *TINY, "steps=1"]) == 0
    samples = seen["samples"]
    assert isinstance(samples, ConcatDataset) and [len(d) for d in samples.datasets] == [24, 12]


def test_a_fine_tune_keeps_the_inits_statistics_when_asked_and_learns_place_heights(tiny_dataset, tmp_path):
    from safetensors.torch import load_file, save_file

    base, kept, fresh = tmp_path / "base", tmp_path / "kept", tmp_path / "fresh"
    common = ["train", "executor=tabletop", f"data={tiny_dataset}", *TINY, "steps=2", "model.keypoints=4",
              "model.waypoint_loss=1.0"]
    assert hybrid([*common, f"out={base}"]) == 0
    weights = base / "model" / "model.safetensors"
    shifted = {k: v + 1.0 if k == "normalizer.state_mean" else v for k, v in load_file(weights).items()}
    save_file(shifted, weights)  # as if base had been trained on a recording with other state ranges
    assert hybrid([*common, f"out={kept}", f"init={base}", "init_stats=true", "model.waypoint_place_height=true"]) == 0
    assert hybrid([*common, f"out={fresh}", f"init={base}"]) == 0
    mean = {run: FlowExecutor.from_pretrained(run / "model").model.normalizer.state_mean for run in (kept, fresh)}
    torch.testing.assert_close(mean[kept], shifted["normalizer.state_mean"])
    torch.testing.assert_close(mean[fresh] + 1.0, shifted["normalizer.state_mean"])  # the recording's own
    executor = FlowExecutor.from_pretrained(kept / "model")
    assert executor.cfg.waypoint_place_height and executor.model.waypoint_head.place_height is not None
    obs = observation_from(open_dataset(tiny_dataset), 0)
    assert np.isfinite(executor.waypoints(obs, Subtask(text=PLAN[0], index=0), None)).all()
