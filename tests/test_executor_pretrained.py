"""Pretrained (transformers) encoder kinds, built from tiny random SigLIP configs saved to disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_executor_model import SUBTASK, observation, subgoal_for, tiny_config

from executors.flow import FlowExecutor, FlowModel

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "image_size": 32, "patch_size": 8}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "max_position_embeddings": 16}
WORDS = ["pick", "up", "the", "red", "block", "put", "it", "in", "blue", "bowl"]


@pytest.fixture(scope="module")
def siglip_vision_dir(tmp_path_factory):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("siglip_vision")
    SiglipVisionModel(SiglipVisionConfig(**TINY_VISION)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def siglip_full_dir(tmp_path_factory):
    """A whole SigLIP model (both towers) and a word-level tokenizer, as a local download would be."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("siglip")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>").save_pretrained(path)
    SiglipModel(SiglipConfig(vision_config=TINY_VISION, text_config=TINY_TEXT | {"vocab_size": len(vocab)})
                ).save_pretrained(path)
    return path


def test_siglip_vision_tower_loads_frozen_and_acts(siglip_vision_dir):
    from transformers import SiglipVisionModel

    model = FlowModel(tiny_config(vision="siglip", vision_path=str(siglip_vision_dir), freeze_vision=True))
    saved = SiglipVisionModel.from_pretrained(siglip_vision_dir).state_dict()
    loaded = model.vision.tower.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert model.cfg.vision_tower["hidden_size"] == 32
    # 2 cameras + 1 subgoal, (32 / 8)^2 tokens each; 24 text tokens; 1 state token.
    batch = {"images": torch.zeros(1, 2, 3, 16, 16, dtype=torch.uint8), "state": torch.zeros(1, 4),
             "text_ids": torch.zeros(1, 24, dtype=torch.long), "has_subgoal": torch.tensor([False])}
    assert model.encode_prefix(batch).shape == (1, 3 * 16 + 24 + 1, 32)
    obs = observation()
    assert FlowExecutor(model).act(obs, SUBTASK, subgoal_for(obs)).actions.shape == (6, 3)


def test_siglip_vision_fine_tunes_when_not_frozen(siglip_vision_dir):
    model = FlowModel(tiny_config(vision="siglip", vision_path=str(siglip_vision_dir), freeze_vision=False))
    assert all(p.requires_grad for p in model.vision.parameters())


def test_saved_executor_needs_no_original_directory(siglip_full_dir, tmp_path):
    cfg = tiny_config(vision="siglip", vision_path=str(siglip_full_dir), text="siglip",
                      text_path=str(siglip_full_dir), max_text_len=8)
    executor = FlowExecutor(FlowModel(cfg))
    assert executor.tokenizer(["pick up the red block"])[0].tolist() == [2, 3, 4, 5, 6, 0, 0, 0]
    executor.save_pretrained(tmp_path / "ckpt")
    loaded = FlowExecutor.from_pretrained(tmp_path / "ckpt")
    assert loaded.cfg.vision_path is None and loaded.cfg.text_path is None
    assert (tmp_path / "ckpt" / "tokenizer").is_dir()
    a, b = executor.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs = observation()
    np.testing.assert_array_equal(executor.act(obs, SUBTASK, None).actions, loaded.act(obs, SUBTASK, None).actions)
