"""The attention dispatch point: numbers against a naive reference, and which kernel is chosen when."""

from __future__ import annotations

import logging

import pytest
import torch

from hybrid import attention as attn


def naive(q, k, v, mask=None, causal=False):
    """softmax(q kᵀ / √d) v in (B, S, H, D) layout, written out."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    if causal:
        mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.double()).to(q.dtype)


def qkv(b=2, sq=7, sk=19, h=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, sq, h, d, generator=g), torch.randn(b, sk, h, d, generator=g),
            torch.randn(b, sk, h, d, generator=g))


def test_cpu_matches_naive_reference():
    q, k, v = qkv()
    out = attn.attention(q, k, v)
    assert out.shape == q.shape
    torch.testing.assert_close(out, naive(q, k, v), atol=1e-5, rtol=1e-5)


def test_cpu_mask_and_causal_match_reference():
    q, k, v = qkv(sq=11, sk=11)
    mask = torch.rand(2, 1, 11, 11, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    torch.testing.assert_close(attn.attention(q, k, v, mask=mask), naive(q, k, v, mask=mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.attention(q, k, v, causal=True), naive(q, k, v, causal=True),
                               atol=1e-5, rtol=1e-5)


def test_forced_math_kernel_gives_the_same_numbers():
    q, k, v = qkv(seed=3)
    with attn.use_backend("sdpa_math"):
        assert attn.select_backend("cpu", torch.float32) == "sdpa_math"
        math = attn.attention(q, k, v)
    assert attn.select_backend("cpu", torch.float32) == "sdpa"
    torch.testing.assert_close(math, attn.attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_dispatch_without_flash_attn_or_cuda_is_sdpa():
    assert attn.flash_attn_func() is None or torch.cuda.is_available()  # this machine has neither
    assert attn.select_backend("cpu", torch.float32) == "sdpa"
    assert attn.select_backend("cpu", torch.bfloat16, flash_attn_available=True) == "sdpa"


@pytest.mark.parametrize("dtype, head_dim, masked, have_flash_attn, expected", [
    (torch.bfloat16, 64, False, True, "flash_attn"),
    (torch.float16, 128, False, True, "flash_attn"),
    (torch.bfloat16, 64, False, False, "sdpa_flash"),
    (torch.float32, 64, False, True, "sdpa_efficient"),  # FlashAttention takes half precision only
    (torch.bfloat16, 64, True, True, "sdpa_efficient"),  # nor an arbitrary mask
    (torch.bfloat16, 512, False, False, "sdpa_efficient"),  # nor head dims over 256
])
def test_dispatch_on_cuda(dtype, head_dim, masked, have_flash_attn, expected):
    assert attn.select_backend("cuda", dtype, head_dim, masked=masked, flash_attn_available=have_flash_attn) == expected


def test_choice_is_logged_once(caplog):
    attn._logged.clear()
    q, k, v = qkv()
    with caplog.at_level(logging.INFO, logger="hybrid.attention"):
        for _ in range(3):
            attn.attention(q, k, v)
    assert [r.getMessage() for r in caplog.records] == ["attention: sdpa kernel for cpu float32"]


def test_bad_calls_raise_clearly():
    q, k, v = qkv(sq=5, sk=9)
    with pytest.raises(ValueError, match="causal needs as many queries as keys"):
        attn.attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="expected one of"), attn.use_backend("triton"):
        pass
    with attn.use_backend("flash_attn"):
        if attn.flash_attn_func() is None:
            with pytest.raises(RuntimeError, match="flash-attn package does not import"):
                attn.attention(q, k, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_fast_kernel_matches_math(dtype):
    q, k, v = (x.cuda().to(dtype) for x in qkv(b=2, sq=50, sk=300, h=8, d=64))
    chosen = attn.select_backend("cuda", dtype, 64)
    assert chosen in ("flash_attn", "sdpa_flash")
    with attn.use_backend("sdpa_math"):
        ref = attn.attention(q, k, v).float()
    torch.testing.assert_close(attn.attention(q, k, v).float(), ref, atol=2e-2, rtol=2e-2)
