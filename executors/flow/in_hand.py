"""Where the held block hangs under the cup, read off the wrist camera: the executor's in-hand offset.

The flow executor steers the *cup* to the place its maps find, and a block held 1.5 cm off the cup's centre lands
1.5 cm off, whatever the place map got right (oracle agent, held-out `stack`: at releases over the lower block the
held block sat 1.57 cm from the cup, the place the executor steered to was 1.11 cm from the lower block). Trained
on expert recordings whose expert grasped off-centre and moved the cup by the offset, the executor did not learn to
do the same. `InHandOffset` estimates the offset from the wrist camera, which rides on the gantry and sees the held
block's edge below it; `FlowExecutor(in_hand=DIR)` then steers the cup to the place minus the offset while the
gripper holds, as the expert does (in-hand pose estimation before a placement, as pick-and-place cells do it).

With ``support`` the same network also finds the *support* under the held block, the block (or tower top) a stack
goes on, and how far its centre is from the cup's: the place map reads it off the front camera 1.1 cm off (median,
oracle `stack`), the wrist camera sees it from above the held block. With the true support and offset instead of
the maps' place, the oracle agent stacked 0.69 of 100 held-out episodes against 0.27 (transit height on in both).

With ``colours`` it also names the held block's colour: a grasp check (`executors/flow/grasp_check.py`) lets go of a
block of another colour than the subtask asks for. With ``empty`` as well whether the cup holds nothing at all: the
executor sometimes comes down beside a block (or on one already in its bowl) and rises with the suction on and nothing
held, then carries nothing to the place (hierarchical `sort`, 26 held-out seeds: 35 such lifts, 2-5 in each of the
first 5 failures).

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
    convs_per_stage: int = 1  # 3x3 convolutions at each resolution (the first of them strided)
    support: bool = False  # also the support under the held block: its offset from the cup, and whether there is one
    colours: list[str] = field(default_factory=list)  # also the held block's colour, one of these names (none: not)
    empty: bool = False  # with colours, one more class: the cup holds nothing
    # with colours and support, the support's (top block's) colour too, or none under the held block (one more class)
    support_colours: bool = False

    def __post_init__(self):
        if (self.image_size < 2 ** len(self.widths) or not self.widths or min(self.widths) < 8 or self.hidden < 1
                or self.convs_per_stage < 1 or len(set(self.colours)) != len(self.colours)
                or (self.empty and not self.colours)
                or (self.support_colours and not (self.colours and self.support))):
            raise ValueError(f"InHandConfig: invalid {asdict(self)}")


@dataclass
class WristReading:
    """What `InHandOffset.read` finds in one wrist image: offsets from the cup's centre in metres, in the state's x
    and y; ``support`` None for a model without it (`InHandConfig.support`)."""

    held: np.ndarray  # (2,) the held block's centre minus the cup's
    support: np.ndarray | None = None  # (2,) the support's top centre minus the cup's
    support_prob: float = 0.0  # how likely a support is under the held block at all
    colours: dict[str, float] = field(default_factory=dict)  # each colour name's probability (empty: no colour head)
    nothing: float = 0.0  # the probability that the cup holds nothing (`InHandConfig.empty`; the colours' sum is 1 - it)
    # the support's colour probabilities (`InHandConfig.support_colours`; empty: no such head), and that of none
    support_colours: dict[str, float] = field(default_factory=dict)
    no_support: float = 0.0


class InHandOffset(nn.Module):
    """Wrist image ``(N, 3, H, W)`` uint8 -> ``(N, 2)``: the held block's centre minus the cup's, metres, in the
    state's x and y; with `InHandConfig.support` ``(N, 5)``: then the support's offset and its presence logit; with
    `InHandConfig.colours` as many more: the held block's colour logits (and with `InHandConfig.empty` one more: nothing
    held); with `InHandConfig.support_colours` one per colour and one more, the last: the support's, or none."""

    def __init__(self, cfg: InHandConfig):
        super().__init__()
        self.cfg = cfg
        layers, channels, size = [], 3, cfg.image_size
        for width in cfg.widths:
            for k in range(cfg.convs_per_stage):
                layers += [nn.Conv2d(channels, width, 3, stride=1 if k else 2, padding=1), nn.GroupNorm(8, width),
                           nn.GELU()]
                channels = width
            size = math.ceil(size / 2)
        # Flattened, not pooled: where the block shows in the image is the answer.
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels * size * size, cfg.hidden), nn.GELU(),
                                  nn.Linear(cfg.hidden, self.offsets + int(cfg.support) + self.classes
                                            + self.support_classes))

    @property
    def offsets(self) -> int:
        """How many of the outputs are offsets (metres): the held block's xy, and the support's with one."""
        return 4 if self.cfg.support else 2

    @property
    def classes(self) -> int:
        """How many colour logits there are: a colour's each, and with `InHandConfig.empty` nothing's (the last)."""
        return len(self.cfg.colours) + int(self.cfg.empty) if self.cfg.colours else 0

    @property
    def support_classes(self) -> int:
        """How many support colour logits there are: a colour's each and none's (the last); 0 without the head."""
        return len(self.cfg.colours) + 1 if self.cfg.support_colours else 0

    def colour_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The held block's colour logits ``(..., classes)`` among `forward`'s ``outputs``."""
        start = self.offsets + int(self.cfg.support)
        return outputs[..., start : start + self.classes]

    def support_colour_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The support's colour logits ``(..., support_classes)`` among `forward`'s ``outputs`` (the last of them)."""
        return outputs[..., outputs.shape[-1] - self.support_classes :]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InHandOffset: expected images (N, 3, H, W), got {tuple(images.shape)}")
        x = resize(images, size).float() / 255
        out = self.head(self.features(x))
        return torch.cat([out[:, : self.offsets] / UNIT, out[:, self.offsets :]], dim=1)  # offsets in metres; logits

    @torch.inference_mode()
    def read(self, image: np.ndarray) -> WristReading:
        """One ``(H, W, 3)`` uint8 image -> the offsets in it."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"InHandOffset: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        device = next(self.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
        out = self(x)[0].float()
        colours, nothing, supports, no_support = {}, 0.0, {}, 0.0
        if self.cfg.colours:
            probs = torch.softmax(self.colour_logits(out), 0).cpu().numpy()
            named = probs[: len(self.cfg.colours)]  # and with `empty`, nothing's the last
            colours = {name: float(p) for name, p in zip(self.cfg.colours, named, strict=True)}
            nothing = float(probs[-1]) if self.cfg.empty else 0.0
        if self.cfg.support_colours:
            probs = torch.softmax(self.support_colour_logits(out), 0).cpu().numpy()
            supports = {name: float(p) for name, p in zip(self.cfg.colours, probs[:-1], strict=True)}
            no_support = float(probs[-1])
        out = out.cpu().numpy()
        if not self.cfg.support:
            return WristReading(out[:2], colours=colours, nothing=nothing)
        return WristReading(out[:2], out[2:4], float(1.0 / (1.0 + np.exp(-out[4]))), colours, nothing, supports,
                            no_support)

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


def predict(model: InHandOffset, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's raw outputs for ``(N, H, W, 3)`` uint8 images: ``(N, 2)`` or ``(N, 5)``, and the colour logits."""
    with torch.inference_mode():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).float().numpy()


