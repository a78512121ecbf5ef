"""Recovery data (DAgger-style): the executor acts, the scripted expert takes a subtask over from wherever it is."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pytest

from hybrid.envs.tabletop import TabletopEnv
from hybrid.envs.tabletop.expert import PHASES
from hybrid.envs.tabletop.scene import SUCTION_ON
from hybrid.envs.tabletop.takeover import TakeoverConfig, run_takeover_episode
from hybrid.testing.doubles import MockExecutor
from hybrid.types import ActionChunk


@pytest.fixture
def env():
    env = TabletopEnv(task="gather", cameras=("front",), image_size=32)
    yield env
    env.close()


def carry_to_the_lift(env, expert, subtask: int, obs):
    """Run the expert until it holds the block of ``subtask`` lifted (its phase after the grip)."""
    while PHASES[expert._phase] != "lift" or expert.subtask_index != subtask:
        obs, *_ = env.step(expert.act(obs))
    return obs


def finish(env, expert, obs, subtask: int, limit: int = 300):
    actions = []
    for _ in range(limit):
        action = expert.act(obs)
        if expert.subtask_index != subtask or expert.done:
            return actions
        actions.append(action)
        obs, *_ = env.step(action)
    raise AssertionError("the expert did not finish the subtask")


def test_taking_over_with_the_subtask_block_in_the_cup_carries_it_on(env):
    obs, _ = env.reset(seed=5)
    carry_to_the_lift(env, env.expert(), 0, obs)
    fresh = env.expert()  # knows nothing of what happened: the physics says where it is
    fresh.take_over(0)
    assert PHASES[fresh._phase] == "lift"
    actions = finish(env, fresh, env._observation(), 0)
    assert actions[0][3] >= SUCTION_ON  # it keeps holding on
    assert env.scene.subtask_success()[0]


def test_taking_over_with_another_block_in_the_cup_lets_go_of_it_first():
    env = TabletopEnv(task="sort", cameras=("front",), image_size=32)
    try:
        obs, _ = env.reset(seed=5)
        carry_to_the_lift(env, env.expert(), 0, obs)  # holding subtask 0's block ...
        spec = env.scene.spec
        # (`gather` and `sort` count blocks of a colour: another colour's subtask is another block's)
        other = next(i for i, goal in enumerate(spec.goals) if goal.colour != spec.goals[0].colour)
        fresh = env.expert()
        fresh.take_over(other)  # ... while the subtask is another block's
        assert PHASES[fresh._phase] == "release"
        actions = finish(env, fresh, env._observation(), other)
        assert actions[0][3] < SUCTION_ON
        assert env.scene.subtask_success()[other]
    finally:
        env.close()


def test_a_block_of_the_bowl_subtasks_colour_in_the_cup_serves_it_whichever_the_plan_named(env):
    obs, _ = env.reset(seed=5)
    spec = env.scene.spec
    assert spec.goals[1].colour == spec.goals[0].colour and spec.goals[1].block != spec.goals[0].block
    expert = env.expert()
    expert.take_over(1)
    carry_to_the_lift(env, expert, 1, obs)  # the block the plan names second ...
    fresh = env.expert()
    fresh.take_over(0)  # ... serves the first subtask as well: carried on, not dropped
    assert PHASES[fresh._phase] == "lift" and fresh.goal.block == spec.goals[1].block
    finish(env, fresh, env._observation(), 0)
    assert env.scene.subtask_success()[0]


def test_take_over_rejects_a_subtask_outside_the_plan(env):
    env.reset(seed=5)
    with pytest.raises(ValueError, match="subtask_index"):
        env.expert().take_over(7)


def test_a_still_executor_has_every_subtask_taken_over_and_only_the_expert_frames_are_kept(env):
    executor = MockExecutor(horizon=4)  # zero motion, suction off: never finishes anything itself
    takeovers, info = run_takeover_episode(env, 11, executor, np.random.default_rng(0),
                                           TakeoverConfig(after_steps=(3, 10)))
    assert info["success"] and {t.reason for t in takeovers} == {"draw"}
    segments = [t.frames for t in takeovers]
    n = len(info["subtasks"])
    assert [int(s[0]["subtask_index"][0]) for s in segments] == list(range(n))
    for k, frames in enumerate(segments):
        assert {int(f["subtask_index"][0]) for f in frames} == {k}
        assert {f["subtask"] for f in frames} == {info["subtasks"][k]}
        assert all(f["task"] == info["instruction"] for f in frames)
        assert frames[0]["observation.state"][3] < SUCTION_ON
    assert executor.calls * 4 >= 3 * n  # the executor stood still first (3..9 steps a subtask), not in the frames


class _MissingExpert:
    """An "executor" that is the expert aiming every first placement beside its goal, one action per chunk."""

    def __init__(self, env):
        self.env, self.expert = env, None

    def reset(self):
        self.expert = None

    def act(self, obs, subtask, subgoal):
        if self.expert is None:
            self.expert = self.env.expert(miss=1.0)
        action = self.expert.act({"agent_pos": obs.state})
        return ActionChunk(actions=action[None], dt=0.1)


def test_a_missed_placement_hands_over_right_where_the_block_was_let_go(env):
    # The draw never comes (after_steps beyond the budget): only the miss hands over.
    takeovers, info = run_takeover_episode(env, 11, _MissingExpert(env), np.random.default_rng(0),
                                           TakeoverConfig(after_steps=(1000, 1001)))
    assert takeovers and info["success"] and {t.reason for t in takeovers} == {"missed"}
    segments = [t.frames for t in takeovers]
    first = segments[0][0]
    assert int(first["subtask_index"][0]) == 0 and first["observation.state"][3] < SUCTION_ON
    # the first action re-grasps nothing at once: the expert rises from beside the goal to pick the block again
    assert all(f["action"][3] < SUCTION_ON for f in segments[0][:3])


class _OtherBlockExpert(_MissingExpert):
    """An "executor" that is the expert working on another colour's subtask than the one it is given."""

    def act(self, obs, subtask, subgoal):
        if self.expert is None:
            spec = self.env.scene.spec
            self.expert = self.env.expert()
            self.expert.take_over(next(i for i, g in enumerate(spec.goals) if g.colour != spec.goals[0].colour))
        return ActionChunk(actions=self.expert.act({"agent_pos": obs.state})[None], dt=0.1)


