"""Training of the success detector (`planners/subtask/success.py`) on LeRobot recordings.

`hybrid train planner=success data=DIR [eval_data=DIR] out=DIR`. A frame is *finished* once every subtask of its
plan is, each from its last release of the gripper (as the planner's examples count them: on a recording with
missed placements a release that missed is not the last). The detector is asked with the gripper open (the planner
asks for "done" after a release), so only such frames are used. Each batch holds finished frames for half, frames
within ``after_release_s`` of a release that did not finish the task (a placement that missed, or one that left
blocks) for a quarter, and any other open frame for the rest; colours are permuted in pixels and words alike, and
the instruction's other words are noised as the planner's are (held-out paraphrases' unknown words).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from hybrid.data import FEATURES, SubtaskIndex, decode_camera, numeric_column, open_dataset, release_events
from hybrid.data.augment import PunctuationNoise, WordNoise, tabletop_colour_swap
from planners.subtask.success import CLS, CONFIG_NAME, PAD, UNK, SuccessConfig, SuccessDetector, words

log = logging.getLogger(__name__)
CAMERA_PREFIX = "observation.images."


class Frames:
    """The open-gripper frames of one or more recordings: their images ``(N, cameras, H, W, 3)`` uint8, instruction,
    whether the task is finished there, whether a release came within the last ``after_release`` frames, and for
    subtask questions how many subtasks of the frame's plan are finished and the plan in the planner's words
    (``ordinals``: its naming of same-coloured blocks, `tabletop_language.NAMINGS`).

    A recording of an agent's own rollouts (`hybrid record planner_rollouts.enabled=true`) gives the scenes the
    agent leaves, each question labelled by the simulator: finished where its answer is "done", just after a
    release where a release under the subtask under way came before it (`on_policy` marks them; they ask no
    subtask questions, ``count`` -1)."""

    def __init__(self, roots: str | Path | list, cameras: list[str], size: int, after_release_s: float = 1.5,
                 gripper_index: int = -1, gripper_closed: float = 0.5, ordinals: str = "history"):
        from planners.subtask.on_policy import COLUMNS

        images, texts, finished, recent, count, plans, on_policy = [], [], [], [], [], [], []
        for root in [roots] if isinstance(roots, (str, Path)) else list(roots):
            dataset = open_dataset(root)
            closed = numeric_column(dataset, FEATURES["state"])[:, gripper_index] >= gripper_closed
            keep = np.flatnonzero(~closed)
            rollouts = COLUMNS["target"] in dataset.features
            if rollouts:
                part = _rollout_frames(dataset)
            else:
                part = _expert_frames(dataset, closed, after_release_s, ordinals)
            for out, values in zip((texts, finished, recent, count, plans), part, strict=True):
                out += [values[i] for i in keep]
            on_policy += [rollouts] * len(keep)
            views = np.empty((len(closed), len(cameras), size, size, 3), np.uint8)
            for c, cam in enumerate(cameras):
                decode_camera(dataset, CAMERA_PREFIX + cam, progress=True, resize=_shrinker(size), out=views[:, c])
            images.append(views[keep])
        self.texts, self.plans = texts, plans
        self.finished, self.recent, self.count = np.array(finished, bool), np.array(recent, bool), np.array(count)
        self.on_policy = np.array(on_policy, bool)
        self.images = np.concatenate(images)
        self.pos = np.flatnonzero(self.finished & ~self.on_policy)
        self.pos_on_policy = np.flatnonzero(self.finished & self.on_policy)
        self.hard = np.flatnonzero(~self.finished & self.recent)
        self.other = np.flatnonzero(~self.finished & ~self.recent)
        self.hard_or_pos = np.flatnonzero(self.recent & (self.count >= 0))  # subtask questions just after a release
        if not len(self.pos) + len(self.pos_on_policy) or not len(self.hard) + len(self.other):
            raise ValueError(f"success: {roots} gives {len(self.pos) + len(self.pos_on_policy)} finished open frames and "
                             f"{len(self.hard) + len(self.other)} unfinished; it needs both")

    def vocabulary(self) -> list[str]:
        texts = set(self.texts) | {t for plan in set(self.plans) for t in plan}
        return [PAD, UNK, CLS] + sorted({w for t in texts for w in words(t)})

    def subtask_question(self, k: int, rng: np.random.Generator) -> tuple[str, bool]:
        """Frame ``k``'s question about a subtask, as the planner asks it of the one under way: the last finished one
        (finished: the runtime is one subtask behind) or the first unfinished one, half each where both exist."""
        plan, n = self.plans[k], int(self.count[k])
        j = n - 1 if n == len(plan) or (n > 0 and rng.random() < 0.5) else n
        return plan[j], j < n

    def questions(self, picks: np.ndarray, subtask: np.ndarray, rng: np.random.Generator) -> tuple[list, np.ndarray]:
        """The texts and labels of frames ``picks``: a subtask question where ``subtask``, else the instruction's."""
        texts, labels = [], []
        for k, sub in zip(picks, subtask, strict=True):
            text, label = self.subtask_question(k, rng) if sub else (self.texts[k], bool(self.finished[k]))
            texts.append(text)
            labels.append(label)
        return texts, np.array(labels, np.float32)


