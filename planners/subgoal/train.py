"""Train the tabletop subgoal model from scratch on recorded episodes.

`hybrid train world_model=tabletop data=DIR out=DIR [key=value ...]`

Pairs (frame, subtask) -> frame at the end of that subtask (or ``ahead`` frames later, or Pi-0.7's
hindsight mix), one camera per sample with the camera named in the prompt. The text and the current
image are each dropped with a small probability so that two-way classifier-free guidance
(InstructPix2Pix) is available at sampling time. EMA weights are what gets saved as the pipeline;
`accelerate` handles devices and multi-GPU; checkpoints under ``out/checkpoints`` resume a run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from planners.subgoal.data import FrameCache, GoalRule

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "{camera}: {subtask}"


def flow_matching_loss(denoiser, current, goal, input_ids, attention_mask, generator=None):
    """Rectified-flow loss with x-prediction: MSE between the predicted and the true clean residual ``goal``.

    ``goal`` is the residual (subgoal - current) / 2 at the model's resolution; ``current`` the conditioning
    image as the network sees it (zeros where dropped). Both float [B, 3, S, S].
    """
    import torch
    import torch.nn.functional as F

    x0 = goal
    noise = torch.randn(x0.shape, generator=generator, device=x0.device if generator is None else generator.device)
    noise = noise.to(x0.device)
    t = torch.rand(x0.shape[0], generator=generator, device=noise.device if generator is None else generator.device)
    t = t.to(x0.device)
    tb = t.view(-1, 1, 1, 1)
    x0_hat = denoiser(noisy=(1 - tb) * x0 + tb * noise, current=current, input_ids=input_ids,
                      attention_mask=attention_mask, t=t)
    return F.mse_loss(x0_hat.float(), x0.float())


class PairSampler:
    """Random training batches from a `FrameCache`: conditioning image, residual target, prompt tokens.

    With ``colour_swap`` > 0 that fraction of pairs has one permutation of the colour names applied to the
    subtask and to both images (`hybrid.data.augment`): held-out colour pairs are then seen in training.
    """

    def __init__(self, cache: FrameCache, tokenizer, goal: GoalRule = "subtask_end", ahead: int = 10,
                 p_drop_text: float = 0.05, p_drop_image: float = 0.05, colour_swap: float = 0.0, seed: int = 0):
        from hybrid.data.augment import tabletop_colour_swap

        self.cache, self.goal, self.ahead = cache, goal, ahead
        self.p_drop_text, self.p_drop_image = p_drop_text, p_drop_image
        self.colour_swap, self.swap = colour_swap, tabletop_colour_swap() if colour_swap > 0 else None
        self.rng = np.random.default_rng(seed)
        self.tokenizer = tokenizer
        # Every prompt the data can produce, tokenized once ("" is the dropped text); swapped ones as they come.
        prompts = sorted({PROMPT_TEMPLATE.format(camera=c, subtask=s)
                          for c in cache.cameras for s in set(cache.index.subtask_text)} | {""})
        self._tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._tokenize(prompts)

    def _tokenize(self, prompts: list[str]) -> None:
        tok = self.tokenizer
        enc = tok(prompts, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="np")
        self._tokens.update({p: (enc["input_ids"][k], enc["attention_mask"][k]) for k, p in enumerate(prompts)})

    def batch(self, size: int) -> dict[str, Any]:
        import torch

        from planners.subgoal.tabletop_model import to_model_space

        idx = self.rng.integers(0, len(self.cache.index), size)
        cams = self.rng.integers(0, len(self.cache.cameras), size)
        goals = np.array([self.cache.goal_of(int(i), self.goal, self.ahead, self.rng) for i in idx])
        names = [self.cache.cameras[c] for c in cams]
        cur = np.stack([self.cache.frames[n][i] for n, i in zip(names, idx)])
        tgt = np.stack([self.cache.frames[n][g] for n, g in zip(names, goals)])
        subtasks = [self.cache.index.subtask_text[i] for i in idx]
        if self.swap is not None:
            for k in np.flatnonzero(self.rng.random(size) < self.colour_swap):
                mapping = self.swap.draw(self.rng)
                cur[k], tgt[k] = self.swap.image(cur[k], mapping), self.swap.image(tgt[k], mapping)
                subtasks[k] = self.swap.text(subtasks[k], mapping)
        current = to_model_space(torch.from_numpy(cur))
        residual = (to_model_space(torch.from_numpy(tgt)) - current) / 2  # the pipeline adds 2 * residual back
        drop_text = self.rng.random(size) < self.p_drop_text
        drop_image = torch.from_numpy(self.rng.random(size) < self.p_drop_image).view(-1, 1, 1, 1)
        prompts = ["" if d else PROMPT_TEMPLATE.format(camera=n, subtask=s) for d, n, s in zip(drop_text, names, subtasks)]
        new = sorted({p for p in prompts if p not in self._tokens})
        if new:
            self._tokenize(new)
        ids, mask = zip(*(self._tokens[p] for p in prompts))
        return {"current": current.masked_fill(drop_image, 0.0), "goal": residual,
                "input_ids": torch.from_numpy(np.stack(ids)).long(),
                "attention_mask": torch.from_numpy(np.stack(mask)).long()}


def train(data: str, out: str, steps: int = 6000, batch_size: int = 16, lr: float = 5e-4, warmup_steps: int = 200,
          weight_decay: float = 0.01, goal: GoalRule = "subtask_end", ahead: int = 10,
          cameras: Sequence[str] | None = None, sample_size: int = 32, patch_size: int = 1,
          channels: Sequence[int] = (32, 64, 64),
          text_dim: int = 64, text_layers: int = 2, p_drop_text: float = 0.05, p_drop_image: float = 0.05,
          colour_swap: float = 0.0,
          ema_decay: float = 0.999, grad_clip: float = 1.0, checkpoint_every: int = 500, log_every: int = 50,
          resume: bool = False, max_minutes: float | None = None, num_inference_steps: int = 4,
          mixed_precision: str = "no", num_threads: int | None = None, seed: int = 0,
          progress: bool = True) -> dict[str, Any]:
    """Train and save the tabletop world model to ``out`` (a pipeline directory `SubgoalWorldModel` loads)."""
    import torch
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    from hybrid.data.augment import tabletop_colour_swap
    from planners.subgoal.configuration import WorldModelConfig
    from planners.subgoal.tabletop_model import (
        ConditionalDenoiser,
        TabletopSubgoalPipeline,
        build_tabletop_pipeline,
        words_of,
    )
    from planners.subgoal.world_model import SubgoalWorldModel

    if num_threads:
        torch.set_num_threads(num_threads)
    out_dir, ckpt_root = Path(out), Path(out) / "checkpoints"
    accelerator = Accelerator(mixed_precision=mixed_precision)
    cache = FrameCache.from_dataset(data, cameras=list(cameras) if cameras else None, size=sample_size,
                                    progress=progress and accelerator.is_main_process)
    latest = _latest_checkpoint(ckpt_root) if resume else None
    if latest is not None:  # same architecture and vocabulary as the run being resumed
        pipe = TabletopSubgoalPipeline.from_pretrained(str(out_dir))
    else:
        vocab = words_of([PROMPT_TEMPLATE.format(camera=c, subtask=s)
                          for c in cache.cameras for s in set(cache.index.subtask_text)]
                         + (tabletop_colour_swap().names if colour_swap > 0 else []))  # every colour a swap can write
        pipe = build_tabletop_pipeline(vocab, sample_size=sample_size, channels=channels, text_dim=text_dim,
                                       text_layers=text_layers, patch_size=patch_size, seed=seed)
    denoiser = ConditionalDenoiser(pipe.unet, pipe.text_encoder)
    sampler = PairSampler(cache, pipe.tokenizer, goal, ahead, p_drop_text, p_drop_image, colour_swap,
                          seed=seed + accelerator.process_index)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    ema = EMAModel(denoiser.parameters(), decay=ema_decay, use_ema_warmup=True, power=3 / 4)
    denoiser, optimizer, schedule = accelerator.prepare(denoiser, optimizer, schedule)

    step = start_step = 0
    if latest is not None:
        accelerator.load_state(str(latest))
        ema.load_state_dict(torch.load(latest / "ema.pt", weights_only=False))
        step = start_step = json.loads((latest / "state.json").read_text())["step"]
        log.info("resumed from %s at step %d", latest, step)

    wm_config = WorldModelConfig(backend="tabletop", cameras=cache.cameras, prompt_template=PROMPT_TEMPLATE,
                                 num_inference_steps=num_inference_steps)

    def save(at_step: int) -> None:
        """A resumable checkpoint plus the EMA pipeline in ``out`` (usable at any point of the run)."""
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        ckpt = ckpt_root / f"step_{at_step:07d}"
        accelerator.save_state(str(ckpt))
        torch.save(ema.state_dict(), ckpt / "ema.pt")
        (ckpt / "state.json").write_text(json.dumps({"step": at_step}))
        model = accelerator.unwrap_model(denoiser)
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        SubgoalWorldModel(pipe, wm_config).save_pretrained(out_dir)
        ema.restore(model.parameters())

    start, losses, loss_value = time.monotonic(), [], float("nan")
    bar = tqdm(total=steps, initial=step, desc="world model", disable=not (progress and accelerator.is_main_process))
    denoiser.train()
    while step < steps:
        batch = {k: v.to(accelerator.device) for k, v in sampler.batch(batch_size).items()}
        with accelerator.autocast():
            loss = flow_matching_loss(denoiser, **batch)
        accelerator.backward(loss)
        if grad_clip:
            accelerator.clip_grad_norm_(denoiser.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(accelerator.unwrap_model(denoiser).parameters())
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % log_every == 0 or step == steps:
            loss_value = float(np.mean(losses[-log_every:]))
            bar.set_postfix(loss=f"{loss_value:.4f}")
        out_of_time = max_minutes is not None and time.monotonic() - start > 60 * max_minutes
        if step % checkpoint_every == 0 or step == steps or out_of_time:
            save(step)
        if out_of_time:
            log.warning("stopping at step %d: max_minutes=%s reached", step, max_minutes)
            break
    bar.close()
    summary = {"out": str(out_dir), "steps": step, "resumed_from": start_step, "loss": loss_value, "minutes": (time.monotonic() - start) / 60,
               "frames": len(cache.index), "cameras": cache.cameras}
    if accelerator.is_main_process:
        print(json.dumps(summary))
    return summary


def _latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None
