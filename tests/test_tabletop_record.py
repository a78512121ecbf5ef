"""`hybrid record` writes a LeRobot v3 dataset that LeRobot reads back, instruction and subtask per frame."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hybrid.commands.record import main as record_main


def test_record_two_episodes_and_read_back(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = tmp_path / "ds"
    argv = [
        "env=tabletop",
        "task=gather",
        "episodes=2",
        f"out={out}",
        "seed=3",
        "env.image_size=32",
        "progress=false",
    ]
    assert record_main(argv) == 0

    ds = LeRobotDataset("hybrid/tabletop", root=out, video_backend="pyav")
    assert ds.num_episodes == 2 and ds.fps == 10
    features = ds.meta.features
    for key, dtype in [
        ("observation.images.front", "video"),
        ("observation.images.wrist", "video"),
        ("observation.state", "float32"),
        ("action", "float32"),
        ("subtask", "string"),
        ("subtask_index", "int64"),
    ]:
        assert features[key]["dtype"] == dtype, key
    assert tuple(features["observation.images.front"]["shape"]) == (32, 32, 3)

    frames = ds.hf_dataset.with_format(None)  # the tabular columns, without decoding videos
    for ep in range(2):
        rows = [r for r in frames if r["episode_index"] == ep]
        index = [int(np.ravel(r["subtask_index"])[0]) for r in rows]
        assert index == sorted(index) and index[0] == 0
        plan = [
            next(r["subtask"] for r in rows if int(np.ravel(r["subtask_index"])[0]) == k)
            for k in sorted(set(index))
        ]
        assert 2 <= len(plan) <= 3 and len(set(plan)) == len(plan)
        # Each subtask's text is constant over its frames.
        assert all(r["subtask"] == plan[int(np.ravel(r["subtask_index"])[0])] for r in rows)

    item = ds[5]
    assert item["observation.images.front"].shape == (3, 32, 32)
    assert item["observation.images.wrist"].shape == (3, 32, 32)
    assert item["observation.state"].shape == (4,) and item["action"].shape == (4,)
    assert "bowl" in item["task"] and isinstance(item["subtask"], str) and "bowl" in item["subtask"]
    # The images are real renders, not blanks.
    assert float(item["observation.images.front"].std()) > 0.02


def test_a_slow_video_encoder_loses_no_frame(tmp_path, monkeypatch):
    """LeRobot's streaming encoder drops frames it cannot queue; on a loaded machine the videos came out shorter
    than their episodes. Encoding here at 10 frames/s, far behind the sim, every frame is still written."""
    import time
    from types import SimpleNamespace

    import av
    from lerobot.datasets import video_utils
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from PIL import Image

    slow = SimpleNamespace(fromarray=lambda frame: time.sleep(0.1) or Image.fromarray(frame))
    monkeypatch.setattr(video_utils, "Image", slow)  # what the encoder thread turns each frame into a picture with
    out = tmp_path / "ds"
    assert record_main(["env=tabletop", "task=pick_place", "episodes=1", f"out={out}", "seed=3",
                        "env.image_size=32", "progress=false"]) == 0
    ds = LeRobotDataset("hybrid/tabletop", root=out, video_backend="pyav")
    for key in ("observation.images.front", "observation.images.wrist"):
        with av.open(str(out / ds.meta.get_video_file_path(0, key))) as video:
            assert sum(1 for _ in video.decode(video=0)) == ds.num_frames > 30, key


def test_one_family_of_a_mixed_recording_as_png_frames(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hybrid.envs.tabletop.env import TabletopEnv
    from hybrid.envs.tabletop.tasks import family_of

    out = tmp_path / "ds"
    argv = ["env=tabletop", "task=all", "families=[pick_place]", "video=false", "episodes=2", f"out={out}",
            "seed=0", "env.image_size=32", "progress=false"]
    assert record_main(argv) == 0
    ds = LeRobotDataset("hybrid/tabletop", root=out)
    assert ds.meta.features["observation.images.front"]["dtype"] == "image"
    tasks = [ds.meta.episodes[ep]["tasks"][0] for ep in range(ds.num_episodes)]
    assert ds.num_episodes == 2 and {family_of(t) for t in tasks} == {"pick_place"}
    # The same episodes a task=all recording holds at those seeds: the first two pick_place seeds.
    env = TabletopEnv(task="all", image_size=32)
    expected = [info["instruction"] for info in (env.reset(seed=s)[1] for s in range(60))
                if info["family"] == "pick_place"][:2]
    env.close()
    assert tasks == expected
    assert ds[0]["observation.images.front"].shape == (3, 32, 32)
    # A family the env never makes is refused before anything is written.
    with pytest.raises(ValueError, match="use task=all"):
        record_main(["env=tabletop", "task=gather", "families=[pick_place]", "episodes=1", f"out={tmp_path / 'x'}"])
    assert not (tmp_path / "x").exists()


def test_family_of_reads_the_family_back_from_an_instruction():
    from hybrid.envs.tabletop.tasks import FAMILIES, family_of, sample_task

    rng = np.random.default_rng(0)
    for family in FAMILIES:
        for split in ("train", "heldout"):
            assert family_of(sample_task(family, rng, split).instruction) == family
    assert family_of("dance") is None


def test_a_negative_grasp_spread_is_refused_before_any_dataset_is_created(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(ValueError, match="grasp_spread: expected a distance"):
        record_main(["env=tabletop", "task=stack", "episodes=1", f"out={out}", "env.image_size=32",
                     "expert_grasp_spread=-0.01", "progress=false"])
    assert not out.exists()  # a rerun with a good value can use the same directory