def _expert_frames(dataset, closed: np.ndarray, after_release_s: float, ordinals: str) -> tuple[list, ...]:
    """Per frame of an expert recording: instruction, task finished, a release within ``after_release_s``, how many
    subtasks are finished, the plan in the planner's words."""
    from executors.flow.train_affordance import finished_subtasks
    from planners.subtask.tabletop_language import NAMINGS, canonical_subtask

    index = SubtaskIndex.from_dataset(dataset)
    k = finished_subtasks(index, closed)
    done = k >= np.array([len(index.plans[int(ep)]) for ep in index.episode])
    events = np.flatnonzero(release_events(index, closed))
    window = max(1, round(after_release_s * index.fps))
    # frames since the episode's last release (a large number before its first)
    frames = np.arange(len(index))
    last = np.searchsorted(events, frames, side="right") - 1
    since = np.where(last >= 0, frames - events[np.maximum(last, 0)], 10 ** 9)
    since[(last >= 0) & (index.episode[events[np.maximum(last, 0)]] != index.episode)] = 10 ** 9
    words_of = {ep: tuple(NAMINGS[ordinals].rewrite([canonical_subtask(t) for t in plan]))
                for ep, plan in index.plans.items()}
    return (list(index.instruction), list(done), list(since < window), list(k),
            [words_of[int(ep)] for ep in index.episode])


def _rollout_frames(dataset) -> tuple[list, ...]:
    """The same per question of an agent's rollout recording, labelled by the simulator (no subtask questions)."""
    from planners.subtask.on_policy import examples

    exs = examples(dataset)
    return ([ex.instruction for ex in exs], [ex.target.done for ex in exs], [ex.releases > 0 for ex in exs],
            [-1] * len(exs), [()] * len(exs))


