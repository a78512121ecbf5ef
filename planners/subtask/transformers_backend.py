"""In-process backend: any `AutoModelForImageTextToText` + `AutoProcessor` directory with a chat template
(Qwen2.5-VL, Qwen3-VL, SmolVLM, or the small tabletop planner trained here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from hybrid.types import PlanStep
from planners.subtask.planner import VLMPlanner
from planners.subtask.replan import ReplanPolicy
from planners.subtask.reply import reply_text

# Written beside a trained planner's weights: the prompt it was trained on and its subtask vocabulary.
SETTINGS_FILE = "planner.json"


def load_settings(model_dir: str | Path | None) -> dict:
    path = Path(model_dir) / SETTINGS_FILE if model_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


class ReplyTrie:
    """The token sequences of every reply the planner may give, as a trie that decoding walks down.

    With a known subtask vocabulary, generation is restricted to it the way vLLM's structured outputs
    restrict it to a choice: a small model then cannot emit a subtask outside the vocabulary or a broken
    one ("put the the red block ..."), it can only pick the wrong one.
    """

    def __init__(self, sequences: list[list[int]]):
        self.root: dict = {}
        for seq in sequences:
            node = self.root
            for tok in seq:
                node = node.setdefault(tok, {})

    def allowed(self, prefix: list[int]) -> list[int]:
        node = self.root
        for tok in prefix:
            if tok not in node:
                return []
            node = node[tok]
        return list(node)


class TransformersBackend:
    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 64, replies: list[str] | None = None):
        """``replies``: the only reply texts generation may produce (None: free generation)."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device, self.max_new_tokens = device, int(max_new_tokens)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        self.model.to(device).eval()
        self.trie = None
        eos = self.model.generation_config.eos_token_id
        self.eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        if replies:
            tok = self.processor.tokenizer
            self.trie = ReplyTrie([tok(r, add_special_tokens=False)["input_ids"] + [self.eos] for r in replies])

    def inputs(self, messages: list[dict], images: list[np.ndarray]):
        from PIL import Image

        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pil = [Image.fromarray(img) for img in images]
        return self.processor(text=[text], images=pil, return_tensors="pt").to(self.device)

    def _prompt(self, messages: list[dict], image: np.ndarray):
        """The model inputs, where the reply starts, and the trie's rule for each next token (or None)."""
        inputs = self.inputs(messages, [image])
        start = inputs["input_ids"].shape[1]
        allowed = None
        if self.trie is not None:
            # A beam past its end (beam search keeps finished and padding beams in the batch) may only end.
            allowed = lambda batch_id, ids: self.trie.allowed(ids[start:].tolist()) or [self.eos]
        return inputs, start, allowed

    def complete(self, messages: list[dict], image: np.ndarray) -> str:
        import torch

        inputs, start, allowed = self._prompt(messages, image)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      prefix_allowed_tokens_fn=allowed)
        return self.processor.batch_decode(out[:, start:], skip_special_tokens=True)[0]

    def candidates(self, messages: list[dict], image: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` most likely replies by beam search, best first, with their summed token log-probabilities
        (no length normalisation: the replies compete as whole answers)."""
        import torch

        inputs, start, allowed = self._prompt(messages, image)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      num_beams=k, num_return_sequences=k, length_penalty=0.0,
                                      prefix_allowed_tokens_fn=allowed, output_scores=True,
                                      return_dict_in_generate=True)
        texts = self.processor.batch_decode(out.sequences[:, start:], skip_special_tokens=True)
        return list(zip(texts, out.sequences_scores.tolist(), strict=True))

    def score(self, messages: list[dict], image: np.ndarray, replies: list[str], batch_size: int = 64) -> np.ndarray:
        """Each of ``replies``' summed token log-probability (its end-of-sequence token included) as the answer,
        by teacher forcing: the prompt is encoded once and its key/value cache repeated under the replies, as
        generation's decoding steps continue it. SayCan scores every skill this way; beam search only
        approximates the best few."""
        import torch

        inputs, start, _ = self._prompt(messages, image)
        tok = self.processor.tokenizer
        seqs = [tok(r, add_special_tokens=False)["input_ids"] + [self.eos] for r in replies]
        out = np.zeros(len(seqs))
        with torch.inference_mode():
            prefill = self.model(**inputs, use_cache=True)
            first = prefill.logits[0, -1].float().log_softmax(-1)  # the reply's first token
            for lo in range(0, len(seqs), batch_size):
                chunk = seqs[lo:lo + batch_size]
                n, width = len(chunk), max(len(q) for q in chunk)
                ids = torch.full((n, width), self.eos, dtype=torch.long)
                valid = torch.zeros((n, width), dtype=torch.bool)
                for i, q in enumerate(chunk):
                    ids[i, :len(q)], valid[i, :len(q)] = torch.tensor(q), True
                ids, valid = ids.to(self.device), valid.to(self.device)
                cache = copy.deepcopy(prefill.past_key_values)  # the forward below appends to it
                cache.batch_repeat_interleave(n)
                mask = torch.cat([inputs["attention_mask"].expand(n, -1), valid.long()], dim=1)
                logits = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                                    cache_position=torch.arange(start, start + width, device=self.device)).logits
                # token j is predicted at position j - 1; the last position predicts past the reply
                lp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
                total = first[ids[:, 0]] + (lp * valid[:, 1:]).sum(-1)
                out[lo:lo + n] = total.cpu().numpy()
        return out


def transformers_planner(model: str, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 64,
                         prompt: dict | None = None, vocabulary: list[str] | None = None,
                         max_attempts: int = 3, replan: dict | ReplanPolicy | None = None,
                         constrained: bool = True, affordance: dict | None = None,
                         success: dict | None = None) -> VLMPlanner:
    """A `VLMPlanner` on a local model directory; its saved prompt and vocabulary are the defaults.
    ``constrained``: with a vocabulary, decode only replies naming one of its subtasks (or done); ``success``: a
    success detector's word on "done" (`planners/subtask/success.py`)."""
    if str(model).startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        # a local path, not a hub id: say so rather than let the hub client reject it as a malformed repo id
        raise FileNotFoundError(f"planner model directory not found: {model}")
    saved = load_settings(model)
    vocabulary = vocabulary if vocabulary is not None else saved.get("vocabulary")
    replies = None
    if constrained and vocabulary:
        replies = [reply_text(PlanStep(subtask=s)) for s in vocabulary] + [reply_text(PlanStep(done=True))]
    return VLMPlanner(TransformersBackend(model, device, dtype, max_new_tokens, replies),
                      prompt={**saved.get("prompt", {}), **dict(prompt or {})},
                      vocabulary=vocabulary, max_attempts=max_attempts, replan=replan, affordance=affordance,
                      success=success)
