"""The in-hand offset: rendered views with their labels, the estimator's round trip and training, and the executor
steering the cup so that the held block, not the cup, lands on the place."""

import json

import numpy as np
import pytest
import torch
from test_executor_model import SUBTASK, TOP_DOWN, observation, tiny_model

from executors.flow import FlowExecutor
from executors.flow.in_hand import InHandConfig, InHandOffset, WristReading, train_in_hand
from hybrid.envs.tabletop.env import TabletopEnv
from hybrid.envs.tabletop.in_hand import CLEAR, NOTHING, compose_view, wrist_views
from hybrid.envs.tabletop.scene import BLOCK_HALF
from hybrid.envs.tabletop.tasks import COLOURS
from hybrid.types import Observation

TINY = InHandConfig(image_size=32, widths=[8, 8], hidden=16)


def test_wrist_views_render_the_held_block_where_its_label_says():
    views = wrist_views(6, seed=3, image_size=32, max_offset=0.02)
    images, offsets = views.images, views.held
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8 and offsets.shape == (6, 2)
    assert (np.linalg.norm(offsets, axis=1) <= 0.02).all() and len({o.tobytes() for o in offsets}) == 6
    again = wrist_views(6, seed=3, image_size=32, max_offset=0.02)
    again, same = again.images, again.held
    assert np.array_equal(images, again) and np.array_equal(offsets, same)  # the seed decides everything
    assert views.colour.shape == (6,) and ((views.colour >= 0) & (views.colour < len(COLOURS))).all()
    with pytest.raises(ValueError, match="max_offset"):
        wrist_views(2, max_offset=0.0)


def test_a_view_poses_the_held_block_and_the_support_where_their_labels_say():
    env = TabletopEnv(task="stack", cameras=("wrist",), image_size=32)
    try:
        env.reset(seed=0)
        scene, rng = env.scene, np.random.default_rng(0)
        home = scene.data.qpos.copy()
        for _ in range(8):
            scene.data.qpos[:] = home
            held, support, present, block, top_block = compose_view(scene, rng, support=1.0)
            cup = scene.effector
            blocks = scene.data.xpos[scene.block_body[: scene.n_blocks()]]
            hanging = np.isclose(blocks[:, 2], cup[2] - BLOCK_HALF)
            assert np.flatnonzero(hanging).tolist() == [block]  # the block it names is the one under the cup
            assert present and np.allclose(blocks[hanging, :2] - cup[:2], held, atol=1e-6)
            top = np.flatnonzero(np.isclose(blocks[:, :2], cup[:2] + support, atol=1e-6).all(axis=1))
            assert top.tolist() == [top_block] and np.linalg.norm(support) <= 0.05  # the top block it names
            assert cup[2] - 2 * BLOCK_HALF > blocks[top[0], 2] + BLOCK_HALF  # the held block clears the support
            others = np.linalg.norm(blocks[:, :2] - cup[:2], axis=1) < CLEAR
            # under the cup only the held block and the tower (its lower blocks within a few mm of the top's xy)
            assert all(hanging[i] or blocks[i, 2] < blocks[top[0], 2] + 1e-6 for i in np.flatnonzero(others))
            scene.data.qpos[:] = home
            held, support, present, _, top_block = compose_view(scene, rng, support=0.0)
            assert not present and not support.any() and top_block is None
    finally:
        env.close()
    views = wrist_views(30, seed=5, image_size=32, support=0.5)
    assert 0.2 < views.present.mean() < 0.8 and not views.support[~views.present].any()
    colours = views.support_colour  # the top block's colour, or NOTHING
    assert (colours[~views.present] == NOTHING).all() and (colours[views.present] < NOTHING).all()
    with pytest.raises(ValueError, match="support"):
        wrist_views(2, support=1.5)


def test_an_empty_view_has_nothing_under_the_cup_and_says_so():
    env = TabletopEnv(task="sort", cameras=("wrist",), image_size=32)
    try:
        env.reset(seed=1)
        scene, rng = env.scene, np.random.default_rng(1)
        home = scene.data.qpos.copy()
        for _ in range(6):
            scene.data.qpos[:] = home
            held, _, _, block, _ = compose_view(scene, rng, support=0.5, empty=True)
            cup, blocks = scene.effector, scene.data.xpos[scene.block_body[: scene.n_blocks()]]
            assert not held.any() and not np.isclose(blocks[:, 2], cup[2] - BLOCK_HALF).any()  # nothing hangs
            assert np.linalg.norm(blocks[block, :2] - cup[:2]) > CLEAR  # the block it would have held is aside
    finally:
        env.close()
    views = wrist_views(40, seed=2, image_size=32, empty=0.3)
    assert 0.1 < (~views.holds).mean() < 0.5 and (views.colour[~views.holds] == NOTHING).all()
    assert not views.held[~views.holds].any()
    plain = wrist_views(6, seed=3, image_size=32, max_offset=0.02)  # no empty views: the same views as before
    assert views.holds.shape == (40,) and plain.holds.all()
    with pytest.raises(ValueError, match="empty"):
        wrist_views(2, empty=1.0)


