"""On-policy planner data (DAgger): the sim's labels, the planner's hook and the recording of an agent's rollouts."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pytest

from hybrid.testing.doubles import fake_observation
from hybrid.types import PlanStep, Subtask
from planners.subtask import VLMPlanner
from planners.subtask.on_policy import label
from planners.subtask.reply import reply_text

RED = "put the red block in the blue bowl"
RED2 = "put another red block in the blue bowl"
GREEN = "put the green block in the green bowl"
GATHER = ["put a red block in the blue bowl", "put the other red block in the blue bowl", GREEN]  # the env's words


def test_the_subtask_under_way_is_kept_until_the_physics_says_it_is_done():
    assert label(GATHER, [False] * 3, [], RED) == (PlanStep(subtask=RED), frozenset({RED}))
    # Its block is placed: the next one of the same kind is "another", counted from the history with it in.
    step, accepted = label(GATHER, [True, False, False], [], RED)
    assert step == PlanStep(subtask=RED2) and accepted == {RED2, GREEN}  # placements go in any order
    # The second red block placed while the planner still keeps the first one's subtask: only green is left.
    assert label(GATHER, [True, True, False], [], RED)[0] == PlanStep(subtask=GREEN)
    assert label(GATHER, [True, True, True], [RED, RED2], GREEN) == (PlanStep(done=True), frozenset())


def test_a_subtask_naming_nothing_left_is_replaced_and_a_fresh_start_takes_the_first_left():
    step, accepted = label(GATHER, [True, True, False], [RED, RED2], "put the orange block in the blue bowl")
    assert step == PlanStep(subtask=GREEN) and accepted == {GREEN}
    # No subtask under way: the first one left, named from the history (here one red block is filed as done).
    step, accepted = label(GATHER, [True, False, False], [RED], None)
    assert step == PlanStep(subtask=RED2) and accepted == {RED2, GREEN}
    # A history that filed a red block the physics does not show placed: still one red block to go, "another".
    assert label(GATHER, [False, True, False], [RED], RED2)[0] == PlanStep(subtask=RED2)


def test_stacking_goes_in_the_plans_order_and_mismatched_flags_are_an_error():
    tower = ["put the red block on the blue block", "put the green block on the red block"]
    step, accepted = label(tower, [False, False], [], None)
    assert step.subtask == tower[0] and accepted == {tower[0]}
    assert label(tower, [True, False], [], tower[0])[0] == PlanStep(subtask=tower[1])
    with pytest.raises(ValueError, match="2 subtasks in the plan, 1 success flags"):
        label(tower, [True], [], None)


def test_the_subtask_under_way_is_done_once_more_of_its_kind_are_placed_than_the_history_counts():
    from planners.subtask.on_policy import current_done

    assert not current_done(GATHER, [False] * 3, [], RED)
    assert current_done(GATHER, [True, False, False], [], RED)
    assert not current_done(GATHER, [True, False, False], [RED], RED2)  # the red block placed is the history's
    assert current_done(GATHER, [True, True, False], [RED], RED2)
    assert not current_done(GATHER, [True] * 3, [], "put the orange block in the blue bowl")  # not in the plan
    assert not current_done(GATHER, [True] * 3, [], None)


def test_a_release_view_planners_situations_keep_the_view_and_whether_the_subtask_is_done():
    from types import SimpleNamespace

    from hybrid.envs.tabletop.planner_rollouts import SituationRecorder
    from planners.subtask.on_policy import CURRENT_DONE, RELEASE_VIEW

    flags = [False] * 3
    env = SimpleNamespace(scene=SimpleNamespace(subtask_success=lambda: list(flags)), height=16, width=16)
    shown = [None]
    recorder = SituationRecorder(None, env, release_view=lambda: shown[0])
    recorder.on_episode_start("gather", {"subtasks": GATHER})
    obs = fake_observation(size=16)
    recorder.on_ask(obs, "gather", [], RED, 0)  # no release yet: a black view
    flags[0], shown[0] = True, np.full((16, 16, 3), 7, np.uint8)
    recorder.on_ask(obs, "gather", [], RED, 1)  # let go, the red block in its bowl
    first, second = recorder.frames
    assert not first[RELEASE_VIEW].any() and first[RELEASE_VIEW].shape == (16, 16, 3)
    assert (second[RELEASE_VIEW] == 7).all()
    assert first[CURRENT_DONE].tolist() == [0] and second[CURRENT_DONE].tolist() == [1]


class Replies:
    def __init__(self, text):
        self.text, self.calls = text, 0

    def complete(self, messages, image):
        self.calls += 1
        return reply_text(PlanStep(subtask=self.text))


def test_the_hook_sees_what_the_model_is_told_and_only_when_it_is_asked():
    backend = Replies(RED)
    planner = VLMPlanner(backend, {"gripper_index": -1}, replan={"keep_while_holding": True})
    asked = []
    planner.on_ask = lambda obs, instruction, done, current, releases: asked.append((done, current, releases))
    obs = fake_observation(size=16)

    def at(gripper):
        return obs.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32)})

    history = [Subtask(text=GREEN, index=0, status="done")]
    for gripper in (0.0, 1.0, 1.0, 0.0):  # asked, held twice (kept without asking), released: asked
        planner.plan(at(gripper), "gather", history)
    assert backend.calls == 2 and asked == [([GREEN], None, 0), ([GREEN], RED, 1)]


@pytest.mark.slow
def test_an_agents_rollout_is_written_with_the_sims_labels_and_read_back_as_examples(tmp_path):
    from hybrid.agent import AgentConfig, HybridAgent
    from hybrid.data import open_dataset
    from hybrid.envs.tabletop import TabletopEnv
    from hybrid.envs.tabletop.planner_rollouts import record_planner_rollouts
    from hybrid.runtime.sync import SyncLoopConfig
    from hybrid.testing.doubles import MockExecutor
    from planners.subtask.on_policy import COLUMNS, examples
    from planners.subtask.tabletop_language import canonical_subtask

    env = TabletopEnv(task="pick_place", cameras=("front",), image_size=32)
    _, info = env.reset(seed=3)
    first = canonical_subtask(info["subtasks"][0])
    backend = Replies(first)
    planner = VLMPlanner(backend, {"gripper_index": -1}, replan={"every_s": 0.1})  # asked every chunk
    agent = HybridAgent(planner, None, MockExecutor(np.zeros((8, 4))),
                        AgentConfig(planner_timeout_s=None, use_subgoals=False))
    try:
        summary = record_planner_rollouts(tmp_path / "onpol", env, agent, SyncLoopConfig(max_steps=16,
                                          execute_horizon=4), rollouts=1, seed=3, video=False, progress=False)
    finally:
        env.close()
    assert agent.planner.on_ask is None  # the hook is taken off again
    # 4 questions: the first fresh, then the subtask under way (nothing moved: keep it).
    assert summary["frames"] == backend.calls == 4 and summary["labels"] == {"keep": 3, "move on": 1}
    dataset = open_dataset(tmp_path / "onpol")
    assert dataset.meta.total_episodes == 1 and COLUMNS["target"] in dataset.features
    got = examples(dataset, offset=10)
    assert [ex.frame for ex in got] == [10, 11, 12, 13]
    assert got[0].current is None and got[0].target == PlanStep(subtask=first) and got[0].instruction == info["instruction"]
    assert all(ex.current == first and ex.accepted == {first} and ex.releases == 0 for ex in got[1:])
    assert json.loads(dataset.hf_dataset[0][COLUMNS["done"]]) == []


def test_planner_rollouts_refuse_expert_settings_and_planners_without_the_hook(tmp_path, capsys):
    from hybrid.agent import AgentConfig, HybridAgent
    from hybrid.commands import record
    from hybrid.envs.tabletop.planner_rollouts import record_planner_rollouts
    from hybrid.testing.doubles import MockExecutor, MockPlanner

    assert record.main([f"out={tmp_path / 'x'}", "planner_rollouts.enabled=true", "expert_miss=0.5"]) == 2
    assert "records the agent, not the expert" in capsys.readouterr().err
    agent = HybridAgent(MockPlanner(["a"]), None, MockExecutor(), AgentConfig(use_subgoals=False))
    with pytest.raises(TypeError, match="MockPlanner has no on_ask hook"):
        record_planner_rollouts(tmp_path / "y", None, agent, None, rollouts=1)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_expert_recording_is_no_on_policy_data(tmp_path):
    from hybrid.data import open_dataset
    from hybrid.testing.datasets import make_tiny_dataset
    from planners.subtask.on_policy import examples

    data = make_tiny_dataset(tmp_path / "expert", episodes=1, frames_per_subtask=2)
    with pytest.raises(ValueError, match="not a recording of a planner's own situations"):
        examples(open_dataset(data.root))


def test_a_success_asks_the_planner_once_more_whose_answer_is_done(monkeypatch):
    """The loop stops at the sim's success before the planner is asked again: that last question is asked on the
    last observation, so the data hold the one answer that ends an episode."""
    from types import SimpleNamespace

    from hybrid.envs.tabletop import planner_rollouts
    from hybrid.runtime.subscriber import EpisodeResult
    from hybrid.types import StepRecord

    written = []
    dataset = SimpleNamespace(add_frame=written.append, save_episode=lambda: written.append("saved"))
    success = [False]
    env = SimpleNamespace(scene=SimpleNamespace(subtask_success=lambda: list(success)))
    monkeypatch.setattr(planner_rollouts, "situation_frame", lambda obs, instruction, done, current, releases, target,
                        accepted: (done, current, releases, target))
    planner = VLMPlanner(Replies(GREEN), {"gripper_index": -1})
    recorder = planner_rollouts.SituationRecorder(dataset, env, planner.plan)
    planner.on_ask = recorder.on_ask
    holding, open_ = (fake_observation(size=16).model_copy(update={"state": np.array([0, 0, 0.1, g], np.float32)})
                      for g in (1.0, 0.0))

    def episode(succeeded: bool) -> None:
        success[0] = False
        recorder.on_episode_start("sort", {"subtasks": [GREEN]})
        planner.reset()
        planner.plan(holding, "sort", [])  # asked: the green block is under way
        success[0] = succeeded  # then let go in the bowl
        stack = [Subtask(text=GREEN, index=0, status="active")]
        recorder.on_step(StepRecord(step=1, wall_time=0.0, instruction="sort", subtasks=stack, observation=open_))
        recorder.on_episode_end(EpisodeResult(status="success" if succeeded else "terminated", success=succeeded,
                                              steps=1, instruction="sort", subtasks_completed=0, subtasks=[GREEN]))

    episode(True)
    assert written == [([], None, 0, PlanStep(subtask=GREEN)), ([], GREEN, 1, PlanStep(done=True)), "saved"]
    assert recorder.kinds == {"move on": 1, "done": 1}
    written.clear()
    episode(False)  # out of steps: nothing more is asked
    assert written == [([], None, 0, PlanStep(subtask=GREEN)), "saved"]

    class ThenBad(Replies):  # the first reply right, then none that parses
        def complete(self, messages, image):
            self.calls += 1
            return reply_text(PlanStep(subtask=self.text)) if self.calls == 1 else "{not json"

    # the planner faulting on the last question (every attempt a bad reply) loses nothing: the question is written
    # with the sim's answer, as the others, and the episode is saved
    written.clear()
    planner.backend = ThenBad(GREEN)
    episode(True)
    assert written == [([], None, 0, PlanStep(subtask=GREEN)), ([], GREEN, 1, PlanStep(done=True)), "saved"]
    assert planner.backend.calls == 1 + 3
