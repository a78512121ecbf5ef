"""`hybrid train planner=tabletop data=DIR out=DIR`: train the small tabletop planner from scratch.

Examples come from `examples.py`; the target is the JSON reply text, the loss is next-token cross
entropy on the reply only. `accelerate` places the model; checkpoints (weights + optimizer + step)
are written every ``checkpoint_every`` steps and a run resumes from the last one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from hybrid.data import FEATURES, SubtaskIndex, numeric_column, open_dataset
from hybrid.data.augment import ColourSwap, PunctuationNoise, WordNoise, tabletop_colour_swap
from hybrid.types import PlanStep
from planners.subtask.examples import RELEASE_LAG, TRAIN_WEIGHTS, Example, ExampleBuilder, release_view_frame
from planners.subtask.on_policy import RELEASE_VIEW
from planners.subtask.on_policy import examples as on_policy_examples
from planners.subtask.prompting import PLACED_QUESTION, PromptConfig, build_messages, cameras, user_text
from planners.subtask.reply import reply_text
from planners.subtask.tabletop_language import NAMINGS, canonical_subtask, colours_in, vocabulary
from planners.subtask.tabletop_model import TabletopModelConfig, build, save, set_image_size
from planners.subtask.transformers_backend import SETTINGS_FILE

log = logging.getLogger(__name__)
STATE_DIR = "trainer_state"
# The auxiliary question (`left_fraction`), appended to the user turn; its reply is {"left": [subtasks]}.
LEFT_QUESTION = "Question: which subtasks are left?"
# Asked with the history (fresh) or without it (resume): without, only the picture says what is left.
LEFT_WEIGHTS = {"fresh": 0.5, "resume": 0.5}


def tokenizer_corpus(index: SubtaskIndex, vocab: list[str], prompt: PromptConfig, ask_left: bool = False) -> list[str]:
    """What the BPE is trained on; ``ask_left`` adds the auxiliary question and its replies (`left_fraction`)."""
    instructions = sorted(set(index.instruction))
    replies = [reply_text(PlanStep(subtask=s)) for s in vocab] + [reply_text(PlanStep(done=True))]
    state = np.array([0.12, -0.05, 0.2, 1.0]) if prompt.state_in_prompt else None  # digits, signs, points
    releases = 0 if prompt.gripper_index is not None else None
    states = [user_text(i, vocab[:2], vocab[0], prompt.schema_in_prompt, state, releases) for i in instructions[:50]]
    corpus = instructions * 4 + vocab + replies + states + ["user assistant system Done: nothing Current: none"]
    if ask_left:  # else the tokenizer stays the one planners were trained with before the question existed
        corpus += [left_reply(vocab[:3]), left_reply([]), LEFT_QUESTION]
    return corpus


def left_reply(left) -> str:
    return json.dumps({"left": list(left)})


def target_text(ex: Example) -> str:
    """The reply example ``ex`` is trained on: the next step, or the answer to its auxiliary question."""
    if ex.left is not None:
        return left_reply(ex.left)
    if ex.placed is not None:
        return json.dumps({"placed": ex.placed})
    return reply_text(ex.target)


def augmentation(rng: np.random.Generator, colour_swap: float, word_noise: float, release_noise: float = 0.0,
                 punctuation_noise: float = 0.0, word_noise_rate: float = 0.2, phrases: Iterable[str] = (),
                 word_noise_familiar: float = 0.0, word_noise_familiar_replaces: bool = True,
                 word_noise_function_words: bool = False):
    """The training augmentation of an (example, frame): a colour permutation with probability ``colour_swap``,
    then unknown words in the instruction with probability ``word_noise`` (`hybrid/data/augment.py`: each word
    replaced with probability ``word_noise_rate``, an unknown one inserted before it with half that, and of
    these ``word_noise_familiar`` words of the ``phrases`` instead, the inserted ones only unless
    ``word_noise_familiar_replaces``, spans of function words alone with ``word_noise_function_words``), then its
    punctuation noised with probability ``punctuation_noise``, then,
    with probability ``release_noise``, a release counted where the current subtask is unfinished (a dropped
    or missed block: the answer stays the current subtask, so the image must confirm a placement)."""
    from hybrid.envs.tabletop.tasks import COLOURS, STACK_PLACEMENT

    swap = tabletop_colour_swap() if colour_swap > 0 else None
    noise = WordNoise(set(COLOURS), word_noise_rate, word_noise_rate / 2, phrases, word_noise_familiar,
                      placement=STACK_PLACEMENT, familiar_replaces=word_noise_familiar_replaces,
                      only_function_words=word_noise_function_words)
    marks = PunctuationNoise()

    def augment(ex: Example, image: np.ndarray):
        if swap is not None and rng.random() < colour_swap:
            ex, image = swap_colours(ex, image, swap, rng)
        if rng.random() < word_noise:
            ex = replace(ex, instruction=noise(ex.instruction, rng))
        if rng.random() < punctuation_noise:
            ex = replace(ex, instruction=marks(ex.instruction, rng))
        if ex.releases == 0 and ex.current is not None and ex.target.subtask == ex.current \
                and rng.random() < release_noise:
            ex = replace(ex, releases=1)
        return ex, image

    return augment


def swap_colours(ex: Example, image: np.ndarray, swap: ColourSwap, rng: np.random.Generator):
    """The example and its frame with one random permutation of the colours applied to words and pixels."""
    m = swap.draw(rng)
    target = PlanStep(subtask=swap.text(ex.target.subtask, m)) if ex.target.subtask else ex.target
    left = None if ex.left is None else tuple(swap.text(s, m) for s in ex.left)
    ex = replace(ex, instruction=swap.text(ex.instruction, m), done=[swap.text(s, m) for s in ex.done],
                 current=None if ex.current is None else swap.text(ex.current, m), target=target, left=left)
    return ex, swap.image(image, m)


def example_image(ex: Example, frames: np.ndarray, prompt: PromptConfig, release_frames: np.ndarray | None = None,
                  lag: int = RELEASE_LAG) -> np.ndarray:
    """What example ``ex`` shows the planner: its frame's views, then with `PromptConfig.release_camera` that
    camera's frame ``lag`` after the last release (`release_view_frame`; black before any), as at run time."""
    if prompt.release_camera is None:
        return frames[ex.frame]
    shown = release_view_frame(ex, lag)
    tile = np.zeros_like(release_frames[0]) if shown is None else release_frames[shown]
    return np.concatenate([frames[ex.frame], tile], axis=1)


