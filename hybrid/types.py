"""Plan-stack types: what crosses the boundary between the runtime and each tier.

Pydantic validates every record at the boundary so a bad image or a NaN state is caught where it
enters, with an error that names the field and what was expected. Inside the hot path (model
forward passes) the tiers work on the plain numpy arrays these records carry.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SubtaskStatus = Literal["pending", "active", "done", "failed"]


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def check_image(name: str, value: Any) -> np.ndarray:
    """An image is uint8 HxWx3 (RGB, channels last), as cameras and LeRobot frames give it."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 3 or value.shape[-1] != 3:
        raise ValueError(f"{name}: expected uint8 HxWx3, got {_describe(value)}")
    return value


def check_images(field: str, images: Any) -> dict[str, np.ndarray]:
    if not isinstance(images, dict) or not images:
        raise ValueError(f"{field}: expected a non-empty dict camera -> uint8 HxWx3, got {_describe(images)}")
    return {cam: check_image(f"{field}[{cam!r}]", img) for cam, img in images.items()}


def check_vector(name: str, value: Any, ndim: int = 1) -> np.ndarray:
    """A finite float32 array of the given rank; lists are accepted and converted."""
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a float array, got {_describe(value)} ({err})") from None
    if arr.ndim != ndim:
        want = "[D]" if ndim == 1 else "[H, A]"
        raise ValueError(f"{name}: expected float32 {want}, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"{name}: expected finite values, got {arr[tuple(bad)]} at index {bad}")
    return arr


class _Record(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")


class Observation(_Record):
    """What the agent sees at one instant: camera images, proprioceptive state, when."""

    images: dict[str, np.ndarray]
    state: np.ndarray
    timestamp: float = Field(default_factory=time.monotonic)
    instruction: str | None = None

    @field_validator("images", mode="before")
    @classmethod
    def _images(cls, v: Any) -> dict[str, np.ndarray]:
        return check_images("images", v)

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, v: Any) -> np.ndarray:
        return check_vector("state", v)


class Subtask(_Record):
    """One entry of the plan: a short language command and where it stands."""

    text: str = Field(min_length=1)
    index: int = Field(ge=0)
    status: SubtaskStatus = "active"


class PlanStep(_Record):
    """The planner's reply: the subtask to work on now, or that the whole instruction is done.

    Its JSON schema (``PlanStep.model_json_schema()``) is what structured-output backends request.
    """

    subtask: str | None = Field(default=None, description="The subtask the robot should work on now.")
    done: bool = Field(default=False, description="True when the whole instruction is accomplished.")
    reason: str | None = Field(default=None, description="Optional short justification.")

    @model_validator(mode="after")
    def _subtask_or_done(self) -> PlanStep:
        if not self.done and not (self.subtask and self.subtask.strip()):
            raise ValueError("subtask: expected a non-empty subtask when done is false")
        return self


class Subgoal(_Record):
    """Imagined image(s) of the scene once ``subtask`` is accomplished, one per camera."""

    images: dict[str, np.ndarray]
    subtask: str
    created_at: float = Field(default_factory=time.monotonic)
    model: str = "unknown"

    @field_validator("images", mode="before")
    @classmethod
    def _images(cls, v: Any) -> dict[str, np.ndarray]:
        return check_images("images", v)


class ActionChunk(_Record):
    """H future actions of dimension A, spaced ``dt`` seconds apart, starting at ``start_time``."""

    actions: np.ndarray
    dt: float = Field(gt=0)
    start_time: float = Field(default_factory=time.monotonic)
    subtask: str | None = None
    subgoal_created_at: float | None = None
    note: str | None = None  # what a run-time rule made of this chunk (a grasp check letting go): traces and Rerun

    @field_validator("actions", mode="before")
    @classmethod
    def _actions(cls, v: Any) -> np.ndarray:
        return check_vector("actions", v, ndim=2)

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])


class TierFault(_Record):
    """A tier that raised, timed out, or returned something that is not its contract."""

    tier: Literal["planner", "world_model", "executor", "env", "observation"]
    kind: Literal["raised", "timeout", "bad_output", "bad_input"]
    message: str
    time: float = Field(default_factory=time.monotonic)

    def __str__(self) -> str:
        return f"[{self.tier}:{self.kind}] {self.message}"


class StepRecord(_Record):
    """The whole plan stack at one control step, as the Rerun view and the logs see it."""

    step: int
    wall_time: float
    instruction: str
    subtasks: list[Subtask]
    observation: Observation | None
    subgoal: Subgoal | None = None
    chunk: ActionChunk | None = None
    action: np.ndarray | None = None
    latency_ms: dict[str, float] = Field(default_factory=dict)
    faults: list[TierFault] = Field(default_factory=list)

    @property
    def current_subtask(self) -> Subtask | None:
        return next((s for s in self.subtasks if s.status == "active"), None)
