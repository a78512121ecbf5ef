"""A success detector: is the instruction's task finished in what the cameras show? The planner's evidence for "done".

A planner trained from scratch says "done" from its history of subtasks and one low-resolution picture: after a
release it cannot tell a placed block from a missed one, and once its history holds a block that was never placed as
finished it says "done" with blocks left (traced in the tabletop's bowl families). Success detection is a task of its
own in the field (Du et al., 2023, "Vision-language models as success detectors"): a classifier of (instruction,
observation) -> finished, trained on episodes whose end is known. `SuccessDetector` is a small one: a CNN over each
camera (the front camera sees which blocks are left), a word-level embedding of the instruction (an unknown word is
one token, as word noise teaches it), and a transformer encoder over both whose first token is read out. The planner
takes "done" on its word after a release, where its own replies rank "done" first too, and can refuse "done"
against it (`SuccessCheck`).

`hybrid train planner=success data=DIR out=DIR` trains one on LeRobot recordings (`planners/subtask/train_success.py`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)
CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME = "config.json", "model.safetensors", "vocab.json"
PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"
_WORD = re.compile(r"[a-z]+|[^\sa-z]")


def words(text: str) -> list[str]:
    """The instruction's words, lower case, each punctuation mark a word of its own."""
    return _WORD.findall(text.lower())


@dataclass
class SuccessConfig:
    # read together, in this order; the front camera alone by default: with the wrist camera beside it the tabletop's
    # detector read the view of a release, not the blocks left (docs/experiments.md, "A success detector")
    cameras: list[str] = field(default_factory=lambda: ["front"])
    image_size: int = 96  # square input per camera, pixels
    widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128])  # stride-2 conv stages; the last: the width
    layers: int = 2  # transformer encoder layers over the text and image tokens
    heads: int = 4
    max_words: int = 32  # longer instructions are cut

    def __post_init__(self):
        if (not self.cameras or len(set(self.cameras)) != len(self.cameras) or not self.widths
                or self.image_size < 2 ** len(self.widths) or self.widths[-1] % self.heads or self.layers < 1
                or self.max_words < 1):
            raise ValueError(f"SuccessConfig: invalid {asdict(self)}")

    @property
    def grid(self) -> int:
        """Image tokens per side of one camera."""
        size = self.image_size
        for _ in self.widths:
            size = math.ceil(size / 2)
        return size


