"""The flow-matching executor on tiny random models: shapes, flow steps, checkpoints, conditioning, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from executors.flow import FlowConfig, FlowExecutor, FlowModel
from executors.flow.processor_flow import Normalizer
from hybrid.interfaces import Executor
from hybrid.testing import fake_observation
from hybrid.types import Observation, Subgoal, Subtask

SUBTASK = Subtask(text="pick up the red block", index=0)


def tiny_config(**overrides) -> FlowConfig:
    fields = {"cameras": ["front", "wrist"], "subgoal_cameras": ["front"], "state_dim": 4, "action_dim": 3, "chunk": 6,
                  "image_size": 16, "patch_size": 8, "vision_width": 16, "vision_depth": 1, "text_width": 16, "text_depth": 1,
                  "max_text_len": 24, "width": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "flow_steps": 4}
    return FlowConfig(**(fields | overrides))


def tiny_model(seed: int = 0, **overrides) -> FlowModel:
    """A random model whose zero-initialised (DiT) output layers are randomised, so inputs matter."""
    torch.manual_seed(seed)
    model = FlowModel(tiny_config(**overrides))
    with torch.no_grad():
        for block in [*model.blocks, model.head]:
            block.adaln[1].weight.normal_(0, 0.1)
        model.head.out.weight.normal_(0, 0.5)
        model.normalizer.action_mean[:3].copy_(torch.tensor([0.5, -1.0, 2.0]))
        model.normalizer.action_std[:3].copy_(torch.tensor([2.0, 0.5, 1.0]))
    return model


def observation(seed: int = 0, size: int = 24, **kw) -> Observation:
    return fake_observation(cameras=("front", "wrist"), size=size, seed=seed, **kw)


def at(x: float, gripper: float) -> Observation:
    """`observation`'s images with the effector at (x, 0.2, 0.1) and the gripper command ``gripper``."""
    return Observation(images=observation().images, state=np.array([x, 0.2, 0.1, gripper], np.float32))


def subgoal_for(obs: Observation, seed: int = 5) -> Subgoal:
    rng = np.random.default_rng(seed)
    return Subgoal(images={"front": rng.integers(0, 256, obs.images["front"].shape, dtype=np.uint8)},
                   subtask=SUBTASK.text, created_at=12.5)


