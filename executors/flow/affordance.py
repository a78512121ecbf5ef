"""Whether a subtask can be started from what the front camera shows: the executor's affordance.

SayCan's idea (Ahn et al., 2022): a language planner proposes skills and a value the policy itself holds
says which of them can succeed from here. The executor's heatmap waypoint head gives that value for free.
Asked for a block that is not on the table, its pick map has no clear peak (the attention spreads over
look-alikes); asked for one that is already where the subtask puts it, the pick and place maps agree.
On the tabletop (40 held-out `sort` scenes, every colour asked for, 720 questions) the shipped executor's pick
map peaked 11.5 logits above its median for blocks still to be moved, 7.9 for colours not on the table and 9.1
for blocks already in their bowl (medians); at 9.5 logits the score passes 0.95 / 0.14 / 0.36 of them.

Those thresholds pass too much in the loop (a colour not on the table scored 0.94 in one `sort` scene), so an
executor can carry a learned check instead (`AffordanceHead`, `FlowConfig.affordance_head`): a small
classifier on what the pick map found (the front feature map pooled under it, the map's sharpness, the
pick-to-place reach) and the text, trained on recorded frames with the subtasks that can and cannot start
there (`executors/flow/train_affordance.py`), SayCan's value function learned as theirs was.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class AffordanceConfig(BaseModel):
    """``score = σ((contrast − contrast_at) / contrast_scale) · σ((reach − reach_at) / reach_scale)``: contrast
    is the pick map's peak minus its median logit, reach the table distance between the pick and place peaks."""

    model_config = ConfigDict(extra="forbid")
    contrast_at: float = 10.0
    contrast_scale: float = Field(1.0, gt=0)
    reach_at: float = Field(0.05, ge=0)  # metres: a block already this near where it goes needs no subtask
    reach_scale: float = Field(0.01, gt=0)


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x.float())


def affordance_scores(logits: torch.Tensor, pick_place: torch.Tensor, cfg: AffordanceConfig) -> np.ndarray:
    """Scores in [0, 1] from the heatmap head's logits ``(K, 2, h*w)`` and its peaks ``(K, 2, 2)`` (table xy)."""
    pick = logits[:, 0].float()
    contrast = pick.max(-1).values - pick.median(-1).values
    reach = (pick_place[:, 0] - pick_place[:, 1]).float().norm(dim=-1)
    score = _sigmoid((contrast - cfg.contrast_at) / cfg.contrast_scale) \
        * _sigmoid((reach - cfg.reach_at) / cfg.reach_scale)
    out = score.cpu().numpy().astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"affordance: non-finite scores {out.tolist()} (check the executor's weights)")
    return out


class AffordanceHead(nn.Module):
    """The logit that the text's block can be picked from here: an MLP over the front feature map pooled under
    the pick map (what the map found: its colour, whether it sits in a bowl), the map's sharpness (peak over
    median, normalised entropy), the pick-to-place reach and the text's mean token. With ``place`` also the
    feature map pooled under the place map (what is already where the block goes) and the feature of the pick
    map's strongest cell alone (the block it would pick, not a blend of look-alikes)."""

    STATS = 3

    def __init__(self, channels: int, text_dim: int, width: int = 64, place: bool = False):
        super().__init__()
        self.place = place
        n_in = channels * (3 if place else 1) + text_dim + self.STATS
        self.norm = nn.LayerNorm(n_in)
        self.mlp = nn.Sequential(nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, logits: torch.Tensor, features: torch.Tensor, text: torch.Tensor,
                peaks: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(N, 2, h*w)`` (pick, place), ``features`` ``(N, C, h, w)``, ``text`` ``(N, L, D)``,
        ``peaks`` ``(N, 2, 2)`` table xy -> ``(N,)`` logits."""
        pick = logits[:, 0].float()
        weights = pick.softmax(-1)
        flat = features.flatten(2).float()
        pooled = [torch.einsum("nk,nck->nc", weights, flat)]
        if self.place:
            pooled.append(torch.einsum("nk,nck->nc", logits[:, 1].float().softmax(-1), flat))
            pooled.append(flat.gather(2, pick.argmax(-1)[:, None, None].expand(-1, flat.shape[1], 1))[..., 0])
        contrast = pick.max(-1).values - pick.median(-1).values
        entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1) / math.log(pick.shape[-1])
        reach = (peaks[:, 0] - peaks[:, 1]).float().norm(dim=-1) * 10  # decimetres: order one
        x = torch.cat([*pooled, text.float().mean(1), torch.stack([contrast / 10, entropy, reach], -1)], -1)
        return self.mlp(self.norm(x.to(self.mlp[0].weight.dtype)))[:, 0]