def test_a_grasp_of_the_wrong_block_hands_over_and_the_expert_lets_go_of_it():
    env = TabletopEnv(task="sort", cameras=("front",), image_size=32)
    try:
        takeovers, _ = run_takeover_episode(env, 5, _OtherBlockExpert(env), np.random.default_rng(0),
                                               TakeoverConfig(after_steps=(1000, 1001)))
    finally:
        env.close()
    first = takeovers[0]
    assert first.reason == "wrong_block" and int(first.frames[0]["subtask_index"][0]) == 0
    assert first.frames[0]["observation.state"][3] >= SUCTION_ON and first.frames[0]["action"][3] < SUCTION_ON


def test_takeover_config_rejects_an_empty_draw():
    with pytest.raises(ValueError, match="after_steps"):
        TakeoverConfig(after_steps=(5, 5))
    with pytest.raises(ValueError, match="must be >= 1"):
        TakeoverConfig(max_steps=0)


def test_record_takeovers_writes_each_as_an_episode_and_the_executor_trains_on_it_beside_a_recording(tmp_path,
                                                                                                     capsys):
    from hybrid.cli import main as hybrid
    from hybrid.commands.record import main as record_main
    from hybrid.data import open_dataset

    takeovers, plain = tmp_path / "takeovers", tmp_path / "plain"
    common = ["env=tabletop", "task=pick_place", "env.image_size=32", "progress=false"]
    assert record_main([*common, "episodes=1", "seed=3", f"out={plain}"]) == 0
    # the shipped executor rolls out; the expert takes over after 0..5 of its steps
    assert record_main([*common, "episodes=2", "seed=5", f"out={takeovers}", "takeover.enabled=true",
                        "takeover.after_steps=[0,5]"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rollouts"] == 2 and sum(summary["takeovers"].values()) == summary["episodes"] >= 1
    ds = open_dataset(takeovers)
    assert ds.num_episodes == summary["episodes"] and ds.meta.total_frames == summary["frames"]

    out = tmp_path / "run"
    tiny = ["model.chunk=4", "model.image_size=16", "model.vision_width=16", "model.vision_depth=1",
            "model.text_width=16", "model.text_depth=1", "model.width=32", "model.depth=1", "model.heads=2",
            "batch_size=4", "warmup=1", "steps=2"]
    assert hybrid(["train", "executor=tabletop", f"data=[{plain},{takeovers}]", f"out={out}", *tiny]) == 0
    stats = open_dataset(plain).meta.stats  # the first recording's statistics
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["chunk"] == 4
    from executors.flow import FlowExecutor

    mean = FlowExecutor.from_pretrained(out / "model").model.normalizer.state_mean.numpy()
    np.testing.assert_allclose(mean, np.asarray(stats["observation.state"]["mean"]).reshape(-1), rtol=1e-6)


def test_takeover_with_a_deliberately_missing_expert_is_refused_before_anything_is_written(tmp_path):
    from hybrid.envs.tabletop.record import record

    env = TabletopEnv(task="pick_place", cameras=("front",), image_size=32)
    try:
        with pytest.raises(ValueError, match="takeover"):
            record(tmp_path / "ds", env, episodes=1, expert_miss=0.5, takeover=(MockExecutor(), TakeoverConfig()))
    finally:
        env.close()
    assert not (tmp_path / "ds").exists()
