"""The small subgoal model for the built-in tabletop, trained from scratch: an InstructPix2Pix-style
conditional flow model in pixel space, built from diffusers components and saved as a diffusers pipeline.

- The UNet sees the noisy sample concatenated with the current image (InstructPix2Pix's channel
  concatenation) and the subtask text through cross-attention (a small CLIP text encoder over a
  word-level tokenizer of the tabletop's vocabulary).
- It generates the *change* from the current frame rather than the frame itself: most of the scene is
  static, so the residual is mostly zero. The residual has `image_size` pixels a side; the UNet works on
  a grid `patch_size` times coarser (`unet.config.sample_size`), each cell holding a patch_size x patch_size
  patch in its channels (space-to-depth, as pixel-space diffusion models patchify): full-resolution
  detail at the cost of a coarse grid. A residual smaller than the camera's image is upsampled.
- Rectified flow (x_t = (1 - t) x0 + t noise), sampled with diffusers' `FlowMatchEulerDiscreteScheduler`
  from the velocity (x_t - x0_hat) / t. The network predicts the clean residual x0_hat (x-prediction)
  rather than the velocity: zero change in static regions is then trivial to output, whereas a velocity
  network must reproduce the input noise exactly there or leak it into the subgoal at few steps.
"""

# No `from __future__ import annotations`: diffusers reads the pipeline's __init__ annotations at load time.

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}


def words_of(texts: Sequence[str]) -> list[str]:
    """The vocabulary of some texts as the word-level tokenizer splits them (lower case, words and punctuation)."""
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t.lower())})


