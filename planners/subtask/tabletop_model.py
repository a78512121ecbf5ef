"""The small tabletop planner: a real `Qwen2VLForConditionalGeneration` with a tiny config, a byte-level
BPE tokenizer trained on the tabletop's language and a `Qwen2VLProcessor`, saved as an ordinary
transformers directory, so the loading code that serves a Qwen-class model serves it too.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Qwen-style turns; image items (a placeholder, or an inline image_url from a server) become the
# vision tokens the processor expands to one token per merged patch.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TabletopModelConfig(BaseModel):
    """Sizes of the tabletop planner; small enough to train and run on a CPU."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(84, description="square input side; a multiple of 28 (patch 14 x merge 2)")
    vocab_size: int = Field(640, description="BPE vocabulary incl. special tokens")
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 512
    vision_dim: int = 96
    vision_depth: int = 3
    vision_heads: int = 4
    max_positions: int = 1024


def train_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE on the tabletop's language, wrapped as the Qwen2 fast tokenizer class."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return Qwen2TokenizerFast(tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def build_processor(tokenizer, image_size: int, views: int = 1):
    from transformers import Qwen2VLImageProcessorFast, Qwen2VLProcessor, Qwen2VLVideoProcessor

    grid = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorFast(**grid), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(**grid), chat_template=CHAT_TEMPLATE)
    set_image_size(processor, image_size, views)
    return processor


def set_image_size(processor, image_size: int, views: int = 1) -> None:
    """Resize every image to ``views`` x ``image_size``^2 pixels (min = max pixels; ``views`` cameras tiled
    side by side), so the image token count is fixed; also how a planner is fine-tuned at another resolution or
    with another camera beside its own (Qwen2-VL's vision rotary positions follow the patch grid, so the same
    weights read a larger grid, and the first camera keeps the positions it had alone)."""
    pixels = views * image_size * image_size
    for proc in (processor.image_processor, getattr(processor, "video_processor", None)):
        if proc is not None:
            proc.size = {"shortest_edge": pixels, "longest_edge": pixels}
            proc.min_pixels = proc.max_pixels = None  # else they override size


def build_model(tokenizer, cfg: TabletopModelConfig):
    """A randomly initialised Qwen2-VL with the tiny sizes of ``cfg``."""
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = cfg.hidden_size // cfg.heads
    section = [head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6]  # (t, h, w) rotary split
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.max_positions, rope_theta=10000.0, tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": section}, max_window_layers=cfg.layers,
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=cfg.vision_depth, embed_dim=cfg.vision_dim, hidden_size=cfg.hidden_size,
                           num_heads=cfg.vision_heads, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                                               do_sample=False, max_new_tokens=48)
    return model


def build(corpus: list[str], cfg: TabletopModelConfig, views: int = 1):
    """(model, processor) for a fresh tabletop planner whose tokenizer is trained on ``corpus``, shown ``views``
    cameras side by side."""
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    return build_model(tokenizer, cfg), build_processor(tokenizer, cfg.image_size, views)


def save(model, processor, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
