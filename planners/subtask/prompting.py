"""The chat a planner sends: a system line, then one user turn with the camera image and the state.

The same messages serve every backend: the in-process processor renders them with the model's chat
template, the HTTP backend turns the image item into an inline data URL. A model trained here is
trained on exactly these messages (its prompt settings are saved beside its weights).
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hybrid.types import Observation, PlanStep

DEFAULT_SYSTEM = (
    "You are the high-level planner of a robot arm. Look at the camera image and decide the one subtask the "
    "robot should work on now to accomplish the instruction, or reply done when it is accomplished. "
    "Reply with a JSON object only."
)


class PromptConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = Field(DEFAULT_SYSTEM, description="system message; None sends none")
    schema_in_prompt: bool = Field(True, description="append PlanStep's JSON schema to the user turn")
    # Several cameras are tiled left to right into one image, so every backend (an HTTP server too) gets one:
    # the wrist camera sees a release from above, where the front one sees a few pixels behind the arm.
    camera: str | list[str] = Field("front", min_length=1, description="which camera the planner looks at, or "
                                    "a list of cameras shown side by side")
    image_size: int | None = Field(None, gt=0, description="resize so the longer side is this many pixels "
                                   "(tiled cameras: each camera's height)")
    state_in_prompt: bool = Field(False, description="write the proprioceptive state into the user turn: "
                                  "whether the gripper still holds tells 'placing' from 'placed'")
    gripper_index: int | None = Field(None, description="the state entry of the gripper command; when set, the "
                                      "planner counts the gripper's releases since the current subtask began "
                                      "and writes them into the user turn ('Released: N'), the evidence one "
                                      "frame lacks that a pick-and-place has ended")
    gripper_closed: float = Field(0.5, description="gripper commands at or above this count as closed")
    # After a release the front camera sees the placement behind the arm, a few pixels wide; the wrist camera,
    # at the moment the gripper lets go, looks down on it: a block in its bowl or on its tower, or beside it.
    release_camera: str | None = Field(None, description="a camera whose image at the gripper's last release "
                                       "since the current subtask began is tiled after the planner's cameras "
                                       "(black before any release): the evidence of how the last placement "
                                       "ended; needs gripper_index")

    placed_in_prompt: bool = Field(False, description="write whether the last release placed its block into the "
                                   "user turn ('Placed: yes|no' after 'Released: N'): the model's own answer to "
                                   "PLACED_QUESTION on the release camera's view, asked once per release; needs "
                                   "release_camera")

    @model_validator(mode="after")
    def _release_needs_gripper(self) -> PromptConfig:
        if self.release_camera is not None and self.gripper_index is None:
            raise ValueError("release_camera: needs gripper_index (releases are read off the gripper)")
        if self.placed_in_prompt and self.release_camera is None:
            raise ValueError("placed_in_prompt: needs release_camera (the view the answer is read from)")
        return self


def cameras(cfg: PromptConfig) -> list[str]:
    return [cfg.camera] if isinstance(cfg.camera, str) else list(cfg.camera)


def camera_image(obs: Observation, camera: str) -> np.ndarray | None:
    """The camera's image, or None; recorded frames name it `observation.images.<camera>`."""
    for key in (camera, f"observation.images.{camera}"):
        if key in obs.images:
            return obs.images[key]
    return None


def pick_image(obs: Observation, camera: str) -> np.ndarray:
    """A single-camera planner's image: its camera, else whatever camera there is."""
    image = camera_image(obs, camera)
    return image if image is not None else next(iter(obs.images.values()))


def tile(views: list[np.ndarray], height: int | None = None) -> np.ndarray:
    """Images side by side, left to right, each scaled to ``height`` (default: the first one's)."""
    from PIL import Image

    height = height or views[0].shape[0]
    scaled = [v if v.shape[0] == height else np.asarray(Image.fromarray(v).resize(
        (max(1, round(v.shape[1] * height / v.shape[0])), height), Image.BILINEAR)) for v in views]
    return np.concatenate(scaled, axis=1)


