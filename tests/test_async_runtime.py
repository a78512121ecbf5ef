"""The async runtime end to end with test-double tiers, scaled down in time (tens of ms, not seconds).

The machine may be loaded: assertions are on counts and logic with wide margins, never on wall time.
"""

import time

import numpy as np
import pytest
from runtime_support import RecordingPointEnv, rrd_entities

from hybrid import HybridAgent
from hybrid.agent import AgentConfig
from hybrid.runtime.async_runtime import AsyncRuntimeConfig, run_async_episode
from hybrid.runtime.env_adapter import EnvAdapter
from hybrid.testing import MockExecutor, MockPlanner, MockWorldModel, PointEnv
from hybrid.types import ActionChunk
from hybrid.viz import RerunView, RerunViewConfig


class EndlessPointEnv(RecordingPointEnv):
    def _info(self):
        return {**super()._info(), "success": False}


class RampExecutor(MockExecutor):
    """Prefix-capable double: call n aims at level 0.01 * n. Without a prefix its chunk starts at that level
    (a jump at every seam); with one it repeats the prefix, then moves from its last action by at most
    0.001 per step (a continuous seam)."""

    supports_prefix = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.prefixes = []

    def act(self, obs, subtask, subgoal, prefix=None):
        base = super().act(obs, subtask, subgoal)
        level = 0.01 * self.calls
        h, a = base.actions.shape
        actions = np.full((h, a), level, np.float32)
        self.prefixes.append(None if prefix is None else prefix.copy())
        if prefix is not None and len(prefix):
            d = len(prefix)
            steps = np.arange(1, h - d + 1)[:, None]
            actions[d:] = prefix[-1] + np.clip(level - prefix[-1], -0.001 * steps, 0.001 * steps)
            actions[:d] = prefix
        return ActionChunk(actions=actions, dt=base.dt, start_time=base.start_time, subtask=base.subtask)


class NoPrefixRamp(RampExecutor):
    supports_prefix = False

    def act(self, obs, subtask, subgoal):
        return super().act(obs, subtask, subgoal)


def agent(planner=None, world_model=None, executor=None, **cfg):
    return HybridAgent(planner or MockPlanner(["go right", "go up"], calls_per_subtask=1000, latency_s=0.05),
                       world_model or MockWorldModel(latency_s=0.03),
                       executor or MockExecutor(horizon=20, action_dim=2, latency_s=0.01, dt=0.02),
                       AgentConfig(**cfg))


def run(a, env=None, view=None, **loop):
    env = env or EndlessPointEnv(max_steps=100_000)
    loop = {"control_hz": 50, "max_steps": 80, "planner_hz": 20, "shutdown_timeout_s": 0.5, **loop}
    try:
        result = run_async_episode(a, EnvAdapter(env), AsyncRuntimeConfig(**loop), [view] if view else [], seed=0)
    finally:
        if view:
            view.close()
        a.close()
    return result, env


def test_queue_never_runs_dry_at_target_like_settings():
    # The target (50 Hz, executor 30 ms, chunk 50, planner 1 s, world model 0.5 s) scaled to a test.
    a = agent(planner=MockPlanner([f"s{i}" for i in range(100)], calls_per_subtask=3, latency_s=0.1),
              world_model=MockWorldModel(latency_s=0.05),
              executor=MockExecutor(horizon=25, action_dim=2, latency_s=0.015, dt=0.02))
    result, env = run(a, max_steps=150, planner_hz=10)
    rt = result.info["runtime"]
    assert result.status == "budget" and result.steps == 150
    assert rt["chunks"] >= 3 and len(result.subtasks) >= 2
    # Starved slots only when the whole machine stalled (then slots are skipped, counted separately).
    assert rt.get("dry_steps", 0) <= rt.get("skipped_steps", 0)
    assert len(env.sent) + rt.get("skipped_steps", 0) + rt.get("warmup_skipped", 0) == 150  # one per control slot