def test_the_estimator_round_trips_and_rejects_bad_images(tmp_path):
    torch.manual_seed(0)
    model = InHandOffset(TINY).eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)  # resized to 32
    model.save_pretrained(tmp_path / "in_hand")
    loaded = InHandOffset.from_pretrained(tmp_path / "in_hand")
    assert loaded.cfg == TINY and np.array_equal(loaded.read(image).held, model.read(image).held)
    assert (tmp_path / "in_hand" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="uint8"):
        model.read(image[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        model.read(image.astype(np.float32))
    with pytest.raises(FileNotFoundError):
        InHandOffset.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="InHandConfig"):
        InHandConfig(image_size=8, widths=[8, 8, 8, 8])


def test_train_in_hand_writes_the_model_and_its_held_out_error(tmp_path):
    metrics = train_in_hand(str(tmp_path / "run"), samples=24, val_samples=8, steps=3, batch_size=4, image_size=32)
    assert set(metrics) >= {"val_error_cm_p50", "val_error_cm_p90", "val_offset_cm_p50"}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert InHandOffset.from_pretrained(tmp_path / "run").cfg.image_size == 32
    metrics = train_in_hand(str(tmp_path / "both"), samples=24, val_samples=8, steps=3, batch_size=4, image_size=32,
                            support=0.5)
    assert set(metrics) >= {"support_error_cm_p50", "support_error_cm_p50_behind", "support_presence_accuracy"}
    model = InHandOffset.from_pretrained(tmp_path / "both")
    reading = model.read(np.zeros((32, 32, 3), np.uint8))
    assert model.cfg.support and reading.support.shape == (2,) and 0.0 < reading.support_prob < 1.0
    metrics = train_in_hand(str(tmp_path / "colour"), samples=24, val_samples=8, steps=3, batch_size=4, image_size=32,
                            colour=True)
    assert 0.0 <= metrics["colour_accuracy"] <= 1.0 and "colour_true_prob_below_0.1" in metrics
    model = InHandOffset.from_pretrained(tmp_path / "colour")
    assert model.cfg.colours == ["red", "green", "blue", "yellow", "purple", "orange"]
    assert np.isclose(sum(model.read(np.zeros((32, 32, 3), np.uint8)).colours.values()), 1.0)
    metrics = train_in_hand(str(tmp_path / "empty"), samples=24, val_samples=16, steps=3, batch_size=4,
                            image_size=32, colour=True, empty=0.4)
    assert {"nothing_recall", "nothing_when_held"} <= set(metrics)
    model = InHandOffset.from_pretrained(tmp_path / "empty")
    found = model.read(np.zeros((32, 32, 3), np.uint8))
    assert model.cfg.empty and model.classes == 7 and 0.0 < found.nothing < 1.0
    assert np.isclose(sum(found.colours.values()) + found.nothing, 1.0)
    with pytest.raises(ValueError, match="colour"):
        train_in_hand(str(tmp_path / "bad"), samples=8, steps=1, empty=0.2)
    metrics = train_in_hand(str(tmp_path / "place"), samples=24, val_samples=16, steps=3, batch_size=4,
                            image_size=32, colour=True, support=0.5, support_colour=True)
    assert {"support_colour_accuracy", "support_colour_true_below_0.1", "no_support_colour_above_0.1"} <= set(metrics)
    model = InHandOffset.from_pretrained(tmp_path / "place")
    found = model.read(np.zeros((32, 32, 3), np.uint8))
    assert model.cfg.support_colours and model.support_classes == 7 and set(found.support_colours) == set(COLOURS)
    assert np.isclose(sum(found.support_colours.values()) + found.no_support, 1.0)
    assert np.isclose(sum(found.colours.values()), 1.0)  # the held block's colours are read where they were
    with pytest.raises(ValueError, match="support_colour"):
        train_in_hand(str(tmp_path / "bad"), samples=8, steps=1, colour=True, support_colour=True)


def spy_on_place(model) -> list:
    """The place xy each chunk of ``model`` steers to, rounded to the mm, appended as `act` runs."""
    steered, encode = [], model.encode_steering

    def spy(batch):
        out = encode(batch)
        steered.append([round(float(v), 3) for v in out[-1][0, 1]])
        return out

    model.encode_steering = spy
    return steered


def test_the_executor_steers_the_cup_by_the_held_blocks_offset(tmp_path):
    InHandOffset(TINY).save_pretrained(tmp_path / "in_hand")
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, place_lock_distance=0.1)
    executor = FlowExecutor(model, in_hand=str(tmp_path / "in_hand"), offset_over_support_only=False)
    executor.in_hand.read = lambda image: WristReading(np.array([0.01, -0.02], np.float32))  # 1 cm +x, 2 cm -y of the cup
    places = iter([0.5, 0.5, 0.42, 0.42])  # the place map's estimate (x) at each chunk: it drifts near the place
    model.waypoint_head.peak = lambda logits, *a: torch.tensor([[[0.0, 0.0], [next(places), 0.2]]])
    steered = spy_on_place(model)
    obs = observation()

    def at(x, gripper):
        return Observation(images=obs.images, state=np.array([x, 0.2, 0.1, gripper], np.float32))

    for state in (at(0.0, 0.0), at(0.0, 1.0), at(0.45, 1.0), at(0.45, 1.0)):
        executor.act(state, SUBTASK)
    # open: the place itself; held: the place minus the offset, near it the place locked from afar (not the drifted
    # estimate, and not shifted twice)
    assert steered == [[0.5, 0.2], [0.49, 0.22], [0.49, 0.22], [0.49, 0.22]]
    executor.reset()
    with pytest.raises(ValueError, match="wrist"):
        executor.act(Observation(images={"front": obs.images["front"]}, state=at(0.0, 1.0).state), SUBTASK)
    with pytest.raises(ValueError, match="waypoint_target"):
        FlowExecutor(tiny_model(), in_hand=str(tmp_path / "in_hand"))


