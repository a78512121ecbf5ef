"""Safety in the runtime: limits, per-step change, NaN/Inf, hold on faults and missed deadlines."""

import numpy as np
import pytest
from runtime_support import RecordingPointEnv

from hybrid import HybridAgent
from hybrid.agent import AgentConfig
from hybrid.runtime.async_runtime import AsyncRuntimeConfig, run_async_episode
from hybrid.runtime.env_adapter import EnvAdapter
from hybrid.runtime.safety import SafetyConfig, SafetyFilter, UnsafeAction
from hybrid.testing import MockExecutor, MockPlanner, MockWorldModel
from hybrid.types import ActionChunk


class EndlessEnv(RecordingPointEnv):
    def _info(self):
        return {**super()._info(), "success": False}


def run(executor, **loop):
    agent = HybridAgent(MockPlanner(["go"], calls_per_subtask=1000), MockWorldModel(), executor, AgentConfig())
    env = EndlessEnv(max_steps=10_000)
    try:
        result = run_async_episode(agent, EnvAdapter(env), AsyncRuntimeConfig(**{"control_hz": 50, "max_steps": 40, **loop}),
                                   seed=0)
    finally:
        agent.close()
    return result, np.stack(env.sent)


def test_config_limits_tighten_the_envs():
    f = SafetyFilter.from_config(SafetyConfig(low=-0.02, high=[0.05, 0.01]), np.full(2, -0.1), np.full(2, 0.1))
    assert f(np.array([1.0, 1.0])).tolist() == pytest.approx([0.05, 0.01])
    assert f(np.array([-1.0, -1.0])).tolist() == pytest.approx([-0.02, -0.02])
    with pytest.raises(ValueError, match="exceed"):
        SafetyFilter.from_config(SafetyConfig(low=0.5), np.zeros(2), np.ones(2) * 0.1)


def test_per_step_change_is_limited_and_starts_from_a_hold():
    f = SafetyFilter(np.full(2, -1.0), np.full(2, 1.0), max_delta=0.1)
    f.held(np.zeros(2))
    assert f(np.array([1.0, -1.0])).tolist() == pytest.approx([0.1, -0.1])
    assert f(np.array([1.0, -1.0])).tolist() == pytest.approx([0.2, -0.2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_rejected(bad):
    f = SafetyFilter(np.full(2, -1.0), np.full(2, 1.0))
    with pytest.raises(UnsafeAction, match="non-finite"):
        f(np.array([0.0, bad]))


def test_runtime_clamps_to_configured_limits_and_rate():
    big = np.full((10, 2), 5.0, np.float32)
    result, sent = run(MockExecutor(actions=big), safety={"high": 0.05, "max_delta": 0.02})
    moving = sent[sent[:, 0] > 0]
    assert len(moving) >= 5 and sent.max() <= 0.05 + 1e-6
    assert np.abs(np.diff(sent, axis=0)).max() <= 0.02 + 1e-6


def test_runtime_never_sends_a_non_finite_action_and_holds():
    class NaNExecutor(MockExecutor):
        def act(self, obs, subtask, subgoal):
            chunk = super().act(obs, subtask, subgoal)
            actions = chunk.actions.copy()
            actions[3] = np.nan  # bypasses validation, as a buggy executor could
            return ActionChunk.model_construct(**{**dict(chunk), "actions": actions})

    result, sent = run(NaNExecutor(actions=np.full((8, 2), 0.01, np.float32)), max_consecutive_faults=1000)
    assert np.isfinite(sent).all()
    assert result.info["runtime"]["unsafe_actions"] >= 1
    assert any("non-finite" in f.message for f in result.faults)
    assert (sent == 0).all(axis=1).sum() >= 1  # held at the NaN, queue dropped


def test_missed_deadline_skips_elapsed_actions_instead_of_bursting():
    class SlowEnv(EndlessEnv):
        def step(self, action):
            if len(self.sent) == 10:
                import time
                time.sleep(0.2)  # one env step stalls for 10 control periods
            return super().step(action)

    agent = HybridAgent(MockPlanner(["go"], calls_per_subtask=1000), MockWorldModel(),
                        MockExecutor(actions=np.full((50, 2), 0.01, np.float32)), AgentConfig())
    env = SlowEnv(max_steps=10_000)
    try:
        result = run_async_episode(agent, EnvAdapter(env), AsyncRuntimeConfig(control_hz=50, max_steps=60), seed=0)
    finally:
        agent.close()
    rt = result.info["runtime"]
    assert rt["skipped_steps"] >= 5 and rt["missed_deadlines"] >= rt["skipped_steps"]
    assert len(env.sent) + rt["skipped_steps"] + rt.get("warmup_skipped", 0) == 60  # no burst to make them up