def view_metrics(model: InHandOffset, views) -> dict:
    """Held-out errors on `WristViews`: the held offset's (cm), and with supports the support offset's on the views
    that have one (cm, overall and by side of the cup in x: the camera sits in front of the cup, +x, so a support
    behind it hides under the held block) and how often the presence is called right; with colours, how often the held
    block's is named right and how often its probability falls under 0.1 (where a grasp check would let it go)."""
    found = predict(model, views.images)
    holds = views.holds  # the offsets of views holding nothing mean nothing
    held = 100 * np.linalg.norm(found[holds, :2] - views.held[holds], axis=1)
    metrics = {"val_error_cm_p50": round(float(np.median(held)), 3),
               "val_error_cm_p90": round(float(np.quantile(held, 0.9)), 3),
               "val_offset_cm_p50": round(100 * float(np.median(np.linalg.norm(views.held[holds], axis=1))), 3)}
    if model.cfg.support and views.present.any():
        present = views.present
        errors = 100 * np.linalg.norm(found[present, 2:4] - views.support[present], axis=1)
        ahead = views.support[present, 0] >= 0
        metrics.update({
            "support_error_cm_p50": round(float(np.median(errors)), 3),
            "support_error_cm_p90": round(float(np.quantile(errors, 0.9)), 3),
            "support_error_cm_p50_ahead": round(float(np.median(errors[ahead])), 3) if ahead.any() else None,
            "support_error_cm_p50_behind": round(float(np.median(errors[~ahead])), 3) if (~ahead).any() else None,
            "support_presence_accuracy": round(float(np.mean((found[:, 4] > 0) == present)), 4)})
    if model.cfg.colours:
        logits = model.colour_logits(torch.from_numpy(found))
        truth = torch.from_numpy(views.colour)
        true_prob = torch.softmax(logits, 1).gather(1, truth[:, None])[:, 0]
        metrics.update({"colour_accuracy": round(float((logits.argmax(1) == truth).float().mean()), 4),
                        "colour_true_prob_below_0.1": round(float((true_prob < 0.1).float().mean()), 4)})
        if model.cfg.empty:  # nothing held: called so on empty views (recall), and on views holding a block
            called = (logits.argmax(1) == len(model.cfg.colours)).numpy()  # the last class
            metrics.update({"nothing_recall": round(float(called[~holds].mean()), 4) if (~holds).any() else None,
                            "nothing_when_held": round(float(called[holds].mean()), 4)})
    if model.cfg.support_colours:
        metrics.update(support_colour_metrics(model, found, views))
    return metrics