def collate(processor, frames: np.ndarray, examples, prompt: PromptConfig,
            augment=None, states: np.ndarray | None = None, release_frames: np.ndarray | None = None,
            rng: np.random.Generator | None = None, placed_noise: float = 0.0):
    """Processor inputs for a batch with labels on the reply tokens only (right padding).

    ``augment``: ``(example, frame) -> (example, frame)`` applied to each; ``states``: the dataset's
    ``observation.state`` per frame, for prompts that include it; ``release_frames``: the release camera's
    frames, for prompts that show it (`PromptConfig.release_camera`), ``rng`` drawing how many frames after the
    release it is seen (else `RELEASE_LAG`); with `PromptConfig.placed_in_prompt` the prompt says whether the
    last release placed its block (the recording's truth, wrong with probability ``placed_noise``, as the
    planner's own reading is at run time)."""
    from PIL import Image

    texts, reply_lens, images = [], [], []
    for ex in examples:
        # drawn only for a release view: planners without one see the random stream they were trained with
        lag = RELEASE_LAG if rng is None or prompt.release_camera is None else int(rng.integers(0, 2 * RELEASE_LAG))
        image = example_image(ex, frames, prompt, release_frames, lag)
        if augment is not None:
            ex, image = augment(ex, image)
        state = None if states is None else states[ex.frame]
        placed = None  # asked, not told, in the auxiliary question
        if prompt.placed_in_prompt and ex.release_placed is not None and ex.placed is None:
            placed = ex.release_placed != bool(rng is not None and rng.random() < placed_noise)
        question = LEFT_QUESTION if ex.left is not None else PLACED_QUESTION if ex.placed is not None else None
        messages = build_messages(prompt, ex.instruction, ex.done, ex.current, state, ex.releases, placed, question)
        chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        reply = target_text(ex) + "<|im_end|>"
        texts.append(chat + reply)
        reply_lens.append(len(processor.tokenizer(reply, add_special_tokens=False)["input_ids"]))
        images.append(Image.fromarray(image))
    batch = processor(text=texts, images=images, padding=True, padding_side="right", return_tensors="pt")
    labels = batch["input_ids"].clone()
    lengths = batch["attention_mask"].sum(1)
    for row, (length, r) in enumerate(zip(lengths.tolist(), reply_lens)):
        labels[row, : length - r] = -100
        labels[row, length:] = -100
    batch["labels"] = labels
    return batch