def training_batch(model: FlowModel, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    images = lambda k: torch.randint(0, 256, (n, k, 3, cfg.image_size, cfg.image_size), generator=g,
                                     dtype=torch.uint8)
    pad = torch.zeros(n, cfg.chunk, dtype=torch.bool)
    pad[0, -2:] = True  # a chunk running past its episode's end
    return {"images": images(2), "subgoal": images(1), "has_subgoal": torch.tensor([True, False] * (n // 2)),
            "text_ids": torch.randint(1, 256, (n, cfg.max_text_len), generator=g),
            "state": torch.randn(n, cfg.state_dim, generator=g),
            "actions": torch.randn(n, cfg.chunk, cfg.action_dim, generator=g), "action_is_pad": pad}


def test_act_returns_a_chunk_of_the_configured_shape():
    executor = FlowExecutor(tiny_model())
    assert isinstance(executor, Executor)
    obs = observation()
    chunk = executor.act(obs, SUBTASK, subgoal_for(obs))
    assert chunk.actions.shape == (6, 3) and chunk.actions.dtype == np.float32
    assert np.isfinite(chunk.actions).all()
    assert chunk.dt == pytest.approx(0.1)
    assert chunk.start_time == obs.timestamp
    assert chunk.subtask == SUBTASK.text and chunk.subgoal_created_at == 12.5


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_prefix_is_encoded_once_per_chunk_whatever_the_flow_steps(steps, monkeypatch):
    model = tiny_model()
    calls = {"prefix": 0, "velocity": 0}
    for name in calls:
        original = getattr(model, {"prefix": "encode_context", "velocity": "velocity"}[name])

        def counted(*args, _name=name, _original=original, **kw):
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(model, {"prefix": "encode_context", "velocity": "velocity"}[name], counted)
    executor = FlowExecutor(model, flow_steps=steps)
    assert executor.act(observation(), SUBTASK, None).actions.shape == (6, 3)
    assert calls == {"prefix": 1, "velocity": steps}


def test_cached_prefix_equals_joint_attention_over_prefix_and_chunk():
    """The cache is an optimisation only: one block's output equals attention over [prefix; chunk] tokens."""
    model = tiny_model().eval()
    block, cfg = model.blocks[0], model.cfg
    with torch.no_grad():
        prefix = torch.randn(2, 9, cfg.width)
        x = torch.randn(2, cfg.chunk, cfg.width)
        mod = block.modulation(model.time_embed(torch.tensor([0.1, 0.7])))
        cached = block(x, mod, block.prefix_cache(prefix, cfg.chunk))
        # Recomputed from scratch: keys/values of the normalised prefix and of the modulated chunk.
        shift, scale, gate = mod.chunk(6, -1)[:3]
        h = torch.nn.functional.layer_norm(x, (cfg.width,)) * scale[:, None] + shift[:, None]
        q, k, v = block.qkv(h).chunk(3, -1)
        pk, pv = block.prefix_kv(block.prefix_norm(prefix)).chunk(2, -1)
        k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
        split = lambda t: t.unflatten(-1, (cfg.heads, -1)).transpose(1, 2)
        att = (split(q) @ split(k).transpose(-1, -2) / (cfg.width // cfg.heads) ** 0.5).softmax(-1) @ split(v)
        y = x + gate[:, None] * block.proj(att.transpose(1, 2).flatten(2))
        s2, c2, g2 = mod.chunk(6, -1)[3:]
        y = y + g2[:, None] * block.mlp(torch.nn.functional.layer_norm(y, (cfg.width,)) * c2[:, None] + s2[:, None])
    torch.testing.assert_close(cached, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_save_load_round_trip_is_exact(tmp_path, stem):
    executor = FlowExecutor(tiny_model(vision_stem=stem), seed=3)
    executor.save_pretrained(tmp_path / "ckpt")
    loaded = FlowExecutor.from_pretrained(tmp_path / "ckpt", seed=3)
    assert loaded.cfg == executor.cfg
    original, restored = executor.model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    obs = observation()
    np.testing.assert_array_equal(executor.act(obs, SUBTASK, subgoal_for(obs)).actions,
                                  loaded.act(obs, SUBTASK, subgoal_for(obs)).actions)


def test_conv_stem_gives_the_patch_stems_tokens_and_needs_a_power_of_two_patch():
    from executors.flow.encoders import ScratchVision

    images = torch.rand(2, 3, 32, 32)
    patch, conv = (ScratchVision(32, 8, 16, 1, 2, stem)(images) for stem in ("patch", "conv"))
    assert patch.shape == conv.shape == (2, 16, 16)
    with pytest.raises(ValueError, match="vision_stem"):
        tiny_config(vision_stem="conv", image_size=24, patch_size=6)
    with pytest.raises(ValueError, match="vision_stem"):
        tiny_config(vision_stem="resnet")


def test_film_stem_starts_blind_to_the_text_and_can_learn_to_read_it():
    from executors.flow.encoders import FiLMConvStem

    torch.manual_seed(0)
    film = FiLMConvStem(8, 16, text_dim=12)
    images, t1, t2 = torch.rand(2, 3, 32, 32), torch.randn(2, 12), torch.randn(2, 12)
    tokens, hidden = film(images, t1)
    assert tokens.shape == (2, 16, 4, 4) and [h.shape[-1] for h in hidden] == [16, 8]  # and its hidden maps
    torch.testing.assert_close(film(images, t1)[0], film(images, t2)[0])  # zero-initialised FiLM: a plain conv stem
    for layer in film.films:
        torch.nn.init.normal_(layer.weight, std=0.5)
    assert not torch.allclose(film(images, t1)[0], film(images, t2)[0])


def test_spatial_softmax_finds_the_peak_of_a_feature_map():
    from executors.flow.encoders import SpatialSoftmax

    keypoints = SpatialSoftmax(channels=1, keypoints=1)
    with torch.no_grad():
        keypoints.logits.weight.fill_(1.0)
        keypoints.logits.bias.zero_()
        keypoints.log_temperature.fill_(-4.0)  # sharp
    features = torch.zeros(1, 1, 5, 9)
    features[0, 0, 4, 2] = 1.0  # bottom row, third column
    u, v = keypoints(features)[0, 0].tolist()
    assert u == pytest.approx(-0.5, abs=1e-3) and v == pytest.approx(1.0, abs=1e-3)  # (x, y) in [-1, 1]


@pytest.mark.parametrize("head", ["mlp", "heatmap"])
def test_keypoint_executor_predicts_waypoints_and_learns_them(head):
    # A camera 1 m above the table looking down: image u = x, v = -y.
    calibration = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]] if head == "heatmap" else None
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head=head,
                       table_homography=calibration)
    batch = training_batch(model)
    batch["waypoints"] = torch.tensor([[0.1, 0.2, -0.1, 0.3]] * 4)
    batch["waypoints_valid"] = torch.tensor([[True, True, True, True], [False, False, True, True]] * 2)
    prefix, waypoints = model.encode(batch)
    assert waypoints.shape == (4, 4)
    assert prefix.shape[1] == 3 * (4 + 1) + 24 + 1 + 1  # images x (patches + keypoint), text, state, waypoints
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        loss, parts = model(batch)
        losses.append(parts["waypoint"] + parts.get("heatmap", 0.0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[1] < losses[0]
    batch["waypoints_valid"][:] = False  # nothing to supervise: the waypoint loss is zero
    assert model(batch)[1]["waypoint"] == 0.0


def test_film_executor_conditions_vision_on_the_subtask_and_round_trips(tmp_path):
    model = tiny_model(vision_stem="conv", vision_film=True)
    for layer in model.vision.patchify.films:
        torch.nn.init.normal_(layer.weight, std=0.5)
    executor = FlowExecutor(model, seed=0)
    obs = observation()
    a = executor.act(obs, SUBTASK, subgoal_for(obs)).actions
    executor.reset()
    b = executor.act(obs, Subtask(text="put the blue block in the red bowl", index=0), subgoal_for(obs)).actions
    assert not np.allclose(a, b)
    executor.save_pretrained(tmp_path / "film")
    loaded = FlowExecutor.from_pretrained(tmp_path / "film", seed=0)
    executor.reset()
    np.testing.assert_array_equal(executor.act(obs, SUBTASK, subgoal_for(obs)).actions,
                                  loaded.act(obs, SUBTASK, subgoal_for(obs)).actions)
    with pytest.raises(ValueError, match="vision_film"):
        tiny_config(vision_film=True)  # FiLM needs the conv stem


def test_reset_makes_chunks_reproducible_and_noise_varies_between_chunks():
    executor, obs = FlowExecutor(tiny_model()), observation()
    first, second = executor.act(obs, SUBTASK, None).actions, executor.act(obs, SUBTASK, None).actions
    assert not np.array_equal(first, second)
    executor.reset()
    np.testing.assert_array_equal(executor.act(obs, SUBTASK, None).actions, first)


def test_noise_scale_narrows_the_sampled_chunks():
    model, obs = tiny_model(), observation()
    spread = {}
    for scale in (1.0, 0.5, 0.0):
        chunks = [FlowExecutor(model, seed=seed, noise_scale=scale).act(obs, SUBTASK, subgoal_for(obs)).actions
                  for seed in range(4)]
        spread[scale] = float(np.std(chunks, axis=0).mean())
    assert spread[0.0] == 0.0 < spread[0.5] < spread[1.0]  # no noise: the same chunk whatever the seed
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="noise_scale"):
            FlowExecutor(model, noise_scale=bad)


def test_one_training_step_reduces_the_loss_on_a_fixed_batch():
    model = FlowModel(tiny_config())  # the real (zero-initialised output) init
    batch = training_batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # the same noise and flow times both times
        return model(batch)[0]

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert torch.isfinite(before) and after < before


def test_padded_actions_do_not_count_in_the_loss():
    model = tiny_model()
    batch = training_batch(model)
    batch["action_is_pad"][0] = True  # sample 0 lies wholly past its episode's end
    torch.manual_seed(0)
    reference = model(batch)[0]
    batch["actions"][0] = 1e6
    torch.manual_seed(0)
    assert torch.equal(model(batch)[0], reference)
    batch["actions"][1] += 1
    torch.manual_seed(0)
    assert not torch.equal(model(batch)[0], reference)


def test_flow_times_are_skewed_toward_noise():
    t = tiny_model().sample_time(20_000, torch.device("cpu"))
    assert 0 <= t.min() and t.max() < 1
    assert (t < 0.5).float().mean() > 0.6  # Beta(1.5, 1) reversed: most mass near t = 0 (noise)


def test_language_only_mode_acts_and_differs_from_subgoal_mode():
    executor, obs = FlowExecutor(tiny_model()), observation()
    without = executor.act(obs, SUBTASK, None)
    executor.reset()
    with_goal = executor.act(obs, SUBTASK, subgoal_for(obs))
    assert without.actions.shape == with_goal.actions.shape == (6, 3)
    assert without.subgoal_created_at is None
    assert not np.allclose(without.actions, with_goal.actions)


def test_subtask_text_conditions_the_chunk():
    executor, obs = FlowExecutor(tiny_model()), observation()
    a = executor.act(obs, SUBTASK, None).actions
    executor.reset()
    b = executor.act(obs, Subtask(text="put it in the blue bowl", index=1), None).actions
    assert not np.allclose(a, b)


def test_flat_baseline_reads_the_instruction_and_never_a_subgoal():
    model = tiny_model(conditioning="instruction", subgoal_dropout=1.0)
    assert not model.cfg.use_subgoal and not hasattr(model, "no_subgoal")
    executor = FlowExecutor(model)
    obs = observation(instruction="put the red block in the blue bowl")
    a = executor.act(obs, SUBTASK, subgoal_for(obs))
    executor.reset()
    b = executor.act(obs, Subtask(text="something else entirely", index=3), None)
    np.testing.assert_array_equal(a.actions, b.actions)  # neither the subtask nor the subgoal matter
    assert a.subgoal_created_at is None
    with pytest.raises(ValueError, match="observation.instruction: this executor needs an instruction"):
        executor.act(observation(), SUBTASK, None)


def test_without_subtask_the_instruction_is_read():
    executor = FlowExecutor(tiny_model())
    assert executor.act(observation(instruction="tidy up"), None, None).subtask is None
    with pytest.raises(ValueError, match="needs a subtask or an instruction"):
        executor.act(observation(), None, None)


def test_bad_inputs_raise_value_errors_that_name_the_problem():
    executor = FlowExecutor(tiny_model())
    obs = observation()
    with pytest.raises(ValueError, match=r"observation.images: missing camera\(s\) \['wrist'\]"):
        executor.act(Observation(images={"front": obs.images["front"]}, state=obs.state), SUBTASK, None)
    gray = Observation.model_construct(images={**obs.images, "wrist": np.zeros((24, 24), np.uint8)},
                                       state=obs.state, timestamp=0.0, instruction=None)
    with pytest.raises(ValueError, match=r"observation.images\['wrist'\]: expected uint8 HxWx3, got uint8 \(24, 24\)"):
        executor.act(gray, SUBTASK, None)
    nan = Observation.model_construct(images=obs.images, state=np.array([0, np.nan, 0, 0], np.float32),
                                      timestamp=0.0, instruction=None)
    with pytest.raises(ValueError, match=r"observation.state: expected finite values, got nan at index \[1\]"):
        executor.act(nan, SUBTASK, None)
    with pytest.raises(ValueError, match=r"observation.state: expected 4 values, got shape \(3,\)"):
        executor.act(Observation(images=obs.images, state=[0.0, 1.0, 2.0]), SUBTASK, None)
    with pytest.raises(ValueError, match=r"subgoal.images: missing camera\(s\) \['front'\]"):
        executor.act(obs, SUBTASK, Subgoal(images={"wrist": obs.images["wrist"]}, subtask=SUBTASK.text))


def test_any_image_size_is_resized_to_the_models():
    executor = FlowExecutor(tiny_model())
    obs = observation(size=40)
    assert executor.act(obs, SUBTASK, subgoal_for(obs)).actions.shape == (6, 3)


def test_normalizer_takes_dataset_stats_and_only_centres_constant_dimensions():
    norm = Normalizer(2, 2)
    stats = {"s": {"mean": [1.0, 2.0], "std": [2.0, 0.0]}, "a": {"mean": [0.0, 1.0], "std": [0.5, 4.0]}}
    norm.set_stats(stats, "s", "a")
    torch.testing.assert_close(norm.state(torch.tensor([3.0, 5.0])), torch.tensor([1.0, 3.0]))
    x = torch.tensor([[0.3, -2.0]])
    torch.testing.assert_close(norm.unaction(norm.action(x)), x)


def test_path_normalizer_learns_running_sums_per_chunk_step_and_gives_deltas_back():
    from executors.flow.processor_flow import from_path, to_path
    from hybrid.data import action_chunks

    actions = np.array([[0.01, 0.0, 1.0], [0.02, 0.0, 1.0], [0.03, 0.0, 0.0], [0.04, 0.0, 0.0], [0.05, 0.0, 1.0]],
                       np.float32)
    episode_end = np.array([2, 2, 2, 4, 4])  # two episodes: frames 0-2 and 3-4
    norm = Normalizer(3, 3, chunk=2, path_dims=[0, 1])
    norm.set_path_stats(*action_chunks(actions, episode_end, np.arange(len(actions))[:, None], 2))
    # Chunks (padding past an episode's end left out): step 0 sees dx .01 .02 .03 .04 .05, step 1 the sums
    # .03 .05 .09 (frames 2 and 4 end their episodes).
    torch.testing.assert_close(norm.action_mean[:, 0], torch.tensor([0.03, 0.17 / 3]))
    assert norm.action_std[0, 1] == 1.0  # constant: only centred
    x = torch.from_numpy(actions[None, :2])
    torch.testing.assert_close(norm.action(x) * norm.action_std + norm.action_mean, to_path(x, [0, 1]))
    torch.testing.assert_close(to_path(x, [0, 1])[0, 1], torch.tensor([0.03, 0.0, 1.0]))  # suction is not summed
    torch.testing.assert_close(norm.unaction(norm.action(x)), x)
    torch.testing.assert_close(from_path(to_path(x, [0, 1]), [0, 1]), x)
    # A chunk's first steps alone (a real-time-chunking prefix) use the first rows of the statistics.
    torch.testing.assert_close(norm.unaction(norm.action(x[:, :1])), x[:, :1])


def test_path_executor_acts_in_deltas_keeps_its_prefix_and_round_trips(tmp_path):
    model = tiny_model(path_dims=[0, 1])
    assert model.normalizer.action_mean.shape == (6, 3)
    executor = FlowExecutor(model)
    obs = observation()
    prefix = np.array([[0.3, -0.2, 1.0], [0.4, -0.1, 1.5]], np.float32)
    chunk = executor.act(obs, SUBTASK, None, prefix=prefix)
    np.testing.assert_allclose(chunk.actions[:2], prefix, atol=1e-5)
    executor.save_pretrained(tmp_path / "ckpt")
    again = FlowExecutor.from_pretrained(tmp_path / "ckpt")
    assert again.cfg.path_dims == [0, 1]
    executor.reset()
    np.testing.assert_allclose(again.act(obs, SUBTASK, None).actions, executor.act(obs, SUBTASK, None).actions)
    with pytest.raises(ValueError, match="invalid path_dims"):
        tiny_config(path_dims=[3])


def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(conditioning="instruction", subgoal_dropout=1.0, time_beta=(2.0, 1.0))
    cfg.save(tmp_path)
    assert FlowConfig.load(tmp_path) == cfg
    with pytest.raises(ValueError, match="invalid conditioning"):
        tiny_config(conditioning="plan")
    with pytest.raises(ValueError, match="invalid subgoal_cameras"):
        tiny_config(subgoal_cameras=["top"])
    with pytest.raises(ValueError, match="invalid text_width"):
        tiny_config(text_width=15)


def test_bfloat16_inference_runs():
    executor = FlowExecutor(tiny_model(), dtype="bfloat16")
    assert executor.model.normalizer.action_std.dtype == torch.float32  # statistics stay float32
    chunk = executor.act(observation(), SUBTASK, None)
    assert chunk.actions.dtype == np.float32 and np.isfinite(chunk.actions).all()


def test_executor_configs_build_from_a_saved_checkpoint(tmp_path):
    from hybrid.config import compose, instantiate

    # with a steering target: the tabletop's settings steer it (in-hand model, transit height, alignment)
    FlowExecutor(tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                            table_homography=TOP_DOWN, waypoint_target=True)).save_pretrained(tmp_path / "ckpt")
    for name in ("flow_tabletop", "flow_flat", "flow"):
        cfg = compose("run", [f"executor={name}", f"executor.path={tmp_path / 'ckpt'}", "executor.flow_steps=4"])
        executor = instantiate(cfg.executor)
        assert isinstance(executor, FlowExecutor) and executor.flow_steps == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager():
    eager = FlowExecutor(tiny_model(), device="cuda", dtype="bfloat16")
    graphed = FlowExecutor(tiny_model(), device="cuda", dtype="bfloat16", cuda_graph=True)
    obs = observation()
    for subgoal in (None, subgoal_for(obs), None):
        np.testing.assert_allclose(graphed.act(obs, SUBTASK, subgoal).actions,
                                   eager.act(obs, SUBTASK, subgoal).actions, atol=1e-5)
    assert len(graphed._graphs) == 2  # one recording per input layout


def test_real_time_chunking_prefix_starts_the_chunk_and_the_rest_continues_it():
    from hybrid.interfaces import PrefixConditionedExecutor

    executor = FlowExecutor(tiny_model())
    assert isinstance(executor, PrefixConditionedExecutor) and executor.supports_prefix
    obs = observation()
    prefix = np.array([[0.3, -0.2, 1.0], [0.4, -0.1, 1.5]], np.float32)
    chunk = executor.act(obs, SUBTASK, None, prefix=prefix)
    assert chunk.actions.shape == (6, 3)
    np.testing.assert_allclose(chunk.actions[:2], prefix, atol=1e-5)
    executor.reset()
    free = executor.act(obs, SUBTASK, None)
    assert not np.allclose(free.actions[2:], chunk.actions[2:])  # the prefix steers what follows
    with pytest.raises(ValueError, match="prefix: expected finite"):
        executor.act(obs, SUBTASK, None, prefix=np.full((2, 3), np.nan, np.float32))


@pytest.mark.parametrize("fields, bad", [
    ({"keypoints": 4}, "keypoints"),  # keypoints read the conv stem's feature maps; the patch stem has none
    ({"vision_stem": "conv", "waypoint_loss": 1.0}, "waypoint_loss"),  # the waypoint head reads keypoints
    ({"vision_stem": "conv", "keypoints": 4, "waypoint_loss": 1.0, "waypoint_head": "heatmap"},
     "waypoint_head"),  # a heatmap head needs the camera's calibration
])
def test_keypoint_options_without_what_they_need_are_rejected(fields, bad):
    with pytest.raises(ValueError, match=bad):
        tiny_config(**fields)


def test_a_keypoint_stride_the_stem_does_not_have_is_rejected():
    from executors.flow.encoders import ScratchVision

    for stride in (3, 8, 1):  # not a power of two; the stem's output (patch 8), not a hidden map; below 2
        with pytest.raises(ValueError, match="keypoint_stride"):
            ScratchVision(16, 8, 16, 1, 2, stem="conv", keypoints=4, keypoint_stride=stride)
    assert ScratchVision(16, 8, 16, 1, 2, stem="conv", keypoints=4, keypoint_stride=4).keypoint_level == 1


def test_heatmap_head_reads_table_xy_through_the_calibration_and_targets_the_labelled_cell():
    from executors.flow.waypoint_heads import HeatmapWaypointHead, apply_homography

    calibration = torch.tensor([[2.0, 0.0, 0.1], [0.0, -2.0, 0.0], [0.0, 0.2, 1.0]])  # with perspective
    head = HeatmapWaypointHead(text_dim=8, channels=4, table_homography=calibration.tolist())
    xy = torch.tensor([[[0.1, -0.2], [-0.3, 0.25]]])
    torch.testing.assert_close(apply_homography(head.image_to_table, apply_homography(calibration, xy)), xy)
    uv = apply_homography(calibration, xy)
    h, w = 8, 8
    cells = ((uv[..., 1] + 1) / 2 * h).floor().long() * w + ((uv[..., 0] + 1) / 2 * w).floor().long()
    logits = torch.full((1, 2, h * w), -30.0)
    logits[0, 0, cells[0, 0]] = logits[0, 1, cells[0, 1]] = 30.0  # maps peaked on the labelled cells
    valid = torch.ones(1, 2, dtype=torch.bool)
    assert head.loss(logits, xy, valid, (h, w)).item() < 1e-6
    assert head.loss(logits.flip(1), xy, valid, (h, w)).item() > 10  # pick and place swapped
    assert head.loss(logits.flip(1), xy, ~valid, (h, w)).item() == 0.0  # nothing labelled
    # A point outside the image is no label for the maps.
    assert head.loss(logits.flip(1), torch.tensor([[[9.0, 9.0], [9.0, 9.0]]]), valid, (h, w)).item() == 0.0


def test_bilinear_map_targets_put_the_peak_between_cell_centres_where_the_label_is():
    from executors.flow.waypoint_heads import HeatmapWaypointHead, apply_homography, bilinear_cells

    calibration = torch.tensor([[2.0, 0.0, 0.1], [0.0, -2.0, 0.0], [0.0, 0.2, 1.0]])
    head = HeatmapWaypointHead(text_dim=8, channels=4, table_homography=calibration.tolist(), target="bilinear")
    weights = bilinear_cells(torch.tensor([2.25, -3.0]), torch.tensor([6.5, 9.0]), 8, 8)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert weights[0, 6 * 8 + 2] == 0.375 and weights[0, 7 * 8 + 3] == 0.125  # (1-.25)(1-.5), .25 * .5
    assert weights[1, 7 * 8 + 0] == 1.0  # beyond the corner's centre: the corner
    xy = torch.tensor([[[0.1, -0.2], [-0.3, 0.25]], [[0.37, 0.4], [-0.2, 0.1]]])
    h, w, valid = 8, 8, torch.ones(2, 2, dtype=torch.bool)
    logits = torch.zeros(2, 2, h * w, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    for _ in range(300):  # the maps that minimise the loss are the targets themselves
        opt.zero_grad()
        head.loss(logits, xy, valid, (h, w)).backward()
        opt.step()
    found = head.peak(logits.detach(), (h, w))
    torch.testing.assert_close(found, xy, atol=0.01, rtol=0)  # well inside a cell (0.125 of the image wide)
    assert (apply_homography(calibration, xy).abs() < 0.875).all()  # inside the outermost cell centres
    with pytest.raises(ValueError, match="target"):
        HeatmapWaypointHead(text_dim=8, channels=4, table_homography=calibration.tolist(), target="gauss")


def test_heatmap_peak_keeps_the_strongest_mode_where_the_soft_argmax_averages_two():
    from executors.flow.encoders import soft_argmax
    from executors.flow.waypoint_heads import HeatmapWaypointHead

    head = HeatmapWaypointHead(text_dim=8, channels=4, table_homography=np.eye(3).tolist())
    h, w = 8, 8
    logits = torch.full((1, 2, h * w), -30.0)
    logits[0, :, 1 * w + 1] = 5.0  # two candidate blocks, top left ...
    logits[0, :, 6 * w + 6] = 4.0  # ... and bottom right, a little less likely
    mean = soft_argmax(logits, h, w, centres=True)[0, 0]
    peak = head.peak(logits, (h, w))[0, 0]
    centre = (torch.tensor([1, 1]) + 0.5) * (2 / w) - 1  # the top-left cell's centre in [-1, 1]
    torch.testing.assert_close(peak, centre.float())
    assert mean.abs().max() < 0.5  # the whole map's soft-argmax: between the two, on neither


def test_a_place_map_on_the_subgoal_reads_the_subgoal_where_there_is_one():
    calibration = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
    heatmap = dict(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                   table_homography=calibration, waypoint_text="tokens")
    model = tiny_model(waypoint_place_map="subgoal", **heatmap).eval()
    batch = training_batch(model)  # samples 0 and 2 have a subgoal, 1 and 3 not
    other = dict(batch, subgoal=255 - batch["subgoal"])
    _, before = model.encode(batch)
    _, after = model.encode(other)
    torch.testing.assert_close(before[:, :2], after[:, :2])  # the pick reads the observation
    assert not torch.allclose(before[::2, 2:], after[::2, 2:])  # the place, the subgoal where given
    torch.testing.assert_close(before[1::2, 2:], after[1::2, 2:])
    # Without a subgoal both maps read the observation, as a head trained on the observation alone does.
    plain = tiny_model(**heatmap).eval()
    plain.load_state_dict(model.state_dict())
    no_goal = {k: v for k, v in batch.items() if k != "subgoal"}
    torch.testing.assert_close(model.encode(no_goal)[1], plain.encode(no_goal)[1])
    torch.testing.assert_close(before[1::2], plain.encode(batch)[1][1::2])
    with pytest.raises(ValueError, match="waypoint_place_map"):
        tiny_config(waypoint_place_map="subgoal", subgoal_dropout=1.0, **heatmap)  # no subgoal to read


def test_token_queries_read_words_and_the_steering_token_points_from_the_effector_to_the_waypoint():
    calibration = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=calibration, waypoint_text="tokens", waypoint_target=True,
                       waypoint_teacher_forcing=1.0, waypoint_noise=0.0)
    batch = training_batch(model)
    prefix, waypoints = model.encode(batch)
    assert prefix.shape[1] == 3 * (4 + 1) + 24 + 1 + 2  # ... text, state, waypoints, steering
    labels = torch.tensor([[0.1, 0.2, -0.1, 0.3]] * 4)
    batch |= {"waypoints": labels, "waypoints_valid": torch.ones(4, 4, dtype=torch.bool),
              "waypoints_known": torch.tensor([[True] * 4, [False, False, True, True]] * 2)}
    model.train()
    _, predicted, heatmap, _ = model._encode(batch)
    steer = model._steer(batch, predicted, heatmap)
    here = model.normalizer.state(batch["state"])[:, :2].repeat(1, 2)
    found = model.normalizer.waypoints(model.waypoint_head.peak(*heatmap[:2]).flatten(1))
    # Known waypoints are forced (teacher forcing 1.0); the unknown pick falls back to the head's own.
    torch.testing.assert_close(steer[0], model.normalizer.waypoints(labels)[0] - here[0])
    torch.testing.assert_close(steer[1, :2], (found - here)[1, :2])
    model.eval()  # at run time the head's own, always
    torch.testing.assert_close(model._steer(batch, predicted, heatmap), found - here)
    loss, parts = model(batch)
    loss.backward()
    assert model.waypoint_head.query.select.grad is not None and torch.isfinite(loss)
    # The target also reaches every action token directly (zero at first, so a fine-tune starts unchanged).
    assert model.target_in.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(model.target_in.weight)
    _, condition = model.encode_context(batch)
    moved = dict(batch, state=batch["state"] + torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert not torch.allclose(condition, model.encode_context(moved)[1])
    with pytest.raises(ValueError, match="waypoint_target"):
        tiny_config(waypoint_target=True)  # needs a waypoint head


def test_affordance_scores_peaked_far_picks_high_and_flat_or_already_placed_ones_low():
    from executors.flow.affordance import AffordanceConfig, affordance_scores

    logits = torch.zeros(3, 2, 16)
    logits[0, 0, 3] = logits[2, 0, 3] = 20.0  # a clear pick peak; sample 1's pick map is flat
    far = torch.tensor([[0.0, 0.0], [0.3, 0.0]])
    near = torch.tensor([[0.0, 0.0], [0.01, 0.0]])  # the block is already where it goes
    scores = affordance_scores(logits, torch.stack([far, far, near]), AffordanceConfig())
    assert scores[0] > 0.99 and scores[1] < 0.01 and scores[2] < 0.02
    with pytest.raises(ValueError, match="non-finite"):
        affordance_scores(torch.full((1, 2, 16), float("nan")), far[None], AffordanceConfig())
    with pytest.raises(ValueError):
        AffordanceConfig(contrast_scale=0.0)


def test_executor_affordance_scores_a_batch_of_subtasks_as_one_at_a_time():
    calibration = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=calibration, waypoint_text="tokens")
    executor = FlowExecutor(model, affordance={"contrast_at": 0.0, "reach_at": 0.0})
    obs, texts = observation(), ["pick up the red block", "put the blue block in the red bowl", "stack it"]
    assert executor.supports_affordance
    scores = executor.affordance(obs, texts)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores, [executor.affordance(obs, [t])[0] for t in texts], rtol=1e-5, atol=1e-6)
    assert len(scores) == len(set(scores.round(6)))  # the text decides the score
    assert executor.affordance(obs, []).shape == (0,)
    plain = FlowExecutor(tiny_model())
    assert not plain.supports_affordance
    with pytest.raises(ValueError, match="heatmap"):
        plain.affordance(obs, texts)


TOP_DOWN = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]  # image u = table x, v = -y


def test_pick_persistence_holds_the_pick_on_the_block_chosen_before():
    from executors.flow.waypoint_heads import HeatmapWaypointHead

    head = HeatmapWaypointHead(text_dim=8, channels=8, table_homography=TOP_DOWN)
    logits = torch.zeros(1, 2, 16)  # a 4x4 map; cells 0.5 apart in table units
    logits[0, 0, 0], logits[0, 0, 15] = 5.0, 4.8  # two blocks of the asked colour, A a little stronger
    logits[0, 1, 6] = 5.0
    a, b = (head._cell_centres((4, 4))[i] for i in (0, 15))

    def pick(prior, bonus):
        return head.peak(logits, (4, 4), prior, bonus)[0]

    fresh = head.peak(logits, (4, 4))[0]
    assert torch.linalg.norm(fresh[0] - a) < torch.linalg.norm(fresh[0] - b)
    assert torch.equal(pick(b[None], 0.5)[1], fresh[1])  # the place map is left as it is
    assert torch.linalg.norm(pick(b[None], 0.5)[0] - b) < torch.linalg.norm(pick(b[None], 0.5)[0] - a)
    assert torch.allclose(pick(b[None], 0.1)[0], fresh[0])  # a bonus below the gap: A is clearly stronger
    assert torch.allclose(pick(torch.full((1, 2), float("nan")), 0.5), fresh)  # no pick chosen before


def test_place_persistence_holds_the_place_map_on_the_place_chosen_before():
    from executors.flow.waypoint_heads import HeatmapWaypointHead

    head = HeatmapWaypointHead(text_dim=8, channels=8, table_homography=TOP_DOWN)
    logits = torch.zeros(1, 2, 16)
    logits[0, 0, 6] = 5.0
    logits[0, 1, 0], logits[0, 1, 15] = 4.8, 5.0  # the held block hides the lower one: a bowl of its colour wins now
    a, b = (head._cell_centres((4, 4))[i] for i in (0, 15))
    fresh = head.peak(logits, (4, 4))[0]
    held = head.peak(logits, (4, 4), place_prior=a[None], place_bonus=1.0)[0]
    assert torch.linalg.norm(fresh[1] - b) < 0.1 and torch.linalg.norm(held[1] - a) < 0.1
    assert torch.equal(held[0], fresh[0])  # the pick map is left as it is
    assert torch.allclose(head.peak(logits, (4, 4), place_prior=a[None], place_bonus=0.1)[0], fresh)  # below the gap
    assert torch.allclose(head.peak(logits, (4, 4), place_prior=torch.full((1, 2), float("nan")), place_bonus=1.0)[0],
                          fresh)


def test_place_inhibition_keeps_the_pick_off_blocks_placed_before():
    from executors.flow.waypoint_heads import HeatmapWaypointHead

    head = HeatmapWaypointHead(text_dim=8, channels=8, table_homography=TOP_DOWN)
    logits = torch.zeros(1, 2, 16)
    logits[0, 0, 0], logits[0, 0, 15] = 5.0, 4.0  # A, already in its bowl, lights up more than B, still to move
    logits[0, 1, 6] = 5.0
    a, b = (head._cell_centres((4, 4))[i] for i in (0, 15))
    fresh = head.peak(logits, (4, 4))[0]
    avoided = head.peak(logits, (4, 4), avoid=a[None, None], avoid_penalty=3.0)[0]
    assert torch.linalg.norm(fresh[0] - a) < 0.1 and torch.linalg.norm(avoided[0] - b) < 0.1
    assert torch.equal(avoided[1], fresh[1])  # the place map is left as it is
    weak = head.peak(logits, (4, 4), avoid=a[None, None], avoid_penalty=0.5)[0]  # below the gap: A stays
    assert torch.linalg.norm(weak[0] - a) < 0.1
    for none in (torch.zeros(1, 0, 2), torch.full((1, 1, 2), float("nan"))):
        assert torch.allclose(head.peak(logits, (4, 4), avoid=none, avoid_penalty=3.0), fresh[None])


def test_place_inhibition_remembers_releases_of_earlier_subtasks_only():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True)
    executor = FlowExecutor(model, place_inhibition=3.0)
    seen = []
    peak = model.waypoint_head.peak

    def spy(logits, size, prior=None, prior_bonus=0.0, avoid=None, avoid_penalty=0.0, *rest):
        seen.append(avoid[0].tolist())
        return peak(logits, size, prior, prior_bonus, avoid, avoid_penalty, *rest)

    model.waypoint_head.peak = spy

    other = Subtask(text="pick up the blue block", index=1)
    steps = ((at(0.0, 0.0), SUBTASK), (at(0.1, 1.0), SUBTASK), (at(0.3, 0.0), SUBTASK),  # a miss: retried
             (at(0.3, 1.0), SUBTASK), (at(0.5, 0.0), other), (at(0.6, 1.0), other),
             (at(0.7, 0.0), SUBTASK))
    for observed, subtask in steps:
        executor.act(observed, subtask)
    executor.reset()
    executor.act(at(0.5, 0.0), other)
    near = [[pytest.approx(x), pytest.approx(0.2)] for x in (0.3, 0.5, 0.7)]
    # the retry does not avoid its own miss; the next subtask avoids both releases of the one before (seen where
    # the effector is at the first chunk after each), the first subtask, taken up again, only what the other one
    # placed; a reset forgets them all
    assert seen == [[], [], [], [], near[:2], near[:2], [near[2]], []]
    with pytest.raises(ValueError, match="place_inhibition"):
        FlowExecutor(tiny_model(), place_inhibition=-1.0)


