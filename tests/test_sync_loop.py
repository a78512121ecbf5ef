import numpy as np
import pytest
from runtime_support import RecordingPointEnv, rrd_entities

from hybrid import HybridAgent
from hybrid.agent import AgentConfig
from hybrid.runtime.env_adapter import EnvAdapter
from hybrid.runtime.sync import SyncLoopConfig, run_episode
from hybrid.testing import MockExecutor, MockPlanner, MockWorldModel, PointEnv
from hybrid.viz import RerunView, RerunViewConfig

PLAN_ENTITIES = {"/instruction", "/plan/subtasks", "/obs/front", "/plan/subgoal/front", "/executor/chunk",
                 "/executor/action", "/latency/planner", "/latency/world_model", "/latency/executor"}
RIGHT = np.tile(np.array([[0.05, 0.0]], np.float32), (4, 1))


def agent(planner=None, world_model=None, executor=None, **cfg):
    return HybridAgent(planner or MockPlanner(["go right", "go up"], calls_per_subtask=3),
                       world_model or MockWorldModel(), executor or MockExecutor(actions=RIGHT), AgentConfig(**cfg))


def saved_view(tmp_path):
    return RerunView(RerunViewConfig(mode="save", path=str(tmp_path / "run.rrd"), position_dims=None))


def run(a, env=None, view=None, **loop):
    env = env or RecordingPointEnv()
    subs = [view] if view else []
    result = run_episode(a, EnvAdapter(env), SyncLoopConfig(**loop), subs, seed=0)
    if view:
        view.close()
    a.close()
    return result, env


def test_loop_plans_imagines_acts_and_replans(tmp_path):
    view = saved_view(tmp_path)
    result, env = run(agent(), view=view, max_steps=100)
    assert result.status == "done" and result.subtasks == ["go right", "go up"]
    assert result.subtasks_completed == 2
    assert len(env.sent) == result.steps == 3 * 2 * 4  # 3 chunks per subtask, 4 actions each
    assert set(result.latency_ms) == {"planner", "world_model", "executor"}
    assert PLAN_ENTITIES <= rrd_entities(tmp_path / "run.rrd")


def test_step_budget_ends_episode():
    result, env = run(agent(planner=MockPlanner(["go right"], calls_per_subtask=1000)), max_steps=10)
    assert result.status == "budget" and result.steps == 10 == len(env.sent)


def test_execute_horizon_replans_mid_chunk():
    planner = MockPlanner(["go right"], calls_per_subtask=1000)
    result, env = run(agent(planner=planner), max_steps=8, execute_horizon=2)
    assert planner.calls == 4 and len(env.sent) == 8


def test_new_subtask_gets_a_new_subgoal():
    wm = MockWorldModel()
    run(agent(world_model=wm), max_steps=100)
    assert wm.calls == 2  # once per subtask, not once per chunk


def test_language_only_mode_never_calls_world_model():
    wm = MockWorldModel()
    result, _ = run(agent(world_model=wm, use_subgoals=False), max_steps=100)
    assert wm.calls == 0 and result.status == "done"


@pytest.mark.parametrize("failure", ["raise", "bad_output"])
def test_world_model_fault_falls_back_to_language_only(failure):
    seen = []

    class SpyExecutor(MockExecutor):
        def act(self, obs, subtask, subgoal):
            seen.append(subgoal)
            return super().act(obs, subtask, subgoal)

    result, env = run(agent(world_model=MockWorldModel(fail_on="always", failure=failure),
                            executor=SpyExecutor(actions=RIGHT)), max_steps=100)
    assert result.status == "done" and len(env.sent) > 0
    assert all(s is None for s in seen)
    assert {f.tier for f in result.faults} == {"world_model"}
    assert result.faults[0].kind == ("raised" if failure == "raise" else "bad_output")


