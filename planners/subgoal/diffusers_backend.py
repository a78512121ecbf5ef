"""Loading and calling the diffusers image-edit pipelines a world model can sit on.

Each backend is a pipeline class plus how to call it for a batch of (current image, prompt) pairs.
Every pipeline is loaded from a local directory only (`save_pretrained` layout, `model_index.json`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from planners.subgoal.configuration import WorldModelConfig

# backend -> (module, pipeline class)
PIPELINES: dict[str, tuple[str, str]] = {
    "tabletop": ("planners.subgoal.tabletop_model", "TabletopSubgoalPipeline"),
    "instruct_pix2pix": ("diffusers", "StableDiffusionInstructPix2PixPipeline"),
    "flux_kontext": ("diffusers", "FluxKontextPipeline"),
    "qwen_image_edit": ("diffusers", "QwenImageEditPipeline"),
}

StepCallback = Callable[[Any, int, Any, dict], dict]


def pipeline_class(backend: str) -> type:
    module, name = PIPELINES[backend]
    return getattr(importlib.import_module(module), name)


def detect_backend(path: str | Path) -> str:
    """The backend whose pipeline class saved ``path`` (from its `model_index.json`)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path}: no model_index.json; expected a diffusers pipeline saved with save_pretrained")
    name = json.loads(index.read_text())["_class_name"]
    for backend, (_, cls) in PIPELINES.items():
        if cls == name:
            return backend
    raise ValueError(f"{path}: pipeline class {name} is not one of {sorted(c for _, c in PIPELINES.values())}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_pipeline(path: str | Path, config: WorldModelConfig):
    """The backend's pipeline from ``path`` on the configured device/dtype, with the configured scheduler."""
    import diffusers
    import torch

    cls = pipeline_class(config.backend)
    kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, config.dtype), "local_files_only": True}
    if config.backend == "instruct_pix2pix":
        # Subgoals are robot scenes, not user-facing images: no NSFW checker (and none to download).
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(str(path), **kwargs)
    if config.scheduler or config.scheduler_kwargs:
        scheduler_cls = getattr(diffusers, config.scheduler) if config.scheduler else type(pipe.scheduler)
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **config.scheduler_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(config.device))


def generate(pipe, config: WorldModelConfig, images: list[np.ndarray], prompts: list[str], height: int, width: int,
             generator=None, callback: StepCallback | None = None) -> np.ndarray:
    """One batch: subgoal images as float [B, H, W, 3] in [0, 1] (whatever size the pipeline returned)."""
    from PIL import Image

    pil = [Image.fromarray(im) for im in images]
    common: dict[str, Any] = dict(num_inference_steps=config.num_inference_steps, generator=generator,
                                  output_type="np", callback_on_step_end=callback)
    if config.backend in ("tabletop", "instruct_pix2pix"):
        call = dict(image=pil, prompt=prompts, guidance_scale=config.guidance_scale,
                    image_guidance_scale=config.image_guidance_scale)
        if config.negative_prompt is not None and config.backend == "instruct_pix2pix":
            call["negative_prompt"] = [config.negative_prompt] * len(prompts)
    elif config.backend == "flux_kontext":
        # Kontext picks its own size from max_area unless told: generate exactly the requested size.
        call = dict(image=pil, prompt=prompts, guidance_scale=config.guidance_scale, height=height, width=width,
                    max_area=height * width, _auto_resize=False)
        if config.negative_prompt is not None:
            call.update(negative_prompt=[config.negative_prompt] * len(prompts), true_cfg_scale=config.guidance_scale)
    elif config.backend == "qwen_image_edit":
        # Qwen-Image-Edit has true CFG only: it is on when guidance > 1 and a negative prompt is given.
        negative = config.negative_prompt if config.negative_prompt is not None else " "
        call = dict(image=pil, prompt=prompts, true_cfg_scale=config.guidance_scale, height=height, width=width,
                    negative_prompt=[negative] * len(prompts) if config.guidance_scale > 1 else None)
    else:
        raise ValueError(f"backend: unknown {config.backend!r}")
    out = pipe(**common, **call, **config.call_kwargs).images
    return np.asarray(out) if not isinstance(out, np.ndarray) else out