def test_place_lock_steers_to_the_place_seen_from_afar_until_the_gripper_lets_go():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True)
    executor = FlowExecutor(model, place_lock_distance=0.1)
    places = iter([0.5, 0.5, 0.42, 0.42, 0.42, 0.42])  # the place map's estimate (x) at each chunk; it drifts near
    steered = []

    def peak(logits, size, *args):
        return torch.tensor([[[0.0, 0.0], [next(places), 0.2]]]).expand(len(logits), -1, -1)

    model.waypoint_head.peak = peak
    encode = model.encode_steering

    def spy(batch):
        out = encode(batch)
        steered.append(round(float(out[-1][0, 1, 0]), 3))
        return out

    model.encode_steering = spy

    other = Subtask(text="pick up the blue block", index=1)
    for state, subtask in ((at(0.0, 1.0), SUBTASK), (at(0.3, 1.0), SUBTASK), (at(0.45, 1.0), SUBTASK),
                           (at(0.45, 1.0), other), (at(0.45, 0.0), SUBTASK), (at(0.45, 1.0), SUBTASK)):
        executor.act(state, subtask)
    # held and 5 cm from the place seen from afar: steered there, not to the drifted estimate; forgotten on a new
    # subtask and once the gripper let go (and held again: nothing seen from afar since)
    assert steered == [0.5, 0.5, 0.5, 0.42, 0.42, 0.42]
    with pytest.raises(ValueError, match="place_lock_distance"):
        FlowExecutor(tiny_model(), place_lock_distance=-0.1)