def support_colour_metrics(model: InHandOffset, found: np.ndarray, views) -> dict:
    """How the support's colour is read on `WristViews`: named right (a colour or none), and where a place check
    letting go of a support less likely than 0.1 to have the colour asked for would go wrong: the true support's
    colour under 0.1, and on views with no support, some colour 0.1 or more (the least that passes such a check)."""
    probs = torch.softmax(model.support_colour_logits(torch.from_numpy(found)), 1)
    truth = torch.from_numpy(views.support_colour)
    present = torch.from_numpy(views.present)
    true_prob = probs.gather(1, truth[:, None])[:, 0]
    return {"support_colour_accuracy": round(float((probs.argmax(1) == truth).float().mean()), 4),
            "support_colour_true_below_0.1": round(float((true_prob[present] < 0.1).float().mean()), 4),
            "no_support_colour_above_0.1": round(float((probs[~present, :-1].max(1).values >= 0.1).float().mean()), 4)}


def train_in_hand(out: str, samples: int = 40000, val_samples: int = 2000, steps: int = 3000, batch_size: int = 64,
                  lr: float = 2.0e-3, weight_decay: float = 1.0e-4, image_size: int = 96, camera: str = "wrist",
                  max_offset: float = 0.03, support: float = 0.0, support_radius: float = 0.05,
                  widths: list[int] | None = None, hidden: int = 128, convs_per_stage: int = 1, colour: bool = False,
                  empty: float = 0.0, support_colour: bool = False, seed: int = 0, threads: int | None = None,
                  log_every: int = 500, resume: bool = False) -> dict:
    """Render ``samples`` labelled views of the tabletop (and ``val_samples`` more from other scenes), train an
    `InHandOffset` on them with a one-cycle schedule and write it to ``out`` with ``metrics.json``. ``support`` > 0:
    that share of the views has a support under the held block, and the model learns to find it too. ``colour``: it
    learns to name the held block's colour too (one of the tabletop's `COLOURS`); ``empty`` > 0 (with ``colour``): that
    share of the views holds nothing, and the model learns to say so. ``support_colour`` (with ``colour`` and
    ``support``): it names the support's colour too, or that there is none (a place check reads it). ``widths``,
    ``hidden``, ``convs_per_stage``: the network (`InHandConfig`). ``resume``: a run whose model is written already
    is not repeated (its metrics are returned)."""
    from tqdm.auto import tqdm

    from hybrid.envs.tabletop.in_hand import wrist_views
    from hybrid.envs.tabletop.tasks import COLOURS

    if empty and not colour:
        raise ValueError("train_in_hand: empty needs colour=true (nothing held is one more colour class)")
    if support_colour and not (colour and support > 0):
        raise ValueError("train_in_hand: support_colour needs colour=true and support > 0")
    if resume and (Path(out) / WEIGHTS_NAME).is_file() and (Path(out) / "metrics.json").is_file():
        return json.loads((Path(out) / "metrics.json").read_text())
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    start = time.perf_counter()
    render = {"image_size": image_size, "camera": camera, "max_offset": max_offset, "support": support,
              "support_radius": support_radius, "empty": empty}
    views = wrist_views(samples, seed, progress=True, **render)
    val_views = wrist_views(val_samples, seed + 1, **render)
    shape = {"widths": [int(w) for w in widths]} if widths else {}
    model = InHandOffset(InHandConfig(camera=camera, image_size=image_size, hidden=hidden,
                                      convs_per_stage=convs_per_stage, support=support > 0,
                                      colours=list(COLOURS) if colour else [], empty=empty > 0,
                                      support_colours=support_colour, **shape))
    x = torch.from_numpy(views.images).permute(0, 3, 1, 2)
    held, where = torch.from_numpy(views.held), torch.from_numpy(views.support)
    present, colours = torch.from_numpy(views.present).float(), torch.from_numpy(views.colour)
    holds, support_colours = torch.from_numpy(views.holds).float(), torch.from_numpy(views.support_colour)
    optimizer = torch.optim.AdamW(model.parameters(), lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in (bar := tqdm(range(steps), desc="train in-hand offset")):
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        found = model(x[idx])
        per_view = nn.functional.smooth_l1_loss(found[:, :2] * UNIT, held[idx] * UNIT, reduction="none")  # Huber, cm
        loss = (per_view.mean(1) * holds[idx]).sum() / holds[idx].sum().clamp(min=1)
        if model.cfg.support:
            mask = present[idx]
            per_view = nn.functional.smooth_l1_loss(found[:, 2:4] * UNIT, where[idx] * UNIT, reduction="none")
            loss = loss + (per_view.sum(1) * mask).sum() / mask.sum().clamp(min=1) / 2
            loss = loss + nn.functional.binary_cross_entropy_with_logits(found[:, 4], mask)
        if model.cfg.colours:
            loss = loss + nn.functional.cross_entropy(model.colour_logits(found), colours[idx])
        if model.cfg.support_colours:  # none is the last class, as `NOTHING` is the last index
            loss = loss + nn.functional.cross_entropy(model.support_colour_logits(found), support_colours[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    metrics = {**view_metrics(model, val_views), "samples": samples, "steps": steps,
               "minutes": round((time.perf_counter() - start) / 60, 1)}
    model.save_pretrained(out)
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("in-hand offset: %s", metrics)
    print(json.dumps(metrics))
    return metrics
