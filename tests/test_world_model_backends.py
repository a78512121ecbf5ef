"""Each diffusers backend round-trips from a saved directory and imagines a subgoal of the right shape.

The pipelines are built from tiny random components and locally built tokenizers (no hub access),
saved with `save_pretrained` and loaded back through `SubgoalWorldModel.from_pretrained`.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.interfaces import WorldModel
from hybrid.testing import fake_observation
from hybrid.types import Subgoal, Subtask

torch = pytest.importorskip("torch")

WORDS = ["pick", "up", "the", "red", "block", "put", "it", "in", "blue", "bowl", "front", "wrist", ":"]


def _clip_text_encoder(vocab_size: int, eos_token_id: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                                        projection_dim=hidden, bos_token_id=2, eos_token_id=eos_token_id,
                                        pad_token_id=0))


def tiny_instruct_pix2pix():
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )

    from planners.subgoal.tabletop_model import build_word_tokenizer

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(WORDS, max_length=16)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=8,
                                out_channels=4, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=_clip_text_encoder(len(tokenizer), tokenizer.eos_token_id), tokenizer=tokenizer,
        unet=unet, scheduler=EulerAncestralDiscreteScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def tiny_flux_kontext():
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from planners.subgoal.tabletop_model import build_word_tokenizer

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(WORDS, max_length=16)
    tokenizer_2 = build_word_tokenizer(WORDS, max_length=16)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                             num_heads=4, pad_token_id=0, eos_token_id=tokenizer_2.eos_token_id))
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    return FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
                               text_encoder=_clip_text_encoder(len(tokenizer), tokenizer.eos_token_id),
                               tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def tiny_qwen_image_edit():
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2TokenizerFast,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from planners.subgoal.tabletop_model import build_word_tokenizer

    torch.manual_seed(0)
    vision = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    words = WORDS + ["system", "user", "assistant", "describe", "image", "."]
    tokenizer = build_word_tokenizer(words, max_length=256, tokenizer_class=Qwen2TokenizerFast,
                                     extra_special_tokens=vision)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in vision}
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": len(tokenizer), "rope_theta": 1e6,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=len(tokenizer), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"]))
    # Few vision tokens: the edit pipeline hands the VLM a ~1 Mpx image; the processor shrinks it.
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
                                 tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    # The edit pipeline always VAE-encodes the condition image at ~1 Mpx: a thin VAE that downsamples 16x keeps it cheap.
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False] * 4, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return QwenImageEditPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                 tokenizer=tokenizer, processor=processor, transformer=transformer)


def tiny_tabletop():
    from planners.subgoal.tabletop_model import build_tabletop_pipeline

    return build_tabletop_pipeline(WORDS, sample_size=16, channels=(8, 16), text_dim=16, text_layers=1)


# backend -> (builder, world-model overrides: small generation size, few steps)
BACKENDS = {
    "tabletop": (tiny_tabletop, dict(num_inference_steps=2, guidance_scale=2.0, image_guidance_scale=1.5)),
    "instruct_pix2pix": (tiny_instruct_pix2pix, dict(num_inference_steps=2, resolution=32, guidance_scale=3.0,
                                                     image_guidance_scale=1.5)),
    "flux_kontext": (tiny_flux_kontext, dict(num_inference_steps=2, resolution=32,
                                             call_kwargs={"max_sequence_length": 16})),
    "qwen_image_edit": (tiny_qwen_image_edit, dict(num_inference_steps=2, resolution=32, guidance_scale=2.0,
                                                   call_kwargs={"max_sequence_length": 16})),
}


def _save(backend: str, tmp_path_factory):
    builder, overrides = BACKENDS[backend]
    path = tmp_path_factory.mktemp(backend)
    builder().save_pretrained(str(path))
    return backend, path, overrides


@pytest.fixture(scope="module", params=list(BACKENDS))
def saved(request, tmp_path_factory):
    return _save(request.param, tmp_path_factory)


# Config persistence is backend-independent: checked on the two cheapest pipelines only.
@pytest.fixture(scope="module", params=["tabletop", "instruct_pix2pix"])
def saved_cheap(request, tmp_path_factory):
    return _save(request.param, tmp_path_factory)


def hydra_overrides(path, overrides: dict) -> list[str]:
    out = [f"world_model.path={path}", "++world_model.device=cpu", "++world_model.dtype=float32"]
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
        out.append(f"++world_model.{key}={value}")
    return out


def test_backend_config_loads_the_saved_pipeline_and_imagines_one_subgoal_per_camera(saved):
    from hybrid.config import compose, instantiate

    backend, path, overrides = saved
    # Through configs/world_model/<backend>.yaml, as `hybrid run world_model=<backend>` builds it.
    wm = instantiate(compose(f"world_model/{backend}", hydra_overrides(path, overrides)).world_model)
    assert wm.config.backend == backend  # detected from model_index.json
    assert isinstance(wm, WorldModel)
    obs = fake_observation(cameras=("front", "wrist"), size=24)
    goal = wm.imagine(obs, Subtask(text="pick up the red block", index=0))
    assert isinstance(goal, Subgoal) and set(goal.images) == {"front", "wrist"}
    for cam, img in goal.images.items():
        assert img.dtype == np.uint8 and img.shape == obs.images[cam].shape
    assert goal.subtask == "pick up the red block" and goal.model.startswith(backend)


def test_saved_world_model_keeps_its_config(saved_cheap, tmp_path):
    from planners.subgoal import SubgoalWorldModel

    backend, path, overrides = saved_cheap
    wm = SubgoalWorldModel.from_pretrained(path, device="cpu", prompt_template="{camera}: {subtask}", **overrides)
    wm.save_pretrained(tmp_path / "copy")
    again = SubgoalWorldModel.from_pretrained(tmp_path / "copy")
    assert again.config.prompt_template == "{camera}: {subtask}"
    assert again.config.num_inference_steps == overrides["num_inference_steps"]
    obs = fake_observation(cameras=("front",), size=32, seed=3)
    a = wm.imagine(obs, Subtask(text="put it in the blue bowl", index=1)).images["front"]
    b = again.imagine(obs, Subtask(text="put it in the blue bowl", index=1)).images["front"]
    # Same weights, same seed: the same subgoal (up to resampling noise of float kernels).
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_tabletop_patches_keep_the_full_resolution_and_round_trip(tmp_path):
    import torch

    from planners.subgoal.tabletop_model import (
        TabletopSubgoalPipeline,
        build_tabletop_pipeline,
        image_size_of,
    )

    pipe = build_tabletop_pipeline(WORDS, sample_size=16, patch_size=2, channels=(8, 16), text_dim=16, text_layers=1)
    assert (pipe.unet.config.sample_size, pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (8, 24, 12)
    with torch.no_grad():  # a network that predicts no change: the subgoal is the current frame, pixel for pixel
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.zero_()
    pipe.save_pretrained(str(tmp_path))
    loaded = TabletopSubgoalPipeline.from_pretrained(str(tmp_path))
    assert image_size_of(loaded.unet) == 16
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = loaded(frames, "front: pick up the red block", num_inference_steps=2).images
    assert out.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(out * 255, frames, atol=1e-3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_tabletop_pipeline(WORDS, sample_size=15, patch_size=2)


def test_tabletop_subgoal_keeps_static_pixels_sharp_and_drops_stale_edges_where_the_scene_changes():
    import torch

    from planners.subgoal.tabletop_model import build_tabletop_pipeline, to_model_space

    pipe = build_tabletop_pipeline(WORDS, sample_size=8, channels=(8, 16), text_dim=16, text_layers=1)
    frames = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)  # detail finer than 8 px
    with torch.no_grad():
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.zero_()  # no change anywhere: the frame itself, at full resolution
    same = pipe(frames, "front: pick up the red block", num_inference_steps=2).images
    np.testing.assert_allclose(same * 255, frames, atol=1e-3)
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(0.2)  # a change of 0.4 everywhere: the model's 8-px picture, no 16-px edges
    changed = pipe(frames, "front: pick up the red block", num_inference_steps=2).images
    low = torch.nn.functional.interpolate(to_model_space(torch.from_numpy(frames), 8), size=(16, 16), mode="bilinear",
                                          align_corners=False)
    expected = ((low + 0.4).clamp(-1, 1) + 1) / 2
    np.testing.assert_allclose(changed, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    ghosts = pipe(frames, "front: pick up the red block", num_inference_steps=2, change_threshold=None).images
    assert np.abs(ghosts - changed).max() > 0.1  # adding the change to the frame would keep its fine edges