def train(data: str | list[str], out: str, steps: int = 3000, batch_size: int = 32, lr: float = 1e-3,
          warmup_steps: int = 100, weight_decay: float = 0.01, checkpoint_every: int = 250,
          resume: bool = True, seed: int = 0, done_tail_s: float = 0.5, camera: str | list[str] = "front",
          canonical: bool = True, model: dict | None = None, max_minutes: float | None = None,
          threads: int | None = None, log_every: int = 25, colour_swap: float = 0.0,
          done_fraction: float = 0.0, state_in_prompt: bool = False, init: str | None = None,
          word_noise: float = 0.0, variants: dict[str, float] | None = None, gripper_index: int | None = None,
          release_noise: float = 0.0, ordinals: str = "scene", left_fraction: float = 0.0,
          on_policy: str | list[str] | None = None, on_policy_fraction: float = 0.0,
          punctuation_noise: float = 0.0, release_camera: str | None = None, placed_fraction: float = 0.0,
          placed_in_prompt: bool = False, placed_noise: float = 0.1, word_noise_rate: float = 0.2,
          word_noise_familiar: float = 0.0, word_noise_familiar_replaces: bool = True,
          word_noise_function_words: bool = False) -> Path:
    """``colour_swap``: probability that an example's colours are permuted (words and pixels, `augment.py`);
    ``word_noise``: probability that some of an instruction's words are replaced by unknown ones (`WordNoise`),
    each with probability ``word_noise_rate``, and ``word_noise_familiar`` of those words taken from the
    recording's own instructions instead (`WordNoise`: no familiar word decides the task alone), only the
    inserted ones unless ``word_noise_familiar_replaces``, and of function words alone with
    ``word_noise_function_words`` (`FUNCTION_WORDS`);
    ``punctuation_noise``: probability that an instruction's punctuation is noised (`PunctuationNoise`);
    ``done_fraction``: share of examples drawn from the frames labelled done, which are a few per episode;
    ``state_in_prompt``: write the robot state into the prompt (`PromptConfig.state_in_prompt`);
    ``init``: a trained planner directory to fine-tune (its weights and tokenizer) instead of a new model;
    ``variants``: share of each example variant (`examples.py`: current, fresh, behind, resume);
    ``gripper_index``: the state entry of the gripper: subtasks finish at their last release, and the prompt
    counts releases since the current subtask began (`PromptConfig.gripper_index`);
    ``release_noise``: share of unfinished examples shown one release anyway (`augmentation`);
    ``ordinals``: how same-coloured blocks are told apart in the replies, "scene" (the recording's "the" /
    "the other" / "the last", which count the blocks) or "history" ("the" / "another" / "the last" in turn,
    `tabletop_language.history_ordinals`); needs ``canonical``;
    ``left_fraction``: share of examples that ask for every subtask still left instead of the next one
    (`LEFT_QUESTION`, an auxiliary target the planner is never asked at run time);
    ``camera``: the camera the planner looks at, or a list of cameras tiled side by side (`PromptConfig.camera`);
    ``release_camera``: a camera shown as it saw the gripper's last release, after them
    (`PromptConfig.release_camera`; needs ``gripper_index``); ``placed_fraction``: share of examples that ask
    instead whether the last release placed its block (`PLACED_QUESTION`, an auxiliary target on that view);
    ``placed_in_prompt``: the prompt says so (`PromptConfig.placed_in_prompt`), wrong in ``placed_noise`` of them;
    ``on_policy``: datasets of situations from the planner's own rollouts (`hybrid record
    planner_rollouts.enabled=true`, `on_policy.py`), labelled in the history's naming; with ``release_camera``
    rolled out by a release-view planner (each situation keeps the view it was shown and whether the sim called
    the subtask under way done); ``on_policy_fraction``: the share of examples drawn from them (DAgger's
    aggregation of the learner's states with the expert's), and of ``placed_fraction``'s questions."""
    import torch
    from accelerate import Accelerator
    from tqdm import tqdm
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from planners.subtask.frames import decode_frames, decode_views

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    cfg = TabletopModelConfig.model_validate(dict(model or {}))
    camera = camera if isinstance(camera, str) else list(camera)  # a Hydra ListConfig is neither
    prompt = PromptConfig(system=None, schema_in_prompt=False, camera=camera, image_size=cfg.image_size,
                          state_in_prompt=state_in_prompt, gripper_index=gripper_index, release_camera=release_camera,
                          placed_in_prompt=placed_in_prompt)
    views = cameras(prompt)
    tiles = len(views) + (release_camera is not None)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    if ordinals not in NAMINGS or (ordinals != "scene" and not canonical):
        raise ValueError(f"ordinals: expected one of {sorted(NAMINGS)} ('history' with canonical=true), "
                         f"got {ordinals!r}")
    if not 0.0 <= left_fraction <= 1.0:  # NaN too
        raise ValueError(f"left_fraction: expected a share in [0, 1], got {left_fraction!r}")
    on_policy = [] if not on_policy else [on_policy] if isinstance(on_policy, str) else list(on_policy)
    if not 0.0 <= on_policy_fraction <= 1.0 or (on_policy_fraction > 0) != bool(on_policy):
        raise ValueError(f"on_policy_fraction: expected a share in [0, 1], above 0 exactly when on_policy names "
                         f"datasets; got {on_policy_fraction!r} with on_policy={on_policy!r}")
    if not 0.0 <= placed_fraction <= 1.0 or (placed_fraction > 0 and release_camera is None):
        raise ValueError(f"placed_fraction: expected a share in [0, 1], above 0 only with release_camera; got "
                         f"{placed_fraction!r}")
    if release_camera is not None and release_noise:
        raise ValueError("release_camera: release_noise counts releases that have no view; train with "
                         "release_noise=0")
    if on_policy and ordinals != "history":
        raise ValueError("on_policy: its labels name same-coloured blocks from the history (ordinals=history)")
    naming = NAMINGS[ordinals]
    datasets = [open_dataset(root) for root in ([data] if isinstance(data, (str, Path)) else list(data))]
    index = SubtaskIndex.concat([SubtaskIndex.from_dataset(dataset) for dataset in datasets])
    to_canonical = canonical_subtask if canonical else (lambda s: " ".join(s.split()))
    states = np.concatenate([numeric_column(dataset, FEATURES["state"]) for dataset in datasets])
    gripper = None if gripper_index is None else states[:, gripper_index]
    builder = ExampleBuilder(index, to_canonical, done_tail_s, gripper, prompt.gripper_closed, naming.rewrite)
    if placed_fraction > 0 and not len(builder.release_frames):
        raise ValueError(f"placed_fraction: the recording never lets go (gripper_index {gripper_index}): no release "
                         f"to ask about")
    seen = sorted({s for plan in builder.plans.values() for s in plan})
    vocab = vocabulary(colours_in(seen), naming.ordinals) if canonical else seen
    vocab += [s for s in seen if s not in vocab]
    frames = np.concatenate([decode_views(dataset, views, cfg.image_size) for dataset in datasets])
    release_frames = None if release_camera is None else np.concatenate(
        [decode_views(dataset, [release_camera], cfg.image_size) for dataset in datasets])
    situations = []  # on-policy examples; their frames and states follow the recording's
    for root in on_policy:
        extra = open_dataset(root)
        if release_camera is not None:  # each situation's view as its planner was shown it
            if RELEASE_VIEW not in extra.features:
                raise ValueError(f"release_camera: {root} records no release view (rolled out by a planner without "
                                 f"one); record with a release-view planner")
            release_frames = np.concatenate([release_frames, decode_frames(extra, RELEASE_VIEW, cfg.image_size)])
        situations += on_policy_examples(extra, offset=len(frames))
        frames = np.concatenate([frames, decode_views(extra, views, cfg.image_size)])
        states = np.concatenate([states, numeric_column(extra, FEATURES["state"])])
    if on_policy:
        log.info("on-policy situations: %d from %s", len(situations), on_policy)

    state_dir = out / STATE_DIR
    start = 0
    if resume and (state_dir / "step.json").is_file():
        start = json.loads((state_dir / "step.json").read_text())["step"]
        processor = AutoProcessor.from_pretrained(out)
        net = AutoModelForImageTextToText.from_pretrained(out)
        log.info("resuming from step %d in %s", start, out)
    elif init is not None:
        processor = AutoProcessor.from_pretrained(init)
        set_image_size(processor, cfg.image_size, tiles)  # the prompt's size: the init's or a new one
        net = AutoModelForImageTextToText.from_pretrained(init)
        save(net, processor, out)
        log.info("fine-tuning %s", init)
    else:
        net, processor = build(tokenizer_corpus(index, vocab, prompt, ask_left=left_fraction > 0), cfg, tiles)
        save(net, processor, out)
    (out / SETTINGS_FILE).write_text(json.dumps({"prompt": prompt.model_dump(), "vocabulary": vocab,
                                                 "ordinals": ordinals}, indent=1))

    accelerator = Accelerator()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    # Linear warmup, then cosine decay to 10% over the whole run.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))))
    net, opt, sched = accelerator.prepare(net, opt, sched)
    if start:
        accelerator.load_state(str(state_dir))
        rng = np.random.default_rng([seed, start])

    def checkpoint(step: int) -> None:
        accelerator.save_state(str(state_dir))
        accelerator.unwrap_model(net).save_pretrained(out)
        (state_dir / "step.json").write_text(json.dumps({"step": step}))

    weights = dict(variants or TRAIN_WEIGHTS)
    all_frames = np.arange(len(index))
    done_frames = np.flatnonzero([builder.is_done_frame(i) for i in all_frames])
    augment = augmentation(rng, colour_swap, word_noise, release_noise, punctuation_noise, word_noise_rate,
                           sorted(set(index.instruction)), word_noise_familiar, word_noise_familiar_replaces,
                           word_noise_function_words)

    released = [ex for ex in situations if ex.release_placed is not None]  # on-policy, after a release

    def draw():
        if situations and rng.random() < on_policy_fraction:
            return situations[int(rng.integers(len(situations)))]
        if placed_fraction > 0 and rng.random() < placed_fraction:
            if released and rng.random() < on_policy_fraction:  # the planner's own releases too (DAgger)
                ex = released[int(rng.integers(len(released)))]
                return replace(ex, placed=ex.release_placed)
            while True:  # a situation after a release: did it place its block, or miss?
                ex = builder.sample(rng, all_frames, {"current": 0.5, "behind": 0.5})
                if ex.release_frame is not None:
                    return replace(ex, placed=ex.release_placed)
        if left_fraction > 0 and rng.random() < left_fraction:
            ex = builder.sample(rng, all_frames, LEFT_WEIGHTS)
            return replace(ex, left=tuple(builder.left(ex.frame)))
        if done_fraction > 0 and rng.random() < done_fraction:
            return builder.sample(rng, done_frames, weights={"current": 0.5, "fresh": 0.5})
        return builder.sample(rng, all_frames, weights)

    net.train()
    t0, losses, step = time.monotonic(), [], start
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="planner", disable=not accelerator.is_main_process)
    for step in bar:
        batch = collate(processor, frames, [draw() for _ in range(batch_size)], prompt, augment,
                        states if state_in_prompt else None, release_frames, rng, placed_noise).to(accelerator.device)
        loss = net(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}")
            log.info("step %d loss %.4f", step + 1, np.mean(losses[-log_every:]))
        if (step + 1) % checkpoint_every == 0:
            checkpoint(step + 1)
        if max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes:
            log.warning("stopping at step %d: max_minutes=%s reached", step + 1, max_minutes)
            break
    checkpoint(step + 1 if steps > start else start)
    return out