def planner_image(obs: Observation, cfg: PromptConfig, release_view: np.ndarray | None = None) -> np.ndarray:
    """The one image the planner is shown: its camera resized to ``image_size``, or its cameras tiled at that
    height; with ``cfg.release_camera``, ``release_view`` (that camera at the last release; None: none yet,
    black) after them."""
    names = cameras(cfg)
    if len(names) == 1 and cfg.release_camera is None:
        return resize(pick_image(obs, names[0]), cfg.image_size)
    views = [camera_image(obs, c) for c in names]
    missing = [c for c, view in zip(names, views) if view is None]
    if missing:
        raise ValueError(f"the planner looks at cameras {names}; the observation has no {missing} "
                         f"(it has {sorted(obs.images)})")
    if cfg.release_camera is not None:
        views.append(release_tile(obs, cfg.release_camera, release_view))
    return tile(views, cfg.image_size)


def release_tile(obs: Observation, camera: str, release_view: np.ndarray | None) -> np.ndarray:
    """The release camera's tile: its image at the last release, or black at the camera's size before one."""
    now = camera_image(obs, camera)
    if now is None:
        raise ValueError(f"the planner shows camera {camera!r} at releases; the observation has no such camera "
                         f"(it has {sorted(obs.images)})")
    if release_view is None:
        return np.zeros_like(now)
    if release_view.ndim != 3 or release_view.shape[-1] != 3:
        raise ValueError(f"release view: expected an (H, W, 3) image, got shape {release_view.shape}")
    return release_view


def resize(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or max(image.shape[:2]) == size:
        return image
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(new, Image.BILINEAR))


# Asked of a planner about the release camera's view (`PromptConfig.placed_in_prompt`; trained as an auxiliary
# question, `train.py` placed_fraction); its reply is {"placed": true|false}.
PLACED_QUESTION = "Question: did the last release place its block?"
PLACED_REPLIES = (json.dumps({"placed": True}), json.dumps({"placed": False}))


def user_text(instruction: str, done: list[str], current: str | None, schema_in_prompt: bool,
              state: np.ndarray | None = None, releases: int | None = None, placed: bool | None = None) -> str:
    lines = [f"Instruction: {instruction.strip()}",
             f"Done: {'; '.join(done) if done else 'nothing'}",
             f"Current: {current or 'none'}"]
    if releases is not None:
        lines.append(f"Released: {releases}")
    if placed is not None:
        lines.append(f"Placed: {'yes' if placed else 'no'}")
    if state is not None:
        lines.append("State: " + " ".join(f"{v:.2f}" for v in np.asarray(state, np.float64).reshape(-1)))
    if schema_in_prompt:
        lines.append("Reply with JSON matching this schema: " + json.dumps(PlanStep.model_json_schema()))
    return "\n".join(lines)


def build_messages(cfg: PromptConfig, instruction: str, done: list[str], current: str | None,
                   state: np.ndarray | None = None, releases: int = 0, placed: bool | None = None,
                   question: str | None = None) -> list[dict]:
    """OpenAI-style messages; the image is a `{"type": "image"}` placeholder the backend fills in.

    ``state``: the observation's proprioceptive state, written into the prompt when ``cfg.state_in_prompt``;
    ``releases``: the gripper's releases since ``current`` began, written when ``cfg.gripper_index`` is set;
    ``placed``: whether the last release placed its block (None: not written); ``question``: a last line asking
    something else than the next step (an auxiliary question).
    """
    if cfg.state_in_prompt and state is None:
        raise ValueError("this planner's prompt includes the robot state (state_in_prompt), but none was given")
    messages = []
    if cfg.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": cfg.system}]})
    text = user_text(instruction, done, current, cfg.schema_in_prompt, state if cfg.state_in_prompt else None,
                     None if cfg.gripper_index is None else int(releases), placed)
    if question is not None:
        text += "\n" + question
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return messages
