"""Training of the executor's affordance head (`executors.flow.affordance.AffordanceHead`) on a LeRobot dataset.

`hybrid train executor=affordance data=DIR init=<trained executor> out=DIR` adds the head to a trained tabletop
executor and trains it alone: every other weight stays as it was, so the executor acts exactly as before and
only the planner's check of new subtasks changes.

The labels come from the recording's plans. At a frame, a placement subtask can start while a block of its
colour is still to be placed: in `sort` every colour is asked about (a colour no block has, or whose blocks
are all in their bowl, cannot start), in `pick_place` and `gather` the target colour (no distractor shares
it), once its last block is let go of in the bowl it cannot; in `stack` every level of the tower can start
until its block is let go of on the one below. A subtask counts as finished from its last release of the
gripper, as the planner's examples count it. `sort` questions name a bowl of any colour: whether a block can
be picked does not depend on where it goes, and `gather` sends blocks to bowls of other colours. Colour swap
(`hybrid.data.augment`) repaints text and pixels alike, so every colour is seen absent and present.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from executors.flow.affordance import AffordanceHead
from executors.flow.configuration_flow import FlowConfig
from executors.flow.modeling_flow import FlowModel
from executors.flow.processor_flow import load_tokenizer, resize
from hybrid.data import (
    FEATURES,
    SubtaskIndex,
    decode_camera,
    last_releases,
    numeric_column,
    open_dataset,
    release_events,
)
from hybrid.data.augment import tabletop_colour_swap
from hybrid.envs.tabletop.tasks import COLOURS, family_of

log = logging.getLogger(__name__)
CAMERA_PREFIX = "observation.images."
# How the tabletop planner names a block (its canonical ordinals): the executor is asked in these words.
ORDINALS = ("the", "a", "another", "the other", "the last")
_PLACE = re.compile(r"\b([a-z]+)\s+(?:block|cube)\b.*\b([a-z]+)\s+bowl\b")
_STACK = re.compile(r"\b([a-z]+)\s+(?:block|cube)\b.*\b([a-z]+)\s+(?:block|cube)\b")


@dataclass(frozen=True)
class Question:
    frame: int
    block: str  # colour of the block asked for
    target: str | None  # colour of the bowl it goes to (None: any bowl), or of the block it goes on (``onto``)
    can_start: bool
    absent: bool = False  # cannot start because no block has that colour (else: it is where it goes already)
    onto: bool = False  # a stacking subtask


def finished_subtasks(index: SubtaskIndex, closed: np.ndarray) -> np.ndarray:
    """int [N]: how many of its plan's subtasks are finished at each frame; a subtask finishes at its last
    release of the gripper (``closed`` bool [N]), or at its end where it has none."""
    last = np.full(len(index), -1)
    for start, released in last_releases(index, release_events(index, closed)).items():
        end = int(index.subtask_end[start])
        last[start:end + 1] = end + 1 if released is None else released
    return index.subtask_index + (np.arange(len(index)) >= last)


def parse(plan: list[str]) -> list[tuple[str, str, bool]] | None:
    """(block colour, target colour, onto a block) of each subtask; None if one is neither kind."""
    out = []
    for text in plan:
        t = text.lower()
        place, stack = _PLACE.search(t), _STACK.search(t)
        if place is None and stack is None:
            return None
        m = place or stack
        out.append((m.group(1), m.group(2), place is None))
    return out


def questions(index: SubtaskIndex, closed: np.ndarray) -> list[Question]:
    """Every (frame, subtask) question the recording answers (see the module's docstring)."""
    finished = finished_subtasks(index, closed)
    episodes: dict[int, tuple[str | None, list | None]] = {}
    out = []
    for i in range(len(index)):
        ep = int(index.episode[i])
        if ep not in episodes:
            episodes[ep] = family_of(index.instruction[i]), parse(index.plans[ep])
        family, plan = episodes[ep]
        if plan is None or family is None:
            continue
        k = int(finished[i])
        if family == "stack":  # every level once: those not stacked yet can start
            out.extend(Question(i, block, base, j >= k, onto=True) for j, (block, base, _) in enumerate(plan))
            continue
        left = {block for block, _, _ in plan[k:]}
        if family == "sort":  # every block is in the plan: a colour it never names is on no block. Any bowl:
            # whether a block can be picked does not hang on where it goes (gather's bowls are other colours)
            named = {block for block, _, _ in plan}
            out.extend(Question(i, c, None, c in left, c not in named) for c in COLOURS)
        else:  # pick_place, gather: no distractor has the target colour
            block, bowl, _ = plan[0]
            out.append(Question(i, block, bowl, block in left))
    return out


def question_text(q: Question, rng: np.random.Generator) -> str:
    """The subtask in the tabletop planner's canonical words (what the executor is asked at run time)."""
    if q.onto:
        return f"put the {q.block} block on the {q.target} block"
    bowl = q.target or COLOURS[int(rng.integers(len(COLOURS)))]
    return f"put {ORDINALS[int(rng.integers(len(ORDINALS)))]} {q.block} block in the {bowl} bowl"


class QuestionSampler:
    """Batches of (front image, text, label), colour-swapped at random: half of them subtasks that can start, a
    quarter blocks already placed, a quarter colours no block has (there are far more of those to ask)."""

    def __init__(self, qs: list[Question], images: torch.Tensor, tokenizer, colour_swap: float = 0.5,
                 closed: np.ndarray | None = None):
        """``closed``: per frame, whether the gripper is closed (the planner asks with it open)."""
        self.qs, self.images, self.tokenizer, self.colour_swap = qs, images, tokenizer, colour_swap
        self.closed = closed
        labels, absent = np.array([q.can_start for q in qs]), np.array([q.absent for q in qs])
        self.pos, self.placed, self.absent = (np.flatnonzero(labels), np.flatnonzero(~labels & ~absent),
                                              np.flatnonzero(absent))
        if not len(self.pos) or not len(self.placed) + len(self.absent):
            raise ValueError(f"affordance: the recording gives {len(self.pos)} subtasks that can start and "
                             f"{len(self.placed) + len(self.absent)} that cannot; it needs both (record sort, "
                             "gather or pick_place)")
        self.swap = tabletop_colour_swap()

    def batch(self, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        half = size // 2
        negatives = [pool for pool in (self.placed, self.absent) if len(pool)]
        counts = [(size - half) // len(negatives) + (k < (size - half) % len(negatives)) for k in range(len(negatives))]
        picks = np.concatenate([rng.choice(self.pos, half)] + [rng.choice(p, n) for p, n in zip(negatives, counts)])
        return self.questions_batch(picks, rng, self.colour_swap)

    def questions_batch(self, picks: np.ndarray, rng: np.random.Generator, colour_swap: float) -> dict:
        images, texts = [], []
        for k in picks:
            q = self.qs[k]
            image, text = self.images[q.frame], question_text(q, rng)
            if rng.random() < colour_swap:
                mapping = self.swap.draw(rng)
                text = self.swap.text(text, mapping)
                image = torch.from_numpy(self.swap.image(image.permute(1, 2, 0).numpy(), mapping)).permute(2, 0, 1)
            images.append(image)
            texts.append(text)
        labels = torch.tensor([self.qs[k].can_start for k in picks], dtype=torch.float32)
        return {"images": torch.stack(images)[:, None], "text_ids": self.tokenizer(texts), "labels": labels}


def front_images(dataset, camera: str, size: int) -> torch.Tensor:
    """uint8 ``(N, 3, size, size)``: every frame of ``camera`` at the executor's size, decoded once."""
    out = np.empty((len(dataset), size, size, 3), np.uint8)

    def shrink(frames: np.ndarray) -> np.ndarray:
        return resize(torch.from_numpy(frames).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()

    decode_camera(dataset, CAMERA_PREFIX + camera, progress=True, resize=shrink, out=out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate(net: FlowModel, sampler: QuestionSampler, per_kind: int = 640, seed: int = 1) -> dict:
    """Share of held-out questions answered right at 0.5, per kind (the recording as it is, no colour swap):
    subtasks that can start, blocks already placed, colours no block has; ``*_right_open`` the same on the frames
    with the gripper open, when the planner asks."""
    rng, out = np.random.default_rng(seed), {}
    for name, pool in (("can_start", sampler.pos), ("placed", sampler.placed), ("absent", sampler.absent)):
        if not len(pool):
            continue
        picks, right = rng.choice(pool, min(per_kind, len(pool)), replace=False), []
        for lo in range(0, len(picks), 128):
            b = sampler.questions_batch(picks[lo:lo + 128], rng, colour_swap=0.0)
            right += ((net.affordance_logits(b["images"], b["text_ids"]) > 0) == b["labels"].bool()).tolist()
        out[f"{name}_right"] = round(float(np.mean(right)), 3)
        if sampler.closed is not None:  # the frames the planner asks on: the gripper open
            open_ = ~sampler.closed[[sampler.qs[k].frame for k in picks]]
            if open_.any():
                out[f"{name}_right_open"] = round(float(np.mean(np.asarray(right)[open_])), 3)
    return out


def question_sampler(roots: str | Path | list, cfg: FlowConfig, tokenizer, gripper_index: int = -1,
                     gripper_closed: float = 0.5, colour_swap: float = 0.5) -> QuestionSampler:
    """The questions of one recording or several, over their front images at the executor's size."""
    qs, images, closed_all = [], [], []
    for root in [roots] if isinstance(roots, (str, Path)) else list(roots):
        dataset = open_dataset(root)
        index = SubtaskIndex.from_dataset(dataset)
        closed = numeric_column(dataset, FEATURES["state"])[:, gripper_index] >= gripper_closed
        offset = sum(len(i) for i in images)
        qs += [dataclasses.replace(q, frame=q.frame + offset) for q in questions(index, closed)]
        images.append(front_images(dataset, cfg.cameras[0], cfg.image_size))
        closed_all.append(closed)
    return QuestionSampler(qs, torch.cat(images), tokenizer, colour_swap, np.concatenate(closed_all))


def train_affordance(data: str | list[str], init: str, out: str, steps: int = 3000, batch_size: int = 64,
                     lr: float = 1e-3, weight_decay: float = 1e-4, colour_swap: float = 0.5, gripper_index: int = -1,
                     gripper_closed: float = 0.5, eval_data: str | None = None, seed: int = 0, log_every: int = 50,
                     threads: int | None = None, max_minutes: float | None = None, resume: bool = False,
                     width: int = 64, place: bool = False) -> Path:
    """Add an `AffordanceHead` to the executor at ``init`` (a model directory or a training run's ``out``) and
    train it alone on the recording at ``data`` (or several); write the executor with its head to ``out/model``.
    ``eval_data``: a held-out recording scored at the end (written to ``out/affordance_eval.json`` and logged).
    ``resume``: a run whose model is written already is not repeated (the head trains in minutes); ``width``:
    the head's hidden width; ``place``: it reads the place map and the pick peak's own features too."""
    import json

    from tqdm.auto import tqdm

    model_dir = Path(out) / "model"
    if resume and (model_dir / "config.json").is_file() and FlowConfig.load(model_dir).affordance_head:
        log.info("affordance: %s is trained already", model_dir)
        return model_dir
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    init = Path(init) / "model" if (Path(init) / "model" / "config.json").is_file() else Path(init)
    net = FlowModel.from_pretrained(init)
    cfg = net.cfg
    if not (cfg.waypoint_loss > 0 and cfg.waypoint_head == "heatmap"):
        raise ValueError(f"init={init}: the affordance head reads a heatmap waypoint head; this executor has none")
    cfg.affordance_head, cfg.affordance_width, cfg.affordance_place = True, int(width), bool(place)
    net.affordance_head = AffordanceHead(net.vision.keypoints.logits.in_channels, net.text.out_dim, cfg.affordance_width,
                                         cfg.affordance_place)
    net.requires_grad_(False).eval()
    net.affordance_head.requires_grad_(True).train()
    tokenizer = load_tokenizer(cfg, init)

    def sampler_for(roots: str | list[str]) -> QuestionSampler:
        return question_sampler(roots, cfg, tokenizer, gripper_index, gripper_closed, colour_swap)

    train_set = sampler_for(data)
    log.info("affordance: %d questions that can start, %d whose blocks are placed, %d whose colour no block has",
             len(train_set.pos), len(train_set.placed), len(train_set.absent))
    optimizer = torch.optim.AdamW(net.affordance_head.parameters(), lr=lr, weight_decay=weight_decay)
    rng, started = np.random.default_rng(seed), time.monotonic()
    bar = tqdm(range(steps), desc="affordance")
    for step in bar:
        b = train_set.batch(rng, batch_size)
        with torch.no_grad():  # the executor's own weights stay fixed: its maps are inputs
            inputs = net.affordance_inputs(b["images"], b["text_ids"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net.affordance_head(*inputs), b["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
            log.warning("stopping at step %d: max_minutes=%s reached", step + 1, max_minutes)
            break
    bar.close()
    net.eval()
    net.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    if eval_data:  # held out, and the training recordings' own questions beside (a gap is overfitting)
        report = {"data": str(eval_data), **evaluate(net, sampler_for(eval_data)),
                  "train": evaluate(net, train_set)}
        (Path(out) / "affordance_eval.json").write_text(json.dumps(report))
        log.info("affordance on %s: %s", eval_data, report)
        print(json.dumps(report))
    return model_dir