def build_word_tokenizer(words: Sequence[str], max_length: int = 32, tokenizer_class: type | None = None,
                         extra_special_tokens: Sequence[str] = (), **kwargs: Any) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over a closed vocabulary, built offline (no hub download).

    Every text becomes ``[BOS] words... [EOS]``; unknown words map to ``[UNK]``. ``tokenizer_class``
    picks the transformers wrapper (e.g. ``Qwen2TokenizerFast``) where a pipeline checks the class.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = list(SPECIAL_TOKENS.values()) + list(extra_special_tokens)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(specials + [w for w in words if w not in specials]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    cls = tokenizer_class or PreTrainedTokenizerFast
    return cls(tokenizer_object=tok, model_max_length=max_length, **SPECIAL_TOKENS,
               additional_special_tokens=list(extra_special_tokens), **kwargs)


def to_model_space(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, size, size] in [-1, 1] (area resampling, as at training time)."""
    x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


class ConditionalDenoiser(torch.nn.Module):
    """Text encoder + UNet as one module: the velocity of the residual flow given image and subtask.

    One module so that `accelerate`/DDP wraps a single forward; the pipeline calls the same code.
    """

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.patch_size = patch_size_of(unet)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def predict_sample(self, noisy: torch.Tensor, current: torch.Tensor, text: torch.Tensor,
                       t: torch.Tensor) -> torch.Tensor:
        """The clean residual x0_hat, [B, 3, image_size, image_size] like ``noisy`` and ``current``. ``t`` in
        [0, 1] (1 = pure noise); the UNet's timestep embedding gets t * 1000, the scale diffusers'
        flow-matching schedulers use."""
        x = F.pixel_unshuffle(torch.cat([noisy, current], dim=1), self.patch_size)
        # pixel_unshuffle interleaves the 6 input channels per patch offset; the order only has to be fixed.
        out = self.unet(x, t * 1000.0, encoder_hidden_states=text).sample
        return F.pixel_shuffle(out, self.patch_size)

    def forward(self, noisy, current, input_ids, attention_mask, t):
        return self.predict_sample(noisy, current, self.encode_text(input_ids, attention_mask), t)


class TabletopSubgoalPipeline(DiffusionPipeline):
    """Subgoal image(s) from current image(s) and subtask prompt(s); output at the input's resolution."""

    model_cpu_offload_seq = "text_encoder->unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DConditionModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    @property
    def denoiser(self) -> ConditionalDenoiser:
        return ConditionalDenoiser(self.unet, self.text_encoder)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return {"input_ids": enc.input_ids.to(self.device), "attention_mask": enc.attention_mask.to(self.device)}

    @torch.no_grad()
    def __call__(self, image, prompt: str | list[str], num_inference_steps: int = 4, guidance_scale: float = 1.0,
                 image_guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                 output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                 change_threshold: float | None = 0.2):
        """``image``: uint8 [B, H, W, 3] array, a list of HxWx3 arrays or PIL images. Returns [B, H, W, 3] in [0, 1].

        ``change_threshold``: where the generated change is at least this large (on the [-1, 1] pixel scale)
        the subgoal is the model's own prediction; where it is near zero the camera's full-resolution frame
        shows through, blended in between. A residual smaller than the camera's image otherwise leaves the
        current frame's fine edges where the scene has changed (ghosts; a wrist view that moved entirely).
        0.2 was chosen on training episodes; None adds the residual everywhere."""
        frames = np.stack([np.asarray(im, dtype=np.uint8) for im in ([image] if _single(image) else image)])
        prompts = [prompt] * len(frames) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(frames):
            raise ValueError(f"prompt: expected {len(frames)} prompts (one per image), got {len(prompts)}")
        dtype, size = self.unet.dtype, image_size_of(self.unet)
        current_full = to_model_space(torch.from_numpy(frames).to(self.device))
        current = to_model_space(torch.from_numpy(frames).to(self.device), size).to(dtype)
        den = self.denoiser
        # Two-way classifier-free guidance (InstructPix2Pix): full, image-only and unconditional branches.
        guided = guidance_scale != 1.0 or image_guidance_scale != 1.0
        tokens = self.tokenize(prompts + [""] * len(prompts) if guided else prompts)
        text = den.encode_text(**tokens).to(dtype)
        if guided:
            b = len(prompts)
            text = torch.cat([text[:b], text[b:], text[b:]])
            current = torch.cat([current, current, torch.zeros_like(current)])

        shape = (len(frames), 3, size, size)
        latents = torch.randn(shape, generator=generator, device=generator.device if generator else self.device)
        latents = latents.to(self.device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for i, t in enumerate(self.scheduler.timesteps):
            model_in = torch.cat([latents] * 3) if guided else latents
            sigma = t / 1000.0
            x0 = den.predict_sample(model_in, current, text, sigma.expand(model_in.shape[0]).to(dtype))
            if guided:  # guidance is linear, so combining x0 predictions equals combining velocities
                x_full, x_image, x_uncond = x0.chunk(3)
                x0 = x_uncond + image_guidance_scale * (x_image - x_uncond) + guidance_scale * (x_full - x_image)
            latents = self.scheduler.step((latents - x0) / sigma, t, latents).prev_sample
            if callback_on_step_end is not None:
                out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                latents = out.pop("latents", latents)

        up = lambda x: F.interpolate(x, size=current_full.shape[-2:], mode="bilinear", align_corners=False)
        change = 2.0 * up(latents.float())
        goal = current_full + change
        if change_threshold and size != current_full.shape[-1]:
            predicted = up(current[: len(frames)].float()) + change  # the subgoal at the model's resolution
            keep = 1.0 - (change.abs().amax(1, keepdim=True) / change_threshold).clamp(max=1.0)
            goal = keep * current_full + (1.0 - keep) * predicted
        goal = goal.clamp(-1, 1).add(1).div(2)
        images = goal.permute(0, 2, 3, 1).cpu().numpy() if output_type == "np" else goal
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def patch_size_of(unet: UNet2DConditionModel) -> int:
    """Side of the pixel patch in each UNet cell: the UNet outputs 3 * patch_size**2 channels."""
    return int(round((unet.config.out_channels // 3) ** 0.5))


def image_size_of(unet: UNet2DConditionModel) -> int:
    """Side of the residual image the UNet generates (its grid times the patch)."""
    return unet.config.sample_size * patch_size_of(unet)


def _single(image) -> bool:
    return getattr(image, "ndim", None) == 3 or hasattr(image, "mode")  # one HxWx3 array or one PIL image


def build_tabletop_pipeline(vocabulary: Sequence[str], sample_size: int = 32, channels: Sequence[int] = (32, 64, 64),
                            text_dim: int = 64, text_layers: int = 2, max_prompt_length: int = 24,
                            patch_size: int = 1, seed: int = 0) -> TabletopSubgoalPipeline:
    """A randomly initialised tabletop pipeline over ``vocabulary`` (words; see `words_of`) that generates
    ``sample_size``-pixel residuals on a UNet grid of ``sample_size // patch_size``."""
    if sample_size % patch_size:
        raise ValueError(f"sample_size {sample_size} is not a multiple of patch_size {patch_size}")
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(vocabulary, max_length=max_prompt_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=text_layers,
        num_attention_heads=4, max_position_embeddings=max_prompt_length, projection_dim=text_dim,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    depth = len(channels)
    unet = UNet2DConditionModel(
        sample_size=sample_size // patch_size, in_channels=6 * patch_size ** 2, out_channels=3 * patch_size ** 2,
        block_out_channels=tuple(channels),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=text_dim, attention_head_dim=8,
        # Attention (self + cross to the subtask) only at the coarsest level and the mid block: CPU training
        # time is dominated by the fine levels, which stay convolutional.
        down_block_types=("DownBlock2D",) * (depth - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (depth - 1),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return TabletopSubgoalPipeline(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
