import numpy as np
import pytest
from pydantic import ValidationError

from hybrid.types import ActionChunk, Observation, PlanStep, Subgoal


def img(shape=(8, 8, 3), dtype=np.uint8):
    return np.zeros(shape, dtype)


def error_text(fn) -> str:
    with pytest.raises(ValidationError) as err:
        fn()
    return str(err.value)


def test_observation_accepts_lists_and_casts_state():
    obs = Observation(images={"front": img()}, state=[1, 2, 3])
    assert obs.state.dtype == np.float32 and obs.state.shape == (3,)


def test_image_error_names_camera_and_expectation():
    msg = error_text(lambda: Observation(images={"front": img((3, 96, 96), np.float32)}, state=[0.0]))
    assert "images['front']: expected uint8 HxWx3, got float32 (3, 96, 96)" in msg


def test_grayscale_and_missing_images_rejected():
    assert "images['wrist']: expected uint8 HxWx3, got uint8 (8, 8)" in error_text(
        lambda: Observation(images={"wrist": img((8, 8))}, state=[0.0]))
    assert "non-empty dict" in error_text(lambda: Observation(images={}, state=[0.0]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_rejected(bad):
    msg = error_text(lambda: Observation(images={"front": img()}, state=[0.0, bad]))
    assert "state: expected finite values" in msg and "[1]" in msg


def test_state_rank_checked():
    assert "state: expected float32 [D], got shape (2, 2)" in error_text(
        lambda: Observation(images={"front": img()}, state=np.zeros((2, 2))))


def test_action_chunk_validation():
    chunk = ActionChunk(actions=np.zeros((5, 4)), dt=0.1)
    assert chunk.horizon == 5 and chunk.actions.dtype == np.float32
    assert "actions: expected float32 [H, A], got shape (4,)" in error_text(lambda: ActionChunk(actions=np.zeros(4), dt=0.1))
    assert "actions: expected finite values" in error_text(
        lambda: ActionChunk(actions=np.array([[0.0, np.nan]]), dt=0.1))
    assert "dt" in error_text(lambda: ActionChunk(actions=np.zeros((1, 1)), dt=0.0))


def test_plan_step_needs_subtask_unless_done():
    assert PlanStep(done=True).subtask is None
    assert "subtask: expected a non-empty subtask" in error_text(lambda: PlanStep(subtask="  "))
    schema = PlanStep.model_json_schema()
    assert set(schema["properties"]) == {"subtask", "done", "reason"}


def test_subgoal_validates_images():
    assert "images['front']" in error_text(lambda: Subgoal(images={"front": img((8, 8, 4))}, subtask="x"))


def test_records_are_immutable():
    obs = Observation(images={"front": img()}, state=[0.0])
    with pytest.raises(ValidationError):
        obs.timestamp = 3.0
