"""In-process backend: any `AutoModelForImageTextToText` + `AutoProcessor` directory with a chat template
(Qwen2.5-VL, Qwen3-VL, SmolVLM, or the small tabletop planner trained here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from planners.subtask.planner import VLMPlanner
from planners.subtask.replan import ReplanPolicy

# Written beside a trained planner's weights: the prompt it was trained on and its subtask vocabulary.
SETTINGS_FILE = "planner.json"


def load_settings(model_dir: str | Path | None) -> dict:
    path = Path(model_dir) / SETTINGS_FILE if model_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


class TransformersBackend:
    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 64):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device, self.max_new_tokens = device, int(max_new_tokens)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        self.model.to(device).eval()

    def inputs(self, messages: list[dict], images: list[np.ndarray]):
        from PIL import Image

        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pil = [Image.fromarray(img) for img in images]
        return self.processor(text=[text], images=pil, return_tensors="pt").to(self.device)

    def complete(self, messages: list[dict], image: np.ndarray) -> str:
        import torch

        inputs = self.inputs(messages, [image])
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0]


def transformers_planner(model: str, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 64,
                         prompt: dict | None = None, vocabulary: list[str] | None = None,
                         max_attempts: int = 3, replan: dict | ReplanPolicy | None = None) -> VLMPlanner:
    """A `VLMPlanner` on a local model directory; its saved prompt and vocabulary are the defaults."""
    saved = load_settings(model)
    return VLMPlanner(TransformersBackend(model, device, dtype, max_new_tokens),
                      prompt={**saved.get("prompt", {}), **dict(prompt or {})},
                      vocabulary=vocabulary if vocabulary is not None else saved.get("vocabulary"),
                      max_attempts=max_attempts, replan=replan)
