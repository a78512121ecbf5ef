"""Training of the flow-matching executor on a LeRobot dataset.

`hybrid train executor=<config> data=DIR out=DIR [key=value ...]` composes
`configs/train/executor/<config>.yaml` and calls `train` with its keys. AdamW with warmup + cosine,
an EMA of the weights (what checkpoints hold), gradient clipping, bf16 autocast and multi-GPU through
`accelerate` (`accelerate launch -m hybrid.cli train ...`), periodic checkpoints and `resume=true`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from executors.flow.configuration_flow import FlowConfig
from executors.flow.modeling_flow import FlowModel
from executors.flow.processor_flow import load_tokenizer, resize
from executors.flow.waypoints import far_from_effector, pick_place_waypoints, release_heights
from hybrid.data import FEATURES, SubtaskIndex, action_chunks, decode_camera, numeric_column, open_dataset
from hybrid.data.augment import ColourSwap, tabletop_colour_swap

log = logging.getLogger(__name__)
CAMERA_PREFIX = "observation.images."
STATE_FILE = "training_state.pt"


class FlowDataset(Dataset):
    """Training samples: observation, text, hindsight subgoal (or none), action chunk and its padding.

    With ``cache`` every frame is decoded once (`hybrid.data.decode_camera`) and resized to the model's
    image size, and state and action chunks are read from memory (video decoding on the CPU is far
    slower than a training step of a small model); without it, each sample is read through LeRobot's
    delta timestamps (large datasets, data-loader workers).

    With ``colour_swap`` > 0 that fraction of samples has its colours permuted in the text and in every
    image alike (`hybrid.data.augment`; the tabletop's palette), so the executor meets colour pairs the
    recording does not hold. With a waypoint head (``cfg.waypoint_loss``) samples carry the hindsight pick
    and place xy of their subtask (`executors.flow.waypoints`): which of them supervise the head
    (``waypoints_valid``, far from the effector) and which are known at all (``waypoints_known``).
    """

    def __init__(self, dataset, index: SubtaskIndex, cfg: FlowConfig, tokenizer, cache: bool = True,
                 colour_swap: float = 0.0, waypoint_min_distance: float = 0.0):
        self.dataset, self.index, self.cfg, self.tokenizer = dataset, index, cfg, tokenizer
        self.texts = index.subtask_text if cfg.conditioning == "subtask" else index.instruction
        self.subgoal_rows = [cfg.cameras.index(cam) for cam in cfg.subgoal_cameras]
        self.images = None
        if cache:
            # [N, cameras, 3, s, s] uint8, filled in place as each video file is decoded.
            self.images = torch.empty(len(dataset), len(cfg.cameras), 3, cfg.image_size, cfg.image_size,
                                      dtype=torch.uint8)
            for c, cam in enumerate(cfg.cameras):
                decode_camera(dataset, CAMERA_PREFIX + cam, progress=True, resize=self._resize,
                              out=self.images[:, c].permute(0, 2, 3, 1).numpy())
        if cache or cfg.waypoint_loss > 0:
            self.state = torch.from_numpy(numeric_column(dataset, FEATURES["state"]))
            self.actions = numeric_column(dataset, FEATURES["action"])
        if cfg.waypoint_loss > 0:
            # Known: where the recording says the subtask goes, near or far (the expert's steering target);
            # valid: the known ones far enough from the effector to supervise the head.
            state = self.state.numpy()
            targets, known = pick_place_waypoints(state, self.actions, index.subtask_end)
            valid = far_from_effector(state, targets, known, waypoint_min_distance)
            self.waypoints, self.waypoints_valid = torch.from_numpy(targets), torch.from_numpy(valid)
            self.waypoints_known = torch.from_numpy(known)
            if cfg.waypoint_place_height:  # where the effector let go, in height too
                heights = release_heights(state, self.actions, index.subtask_end) - cfg.place_height_below
                self.place_height = torch.from_numpy(heights)
        self.colour_swap = colour_swap
        self.swap = tabletop_colour_swap() if colour_swap > 0 else None

    def _resize(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W, 3] -> [n, s, s, 3] with the executor's own resize (what it sees when acting)."""
        return resize(torch.from_numpy(frames).permute(0, 3, 1, 2), self.cfg.image_size).permute(0, 2, 3, 1).numpy()

    def _decode(self, i: int) -> dict[str, torch.Tensor]:
        item = self.dataset[i]
        images = torch.stack([item[CAMERA_PREFIX + cam] for cam in self.cfg.cameras])
        return {
            "images": resize(images, self.cfg.image_size),
            "state": item[FEATURES["state"]].float(),
            "actions": item[FEATURES["action"]].float(),
            "action_is_pad": item[FEATURES["action"] + "_is_pad"].bool(),
        }

    def _frame(self, i: int) -> dict[str, torch.Tensor]:
        if self.images is None:
            return self._decode(i)
        actions, pad = action_chunks(self.actions, self.index.episode_end, i, self.cfg.chunk)
        return {"images": self.images[i], "state": self.state[i], "actions": torch.from_numpy(actions),
                "action_is_pad": torch.from_numpy(pad)}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self._frame(i)
        # torch's RNG: seeded per run in the main process and per worker by the DataLoader.
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        text = self.texts[i]
        if self.cfg.use_subgoal:
            goal = self.index.hindsight_goal(i, rng)
            goal_images = self.images[goal] if self.images is not None else self._decode(goal)["images"]
            sample["subgoal"] = goal_images[self.subgoal_rows]
            sample["has_subgoal"] = torch.tensor(bool(rng.random() >= self.cfg.subgoal_dropout))
        if self.cfg.waypoint_loss > 0:
            sample["waypoints"], sample["waypoints_valid"] = self.waypoints[i], self.waypoints_valid[i]
            sample["waypoints_known"] = self.waypoints_known[i]
            if self.cfg.waypoint_place_height:
                sample["place_height"] = self.place_height[i]
        if self.swap is not None and rng.random() < self.colour_swap:
            mapping = self.swap.draw(rng)
            text = self.swap.text(text, mapping)
            for key in ("images", "subgoal") if "subgoal" in sample else ("images",):
                sample[key] = _swap_pixels(self.swap, sample[key], mapping)
        sample["text_ids"] = self.tokenizer([text])[0]
        return sample


def _swap_pixels(swap: ColourSwap, images: torch.Tensor, mapping: dict[str, str]) -> torch.Tensor:
    """uint8 ``(cameras, 3, s, s)`` with the colours repainted."""
    hwc = images.permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([swap.image(img, mapping) for img in hwc])).permute(0, 3, 1, 2)


