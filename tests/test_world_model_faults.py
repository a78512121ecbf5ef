"""Generation that raises, overruns its deadline or returns the wrong images is a `WorldModelFault` with the
reason, and the agent's guarded call turns it into a world-model fault instead of a crash."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hybrid.runtime.tier_call import TierCaller
from hybrid.testing import fake_observation
from hybrid.types import Subgoal, Subtask
from planners.subgoal import SubgoalWorldModel, WorldModelConfig, WorldModelFault

SUBTASK = Subtask(text="pick up the red block", index=0)


class ScriptedPipeline:
    """Stands in for a diffusers pipeline: calls the step callback like one, then returns ``output(batch)``."""

    device = "cpu"

    def __init__(self, output=None, steps: int = 2, step_s: float = 0.0, error: Exception | None = None,
                 gate: threading.Event | None = None):
        self.output, self.steps, self.step_s, self.error, self.gate = output, steps, step_s, error, gate
        self.finished = threading.Event()
        self.calls = 0

    def __call__(self, image, prompt, callback_on_step_end=None, **kwargs):
        self.calls += 1
        if self.error is not None:
            raise self.error
        for i in range(self.steps):
            time.sleep(self.step_s)
            if self.gate is not None:  # a denoising step stuck until the test releases it
                self.gate.wait()
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, 0, {})
        self.finished.set()
        frames = np.stack([np.asarray(im) for im in image]).astype(np.float32) / 255.0

        class Out:
            images = frames if self.output is None else self.output(frames)

        return Out()


def model(pipe, **config) -> SubgoalWorldModel:
    return SubgoalWorldModel(pipe, WorldModelConfig(backend="tabletop", seed=None, **config))


def test_working_pipeline_gives_one_subgoal_per_camera():
    obs = fake_observation(cameras=("front", "wrist"), size=24)
    goal = model(ScriptedPipeline()).imagine(obs, SUBTASK)
    assert np.array_equal(goal.images["wrist"], obs.images["wrist"])  # identity pipeline, no resizing


def test_pipeline_exception_is_a_fault_with_its_reason():
    wm = model(ScriptedPipeline(error=RuntimeError("CUDA out of memory")))
    with pytest.raises(WorldModelFault, match="CUDA out of memory") as err:
        wm.imagine(fake_observation(), SUBTASK)
    assert err.value.kind == "raised"


@pytest.mark.parametrize("output, reason", [
    (lambda x: x[:, :16], "expected images of shape"),        # wrong height
    (lambda x: x[:1], "expected images of shape"),            # one image for two cameras
    (lambda x: x * np.nan, "non-finite"),
    (lambda x: [0.5], "expected images of shape"),            # not an array at all
])
def test_wrong_output_is_a_bad_output_fault(output, reason):
    wm = model(ScriptedPipeline(output=output))
    with pytest.raises(WorldModelFault, match=reason) as err:
        wm.imagine(fake_observation(cameras=("front", "wrist"), size=32), SUBTASK)
    assert err.value.kind == "bad_output"


def test_missing_camera_is_a_bad_input_fault():
    wm = model(ScriptedPipeline(), cameras=["front", "side"])
    with pytest.raises(WorldModelFault, match="side") as err:
        wm.imagine(fake_observation(cameras=("front",)), SUBTASK)
    assert err.value.kind == "bad_input"


def test_overrun_is_a_timeout_fault_and_the_generation_is_cancelled():
    gate = threading.Event()
    pipe = ScriptedPipeline(steps=50, gate=gate)  # its first step hangs until the gate opens
    wm = model(pipe, timeout_s=0.1)
    start = time.perf_counter()
    with pytest.raises(WorldModelFault, match="no subgoal within") as err:
        wm.imagine(fake_observation(), SUBTASK)
    assert err.value.kind == "timeout" and time.perf_counter() - start < 0.5
    with pytest.raises(WorldModelFault, match="still running"):  # no pile-up behind the stuck call
        wm.imagine(fake_observation(), SUBTASK)
    gate.set()  # the step returns; the step callback then stops the overrun generation
    wm._pending.exception(timeout=5)
    assert not pipe.finished.is_set() and pipe.calls == 1
    pipe.steps, pipe.gate = 1, None
    assert isinstance(wm.imagine(fake_observation(), SUBTASK), Subgoal)  # and the model recovers
    wm.close()


def test_agent_guard_turns_world_model_faults_into_tier_faults():
    calls = TierCaller("world_model", Subgoal)
    res = calls(model(ScriptedPipeline(output=lambda x: x[:, :, :8])).imagine, fake_observation(), SUBTASK)
    assert res.value is None and res.fault.tier == "world_model" and res.fault.kind == "raised"
    assert "bad_output" in res.fault.message and "expected images of shape" in res.fault.message