def test_world_model_fault_keeps_last_subgoal_for_same_subtask():
    wm = MockWorldModel(fail_on=[1])  # the second subtask's subgoal fails
    seen = []

    class SpyExecutor(MockExecutor):
        def act(self, obs, subtask, subgoal):
            seen.append((subtask.text, None if subgoal is None else subgoal.subtask))
            return super().act(obs, subtask, subgoal)

    run(agent(world_model=wm, executor=SpyExecutor(actions=RIGHT)), max_steps=100)
    # A subgoal made for "go right" is never used for "go up".
    assert all(sg in (None, st) for st, sg in seen)
    assert ("go up", None) in seen


def test_planner_fault_keeps_current_subtask():
    planner = MockPlanner(["go right", "go up"], calls_per_subtask=2, fail_on=[2, 3])
    result, env = run(agent(planner=planner), max_steps=100)
    assert [f.tier for f in result.faults] == ["planner", "planner"]
    assert result.status == "done" and len(env.sent) > 0


@pytest.mark.parametrize("failure", ["raise", "bad_output"])
def test_executor_fault_holds_and_sends_nothing(tmp_path, failure):
    view = saved_view(tmp_path)
    result, env = run(agent(executor=MockExecutor(actions=RIGHT, fail_on="always", failure=failure)), view=view,
                      max_steps=50, max_consecutive_faults=3)
    assert result.status == "fault" and env.sent == []
    assert len(result.faults) == 3 and all(f.tier == "executor" for f in result.faults)
    assert {"/faults", "/plan/subtasks", "/obs/front"} <= rrd_entities(tmp_path / "run.rrd")


def test_hanging_tier_times_out_without_blocking_the_loop():
    ex = MockExecutor(actions=RIGHT, fail_on="always", failure="hang")
    try:
        result, env = run(agent(executor=ex, executor_timeout_s=0.05), max_steps=50, max_consecutive_faults=3)
    finally:
        ex.release()
    assert result.status == "fault" and env.sent == []
    kinds = [f.kind for f in result.faults]
    assert kinds[0] == "timeout" and ex.calls == 1  # later calls are refused while the first one hangs


def test_wrong_action_dim_is_a_fault():
    result, env = run(agent(executor=MockExecutor(horizon=4, action_dim=3)), max_steps=20)
    assert result.status == "fault" and env.sent == []
    assert "expected [H, 2]" in result.faults[0].message


@pytest.mark.parametrize("bad,msg", [("nan", "state: expected finite values"),
                                     ("chw", "images['front']: expected uint8 HxWx3, got float32 (3, 32, 32)")])
def test_bad_observation_stops_cleanly_with_readable_recording(tmp_path, bad, msg):
    view = saved_view(tmp_path)
    result, env = run(agent(), env=RecordingPointEnv(bad_obs_at=2, bad=bad), view=view, max_steps=100)
    assert result.status == "fault" and len(env.sent) == 2  # nothing sent after the bad observation
    assert msg in result.faults[-1].message and result.faults[-1].tier == "observation"
    assert {"/faults", "/obs/front", "/episode/summary"} <= rrd_entities(tmp_path / "run.rrd")


def test_unsafe_actions_never_reach_the_env():
    big = np.full((4, 2), 5.0, np.float32)
    result, env = run(agent(executor=MockExecutor(actions=big)), max_steps=8)
    assert env.sent and np.abs(np.stack(env.sent)).max() <= 0.1 + 1e-6  # clamped to the action space


def test_keyboard_interrupt_ends_episode_and_keeps_recording(tmp_path):
    class Interrupting(MockExecutor):
        def act(self, obs, subtask, subgoal):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().act(obs, subtask, subgoal)

    view = saved_view(tmp_path)
    result, env = run(agent(executor=Interrupting(actions=RIGHT), executor_timeout_s=None), view=view, max_steps=100)
    assert result.status == "interrupted" and len(env.sent) == 8
    assert {"/episode/summary", "/obs/front"} <= rrd_entities(tmp_path / "run.rrd")


def test_agent_rejects_objects_that_do_not_meet_the_interface():
    with pytest.raises(TypeError, match="world_model: object does not meet WorldModel; missing imagine"):
        HybridAgent(MockPlanner(["a"]), object(), MockExecutor())


def test_env_success_ends_episode():
    class Solved(PointEnv):
        def _info(self):
            return {**super()._info(), "success": self.steps >= 3}

    result, _ = run(agent(planner=MockPlanner(["go"], calls_per_subtask=100)), env=Solved(), max_steps=50)
    assert result.status == "success" and result.success and result.steps == 3


