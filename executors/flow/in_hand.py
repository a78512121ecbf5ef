"""Where the held block hangs under the cup, read off the wrist camera: the executor's in-hand offset.

The flow executor steers the *cup* to the place its maps find, and a block held 1.5 cm off the cup's centre lands
1.5 cm off, whatever the place map got right (oracle agent, held-out `stack`: at releases over the lower block the
held block sat 1.57 cm from the cup, the place the executor steered to was 1.11 cm from the lower block). Trained
on expert recordings whose expert grasped off-centre and moved the cup by the offset, the executor did not learn to
do the same. `InHandOffset` estimates the offset from the wrist camera, which rides on the gantry and sees the held
block's edge below it; `FlowExecutor(in_hand=DIR)` then steers the cup to the place minus the offset while the
gripper holds, as the expert does (in-hand pose estimation before a placement, as pick-and-place cells do it).

A small CNN on the wrist image, trained on rendered views with known offsets (`hybrid.envs.tabletop.in_hand`):
`hybrid train executor=in_hand out=DIR`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from executors.flow.processor_flow import resize

log = logging.getLogger(__name__)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
UNIT = 100.0  # the network speaks centimetres: offsets of 0-3 cm, not 0-0.03


@dataclass
class InHandConfig:
    camera: str = "wrist"  # the camera on the gripper that sees the held block
    image_size: int = 96  # square input, pixels
    widths: list[int] = field(default_factory=lambda: [32, 32, 64, 64])  # channels of the stride-2 conv layers
    hidden: int = 128

    def __post_init__(self):
        if self.image_size < 2 ** len(self.widths) or not self.widths or min(self.widths) < 8 or self.hidden < 1:
            raise ValueError(f"InHandConfig: invalid {asdict(self)}")


class InHandOffset(nn.Module):
    """Wrist image ``(N, 3, H, W)`` uint8 -> the held block's centre minus the cup's, ``(N, 2)`` metres, in the
    state's x and y."""

    def __init__(self, cfg: InHandConfig):
        super().__init__()
        self.cfg = cfg
        layers, channels, size = [], 3, cfg.image_size
        for width in cfg.widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.GELU()]
            channels, size = width, math.ceil(size / 2)
        # Flattened, not pooled: where the block shows in the image is the answer.
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels * size * size, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InHandOffset: expected images (N, 3, H, W), got {tuple(images.shape)}")
        x = resize(images, size).float() / 255
        return self.head(self.features(x)) / UNIT

    @torch.inference_mode()
    def estimate(self, image: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 image -> the offset ``(2,)`` in metres."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"InHandOffset: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        device = next(self.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
        return self(x)[0].float().cpu().numpy()

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.cfg), indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> InHandOffset:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"InHandOffset: no {CONFIG_NAME} in {directory}")
        model = cls(InHandConfig(**json.loads((directory / CONFIG_NAME).read_text())))
        model.load_state_dict(load_file(directory / WEIGHTS_NAME))
        return model.to(device).eval()


def offset_errors(model: InHandOffset, images: np.ndarray, offsets: np.ndarray, batch: int = 256) -> np.ndarray:
    """Distance (m) between each estimated and true offset."""
    with torch.inference_mode():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        found = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()
    return np.linalg.norm(found - offsets, axis=1)


def train_in_hand(out: str, samples: int = 40000, val_samples: int = 2000, steps: int = 3000, batch_size: int = 64,
                  lr: float = 2.0e-3, weight_decay: float = 1.0e-4, image_size: int = 96, camera: str = "wrist",
                  max_offset: float = 0.03, seed: int = 0, threads: int | None = None, log_every: int = 500,
                  resume: bool = False) -> dict:
    """Render ``samples`` labelled views of the tabletop (and ``val_samples`` more from other scenes), train an
    `InHandOffset` on them with a one-cycle schedule and write it to ``out`` with ``metrics.json``. ``resume``: a run
    whose model is written already is not repeated (its metrics are returned)."""
    from tqdm.auto import tqdm

    from hybrid.envs.tabletop.in_hand import held_block_views

    if resume and (Path(out) / WEIGHTS_NAME).is_file() and (Path(out) / "metrics.json").is_file():
        return json.loads((Path(out) / "metrics.json").read_text())
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    start = time.perf_counter()
    images, offsets = held_block_views(samples, seed, image_size, camera, max_offset, progress=True)
    val_images, val_offsets = held_block_views(val_samples, seed + 1, image_size, camera, max_offset)
    model = InHandOffset(InHandConfig(camera=camera, image_size=image_size))
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(offsets)
    optimizer = torch.optim.AdamW(model.parameters(), lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in (bar := tqdm(range(steps), desc="train in-hand offset")):
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        loss = nn.functional.smooth_l1_loss(model(x[idx]) * UNIT, y[idx] * UNIT)  # Huber in centimetres
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    errors = offset_errors(model, val_images, val_offsets)
    metrics = {"val_error_cm_p50": round(100 * float(np.median(errors)), 3),
               "val_error_cm_p90": round(100 * float(np.quantile(errors, 0.9)), 3),
               "val_offset_cm_p50": round(100 * float(np.median(np.linalg.norm(val_offsets, axis=1))), 3),
               "samples": samples, "steps": steps, "minutes": round((time.perf_counter() - start) / 60, 1)}
    model.save_pretrained(out)
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("in-hand offset: %s", metrics)
    print(json.dumps(metrics))
    return metrics