def test_new_subtask_triggers_a_new_subgoal_and_a_fresh_chunk():
    seen = []

    class Spy(MockExecutor):
        def act(self, obs, subtask, subgoal):
            seen.append((subtask.text, None if subgoal is None else subgoal.subtask))
            return super().act(obs, subtask, subgoal)

    wm = MockWorldModel(latency_s=0.02)
    a = agent(planner=MockPlanner(["go right", "go up", "go left"], calls_per_subtask=4, latency_s=0.01),
              world_model=wm, executor=Spy(horizon=50, action_dim=2, dt=0.02))
    result, _ = run(a, max_steps=150, planner_hz=20, subgoal_gap="none", prefetch_subgoals=False)
    assert result.status == "done" and result.subtasks == ["go right", "go up", "go left"]
    assert wm.calls == 3  # once per subtask, not per chunk
    assert all(sg in (None, st) for st, sg in seen)  # gap=none: never another subtask's subgoal
    for text in ("go up", "go left"):  # a 50-action chunk lasts 1 s: a fresh one came with each subgoal
        assert (text, text) in seen


def test_keep_last_subgoal_until_the_new_one_lands():
    seen = []

    class Spy(MockExecutor):
        def act(self, obs, subtask, subgoal):
            seen.append((subtask.text, None if subgoal is None else subgoal.subtask))
            return super().act(obs, subtask, subgoal)

    a = agent(planner=MockPlanner(["go right", "go up"], calls_per_subtask=12, latency_s=0.01),
              world_model=MockWorldModel(latency_s=0.3), executor=Spy(horizon=50, action_dim=2, dt=0.02))
    run(a, max_steps=150, planner_hz=20, subgoal_gap="keep_last", prefetch_subgoals=False)
    assert ("go up", "go right") in seen  # acting on the last valid subgoal while "go up"'s is imagined


def test_prefetch_imagines_the_next_subtask_before_it_starts():
    order = []

    class Planner(MockPlanner):
        def next_subtask(self, current):
            i = self.subtasks.index(current)
            return self.subtasks[i + 1] if i + 1 < len(self.subtasks) else None

    class WM(MockWorldModel):
        def imagine(self, obs, subtask):
            order.append(subtask.text)
            return super().imagine(obs, subtask)

    a = agent(planner=Planner(["go right", "go up"], calls_per_subtask=10, latency_s=0.01),
              world_model=WM(latency_s=0.01))
    result, _ = run(a, max_steps=100, planner_hz=20, prefetch_subgoals=True)
    rt = result.info["runtime"]
    assert order[:2] == ["go right", "go up"] and rt["subgoals_prefetch"] >= 1
    assert order.count("go up") == 1  # the prefetched subgoal was used, not imagined again


def test_rtc_passes_committed_actions_and_keeps_seams_continuous():
    seams = {}
    for name, ex in (("rtc", RampExecutor(horizon=10, action_dim=2, latency_s=0.02, dt=0.02)),
                     ("replace", NoPrefixRamp(horizon=10, action_dim=2, latency_s=0.02, dt=0.02))):
        result, _ = run(agent(executor=ex), max_steps=100, blend="rtc")
        rt = result.info["runtime"]
        assert rt["rtc"] is (name == "rtc") and rt["chunks"] >= 5
        seams[name] = rt["seam"]["max"]
        if name == "rtc":
            prefixes = [p for p in ex.prefixes if p is not None]
            assert prefixes and all(p.shape[1] == 2 for p in prefixes)
    assert seams["replace"] >= 0.009  # every chunk jumps 0.01
    assert seams["rtc"] <= 0.0051  # at most a few eased 0.001 steps


def test_temporal_ensembling_blends_overlapping_chunks():
    ex = NoPrefixRamp(horizon=30, action_dim=2, latency_s=0.01, dt=0.02)
    result, env = run(agent(executor=ex), max_steps=100, blend="ensemble", refill_margin_steps=20)
    rt = result.info["runtime"]
    assert rt["blend"] == "ensemble" and rt["chunks"] >= 3
    levels = {round(float(a[0]), 4) for a in env.sent}
    assert any(round(lv / 0.01, 2) % 1 != 0 for lv in levels)  # blended values between two chunks' levels