class SolvedFrom(RecordingPointEnv):
    """Solved (and terminated, as envs end a solved episode) from step ``start`` on, until step ``until``."""

    def __init__(self, start: int = 3, until: int = 10**6):
        super().__init__()
        self.start, self.until = start, until

    def _info(self):
        return {**super()._info(), "success": self.start <= self.steps < self.until}


def test_after_done_the_robot_holds_still_while_the_scene_settles_before_it_is_judged():
    # "done" after one chunk of 4 steps; the block let go of comes to rest (success, the env's episode ends) at step 6
    result, env = run(agent(planner=MockPlanner(["go"], calls_per_subtask=1)), env=SolvedFrom(start=6), max_steps=50,
                      settle_steps=5)
    assert result.status == "done" and result.success and (result.done_step, result.steps) == (4, 6)
    assert [a.tolist() for a in env.sent[4:]] == [[0.0, 0.0]] * 2  # the env's hold action
    result, _ = run(agent(planner=MockPlanner(["go"], calls_per_subtask=1)), env=SolvedFrom(start=6), max_steps=50)
    assert result.status == "done" and not result.success and result.steps == 4  # judged at once


def test_after_success_the_episode_goes_on_until_the_agent_says_done():
    # the mock says "done" after 3 calls of one 4-action chunk each: 12 steps, well past step 3
    result, env = run(agent(planner=MockPlanner(["go"], calls_per_subtask=3)), env=SolvedFrom(), max_steps=50,
                      after_success_steps=40)
    assert result.status == "done" and result.success and result.success_step == 3
    assert result.steps == len(env.sent) == 12


def test_after_success_an_agent_that_never_says_done_runs_out_its_window():
    result, env = run(agent(planner=MockPlanner(["go"], calls_per_subtask=1000)), env=SolvedFrom(), max_steps=50,
                      after_success_steps=5)
    assert len(env.sent) == 8
    assert result.status == "budget" and result.success and (result.success_step, result.steps) == (3, 8)


def test_after_success_a_scene_the_agent_unsolved_is_no_success():
    result, _ = run(agent(planner=MockPlanner(["go"], calls_per_subtask=3)), env=SolvedFrom(until=6), max_steps=50,
                    after_success_steps=40)
    assert result.status == "done" and not result.success and result.success_step == 3


def test_eval_summary_of_stopping():
    from hybrid.eval.closed_loop import stopping
    from hybrid.runtime.subscriber import EpisodeResult

    base = {"steps": 30, "instruction": "i", "subtasks_completed": 1, "subtasks": ["a"]}
    results = [EpisodeResult(status="done", success=True, success_step=20, done_step=30, **base),  # 10 steps after
               EpisodeResult(status="budget", success=True, success_step=25, **base),  # never said done
               EpisodeResult(status="budget", success=False, success_step=12, **base),  # moved a placed block
               EpisodeResult(status="done", success=False, **base)]  # "done" too early
    assert stopping(results) == {"solved": 0.75, "stopped": 0.25, "stop_steps_p50": 10.0, "undone": 1}


def test_non_finite_action_that_bypassed_validation_never_reaches_the_env():
    from hybrid.types import ActionChunk

    class Buggy(MockExecutor):  # builds its chunk without validation, as a careless module might
        def act(self, obs, subtask, subgoal):
            return ActionChunk.model_construct(actions=np.full((4, 2), np.nan, np.float32), dt=0.1,
                                               start_time=obs.timestamp, subtask=subtask.text,
                                               subgoal_created_at=None)

    planner = MockPlanner(["go right"], calls_per_subtask=1000)  # never done: only the fault streak ends it
    result, env = run(agent(planner=planner, executor=Buggy()), max_steps=20, max_consecutive_faults=3)
    assert result.status == "fault" and env.sent == [] and len(result.faults) == 3
    assert "action: non-finite values" in result.faults[0].message


