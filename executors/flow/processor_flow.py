"""Everything between plan-stack records / dataset frames and the network's tensors.

Normalisation of state and actions (dataset statistics, kept as buffers so they are saved with the
weights), image resizing, tokenisation, and the checks that turn a bad observation into a ValueError
naming what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hybrid.types import Observation, Subgoal, Subtask, check_image, check_vector

TOKENIZER_DIR = "tokenizer"


def to_path(actions: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Raw action chunks ``(..., H, A)`` with the delta dimensions ``dims`` summed along the chunk."""
    path = actions.clone()
    path[..., dims] = actions[..., dims].cumsum(dim=-2)
    return path


def from_path(path: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """The inverse of `to_path`: each step's delta is its path point minus the one before (the first: itself)."""
    actions = path.clone()
    actions[..., 1:, dims] = path[..., 1:, dims] - path[..., :-1, dims]
    return actions


class Normalizer(nn.Module):
    """Mean/std normalisation of state and actions. Constant dimensions (std ≈ 0) are only centred.

    With ``path_dims`` the actions are normalised as paths (`to_path`), with statistics per chunk step
    ``(H, A)``: a path's spread grows along the chunk.
    """

    def __init__(self, state_dim: int, action_dim: int, chunk: int = 1, path_dims: list[int] | None = None):
        super().__init__()
        self.path_dims = list(path_dims or [])
        action_shape = (chunk, action_dim) if self.path_dims else (action_dim,)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_mean", torch.zeros(action_shape))
        self.register_buffer("action_std", torch.ones(action_shape))

    def set_stats(self, stats: dict, state_key: str, action_key: str) -> None:
        """Take LeRobot's ``dataset.meta.stats`` (feature -> {"mean", "std", ...})."""
        for prefix, key in (("state", state_key), ("action", action_key)):
            mean = torch.as_tensor(np.asarray(stats[key]["mean"], np.float32)).reshape(-1)
            std = torch.as_tensor(np.asarray(stats[key]["std"], np.float32)).reshape(-1)
            getattr(self, f"{prefix}_mean").copy_(mean)
            getattr(self, f"{prefix}_std").copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def state(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.state_mean) / self.state_std

    def set_path_stats(self, chunks: np.ndarray, is_pad: np.ndarray) -> None:
        """Per-step statistics of the paths of a recording's action chunks: raw ``chunks`` ``(N, H, A)`` and
        their padding ``(N, H)`` (steps past an episode's end, left out)."""
        valid = torch.from_numpy(~is_pad)[..., None]
        paths = to_path(torch.from_numpy(chunks).double(), self.path_dims)
        count = valid.sum(0)
        mean = (paths * valid).sum(0) / count
        std = (((paths - mean) ** 2 * valid).sum(0) / count).sqrt()
        self.action_mean.copy_(mean.float())
        self.action_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std).float())

    def _action_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.path_dims:
            return self.action_mean, self.action_std
        steps = x.shape[-2]  # a chunk's first steps (a real-time-chunking prefix) use the first rows
        return self.action_mean[:steps], self.action_std[:steps]

    def action(self, x: torch.Tensor) -> torch.Tensor:
        """Raw action chunks ``(..., H, A)`` -> what the flow learns (paths where `path_dims` say so)."""
        mean, std = self._action_stats(x)
        return ((to_path(x, self.path_dims) if self.path_dims else x) - mean) / std

    def unaction(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._action_stats(x)
        x = x * std + mean
        return from_path(x, self.path_dims) if self.path_dims else x

    def waypoints(self, x: torch.Tensor) -> torch.Tensor:
        """Pick and place xy ``(..., 4)`` normalised like the state's first two dimensions (the effector's xy)."""
        return (x - self.state_mean[:2].repeat(2)) / self.state_std[:2].repeat(2)

    def unwaypoints(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.state_std[:2].repeat(2) + self.state_mean[:2].repeat(2)


class ByteTokenizer:
    """UTF-8 bytes, cut or padded with 0 to a fixed length."""

    def __init__(self, max_len: int):
        self.max_len = max_len

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for row, text in enumerate(texts):
            data = text.encode("utf-8")[: self.max_len]
            ids[row, : len(data)] = torch.tensor(list(data), dtype=torch.long)
        return ids

    def save_pretrained(self, directory: str | Path) -> None:
        """Nothing to save: the byte vocabulary is fixed."""


class HFTokenizer:
    """A transformers tokenizer padded to a fixed length (SigLIP's text tower is trained that way)."""

    def __init__(self, path: str | Path, max_len: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.max_len = max_len

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_len,
                              return_tensors="pt")["input_ids"]

    def save_pretrained(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(str(Path(directory) / TOKENIZER_DIR))


def load_tokenizer(cfg, checkpoint: str | Path | None = None):
    """The tokenizer of ``cfg.text``; a saved executor carries its own copy under ``tokenizer/``."""
    if cfg.text == "bytes":
        return ByteTokenizer(cfg.max_text_len)
    saved = Path(checkpoint) / TOKENIZER_DIR if checkpoint is not None else None
    return HFTokenizer(saved if saved is not None and saved.is_dir() else cfg.text_path, cfg.max_text_len)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float [0, 1] ``(N, 3, H, W)`` -> uint8 ``(N, 3, size, size)``; the one resize of training
    and inference, so both see the same pixels."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _stack_images(field: str, images: dict, cameras: list[str], size: int) -> torch.Tensor:
    missing = [cam for cam in cameras if cam not in images]
    if missing:
        raise ValueError(f"{field}: missing camera(s) {missing}; expected {cameras}, got {sorted(images)}")
    chw = [torch.from_numpy(np.ascontiguousarray(check_image(f"{field}[{cam!r}]", images[cam]))).permute(2, 0, 1)
           for cam in cameras]
    return torch.stack([resize(img[None], size)[0] for img in chw])


def observation_batch(cfg, tokenizer, obs: Observation, subtask: Subtask | None,
                      subgoal: Subgoal | None) -> dict[str, torch.Tensor]:
    """A batch of one from the plan-stack records, or a ValueError naming what is wrong."""
    state = check_vector("observation.state", obs.state)
    if state.shape != (cfg.state_dim,):
        raise ValueError(f"observation.state: expected {cfg.state_dim} values, got shape {tuple(state.shape)}")
    if cfg.conditioning == "instruction" or subtask is None:
        text = obs.instruction
        if not text:
            need = "an instruction" if cfg.conditioning == "instruction" else "a subtask or an instruction"
            raise ValueError(f"observation.instruction: this executor needs {need}, got none")
    else:
        text = subtask.text
    batch = {
        "images": _stack_images("observation.images", obs.images, cfg.cameras, cfg.image_size)[None],
        "state": torch.from_numpy(state)[None],
        "text_ids": tokenizer([text]),
    }
    if cfg.use_subgoal:
        if subgoal is not None:
            batch["subgoal"] = _stack_images("subgoal.images", subgoal.images, cfg.subgoal_cameras,
                                             cfg.image_size)[None]
        batch["has_subgoal"] = torch.tensor([subgoal is not None])
    return batch