def test_stale_observation_never_reaches_a_tier():
    class OldObsEnv(EndlessPointEnv):
        pass

    planner = MockPlanner(["go right"], latency_s=0.0)
    ex = MockExecutor(horizon=10, action_dim=2)
    a = agent(planner=planner, executor=ex)
    adapter = EnvAdapter(OldObsEnv(max_steps=1000))
    real = adapter.observation
    adapter.observation = lambda raw, instr=None: real(raw, instr).model_copy(update={"timestamp": time.monotonic() - 10})
    try:
        result = run_async_episode(a, adapter, AsyncRuntimeConfig(control_hz=50, max_steps=30, max_obs_age_s=0.2), seed=0)
    finally:
        a.close()
    rt = result.info["runtime"]
    assert planner.calls == 0 and ex.calls == 0
    assert rt["warmup_holds"] + rt.get("warmup_skipped", 0) == 30 and rt["stale_observations"] >= rt["warmup_holds"]
    assert any("old (bound 0.2 s)" in f.message for f in result.faults)


def test_executor_that_raises_holds_then_ends_the_episode():
    ex = MockExecutor(horizon=10, action_dim=2, fail_on="always", failure="raise")
    result, env = run(agent(executor=ex), max_steps=200, max_consecutive_faults=3)
    assert result.status == "fault" and ex.calls >= 3
    assert env.sent and all(np.array_equal(a, np.zeros(2)) for a in env.sent)  # only the hold action
    assert {f.tier for f in result.faults} == {"executor"} and result.faults[0].kind == "raised"


def test_executor_fault_mid_run_clears_the_queue_and_holds():
    push = np.full((40, 2), 0.05, np.float32)
    ex = MockExecutor(actions=push, fail_on=[1, 2, 3, 4, 5, 6], failure="raise", latency_s=0.01)
    result, env = run(agent(executor=ex), max_steps=150, refill_margin_steps=5, max_consecutive_faults=100)
    rt = result.info["runtime"]
    sent = np.stack(env.sent)
    assert rt["holds"] >= 1 and ex.calls >= 7
    moving = np.flatnonzero(sent[:, 0] > 0)
    held_after = np.flatnonzero((sent[:, 0] == 0) & (np.arange(len(sent)) > moving[0]))
    assert len(held_after) >= 1 and sent[-1, 0] == pytest.approx(0.05)  # held during the faults, then resumed


def test_hanging_executor_times_out_and_the_loop_keeps_its_rate():
    ex = MockExecutor(horizon=10, action_dim=2, fail_on="always", failure="hang")
    try:
        result, env = run(agent(executor=ex, executor_timeout_s=0.05), max_steps=60, max_consecutive_faults=1000)
    finally:
        ex.release()
    kinds = [f.kind for f in result.faults if f.tier == "executor"]
    rt = result.info["runtime"]
    assert result.status == "budget" and len(env.sent) + rt.get("warmup_skipped", 0) + rt.get("skipped_steps", 0) == 60
    assert kinds[0] == "timeout" and ex.calls == 1  # later calls are refused while the first one hangs
    assert all(np.array_equal(a, np.zeros(2)) for a in env.sent)


def test_closing_a_tier_caller_waits_a_bounded_time_for_the_call_in_flight():
    import threading

    from hybrid.runtime.tier_call import TierCaller

    finished, gate = threading.Event(), threading.Event()

    def slow():
        gate.wait(5.0)
        finished.set()
        return 1.0

    caller = TierCaller("executor", float, timeout_s=0.01)
    assert caller(slow).fault.kind == "timeout"
    assert not caller.close(timeout_s=0.05)  # still inside the call: closing gives up after the bound
    gate.set()
    assert TierCaller("executor", float, timeout_s=0.01).close(1.0)  # an idle caller closes at once
    assert caller.close(timeout_s=5.0) and finished.is_set()  # the call ran to its end before the thread did


def test_hanging_planner_does_not_stop_control():
    planner = MockPlanner(["go right"], fail_on=[1], failure="hang", latency_s=0.0)
    push = np.full((10, 2), 0.01, np.float32)
    try:
        result, env = run(agent(planner=planner, executor=MockExecutor(actions=push), planner_timeout_s=0.1),
                          max_steps=60)
    finally:
        planner.release()
    assert result.status == "budget" and result.subtasks == ["go right"]
    assert any(f.tier == "planner" and f.kind == "timeout" for f in result.faults)
    assert sum(a[0] > 0 for a in env.sent) >= 20  # the executor kept acting on the current subtask


