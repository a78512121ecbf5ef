"""The project's one attention dispatch point: every tier's attention goes through `attention()`.

Which kernel runs (in order of preference):

- ``flash_attn``: the `flash-attn` package's `flash_attn_func` (optional extra ``flash``), on CUDA in
  fp16/bf16, when it is installed and imports against this torch.
- ``sdpa_flash``: PyTorch SDPA's own FlashAttention backend, on CUDA in fp16/bf16. It is selected
  explicitly with `sdpa_kernel([SDPBackend.FLASH_ATTENTION])`, so inputs it cannot take raise instead
  of silently falling back to the slow math kernel.
- ``sdpa_efficient``: SDPA's memory-efficient backend, on CUDA when a mask is given or the dtype is fp32
  (FlashAttention takes neither).
- ``sdpa``: SDPA with PyTorch's own choice, on the CPU.

``sdpa_math`` (the reference kernel) is never chosen automatically; benches force it with
`use_backend("sdpa_math")` to compare numbers and speed. Each choice is logged once.

Layout is flash-attn's ``(batch, seq, heads, head_dim)``: what a ``Linear`` followed by ``view`` gives.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

BACKENDS = ("flash_attn", "sdpa_flash", "sdpa_efficient", "sdpa_math", "sdpa")
_SDPA_KERNEL = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}
_HALF = (torch.float16, torch.bfloat16)
_forced: str | None = None
_logged: set[tuple] = set()


@functools.lru_cache(maxsize=1)
def flash_attn_func():
    """`flash_attn.flash_attn_func`, or None when the package is absent or built for another torch."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_func as fn
    except (ImportError, OSError, RuntimeError) as err:  # e.g. a wheel built against another torch
        log.warning("attention: flash-attn is installed but does not import (%s); using SDPA", err)
        return None
    return fn


def select_backend(device: torch.device | str, dtype: torch.dtype, head_dim: int = 64, masked: bool = False,
                   flash_attn_available: bool | None = None) -> str:
    """The kernel `attention()` uses for inputs on ``device`` of ``dtype`` (see the module docstring)."""
    if _forced is not None:
        return _forced
    if torch.device(device).type != "cuda":
        return "sdpa"
    # Both FlashAttention kernels take fp16/bf16 only, head dims up to 256, and no arbitrary mask.
    if masked or dtype not in _HALF or head_dim > 256 or head_dim % 8:
        return "sdpa_efficient"
    if flash_attn_available is None:
        flash_attn_available = flash_attn_func() is not None
    return "flash_attn" if flash_attn_available else "sdpa_flash"


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force one kernel inside the block (benches and tests; not thread-safe). None restores the choice."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"attention backend: expected one of {BACKENDS}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
              causal: bool = False) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q ``(B, Sq, H, D)`` and k, v ``(B, Sk, H, D)``; returns ``(B, Sq, H, D)``.

    ``mask`` (bool, broadcastable to ``(B, H, Sq, Sk)``, True where a query may attend) and ``causal``
    are optional. ``causal`` needs Sq == Sk, because flash-attn and SDPA align a rectangular causal
    mask differently.
    """
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"attention: causal needs as many queries as keys, got {q.shape[1]} and {k.shape[1]}")
    if causal and mask is not None:
        raise ValueError("attention: give either causal or mask, not both")
    backend = select_backend(q.device, q.dtype, q.shape[-1], masked=mask is not None)
    key = (backend, q.device.type, q.dtype)
    if key not in _logged:
        _logged.add(key)
        log.info("attention: %s kernel for %s %s", backend, q.device.type, str(q.dtype).removeprefix("torch."))
    if backend == "flash_attn":
        fn = flash_attn_func()
        if fn is None:
            raise RuntimeError("attention: flash_attn backend forced but the flash-attn package does not import")
        if mask is not None:
            raise ValueError("attention: the flash_attn backend takes no mask")
        return fn(q, k, v, causal=causal)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=causal)
    else:
        with sdpa_kernel([_SDPA_KERNEL[backend]]):
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=causal)
    return out.transpose(1, 2)
