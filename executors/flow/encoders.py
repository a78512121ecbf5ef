"""Prefix encoders: images and text to tokens.

Two kinds of each. For the built-in tabletop, small encoders trained from scratch (a ViT over
patches, a transformer over UTF-8 bytes: the tabletop language is a few dozen words). For real
robots, SigLIP's towers loaded with transformers from a local directory, frozen or fine-tuned.
Every encoder takes images as float [0, 1] ``(N, 3, S, S)`` or token ids ``(N, L)`` and returns
``(N, tokens, out_dim)``.
"""

from __future__ import annotations

import torch
from torch import nn

from hybrid.attention import attention


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, w // self.heads).unbind(2)
        return self.proj(attention(q, k, v).reshape(b, s, w))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float):
        super().__init__()
        self.fc = nn.Linear(width, int(width * ratio))
        self.out = nn.Linear(int(width * ratio), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block (vision, text, prefix mixer)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ScratchVision(nn.Module):
    """A small ViT: patches (or a convolutional stem), learned positions, a few blocks.

    With ``film_dim`` the conv stem is FiLM-conditioned on a text vector of that size (`FiLMConvStem`).
    With ``keypoints`` (conv stems only) a spatial softmax over the stem's hidden feature map at
    ``keypoint_stride`` adds one token of K keypoints per image; `forward_keypoints` also returns them,
    ``(N, K, 2)`` in [-1, 1].
    """

    def __init__(self, image_size: int, patch: int, width: int, depth: int, heads: int, stem: str = "patch",
                 film_dim: int | None = None, keypoints: int = 0, keypoint_stride: int = 4,
                 keypoint_temperature: float = 1.0):
        super().__init__()
        if film_dim:
            self.patchify = FiLMConvStem(patch, width, film_dim)
        elif stem == "conv":
            self.patchify = conv_stem(patch, width)
        else:
            self.patchify = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.film = bool(film_dim)
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out_dim = width
        self.n_keypoints = keypoints
        if keypoints:
            if stem != "conv":
                raise ValueError("keypoints need the conv stem (vision_stem='conv')")
            convs = self.patchify.convs if self.film else [m for m in self.patchify if isinstance(m, nn.Conv2d)]
            self.keypoint_level = keypoint_stride.bit_length() - 2  # hidden map k has stride 2^(k+1)
            if not 0 <= self.keypoint_level < len(convs) - 1 or keypoint_stride & (keypoint_stride - 1):
                raise ValueError(f"keypoint_stride: expected a power of two in [2, {patch // 2}], got {keypoint_stride}")
            self.keypoints = SpatialSoftmax(convs[self.keypoint_level].out_channels, keypoints, keypoint_temperature)
            self.keypoint_token = nn.Linear(2 * keypoints, width)

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``text``: ``(N, film_dim)``, one vector per image, when the stem is FiLM-conditioned."""
        return self.forward_keypoints(images, text)[0]

    def forward_keypoints(self, images: torch.Tensor, text: torch.Tensor | None = None):
        """Tokens ``(N, T, W)``, keypoints ``(N, K, 2)`` and the feature map they were read from
        ``(N, C, h, w)`` (both None without keypoints)."""
        x = images * 2 - 1
        if self.film:
            x, hidden = self.patchify(x, text)
        elif isinstance(self.patchify, nn.Sequential):  # conv stem: keep its hidden feature maps
            hidden = []
            for layer in self.patchify:
                x = layer(x)
                if isinstance(layer, nn.GELU):
                    hidden.append(x)
        else:
            x, hidden = self.patchify(x), None
        x = x.flatten(2).transpose(1, 2) + self.pos
        points = features = None
        if self.n_keypoints:
            features = hidden[self.keypoint_level]
            points = self.keypoints(features)
            x = torch.cat([x, self.keypoint_token(points.flatten(1))[:, None]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), points, features


def conv_stem(patch: int, width: int) -> nn.Sequential:
    """log2(patch) stride-2 3x3 convolutions in place of the patch projection: the same tokens, but with
    the locality prior of a CNN, which a ViT trained from scratch on a few thousand frames lacks (Xiao et
    al. 2021, "Early convolutions help transformers see better"). The tabletop executor must place a
    suction cup on a block a few pixels wide; with plain patches, 6000 steps on CPU did not get it there."""
    layers, channels = [], 3
    n = patch.bit_length() - 1
    for i in range(n):
        out = width if i == n - 1 else max(16, width >> (n - 1 - i))
        layers.append(nn.Conv2d(channels, out, kernel_size=3, stride=2, padding=1))
        if i < n - 1:
            layers += [nn.GroupNorm(1, out), nn.GELU()]
        channels = out
    return nn.Sequential(*layers)


class SpatialSoftmax(nn.Module):
    """Keypoints: for each of K learned channels, the expected image position under a softmax over the
    feature map (Levine et al. 2016; robomimic and Diffusion Policy pool their CNNs this way). A position
    is an explicit output instead of something attention layers must decode from token order, which is
    what a policy trained from scratch on a few hundred episodes needs to reach a block it has not seen
    at that place before."""

    def __init__(self, channels: int, keypoints: int, temperature: float = 1.0):
        super().__init__()
        self.logits = nn.Conv2d(channels, keypoints, kernel_size=1)
        # Learned, from ``temperature``. Normalised features give logits of spread ~0.5, nearly flat over a
        # few hundred cells at T=1; ResNet features, which robomimic pools at T=1, are far larger.
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return soft_argmax(self.logits(features).flatten(2) / self.log_temperature.exp(), *features.shape[-2:])


def soft_argmax(logits: torch.Tensor, h: int, w: int, centres: bool = False) -> torch.Tensor:
    """Expected (u, v) in [-1, 1] under a softmax over the h*w cells of ``logits`` ``(N, K, h*w)`` -> ``(N, K, 2)``.

    ``centres``: cells at their centres in image coordinates (the image spans [-1, 1] edge to edge), as a
    calibrated camera's coordinates are; else the first and last cells sit at -1 and 1."""
    weights = logits.softmax(-1)
    return weights @ cell_grid(h, w, centres, logits.device, weights.dtype)


def cell_grid(h: int, w: int, centres: bool = True, device=None, dtype=torch.float32) -> torch.Tensor:
    """Image (u, v) ``(h*w, 2)`` of each cell of an h x w map, row by row (`soft_argmax`'s ``centres``)."""
    if centres:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * (2 / h) - 1
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * (2 / w) - 1
    else:
        ys = torch.linspace(-1, 1, h, device=device, dtype=dtype)
        xs = torch.linspace(-1, 1, w, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)


class TextQueryMaps(nn.Module):
    """Maps the text asks for: each of ``points`` queries made from the text attends over the feature map's
    cells. "Pick the red block" can then bind "red" to red features in one bilinear product, where
    `SpatialSoftmax`'s fixed 1x1 filters only see the text through the stem's FiLM.

    ``text_pool="mean"`` makes the queries from the text's mean token. ``"tokens"`` lets each query first pick
    its own words (a learned attention over the text's tokens): the pick map needs the block's colour and the
    place map the bowl's, and a mean blurs "the orange block in the red bowl" into both."""

    def __init__(self, text_dim: int, channels: int, points: int = 2, dim: int = 32, temperature: float = 1.0,
                 text_pool: str = "mean"):
        super().__init__()
        if text_pool not in ("mean", "tokens"):
            raise ValueError(f"text_pool: expected 'mean' or 'tokens', got {text_pool!r}")
        self.points, self.dim, self.text_pool = points, dim, text_pool
        if text_pool == "mean":
            self.query = nn.Linear(text_dim, points * dim)
        else:
            self.select = nn.Parameter(torch.randn(points, text_dim) * text_dim ** -0.5)
            self.token_query = nn.Linear(text_dim, dim)
        self.key = nn.Conv2d(channels, dim, kernel_size=1)
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())

    def forward(self, text: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``text`` ``(N, L, text_dim)`` tokens, ``features`` ``(N, C, h, w)`` -> each query's logits over the
        cells, ``(N, points, h*w)``."""
        return self.scores(self.queries(text), self.keys(features))

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, points, h*w)`` of queries ``(N, points, dim)`` over keys ``(N, dim, h*w)``."""
        return q @ k / (self.dim ** 0.5 * self.log_temperature.exp())

    def queries(self, text: torch.Tensor) -> torch.Tensor:
        """The text's queries ``(N, points, dim)``."""
        if self.text_pool == "mean":
            return self.query(text.mean(1)).view(-1, self.points, self.dim)
        words = torch.softmax(torch.einsum("nld,pd->npl", text, self.select.to(text.dtype)), dim=-1)
        return self.token_query(words @ text)

    def keys(self, features: torch.Tensor) -> torch.Tensor:
        """The cells' keys ``(N, dim, h*w)``."""
        return self.key(features).flatten(2)


class FiLMConvStem(nn.Module):
    """`conv_stem` whose hidden features are scaled and shifted by the text (FiLM, Perez et al. 2018), as
    RT-1 and BC-Z condition their image encoders on the instruction: "the red block" becomes a feature the
    convolutions pick out where it is, instead of a binding that attention layers downstream must learn.
    The FiLM layers start at zero, so the stem starts as the plain conv stem."""

    def __init__(self, patch: int, width: int, text_dim: int):
        super().__init__()
        stem = conv_stem(patch, width)
        self.convs = nn.ModuleList(m for m in stem if isinstance(m, nn.Conv2d))
        self.norms = nn.ModuleList(m for m in stem if isinstance(m, nn.GroupNorm))
        self.films = nn.ModuleList(nn.Linear(text_dim, 2 * n.num_channels) for n in self.norms)
        for film in self.films:
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's tokens and its hidden feature maps (strides 2, 4, ...)."""
        hidden = []
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            scale, shift = film(text)[..., None, None].chunk(2, dim=1)
            x = nn.functional.gelu(norm(conv(x)) * (1 + scale) + shift)
            hidden.append(x)
        return self.convs[-1](x), hidden


def _tower_config(config_cls, path: str | None, stored: dict | None, tower: str):
    """The tower's config: from ``path`` (a tower or a full SigLIP model) else the stored dict."""
    if path is not None:
        from transformers import AutoConfig

        full = AutoConfig.from_pretrained(path)
        return getattr(full, tower, full)
    if stored is None:
        raise ValueError(f"a pretrained {tower} needs its local directory or a stored tower config")
    return config_cls(**stored)


def _plain(config) -> dict:
    """A tower config as plain JSON-able keyword arguments of its config class."""
    skip = {"model_type", "transformers_version", "_attn_implementation_autoset", "architectures", "torch_dtype",
            "dtype"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


class SiglipVision(nn.Module):
    """SigLIP's vision tower (transformers). Patch tokens of its last layer."""

    def __init__(self, path: str | None, stored: dict | None):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        config = _tower_config(SiglipVisionConfig, path, stored, "vision_config")
        # Weights from `path` on first build; a saved executor overwrites them from its own file.
        self.tower = SiglipVisionModel.from_pretrained(path, config=config) if path else SiglipVisionModel(config)
        self.size = config.image_size
        self.out_dim = config.hidden_size
        self.tower_config = _plain(config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size:
            images = nn.functional.interpolate(images, size=(self.size, self.size), mode="bilinear",
                                               antialias=True, align_corners=False)
        # SigLIP normalises pixels to [-1, 1] (mean = std = 0.5).
        return self.tower(pixel_values=images * 2 - 1).last_hidden_state


class ByteText(nn.Module):
    """UTF-8 bytes (0 = padding) -> embedding + positions -> a few blocks."""

    def __init__(self, max_len: int, width: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out_dim = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Padding is a token like any other (as in SigLIP's text tower): a fixed-length, mask-free prefix
        # keeps every attention call on the fast kernels.
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class SiglipText(nn.Module):
    """SigLIP's text tower (transformers). Token states of its last layer."""

    def __init__(self, path: str | None, stored: dict | None):
        super().__init__()
        from transformers import SiglipTextConfig, SiglipTextModel

        config = _tower_config(SiglipTextConfig, path, stored, "text_config")
        self.tower = SiglipTextModel.from_pretrained(path, config=config) if path else SiglipTextModel(config)
        self.out_dim = config.hidden_size
        self.tower_config = _plain(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids=ids).last_hidden_state


def build_vision(cfg, text_dim: int | None = None) -> nn.Module:
    """``text_dim``: the text encoder's width, which a FiLM-conditioned stem (``cfg.vision_film``) reads."""
    if cfg.vision == "scratch":
        encoder = ScratchVision(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_depth, cfg.heads,
                                cfg.vision_stem, text_dim if cfg.vision_film else None, cfg.keypoints,
                                cfg.keypoint_stride, cfg.keypoint_temperature)
    else:
        encoder = SiglipVision(cfg.vision_path, cfg.vision_tower)
        cfg.vision_tower = encoder.tower_config
    return encoder.requires_grad_(not cfg.freeze_vision)


def build_text(cfg) -> nn.Module:
    if cfg.text == "bytes":
        encoder = ByteText(cfg.max_text_len, cfg.text_width, cfg.text_depth, cfg.heads)
    else:
        encoder = SiglipText(cfg.text_path, cfg.text_tower)
        cfg.text_tower = encoder.tower_config
    return encoder.requires_grad_(not cfg.freeze_text)


def vision_tokens(cfg) -> int:
    """Tokens per image the vision encoder gives."""
    if cfg.vision == "scratch":
        return (cfg.image_size // cfg.patch_size) ** 2 + (1 if cfg.keypoints else 0)
    return (cfg.vision_tower["image_size"] // cfg.vision_tower["patch_size"]) ** 2