def test_place_persistence_holds_the_place_seen_before_until_the_subtask_changes_or_the_gripper_lets_go():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True)
    executor = FlowExecutor(model, place_persistence=2.0)
    places = iter([0.5, 0.5, 0.3, 0.3, 0.3, 0.3])  # the place map's peak (x) at each chunk
    priors = []

    def peak(logits, size, prior, prior_bonus, avoid, avoid_penalty, heights, place_prior, place_bonus):
        priors.append(None if not torch.isfinite(place_prior).all() else round(float(place_prior[0, 0]), 3))
        assert place_bonus == 2.0
        return torch.tensor([[[0.0, 0.0], [next(places), 0.2]]]).expand(len(logits), -1, -1)

    model.waypoint_head.peak = peak

    other = Subtask(text="pick up the blue block", index=1)
    for state, subtask in ((at(0.0, 1.0), SUBTASK), (at(0.1, 1.0), SUBTASK), (at(0.1, 1.0), other),
                           (at(0.1, 0.0), other), (at(0.1, 1.0), other), (at(0.1, 1.0), other)):
        executor.act(state, subtask)
    # held: the place chosen at the chunk before is the prior; forgotten on a new subtask, with the gripper open, and
    # picked up again with what the map finds once held
    assert priors == [None, 0.5, None, None, None, 0.3]
    with pytest.raises(ValueError, match="place_persistence"):
        FlowExecutor(tiny_model(), place_persistence=-1.0)