def dataset_config(dataset, model: dict) -> FlowConfig:
    """The model config with the embodiment (cameras, state/action sizes, control period) from the dataset."""
    features = dataset.meta.features
    fields = dict(model)
    fields.setdefault("cameras", [k.removeprefix(CAMERA_PREFIX) for k in features if k.startswith(CAMERA_PREFIX)])
    fields.setdefault("subgoal_cameras", fields["cameras"][:1])
    fields.setdefault("state_dim", int(np.prod(features[FEATURES["state"]]["shape"])))
    fields.setdefault("action_dim", int(np.prod(features[FEATURES["action"]]["shape"])))
    fields.setdefault("dt", 1.0 / float(dataset.fps))
    return FlowConfig(**fields)


def warmup_cosine(warmup: int, steps: int, floor: float = 0.05):
    """Learning-rate factor: linear warmup, then cosine decay to ``floor``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def load_matching(net: FlowModel, init: Path, stats: bool = False) -> None:
    """Copy into ``net`` the weights of the model at ``init`` (a model directory or a run's ``out``) whose
    name and shape match; log what starts fresh, as transformers' ``ignore_mismatched_sizes`` does. ``stats``: its
    normalisation statistics too (a fine-tune of some modules on another recording, the rest frozen, must see its
    inputs scaled as they were trained)."""
    from safetensors.torch import load_file

    from executors.flow.modeling_flow import WEIGHTS_NAME

    directory = init / "model" if (init / "model" / WEIGHTS_NAME).is_file() else init
    loaded = load_file(str(directory / WEIGHTS_NAME))
    own = net.state_dict()
    # Normalisation statistics stay those of the dataset being trained on, unless asked for.
    matching = {k: v for k, v in loaded.items()
                if k in own and own[k].shape == v.shape and (stats or not k.startswith("normalizer."))}
    if not matching:
        raise ValueError(f"init={init}: no weight of that model fits this one")
    net.load_state_dict(matching, strict=False)
    fresh = sorted(k for k in set(own) - set(matching) if not k.startswith("normalizer."))
    log.info("init from %s: %d tensors loaded, %d start fresh%s", directory, len(matching), len(fresh),
             f" ({', '.join(fresh)})" if fresh else "")


def last_checkpoint(out: Path) -> Path | None:
    steps = sorted((out / "checkpoints").glob("step_*"))
    return steps[-1] if steps else None


def top_modules(net: FlowModel, names: list[str], setting: str) -> dict[str, torch.nn.Module]:
    """``net``'s top-level modules by name, or a ValueError naming those of ``names`` it has not (``setting``: the
    trainer option that asked for them)."""
    modules = dict(net.named_children())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"{setting}: {unknown} are not modules of this model; it has {sorted(modules)}")
    return modules


def freeze_modules(net: FlowModel, names: list[str]) -> None:
    """Stop the gradients of ``net``'s top-level modules ``names``, or raise naming the ones it has not."""
    modules = top_modules(net, names, "freeze")
    for name in names:
        modules[name].requires_grad_(False)
        log.info("freeze: %s (%d weights) stays as it is", name, sum(p.numel() for p in modules[name].parameters()))


