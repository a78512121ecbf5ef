"""The tabletop env's contract: spaces, info keys, seeding, action validation, registration, subgoals."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym
import numpy as np
import pytest

from hybrid.envs.tabletop import TabletopEnv

INFO_KEYS = {"instruction", "subtasks", "subtask_index", "subtask_success", "success", "family"}


@pytest.fixture
def env():
    env = TabletopEnv(task="gather")
    yield env
    env.close()


def state_of(env: TabletopEnv) -> tuple:
    d = env.scene.data
    return d.qpos.copy(), d.qvel.copy(), d.ctrl.copy(), d.time, env._target.copy(), env._steps


def test_observation_matches_space_and_info_keys(env):
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert set(obs["pixels"]) == {"front", "wrist"}
    assert obs["pixels"]["front"].shape == (96, 96, 3) and obs["pixels"]["front"].dtype == np.uint8
    assert obs["agent_pos"].dtype == np.float32 and obs["agent_pos"].shape == (4,)
    assert INFO_KEYS <= set(info)
    assert info["family"] == "gather" and 2 <= len(info["subtasks"]) <= 3
    assert info["subtask_index"] == 0 and info["subtask_success"] == [False] * len(info["subtasks"])
    assert info["success"] is False
    obs, reward, terminated, truncated, info = env.step(env.hold_action())
    assert env.observation_space.contains(obs) and INFO_KEYS <= set(info)
    assert (terminated, truncated, reward) == (False, False, 0.0)


def test_action_space_has_the_true_limits(env):
    assert env.action_space.shape == (4,)
    np.testing.assert_allclose(env.action_space.low, [-0.05, -0.05, -0.05, 0.0])
    np.testing.assert_allclose(env.action_space.high, [0.05, 0.05, 0.05, 1.0])


def test_same_seed_same_episode_different_seed_different_episode():
    a, b = TabletopEnv(), TabletopEnv()
    try:
        obs_a, info_a = a.reset(seed=11)
        obs_b, info_b = b.reset(seed=11)
        assert info_a == info_b
        ex_a, ex_b = a.expert(), b.expert()
        for _ in range(15):
            obs_a, *_ = a.step(ex_a.act(obs_a))
            obs_b, *_ = b.step(ex_b.act(obs_b))
        np.testing.assert_array_equal(obs_a["agent_pos"], obs_b["agent_pos"])
        np.testing.assert_array_equal(obs_a["pixels"]["front"], obs_b["pixels"]["front"])
        np.testing.assert_array_equal(obs_a["pixels"]["wrist"], obs_b["pixels"]["wrist"])
        np.testing.assert_array_equal(a.scene.data.qpos, b.scene.data.qpos)
        other, _ = b.reset(seed=12)
        assert not np.array_equal(other["pixels"]["front"], a.reset(seed=11)[0]["pixels"]["front"])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "action, message",
    [
        ([0.0, np.nan, 0.0, 1.0], r"action\[1\] \(dy\).*finite"),
        ([0.0, 0.0, 0.3, 0.0], r"action\[2\] \(dz\) = 0\.3 is outside \[-0\.05, 0\.05\]"),
        ([0.0, 0.0, 0.0, 1.5], r"action\[3\] \(gripper\) = 1\.5 is outside \[0, 1\]"),
        ([0.0, 0.0, 0.0], r"expected shape \(4,\).*got shape \(3,\)"),
        (np.zeros((2, 4)), r"expected shape \(4,\).*got shape \(2, 4\)"),
        ("forward", r"action: expected 4 numbers"),
        ([0.0, 0.0, np.inf, 0.0], r"action\[2\] \(dz\).*finite"),
    ],
)
def test_bad_action_is_rejected_and_episode_left_intact(env, action, message):
    obs, _ = env.reset(seed=5)
    before = state_of(env)
    with pytest.raises(ValueError, match=message):
        env.step(action)
    after = state_of(env)
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)
    # Still usable: a valid step moves the episode on.
    obs, _, _, _, _info = env.step([0.01, 0.0, 0.0, 0.0])
    assert env._steps == 1 and obs["agent_pos"][0] > before[0][0]


def test_hold_action_keeps_the_robot_still(env):
    obs, _ = env.reset(seed=2)
    for _ in range(3):
        obs, *_ = env.step([0.03, -0.02, 0.01, 1.0])
    hold = env.hold_action()
    np.testing.assert_array_equal(hold, [0, 0, 0, 1])
    for _ in range(2):  # let the servo finish the last commanded move
        obs, *_ = env.step(hold)
    start = obs["agent_pos"].copy()
    for _ in range(5):
        obs, *_ = env.step(env.hold_action())
    assert np.abs(obs["agent_pos"] - start).max() < 1e-3


def test_gym_make_finds_the_env_both_ways():
    import hybrid.envs  # noqa: F401  (registers)

    for env_id in ("hybrid/Tabletop-v0", "hybrid.envs:hybrid/Tabletop-v0"):
        env = gym.make(env_id, task="stack", image_size=32, cameras=("front",))
        try:
            obs, info = env.reset(seed=0)
            assert isinstance(env.unwrapped, TabletopEnv)
            assert obs["pixels"]["front"].shape == (32, 32, 3) and list(obs["pixels"]) == ["front"]
            assert info["family"] == "stack"
            env.step(env.unwrapped.hold_action())
        finally:
            env.close()


def test_render_subgoal_shows_the_goal_without_touching_the_episode(env):
    obs, info = env.reset(seed=4)
    before = state_of(env)
    goals = [env.render_subgoal(i) for i in range(len(info["subtasks"]))]
    for x, y in zip(before, state_of(env), strict=True):
        np.testing.assert_array_equal(x, y)
    for images in goals:
        assert set(images) == {"front", "wrist"} and images["front"].shape == (96, 96, 3)
    # Each further subtask moves one more block: consecutive subgoals differ from each other and from now.
    assert not np.array_equal(goals[0]["front"], obs["pixels"]["front"])
    assert not np.array_equal(goals[0]["front"], goals[-1]["front"])
    with pytest.raises(ValueError, match="subtask_index"):
        env.render_subgoal(len(info["subtasks"]))


def test_rgb_array_render_is_the_front_camera():
    env = TabletopEnv(render_mode="rgb_array", image_size=48)
    try:
        obs, _ = env.reset(seed=0)
        np.testing.assert_array_equal(env.render(), obs["pixels"]["front"])
    finally:
        env.close()


def test_constructor_rejects_unknown_options():
    with pytest.raises(ValueError, match="task"):
        TabletopEnv(task="juggle")
    with pytest.raises(ValueError, match="split"):
        TabletopEnv(split="test")
    with pytest.raises(ValueError, match="cameras"):
        TabletopEnv(cameras=("top",))


def test_front_camera_calibration_projects_each_block_onto_its_pixels(env):
    from hybrid.envs.tabletop.scene import BLOCK_HALF, table_homography
    from hybrid.envs.tabletop.tasks import PALETTE

    obs, _ = env.reset(seed=3)
    image = obs["pixels"]["front"].astype(float) / 255
    h = table_homography("front", height=2 * BLOCK_HALF)  # the block's top face, which the camera sees
    scene, hits = env.scene, []
    for i in range(scene.n_blocks()):
        x, y, _ = scene.block_pos(i)
        u, v, s = h @ np.array([x, y, 1.0])
        col, row = int((u / s + 1) / 2 * image.shape[1]), int((v / s + 1) / 2 * image.shape[0])
        colour = np.asarray(PALETTE[scene.spec.block_colours[i]])
        hits.append(np.abs(image[row, col] - colour).max() < 0.3)  # lit and shaded, but that block's colour
    assert np.mean(hits) >= 0.75, hits
    with pytest.raises(ValueError, match="moves"):
        table_homography("wrist")


def test_sort_plans_take_the_blocks_from_the_front_images_left_to_its_right():
    from hybrid.envs.tabletop.scene import table_homography

    env = TabletopEnv(task="sort")
    h = table_homography("front")
    try:
        for seed in range(8):
            env.reset(seed=seed)
            scene = env.scene
            columns = []
            for goal in scene.spec.goals:  # in plan order
                x, y, _ = scene.block_pos(goal.block)
                u, _, s = h @ np.array([x, y, 1.0])
                columns.append(u / s)
            assert columns == sorted(columns), (seed, columns)
    finally:
        env.close()