def test_pick_persistence_lasts_until_the_subtask_changes_or_the_gripper_lets_go():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True)
    plain = FlowExecutor(tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                                    table_homography=TOP_DOWN, waypoint_target=True))
    executor = FlowExecutor(model, pick_persistence=0.5)
    priors = []
    peak = model.waypoint_head.peak

    def spy(logits, size, prior=None, prior_bonus=0.0, *rest):
        priors.append(prior is not None and bool(torch.isfinite(prior).all()))
        return peak(logits, size, prior, prior_bonus, *rest)

    model.waypoint_head.peak = spy
    obs = observation()
    open_, held = (Observation(images=obs.images, state=np.array([0.1, 0.2, 0.1, g], np.float32)) for g in (0.0, 1.0))
    # with no pick chosen yet the chunk is the one sampled without persistence
    np.testing.assert_allclose(executor.act(open_, SUBTASK).actions, plain.act(open_, SUBTASK).actions, atol=1e-6)
    other = Subtask(text="pick up the blue block", index=1)
    for state, subtask in ((open_, SUBTASK), (held, SUBTASK), (open_, SUBTASK), (open_, SUBTASK), (open_, other)):
        executor.act(state, subtask)
    executor.reset()
    executor.act(open_, other)
    # kept while holding; forgotten once the gripper let go, on a new subtask, and after a reset
    assert priors == [False, True, True, False, True, False, False]
    # an executor not steered to a pick map's peak acts as it would without it
    np.testing.assert_allclose(FlowExecutor(tiny_model(), pick_persistence=0.5).act(obs, SUBTASK).actions,
                               FlowExecutor(tiny_model()).act(obs, SUBTASK).actions)
    with pytest.raises(ValueError, match="pick_persistence"):
        FlowExecutor(tiny_model(), pick_persistence=-1.0)