class SuccessDetector(nn.Module):
    """(images ``(N, cameras, 3, H, W)`` uint8, word ids ``(N, L)``) -> ``(N,)`` logits that the task is finished."""

    def __init__(self, cfg: SuccessConfig, vocab: list[str]):
        super().__init__()
        if vocab[:3] != [PAD, UNK, CLS]:
            raise ValueError(f"SuccessDetector: the vocabulary must begin with {[PAD, UNK, CLS]}, got {vocab[:3]}")
        self.cfg, self.vocab = cfg, list(vocab)
        self._ids = {w: i for i, w in enumerate(self.vocab)}
        layers, channels = [], 3
        for width in cfg.widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.GELU()]
            channels = width
        self.conv = nn.Sequential(*layers)
        dim = cfg.widths[-1]
        self.embed = nn.Embedding(len(self.vocab), dim, padding_idx=0)
        self.word_pos = nn.Parameter(torch.zeros(cfg.max_words + 1, dim))
        # where each image token lies, per camera: the answer hangs on where the blocks are
        self.image_pos = nn.Parameter(torch.zeros(len(cfg.cameras), cfg.grid * cfg.grid, dim))
        nn.init.normal_(self.word_pos, std=0.02)
        nn.init.normal_(self.image_pos, std=0.02)
        block = nn.TransformerEncoderLayer(dim, cfg.heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def word_ids(self, texts: list[str]) -> torch.Tensor:
        """``(N, 1 + max_words)`` ids: the read-out token, then the words (unknown ones `UNK`), padded."""
        out = torch.zeros(len(texts), self.cfg.max_words + 1, dtype=torch.long)
        out[:, 0] = self._ids[CLS]
        for n, text in enumerate(texts):
            ids = [self._ids.get(w, 1) for w in words(text)][: self.cfg.max_words]
            out[n, 1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def forward(self, images: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        cams, size = len(self.cfg.cameras), self.cfg.image_size
        if images.ndim != 5 or images.shape[1] != cams or images.shape[2] != 3:
            raise ValueError(f"SuccessDetector: expected images (N, {cams}, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (size, size):
            from executors.flow.processor_flow import resize

            images = resize(images.flatten(0, 1), size).unflatten(0, images.shape[:2])
        n = images.shape[0]
        x = images.flatten(0, 1).float() / 255 if images.dtype == torch.uint8 else images.flatten(0, 1).float()
        feats = self.conv(x).flatten(2).transpose(1, 2)  # (N * cams, grid², dim)
        feats = (feats.unflatten(0, (n, cams)) + self.image_pos).flatten(1, 2)
        text = self.embed(word_ids) + self.word_pos[: word_ids.shape[1]]
        mask = torch.cat([word_ids == 0, torch.zeros(feats.shape[:2], dtype=torch.bool, device=feats.device)], 1)
        mask[:, 0] = False  # the read-out token
        out = self.encoder(torch.cat([text, feats], 1), src_key_padding_mask=mask)
        return self.head(self.norm(out[:, 0]))[:, 0]

    @torch.inference_mode()
    def prob(self, images: dict[str, np.ndarray], instruction: str) -> float:
        """The probability that ``instruction`` is finished, from one observation's ``(H, W, 3)`` uint8 images."""
        missing = [c for c in self.cfg.cameras if c not in images]
        if missing:
            raise ValueError(f"SuccessDetector: missing camera(s) {missing}; got {sorted(images)}")
        views = []
        for cam in self.cfg.cameras:
            image = np.asarray(images[cam])
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ValueError(f"SuccessDetector: camera {cam!r}: expected uint8 (H, W, 3), got {image.dtype} "
                                 f"{image.shape}")
            views.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) > 1:  # cameras of other sizes: each to the model's own
            from executors.flow.processor_flow import resize

            views = [resize(v[None], self.cfg.image_size)[0] for v in views]
        device = next(self.parameters()).device
        logit = self(torch.stack(views)[None].to(device), self.word_ids([instruction]).to(device))
        return float(torch.sigmoid(logit.float())[0])

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.cfg), indent=2))
        (directory / VOCAB_NAME).write_text(json.dumps(self.vocab))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> SuccessDetector:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"SuccessDetector: no {CONFIG_NAME} in {directory}")
        model = cls(SuccessConfig(**json.loads((directory / CONFIG_NAME).read_text())),
                    json.loads((directory / VOCAB_NAME).read_text()))
        model.load_state_dict(load_file(directory / WEIGHTS_NAME))
        return model.to(device).eval()


class SuccessCheck(BaseModel):
    """The planner's ``success`` setting: a detector's word on "done" (None: off)."""

    model_config = ConfigDict(extra="forbid")
    model: str  # a `SuccessDetector` directory
    # after a release under the subtask under way, with the gripper open: "done" once the detector is this sure
    done_at: float | None = Field(0.9, gt=0, le=1)
    # with done_at: "done" also needs the planner to rank it this many nats above every new subtask among its replies
    # (the subtask under way aside; needs candidate replies): two readings of the scene that must agree (None: not)
    done_nats: float | None = Field(None, gt=0)
    # a "done" the planner chose otherwise is refused while the detector is less sure than this (None: never)
    refuse_below: float | None = Field(0.5, ge=0, le=1)
    # after a release under the subtask under way, with the gripper open: that subtask is finished once the detector,
    # asked about it, is this sure, and gives way to a new one (a detector trained with subtask questions; None: off)
    subtask_at: float | None = Field(None, gt=0, le=1)
    device: str = "cpu"