def test_the_executor_snaps_the_place_onto_a_support_seen_near_it(tmp_path):
    InHandOffset(TINY).save_pretrained(tmp_path / "in_hand")
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, place_lock_distance=0.1)
    executor = FlowExecutor(model, in_hand=str(tmp_path / "in_hand"), support_snap=0.04)
    # from afar: no place to check the support by yet, and no support: the held block's offset is not steered by
    readings = iter([WristReading(np.array([0.01, 0.0]), np.array([0.0, 0.0]), 0.9),
                     WristReading(np.zeros(2), np.array([0.03, 0.0]), 0.9),  # 1 cm past the place found from afar
                     WristReading(np.zeros(2), np.array([0.12, 0.0]), 0.9),  # another block: 9 cm past it
                     WristReading(np.zeros(2), np.array([0.03, 0.0]), 0.2),  # not sure there is one
                     WristReading(np.zeros(2), np.array([0.01, 0.0]), 0.9)])  # 1 cm short of the place
    executor.in_hand.read = lambda image: next(readings)
    model.waypoint_head.peak = lambda logits, *a: torch.tensor([[[0.0, 0.0], [0.5, 0.2]]])
    steered = spy_on_place(model)
    obs = observation()
    for x in (0.3, 0.48, 0.48, 0.48, 0.48):  # held all along: the place remembered from 20 cm away, then readings
        executor.act(Observation(images=obs.images, state=np.array([x, 0.2, 0.1, 1.0], np.float32)), SUBTASK)
    # the support kept through readings of another block or of nothing sure, then averaged with the next sighting
    assert steered == [[0.5, 0.2], [0.51, 0.2], [0.51, 0.2], [0.51, 0.2], [0.5, 0.2]]
    executor.act(Observation(images=obs.images, state=np.array([0.48, 0.2, 0.1, 0.0], np.float32)), SUBTASK)
    assert steered[-1] == [0.5, 0.2] and executor._supports == []  # let go: the next placement starts afresh
    with pytest.raises(ValueError, match="support_snap"):
        FlowExecutor(model, in_hand=str(tmp_path / "in_hand"), support_snap=float("nan"))


def test_the_shipped_estimator_finds_the_offsets_in_views_it_never_saw():
    from hybrid.config import PROJECT_ROOT

    model = InHandOffset.from_pretrained(PROJECT_ROOT / "demos" / "tabletop" / "checkpoints" / "in_hand")
    views = wrist_views(60, seed=424242, image_size=model.cfg.image_size, camera=model.cfg.camera, support=1.0)
    readings = [model.read(image) for image in views.images]
    held = np.linalg.norm(np.stack([r.held for r in readings]) - views.held, axis=1)
    support = np.linalg.norm(np.stack([r.support for r in readings]) - views.support, axis=1)
    # on its 2000 held-out views: 0.39 cm median for the held block, 0.95 cm for the support; offsets are 2.2 cm in
    # the median, supports up to 5 cm from the cup
    assert np.median(held) < 0.007 and np.median(support) < 0.016, (np.median(held), np.median(support))
    assert np.mean([r.support_prob > 0.5 for r in readings]) > 0.7