def test_the_affordance_check_reads_the_pick_map_as_act_would_under_each_subtask():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True)
    executor = FlowExecutor(model, place_inhibition=3.0, affordance={"contrast_at": 0.0, "reach_at": 0.0})
    obs = observation()

    other = "pick up the blue block"
    texts = [SUBTASK.text, other]
    before = executor.affordance(obs, texts)
    for x, gripper in ((0.0, 0.0), (0.1, 1.0), (0.3, 0.0)):  # one release under SUBTASK, at x = 0.3
        executor.act(at(x, gripper), SUBTASK)
    seen = []
    inhibit = model.waypoint_head.inhibit

    def spy(logits, size, avoid, penalty, which=0):
        if avoid is not None and which == 0:  # the pick map's
            seen.append(avoid)
        return inhibit(logits, size, avoid, penalty, which)

    model.waypoint_head.inhibit = spy
    after = executor.affordance(obs, texts)
    assert len(seen) == 1
    # SUBTASK may retry its own release; another subtask keeps off it, as `act` would
    assert torch.isnan(seen[0][0]).all() and seen[0][1].tolist() == [[pytest.approx(0.3), pytest.approx(0.2)]]
    assert after[0] == pytest.approx(before[0])
    executor.affordance_inhibition = False
    seen.clear()
    np.testing.assert_allclose(executor.affordance(obs, texts), before, rtol=1e-6)
    assert seen == []
    # a new executor told where the episode let go (an evaluation's recorded situation) reads the map alike
    executor.affordance_inhibition = True
    resumed = FlowExecutor(model, place_inhibition=3.0, affordance={"contrast_at": 0.0, "reach_at": 0.0})
    resumed.remember_releases([(SUBTASK.text, np.array([0.3, 0.2, 0.05, 0.0]))])
    np.testing.assert_allclose(resumed.affordance(obs, texts), after, rtol=1e-6)
    assert torch.isnan(seen[-1][0]).all() and seen[-1][1].tolist() == [[pytest.approx(0.3), pytest.approx(0.2)]]


