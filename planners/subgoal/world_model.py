"""The world-model tier: the scene as it should look once the subtask is done (SuSIE, Pi-0.7 subgoals).

`SubgoalWorldModel` wraps any of the diffusers image-edit backends behind `hybrid.interfaces.WorldModel`:
one subgoal image per camera, all cameras in one batch, each returned at its camera's size.
Anything that goes wrong in generation is raised as a `WorldModelFault` that says why; the runtime
turns it into a fault and keeps the last subgoal (or acts language-only).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hybrid.types import Observation, Subgoal, Subtask
from planners.subgoal.configuration import WorldModelConfig

CONFIG_NAME = "world_model.json"


class WorldModelFault(RuntimeError):
    """Generation raised, overran its deadline, or returned images that are not the requested subgoals."""

    def __init__(self, kind: Literal["raised", "timeout", "bad_output", "bad_input"], reason: str):
        super().__init__(f"world model {kind}: {reason}")
        self.kind, self.reason = kind, reason


class _Cancelled(Exception):
    """Raised inside a pipeline's step callback to stop a generation that has overrun its deadline."""


class SubgoalWorldModel:
    """Imagines subgoal images with a diffusers image-edit pipeline (see `diffusers_backend.PIPELINES`)."""

    def __init__(self, pipeline, config: WorldModelConfig | None = None, name: str | None = None):
        self.pipeline = pipeline
        self.config = config or WorldModelConfig()
        self.name = name or self.config.backend
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> SubgoalWorldModel:
        """Load from a pipeline directory; `world_model.json` there (if any) gives defaults, ``overrides`` win."""
        from planners.subgoal.diffusers_backend import detect_backend, load_pipeline

        path = Path(path)
        saved = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {}
        config = WorldModelConfig(**{"backend": detect_backend(path), **saved, **overrides})
        if config.num_threads:
            import torch

            torch.set_num_threads(config.num_threads)
        return cls(load_pipeline(path, config), config, name=f"{config.backend}:{path.name}")

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.pipeline.save_pretrained(str(path))
        (path / CONFIG_NAME).write_text(self.config.model_dump_json(indent=2) + "\n")

    def reset(self) -> None:
        """Nothing to forget between episodes: a subgoal depends only on the observation and the subtask."""

    def imagine(self, obs: Observation, subtask: Subtask) -> Subgoal:
        cameras = self.config.cameras or list(obs.images)
        missing = [c for c in cameras if c not in obs.images]
        if missing:
            raise WorldModelFault("bad_input", f"observation lacks cameras {missing}; has {sorted(obs.images)}")
        prompts = [self.config.prompt_template.format(subtask=subtask.text, camera=c) for c in cameras]
        images = self.generate([obs.images[c] for c in cameras], prompts)
        return Subgoal(images=dict(zip(cameras, images)), subtask=subtask.text, model=self.name)

    def generate(self, images: list[np.ndarray], prompts: list[str]) -> list[np.ndarray]:
        """Subgoals for a batch of (uint8 HxWx3 image, prompt) pairs, each at its input's size, under the deadline."""
        if self.config.timeout_s is None:
            return self._generate(images, prompts, None)
        if self._pending is not None and not self._pending.done():
            raise WorldModelFault("timeout", "the previous generation, which overran its deadline, is still running")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="world-model")
        cancel = threading.Event()
        self._pending = self._pool.submit(self._generate, images, prompts, cancel)
        try:
            return self._pending.result(timeout=self.config.timeout_s)
        except FutureTimeout:
            cancel.set()  # the pipeline stops at its next denoising step
            raise WorldModelFault("timeout", f"no subgoal within {self.config.timeout_s:.3g} s") from None

    def _generate(self, images: list[np.ndarray], prompts: list[str], cancel: threading.Event | None) -> list[np.ndarray]:
        from planners.subgoal.diffusers_backend import generate

        sizes = [im.shape[:2] for im in images]
        r = self.config.resolution
        height, width = (r, r) if r else sizes[0]
        batch = [_resize(im, height, width) for im in images]
        start = time.perf_counter()
        try:
            out = generate(self.pipeline, self.config, batch, prompts, height, width,
                           generator=self._generator(), callback=None if cancel is None else _stop_when(cancel))
        except _Cancelled:
            raise WorldModelFault("timeout", f"cancelled after {time.perf_counter() - start:.3g} s") from None
        except Exception as err:
            raise WorldModelFault("raised", f"{self.config.backend} pipeline failed: {type(err).__name__}: {err}") from err
        return [_resize(img, h, w) for img, (h, w) in zip(self._check(out, len(batch), height, width), sizes)]

    def _check(self, out: Any, n: int, height: int, width: int) -> np.ndarray:
        want = (n, height, width, 3)
        if not isinstance(out, np.ndarray) or out.shape != want:
            got = tuple(out.shape) if isinstance(out, np.ndarray) else type(out).__name__
            raise WorldModelFault("bad_output", f"pipeline returned {got}, expected images of shape {want}")
        if not np.isfinite(out).all():
            raise WorldModelFault("bad_output", "pipeline returned non-finite pixel values")
        return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)

    def _generator(self):
        if self.config.seed is None:
            return None
        import torch

        return torch.Generator(device=self.pipeline.device).manual_seed(self.config.seed)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _stop_when(cancel: threading.Event):
    def callback(pipe, step: int, timestep, tensors: dict) -> dict:
        if cancel.is_set():
            raise _Cancelled
        return tensors

    return callback


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