def train_only_modules(net: FlowModel, names: list[str]) -> None:
    """Stop the gradients of every weight of ``net`` but those of its top-level modules ``names`` (the learned
    tokens that are no module's too, e.g. the action positions), or raise naming the ones it has not."""
    modules = top_modules(net, names, "train_only")
    net.requires_grad_(False)
    for name in names:
        modules[name].requires_grad_(True)
    log.info("train_only: %s (%d weights) trained, the rest stays as it is", names,
             sum(p.numel() for p in net.parameters() if p.requires_grad))


def train(data: str | list[str], out: str, model: dict | None = None, steps: int = 20_000, batch_size: int = 64,
          lr: float = 3e-4, weight_decay: float = 1e-4, warmup: int = 500, grad_clip: float = 1.0,
          ema_decay: float = 0.999, save_every: int = 2_000, log_every: int = 50, resume: bool = False,
          cache: bool = True, num_workers: int = 0, mixed_precision: str = "bf16", seed: int = 0,
          colour_swap: float = 0.0, waypoint_min_distance: float = 0.0, init: str | None = None,
          max_minutes: float | None = None, freeze: list[str] | None = None, init_stats: bool = False,
          train_only: list[str] | None = None) -> Path:
    """Train a `FlowModel` on the LeRobot dataset at ``data`` (or several, sampled in proportion to their frames;
    the first one's normalisation statistics); checkpoints go to ``out``.

    ``colour_swap``: the fraction of samples whose colours are permuted in words and pixels (`FlowDataset`).
    ``waypoint_min_distance``: frames whose effector is this close to a waypoint do not supervise it
    (`pick_place_waypoints`), in the state's units.
    ``init``: a trained model (its directory, or a run's ``out``) to fine-tune: weights whose name and shape
    match the new model are loaded, the rest start fresh and are logged (e.g. a new waypoint head).
    ``max_minutes``: stop (and save) once training has run this long.
    ``freeze``: top-level modules of `FlowModel` left as they are (e.g. ``[vision, text, waypoint_head,
    affordance_head]``: a fine-tune of the action expert that keeps the maps a trained affordance head reads).
    ``train_only``: the top-level modules trained, everything else left as it is (e.g. ``[waypoint_head]``: new
    maps over the features an action expert was trained on); not with ``freeze``.
    ``init_stats``: keep ``init``'s normalisation statistics instead of the recording's (fine-tuning on a recording
    of one family, whose state and action ranges differ from those the frozen modules learned).

    Returns the directory of the final model (``out/model``, loadable with `FlowExecutor.from_pretrained`).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if freeze and train_only:
        raise ValueError("freeze and train_only: give one of them (train_only freezes all it does not name)")
    out = Path(out)
    # The schedule counts optimizer steps, however many processes share them.
    accelerator = Accelerator(mixed_precision=mixed_precision if torch.cuda.is_available() else "no",
                              step_scheduler_with_optimizer=False)
    torch.manual_seed(seed + accelerator.process_index)

    roots = [data] if isinstance(data, (str, Path)) else list(data)
    probe = open_dataset(roots[0])
    for root in roots[1:]:
        other = open_dataset(root)
        if other.fps != probe.fps or other.meta.features != probe.meta.features:
            raise ValueError(f"data: {root} does not match {roots[0]} (fps or features differ)")
    cfg = FlowConfig.load(out / "model") if resume and (out / "model").is_dir() else dataset_config(probe, model or {})
    if cfg.vision == "siglip" and not cfg.vision_path and not resume:
        log.warning("model.vision_path is not set: the SigLIP vision tower starts from random weights")
    delta = {FEATURES["action"]: [k / probe.fps for k in range(cfg.chunk)]}
    datasets = [open_dataset(root, delta_timestamps=delta) for root in roots]
    indices = [SubtaskIndex.from_dataset(dataset) for dataset in datasets]

    net = FlowModel(cfg)
    net.normalizer.set_stats(datasets[0].meta.stats, FEATURES["state"], FEATURES["action"])
    if cfg.path_dims:
        actions = numeric_column(datasets[0], FEATURES["action"])
        every_frame = np.arange(len(actions))[:, None]
        net.normalizer.set_path_stats(*action_chunks(actions, indices[0].episode_end, every_frame, cfg.chunk))
    tokenizer = load_tokenizer(cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    samples = ConcatDataset([FlowDataset(dataset, index, cfg, tokenizer, cache=cache, colour_swap=colour_swap,
                                         waypoint_min_distance=waypoint_min_distance)
                             for dataset, index in zip(datasets, indices)])
    loader = DataLoader(samples, batch_size=batch_size, shuffle=True, drop_last=len(samples) > batch_size,
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    freeze_modules(net, freeze or [])
    if train_only:
        train_only_modules(net, train_only)
    trainable = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]  # biases, norms, learned tokens
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, steps))

    step = 0
    ckpt = last_checkpoint(out) if resume else None
    if init and ckpt is None:  # a resumed fine-tune continues from its own checkpoint
        load_matching(net, Path(init), stats=init_stats)
        ema.load_state_dict(net.state_dict())
    if ckpt is not None:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        accelerator.print(f"resuming from {ckpt.name} (step {step})")

    net, optimizer, loader, scheduler = accelerator.prepare(net, optimizer, loader, scheduler)
    ema.to(accelerator.device)

    def save(step: int) -> None:
        if not accelerator.is_main_process:
            return
        ckpt = out / "checkpoints" / f"step_{step:07d}"
        ema.save_pretrained(ckpt)
        tokenizer.save_pretrained(ckpt)
        raw = accelerator.unwrap_model(net)
        torch.save({"model": raw.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": step}, ckpt / STATE_FILE)
        ema.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")

    bar = tqdm(total=steps, initial=step, disable=not accelerator.is_local_main_process, desc="executor")
    net.train()
    started = time.monotonic()
    while step < steps:
        for batch in loader:
            loss, parts = net(batch)  # accelerate wraps forward in bf16 autocast on GPU
            accelerator.backward(loss)
            if accelerator.sync_gradients and grad_clip:
                accelerator.clip_grad_norm_(net.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # EMA warm-up: early on the average follows the weights closely (short runs stay useful).
            update_ema(ema, accelerator.unwrap_model(net), min(ema_decay, (1 + step) / (10 + step)))
            bar.update(1)
            if step % log_every == 0 or step == 1:
                bar.set_postfix(**{k: f"{v:.4f}" for k, v in parts.items()}, lr=f"{scheduler.get_last_lr()[0]:.2e}")
            out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
            if step % save_every == 0 or step == steps or out_of_time:
                save(step)
            if out_of_time:
                log.warning("stopping at step %d: max_minutes=%s reached", step, max_minutes)
                steps = step
            if step >= steps:
                break
    bar.close()
    accelerator.wait_for_everyone()
    return out / "model"