# A camera looking down at the table from the side: world (x, y, z, 1) -> (u s, v s, s).
SIDE_CAMERA = [[2.0, 0.0, 0.0, 0.1], [0.0, -2.0, -1.0, 0.0], [0.0, 0.2, -0.5, 1.5]]


def side_homography(height: float = 0.02) -> list[list[float]]:
    p = np.asarray(SIDE_CAMERA)
    return np.stack([p[:, 0], p[:, 1], p[:, 2] * height + p[:, 3]], axis=1).tolist()


def test_a_place_with_its_height_is_read_where_its_camera_ray_meets_that_height():
    from executors.flow.waypoint_heads import HeatmapWaypointHead

    head = HeatmapWaypointHead(text_dim=8, channels=4, table_homography=side_homography(), target="bilinear",
                               camera_projection=SIDE_CAMERA)
    xy = torch.tensor([[[0.1, -0.2], [-0.15, 0.2]], [[0.2, 0.1], [0.05, -0.1]]])
    heights = torch.tensor([0.14, 0.02])  # the top of a three-block tower; a block on the table
    h, w, valid = 16, 16, torch.ones(2, 2, dtype=torch.bool)
    logits = torch.zeros(2, 2, h * w, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    for _ in range(300):  # the maps that minimise the loss light the place where the camera sees it
        opt.zero_grad()
        head.loss(logits, xy, valid, (h, w), heights).backward()
        opt.step()
    torch.testing.assert_close(head.peak(logits.detach(), (h, w), heights=heights), xy, atol=0.01, rtol=0)
    # Read on the table's plane, the tower's top lands behind the tower: the parallax the height removes.
    flat = head.peak(logits.detach(), (h, w))
    assert (flat[0, 1] - xy[0, 1]).norm() > 0.05
    torch.testing.assert_close(flat[1], xy[1], atol=0.01, rtol=0)  # at the homography's own height, no change
    # An unknown height leaves the place unlabelled.
    none = torch.full((2,), float("nan"))
    assert head.loss(logits.detach(), xy, torch.tensor([[False, True]] * 2), (h, w), none).item() == 0.0


def test_place_persistence_finds_a_place_in_space_where_the_map_sees_it():
    from executors.flow.waypoint_heads import HeatmapWaypointHead

    head = HeatmapWaypointHead(text_dim=8, channels=4, table_homography=side_homography(),
                               camera_projection=SIDE_CAMERA)
    size, heights = (16, 16), torch.tensor([0.14])  # the top of a three-block tower
    logits = torch.zeros(1, 2, 256)
    logits[0, 1, 5 * 16 + 4], logits[0, 1, 10 * 16 + 11] = 5.0, 4.8  # A; B, the tower, a little weaker
    fresh = head.peak(logits, size, heights=heights)[0, 1]
    uv_b = head._local_uv(logits[:, 1:] * torch.arange(256).eq(10 * 16 + 11), 16, 16)
    b = head.to_table(torch.cat([uv_b, uv_b], 1), heights)[0, 1]  # B as the executor remembers it: in space
    assert (fresh - b).norm() > 0.05
    held = head.peak(logits, size, heights=heights, place_prior=b[None], place_bonus=1.0)[0, 1]
    torch.testing.assert_close(held, b, atol=1e-4, rtol=0)  # read on the plane, B itself would be 5 cm off


def test_an_executor_with_place_heights_learns_them_and_checks_its_calibration():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=side_homography(), waypoint_place_height=True,
                       camera_projection=SIDE_CAMERA)
    batch = training_batch(model)
    batch["waypoints"] = torch.tensor([[0.1, 0.2, -0.1, 0.15]] * 4)
    batch["waypoints_valid"] = torch.ones(4, 4, dtype=torch.bool)
    batch["place_height"] = torch.tensor([0.1, 0.06, float("nan"), 0.14])
    optimizer = torch.optim.AdamW(model.waypoint_head.parameters(), lr=3e-3)
    heights = []
    for _ in range(8):
        torch.manual_seed(0)
        loss, parts = model(batch)
        assert torch.isfinite(loss)
        heights.append(parts["height"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert heights[-1] < heights[0]
    _, _, (_, _, predicted), _ = model._encode(batch)
    assert predicted.shape == (4,) and torch.isfinite(predicted).all()
    with pytest.raises(ValueError, match="waypoint_place_height"):
        tiny_config(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                    table_homography=side_homography(), waypoint_place_height=True)  # no projection
    with pytest.raises(ValueError, match="place_height_below"):
        tiny_config(place_height_below=-0.04)  # above the effector: no place is there