def _shrinker(size: int):
    from executors.flow.processor_flow import resize

    def shrink(frames: np.ndarray) -> np.ndarray:
        return resize(torch.from_numpy(frames).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()

    return shrink


class Augment:
    """A colour permutation in pixels and words (probability ``colour_swap``), then word and punctuation noise."""

    def __init__(self, colour_swap: float, word_noise: float, punctuation_noise: float):
        from hybrid.envs.tabletop.tasks import COLOURS

        self.swap, self.colour_swap = tabletop_colour_swap(), colour_swap
        self.noise, self.marks = WordNoise(keep=set(COLOURS)), PunctuationNoise()
        self.word_noise, self.punctuation_noise = word_noise, punctuation_noise

    def __call__(self, views: np.ndarray, text: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        if rng.random() < self.colour_swap:
            m = self.swap.draw(rng)
            views, text = np.stack([self.swap.image(v, m) for v in views]), self.swap.text(text, m)
        if rng.random() < self.word_noise:
            text = self.noise(text, rng)
        if rng.random() < self.punctuation_noise:
            text = self.marks(text, rng)
        return views, text


def batch(frames: Frames, picks: np.ndarray, net: SuccessDetector, rng: np.random.Generator,
          augment: Augment | None = None, subtask: np.ndarray | None = None) -> tuple[torch.Tensor, ...]:
    """Images, word ids and labels of frames ``picks``; ``subtask``: which of them ask about a subtask."""
    texts, labels = frames.questions(picks, np.zeros(len(picks), bool) if subtask is None else subtask, rng)
    views = []
    for n, k in enumerate(picks):
        v = frames.images[k]
        if augment is not None:
            v, texts[n] = augment(v, texts[n], rng)
        views.append(v)
    images = torch.from_numpy(np.stack(views)).permute(0, 1, 4, 2, 3)
    return images, net.word_ids(texts), torch.from_numpy(labels)


@torch.no_grad()
def evaluate(net: SuccessDetector, frames: Frames, thresholds=(0.5, 0.9), per_kind: int = 1000, seed: int = 1,
             subtasks: bool = False) -> dict:
    """Held-out figures, the recording as it is: the share of finished frames called finished (recall) and of
    unfinished ones called so (false positives), after a release and elsewhere, at each threshold; with
    ``subtasks`` the same for subtask questions asked after a release."""
    net.eval()
    rng, out = np.random.default_rng(seed), {}
    own = frames.on_policy[frames.hard]
    for name, pool in (("finished", frames.pos), ("finished_on_policy", frames.pos_on_policy),
                       ("after_release", frames.hard[~own]), ("after_release_on_policy", frames.hard[own]),
                       ("other", frames.other)):
        if not len(pool):
            continue
        picks = np.sort(rng.choice(pool, min(per_kind, len(pool)), replace=False))
        probs, _ = _probs(net, frames, picks, rng)
        out[name] = {f"called_finished@{t}": round(float(np.mean(probs >= t)), 4) for t in thresholds}
        out[name]["frames"] = len(picks)
    if subtasks:  # the subtask under way after a release: finished (one behind) or not (a miss, or more to do)
        picks = np.sort(rng.choice(frames.hard_or_pos, min(per_kind, len(frames.hard_or_pos)), replace=False))
        probs, labels = _probs(net, frames, picks, rng, subtask=True)
        labels = labels > 0.5
        for name, mask in (("subtask_finished", labels), ("subtask_unfinished", ~labels)):
            out[name] = {f"called_finished@{t}": round(float(np.mean(probs[mask] >= t)), 4) for t in thresholds}
            out[name]["frames"] = int(mask.sum())
    return out


def _probs(net: SuccessDetector, frames: Frames, picks: np.ndarray, rng: np.random.Generator,
           subtask: bool = False, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The detector's probabilities and the labels of frames ``picks`` (their subtask questions with ``subtask``),
    in batches of ``size``."""
    probs, labels = [], []
    for lo in range(0, len(picks), size):
        chunk = picks[lo:lo + size]
        images, ids, y = batch(frames, chunk, net, rng, subtask=np.full(len(chunk), subtask))
        probs.append(torch.sigmoid(net(images, ids)).numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def train_success(data: str | list[str], out: str, steps: int = 4000, batch_size: int = 64, lr: float = 1e-3,
                  weight_decay: float = 1e-4, warmup: int = 200, cameras: list[str] | None = None,
                  image_size: int = 96, widths: list[int] | None = None, layers: int = 2, heads: int = 4,
                  after_release_s: float = 1.5, colour_swap: float = 0.5, word_noise: float = 0.5,
                  punctuation_noise: float = 0.3, gripper_index: int = -1, gripper_closed: float = 0.5,
                  eval_data: str | list[str] | None = None, save_every: int = 1000, seed: int = 0,
                  threads: int | None = None, max_minutes: float | None = None, resume: bool = False,
                  subtask_fraction: float = 0.0, ordinals: str = "history") -> Path:
    """Train a `SuccessDetector` on ``data`` (one recording or several); write it to ``out/model`` and, with
    ``eval_data``, its held-out figures to ``out/success_eval.json`` (printed as a JSON line). ``resume``: go on
    from ``out/checkpoint`` (written every ``save_every`` steps). ``subtask_fraction``: the share of each batch
    asked about a subtask instead of the instruction (is the one under way finished?), half of them just after a
    release, named as the planner names it (``ordinals``)."""
    from tqdm.auto import tqdm

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    cfg = SuccessConfig(cameras=list(cameras or ["front"]), image_size=image_size,
                        widths=list(widths or [32, 64, 96, 128]), layers=layers, heads=heads)
    out, checkpoint = Path(out), Path(out) / "checkpoint"
    resuming = resume and (checkpoint / "trainer_state.pt").is_file()
    if resuming:  # the run's own model: its cameras and shape, whatever the arguments say
        saved = SuccessConfig(**json.loads((checkpoint / CONFIG_NAME).read_text()))
        if saved != cfg:
            log.warning("success: resuming %s with its own settings %s", checkpoint, saved)
        cfg = saved
    train_set = Frames(data, cfg.cameras, cfg.image_size, after_release_s, gripper_index, gripper_closed, ordinals)
    log.info("success: %d finished frames, %d unfinished after a release, %d other", len(train_set.pos),
             len(train_set.hard), len(train_set.other))
    net = SuccessDetector.from_pretrained(checkpoint) if resuming else SuccessDetector(cfg, train_set.vocabulary())
    start = 0
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    # linear warm-up, then cosine decay to 0 at ``steps``
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(warmup, 1))
                                                 * 0.5 * (1 + np.cos(np.pi * min(s / max(steps, 1), 1.0))))
    if resuming:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["step"])
        log.info("success: resuming at step %d", start)
    net.train()
    augment = Augment(colour_swap, word_noise, punctuation_noise)
    rng, started = np.random.default_rng(seed + start), time.monotonic()
    # finished frames for half, unfinished ones just after a release for a quarter, the rest any other; where there
    # are rollouts of the agent, two fifths of the finished and half of the after-release ones are theirs (a few
    # thousand questions among the expert's 100k frames: the scenes the agent itself leaves)
    own = train_set.on_policy
    pos_own = 0.2 if len(train_set.pos_on_policy) else 0.0
    hard_own = 0.125 if (own[train_set.hard]).any() else 0.0
    pools = [(train_set.pos, 0.5 - pos_own), (train_set.pos_on_policy, pos_own),
             (train_set.hard[~own[train_set.hard]], 0.25 - hard_own), (train_set.hard[own[train_set.hard]], hard_own),
             (train_set.other, 0.25)]
    pools = [(p, w) for p, w in pools if len(p)]
    weights = np.array([w for _, w in pools]) / sum(w for _, w in pools)
    bar = tqdm(range(start, steps), desc="success", initial=start, total=steps)
    for step in bar:
        n_sub = int(rng.binomial(batch_size, subtask_fraction))
        counts = rng.multinomial(batch_size - n_sub, weights)
        picks = [rng.choice(p, n) for (p, _), n in zip(pools, counts)]
        if n_sub:  # subtask questions: half just after a release, half anywhere
            picks += [rng.choice(train_set.hard_or_pos, n_sub // 2),
                      rng.choice(np.flatnonzero(train_set.count >= 0), n_sub - n_sub // 2)]
        picks = np.concatenate(picks)
        subtask = np.arange(len(picks)) >= batch_size - n_sub
        images, ids, labels = batch(train_set, picks, net, rng, augment, subtask)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images, ids), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        stop = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
        if (step + 1) % save_every == 0 or stop:
            net.save_pretrained(checkpoint)
            torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step + 1},
                       checkpoint / "trainer_state.pt")
        if stop:
            log.warning("stopping at step %d: max_minutes=%s reached", step + 1, max_minutes)
            break
    bar.close()
    net.eval()
    model_dir = out / "model"
    net.save_pretrained(model_dir)
    if eval_data:  # held out, and the training recordings beside (a gap is overfitting)
        held = Frames(eval_data, cfg.cameras, cfg.image_size, after_release_s, gripper_index, gripper_closed, ordinals)
        asks = subtask_fraction > 0
        report = {"data": eval_data, **evaluate(net, held, subtasks=asks), "train": evaluate(net, train_set,
                                                                                            subtasks=asks)}
        (out / "success_eval.json").write_text(json.dumps(report))
        print(json.dumps(report))
    return model_dir