def test_the_summary_counts_subtasks_the_env_judges_done_not_those_the_planner_believes():
    from hybrid.runtime.subscriber import EpisodeResult
    from hybrid.runtime.summary import ConsoleSummary

    lines = []
    summary = ConsoleSummary(lines.append)
    believed = dict(status="done", success=False, steps=9, instruction="stack", subtasks_completed=2, subtasks=["a", "b"])
    summary.on_episode_end(EpisodeResult(**believed, info={"subtask_success": [True, False, False]}))
    summary.on_episode_end(EpisodeResult(**believed))  # an env that does not judge subtasks: the plan's count
    summary.close()
    assert "subtasks=1/3" in lines[0] and "subtasks=2/2" in lines[1]
    assert lines[-1].startswith("summary: 2 episodes, success 0.00, subtasks completed 1.50")


def replanning_planner(**policy):
    from planners.subtask.replan import ReplanPolicy

    planner = MockPlanner(["go right", "go up"], calls_per_subtask=100)
    planner.replan = ReplanPolicy(on_subtask_done=True, **policy)  # as `VLMPlanner` carries its config's
    return planner


def test_loop_asks_the_planner_on_its_replan_policys_timer_not_every_chunk():
    planner = replanning_planner(every_s=0.8, on_stall_s=None)
    result, _ = run(agent(planner=planner), max_steps=40, execute_horizon=4)
    assert result.steps == 40  # ten chunks of 0.4 s: asked at 0 s, then every 0.8 s of env time
    assert planner.calls == 5


def test_loop_asks_the_planner_once_the_robot_has_stalled():
    still = MockExecutor(actions=np.zeros((4, 2), np.float32))  # holds still: state never changes
    planner = replanning_planner(every_s=None, on_stall_s=1.0)
    run(agent(planner=planner, executor=still), max_steps=40, execute_horizon=4)
    # asked at 0 s; the state first seen still at 0.1 s stays still: asked at 1.2 s, then 1.0 s after each
    assert planner.calls == 4  # 0, 1.2, 2.4, 3.6


def test_plan_due_follows_the_policy_and_a_reported_finish():
    from hybrid.types import PlanStep

    planner = replanning_planner(every_s=5.0, on_stall_s=3.0)
    a = agent(planner=planner)
    a.reset("move the point")
    assert a.plan_due(0.0)  # no subtask yet
    a.mark_planned(0.0)
    a.stack.apply(PlanStep(subtask="go right"))
    assert not a.plan_due(4.0) and a.plan_due(5.0)  # the timer
    assert a.plan_due(3.5, stalled_s=3.0) and not a.plan_due(3.5, stalled_s=2.9)  # a stall
    assert not a.plan_due(2.0, stalled_s=9.0)  # still since before the last call: counted from the call
    a.report_subtask_done()
    assert a.plan_due(0.5)
    a.mark_planned(0.5)
    assert not a.plan_due(1.0)  # the report was used up by that call
    assert agent().plan_due(0.1)  # a planner without a policy: whenever the loop offers


def test_a_chunks_note_reaches_the_trace_and_rerun_once(tmp_path):
    import json

    from hybrid.eval.trace import EpisodeTrace

    class NotingExecutor(MockExecutor):
        """Notes its second chunk, as a grasp check letting go of a block does."""

        def act(self, obs, subtask, subgoal):
            chunk = super().act(obs, subtask, subgoal)
            self.chunks = getattr(self, "chunks", 0) + 1
            return chunk.model_copy(update={"note": "let go"}) if self.chunks == 2 else chunk

    view, trace = saved_view(tmp_path), EpisodeTrace(tmp_path / "trace.jsonl")
    env = RecordingPointEnv()
    trace.on_episode_start("go", {})
    run_episode(agent(executor=NotingExecutor(actions=RIGHT)), EnvAdapter(env), SyncLoopConfig(max_steps=100),
                [view, trace], seed=0)
    view.close()
    trace.close()
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    noted = [e for e in events if e["event"] == "executor"]
    assert [e["note"] for e in noted] == ["let go"] and noted[0]["step"] == 5  # the second chunk's first (of 1, 2, ...)
    assert "/executor/notes" in rrd_entities(tmp_path / "run.rrd")