def test_world_model_that_raises_falls_back_to_language_only():
    seen = []

    class Spy(MockExecutor):
        def act(self, obs, subtask, subgoal):
            seen.append(subgoal)
            return super().act(obs, subtask, subgoal)

    result, env = run(agent(world_model=MockWorldModel(fail_on="always"), executor=Spy(horizon=10, action_dim=2)),
                      max_steps=60, world_model_retry_s=0.1)
    assert result.status == "budget" and seen and all(s is None for s in seen)
    assert {f.tier for f in result.faults} == {"world_model"}


def test_runtime_telemetry_is_logged_to_rerun(tmp_path):
    view = RerunView(RerunViewConfig(mode="save", path=str(tmp_path / "run.rrd"), position_dims=None))
    result, _ = run(agent(executor=RampExecutor(horizon=10, action_dim=2, latency_s=0.01, dt=0.02)), view=view,
                    max_steps=60)
    rt = result.info["runtime"]
    assert {"missed_deadlines", "queue_depth", "seam", "overhead_ms"} <= set(rt)
    assert {"planner", "world_model", "executor"} <= set(result.latency_ms)
    assert {"/runtime/queue_depth", "/runtime/missed_deadlines", "/runtime/seam", "/latency/executor",
            "/executor/action", "/plan/subtasks", "/episode/summary"} <= rrd_entities(tmp_path / "run.rrd")


def test_planner_done_ends_the_episode():
    a = agent(planner=MockPlanner(["go right"], calls_per_subtask=2, latency_s=0.0))
    result, _ = run(a, max_steps=500, planner_hz=50)
    assert result.status == "done" and result.subtasks_completed == 1 and result.steps < 500


def test_after_done_the_robot_holds_still_while_the_scene_settles_before_it_is_judged():
    class SettledAfterDone(RecordingPointEnv):  # solved only once the robot has held still for 3 steps
        def _info(self):
            still = len(self.sent) >= 3 and all(np.array_equal(a, [0.0, 0.0]) for a in self.sent[-3:])
            return {**super()._info(), "success": still}

    def episode(settle_steps):
        a = agent(planner=MockPlanner(["go right"], calls_per_subtask=2, latency_s=0.0))
        return run(a, env=SettledAfterDone(max_steps=100_000), max_steps=500, planner_hz=50,
                   settle_steps=settle_steps)

    result, env = episode(5)  # the env's episode ends once solved: it is not stepped past that
    assert result.status == "done" and result.success
    assert [a.tolist() for a in env.sent[-3:]] == [[0.0, 0.0]] * 3 and result.steps == len(env.sent)
    result, env = episode(0)
    assert result.status == "done" and not result.success and result.steps == len(env.sent)  # judged at once


def test_env_success_ends_the_episode():
    class Solved(PointEnv):
        def _info(self):
            return {**super()._info(), "success": self.steps >= 5}

    result, _ = run(agent(), env=Solved(max_steps=1000), max_steps=200)
    assert result.status == "success" and result.success


def test_planner_worker_follows_the_planners_replan_policy():
    """A planner whose policy asks for a call only every 100 s is asked once (for its first subtask), though
    its worker wakes 20 times a second; with a stall rule it is asked again, as the robot stands still (the
    mock executor's chunks are zeros)."""
    from planners.subtask.replan import ReplanPolicy

    timer_only = MockPlanner(["go right", "go up"], calls_per_subtask=1000)
    timer_only.replan = ReplanPolicy(every_s=100.0, on_stall_s=None)
    run(agent(planner=timer_only), max_steps=60)
    assert timer_only.calls == 1
    stalling = MockPlanner(["go right", "go up"], calls_per_subtask=1000)
    stalling.replan = ReplanPolicy(every_s=100.0, on_stall_s=0.1)
    run(agent(planner=stalling), max_steps=60, stall_tolerance=1e-6)
    assert stalling.calls >= 2
