"""Where the current subtask picks and places, read off the front camera: the executor's waypoint heads.

"mlp" regresses table xy from the front camera's keypoints and the text. "heatmap" uses the camera's
calibration (a homography between the table plane and the image, `FlowConfig.table_homography`): two
text queries attend over the front feature map (`TextQueryMaps`), each attention map is trained
with a cross-entropy on the cell where the recorded grasp or release projects (the dense supervision
Transporter networks and CLIPort give their pick and place maps), and its soft-argmax is projected back
onto the table. Regressing xy through a soft-argmax alone gives the softmax a weak, diffuse gradient:
in 3000-step pilots such keypoints settled on the gantry, not on the block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from executors.flow.encoders import TextQueryMaps, cell_grid, soft_argmax

PRIOR_RADIUS = 0.04  # m: a block's width around the pick chosen before (`HeatmapWaypointHead.peak`)
# Where the place's height is read, around the place map's peak (image units, [-1, 1] across): a tower of three
# tabletop blocks spans about 0.2 of the front image below its top.
HEIGHT_PATCH_U = torch.linspace(-0.1, 0.1, 3)
HEIGHT_PATCH_V = torch.linspace(-0.05, 0.3, 6)


def apply_homography(h: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``points`` ``(..., 2)`` through the 3x3 homography ``h``."""
    p = points @ h[:, :2].T + h[:, 2]
    return p[..., :2] / p[..., 2:]


class HeatmapWaypointHead(nn.Module):
    """Pick and place as attention maps over the front camera's feature map, in a calibrated camera."""

    def __init__(self, text_dim: int, channels: int, table_homography, temperature: float = 1.0,
                 text_pool: str = "mean", target: str = "cell", camera_projection=None):
        super().__init__()
        if target not in ("cell", "bilinear"):
            raise ValueError(f"target: expected 'cell' or 'bilinear', got {target!r}")
        self.target = target
        self.query = TextQueryMaps(text_dim, channels, points=2, temperature=temperature, text_pool=text_pool)
        h = torch.tensor(table_homography, dtype=torch.float32).reshape(3, 3)
        # From the config, not the weights: a recalibrated camera needs no retraining of the maps.
        self.register_buffer("table_to_image", h, persistent=False)
        self.register_buffer("image_to_table", torch.linalg.inv(h), persistent=False)
        self.place_height = None
        if camera_projection is not None:  # `FlowConfig.waypoint_place_height`
            self.register_buffer("projection", torch.tensor(camera_projection, dtype=torch.float32).reshape(3, 4),
                                 persistent=False)
            # The place's height (decimetres) from the keys of a patch of the map at and below its peak (a tower
            # stands below its top in the image) and the place query.
            dim = self.query.dim
            self.register_buffer("patch", torch.stack(torch.meshgrid(HEIGHT_PATCH_U, HEIGHT_PATCH_V, indexing="xy"),
                                                      dim=-1), persistent=False)  # (V, U, 2) offsets in the image
            self.place_height = nn.Sequential(nn.Linear((self.patch[..., 0].numel() + 1) * dim, 4 * dim), nn.GELU(),
                                              nn.Linear(4 * dim, 1))

    def forward(self, text: torch.Tensor, features: torch.Tensor,
                subgoal: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Table xy ``(N, 2, 2)`` (pick, place) from the text's tokens ``(N, L, D)`` and the front feature map,
        the maps' logits ``(N, 2, h*w)`` and the place's height ``(N,)`` (m; None without `place_height`).
        ``subgoal``: the front subgoal's feature map and which samples have one ``(N,)`` bool: their place map
        reads it instead (the block is shown where it is to go)."""
        q, k = self.query.queries(text), self.query.keys(features)
        logits = self.query.scores(q, k)
        if subgoal is not None:
            goal_features, has = subgoal
            goal_k = self.query.keys(goal_features)
            place = torch.where(has.view(-1, 1), self.query.scores(q, goal_k)[:, 1], logits[:, 1])
            logits = torch.stack([logits[:, 0], place], dim=1)
            k = torch.where(has.view(-1, 1, 1), goal_k, k)
        heights = self._heights(logits[:, 1], q[:, 1], k, features.shape[-2:])
        uv = soft_argmax(logits.float(), *features.shape[-2:], centres=True)
        return self.to_table(uv, heights), logits, heights

    def maps(self, text: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The maps' logits ``(N, 2, h*w)`` over ``features`` alone and the place's height ``(N,)`` (m; None
        without `place_height`)."""
        q, k = self.query.queries(text), self.query.keys(features)
        logits = self.query.scores(q, k)
        return logits, self._heights(logits[:, 1], q[:, 1], k, features.shape[-2:])

    def _heights(self, place_logits: torch.Tensor, query: torch.Tensor, keys: torch.Tensor, size):
        """``(N,)`` m: the MLP on the keys ``(N, dim, h*w)`` sampled in `HEIGHT_PATCH_U` x `_V` around the place map's
        peak, and the place query ``(N, dim)``."""
        if self.place_height is None:
            return None
        h, w = size
        top = self._local_uv(place_logits.detach().float()[:, None], h, w)[:, 0]  # (N, 2): the place map's peak
        grid = (top[:, None, None] + self.patch).to(keys.dtype)  # (N, V, U, 2)
        patch = F.grid_sample(keys.unflatten(-1, (h, w)), grid, align_corners=False)  # (N, dim, V, U)
        found = torch.cat([patch.flatten(1), query], -1)
        return 0.1 * self.place_height(found.to(keys.dtype)).squeeze(-1).float()

    @staticmethod
    def _local_uv(logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Image (u, v) ``(N, K, 2)`` of each map's strongest mode: the soft-argmax of its 3x3 cells around the
        argmax (the soft-argmax of a whole map lands between two candidates when it is unsure)."""
        top = logits.argmax(-1, keepdim=True)
        cells = torch.arange(h * w, device=logits.device)
        near = ((cells // w - top // w).abs() <= 1) & ((cells % w - top % w).abs() <= 1)
        return soft_argmax(logits.masked_fill(~near, float("-inf")), h, w, centres=True)

    def to_table(self, uv: torch.Tensor, heights: torch.Tensor | None = None) -> torch.Tensor:
        """Image points ``(N, 2, 2)`` (pick, place) -> table xy: the pick on the homography's plane, the place there
        too or, with ``heights`` ``(N,)`` (m), where its camera ray meets that height."""
        xy = apply_homography(self.image_to_table, uv)
        if heights is None:
            return xy
        p = self.projection
        plane = torch.stack([p[:, 0].expand(len(heights), 3), p[:, 1].expand(len(heights), 3),
                             p[:, 2] * heights.float()[:, None] + p[:, 3]], dim=-1)  # (N, 3, 3): xy at that z -> image
        point = torch.cat([uv[:, 1].float(), torch.ones_like(uv[:, 1, :1]).float()], -1)[..., None]
        place = (torch.linalg.inv(plane) @ point)[..., 0]
        return torch.stack([xy[:, 0], place[:, :2] / place[:, 2:]], dim=1)

    def peak(self, logits: torch.Tensor, size: tuple[int, int], prior: torch.Tensor | None = None,
             prior_bonus: float = 0.0, avoid: torch.Tensor | None = None, avoid_penalty: float = 0.0,
             heights: torch.Tensor | None = None, place_prior: torch.Tensor | None = None,
             place_bonus: float = 0.0) -> torch.Tensor:
        """Table xy ``(N, 2, 2)`` of each map's strongest mode: the soft-argmax of its 3x3 cells around the
        argmax. The soft-argmax of a whole map lands between two candidate blocks when it is unsure, a place
        where there is nothing to pick. ``prior`` ``(N, 2)`` (NaN rows: none): the pick chosen before, whose
        cells within `PRIOR_RADIUS` get ``prior_bonus`` more logits: two blocks of the asked colour light up
        alike, and a pick that flips between them with each view steers the robot back and forth between the
        two (hysteresis, as a tracker keeps its target). ``avoid`` ``(N, K, 2)`` (NaN: none): points whose cells
        within `PRIOR_RADIUS` get ``avoid_penalty`` fewer logits on the pick map (blocks placed already).
        ``heights``: the place's height (`forward`), where its ray is read. ``place_prior`` ``(N, 2)`` (NaN rows:
        none) and ``place_bonus``: the same hysteresis on the place map, for the place chosen before."""
        h, w = size
        logits = self.inhibit(logits.float(), size, avoid, avoid_penalty)
        pick, place = logits[:, 0], logits[:, 1]
        if prior is not None and prior_bonus > 0:
            pick = pick + prior_bonus * self._near(size, prior.float()[:, None])
        if place_prior is not None and place_bonus > 0:
            seen = place_prior.float()
            if heights is not None and self.place_height is not None:  # a place in space: where the map's plane sees it
                seen = self._on_plane(seen, heights)
            place = place + place_bonus * self._near(size, seen[:, None])
        uv = self._local_uv(torch.stack([pick, place], dim=1), h, w)
        return self.to_table(uv, heights)

    def _on_plane(self, xy: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
        """Table xy ``(N, 2)`` at ``heights`` ``(N,)`` -> where the camera ray through it meets the homography's plane
        (the cells a map reads it on)."""
        point = torch.cat([xy, heights.float()[:, None], torch.ones_like(xy[:, :1])], -1) @ self.projection.T
        return apply_homography(self.image_to_table, point[:, :2] / point[:, 2:])

    def inhibit(self, logits: torch.Tensor, size: tuple[int, int], avoid: torch.Tensor | None,
                penalty: float, which: int = 0) -> torch.Tensor:
        """``logits`` ``(N, 2, h*w)`` with ``penalty`` fewer on map ``which``'s cells (0: the pick map, 1: the place
        map) within `PRIOR_RADIUS` of ``avoid`` ``(N, K, 2)`` (NaN: none)."""
        if avoid is None or penalty <= 0 or not avoid.shape[1]:
            return logits
        maps = list(logits.unbind(1))
        maps[which] = maps[which] - penalty * self._near(size, avoid.float()).to(logits.dtype)
        return torch.stack(maps, dim=1)

    def _near(self, size: tuple[int, int], points: torch.Tensor) -> torch.Tensor:
        """``(N, h*w)`` float: whether each cell centre is within `PRIOR_RADIUS` of any of ``points`` ``(N, K, 2)``
        (NaN points are near nothing)."""
        centres = self._cell_centres(size).expand(len(points), -1, -1)
        return (torch.cdist(centres, points) < PRIOR_RADIUS).any(-1).float()

    def _cell_centres(self, size: tuple[int, int]) -> torch.Tensor:
        """Table xy ``(h*w, 2)`` of the map's cell centres."""
        return apply_homography(self.image_to_table, cell_grid(*size, device=self.image_to_table.device))

    def loss(self, logits: torch.Tensor, xy: torch.Tensor, valid: torch.Tensor, size: tuple[int, int],
             heights: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the maps against where the recorded ``xy`` ``(N, 2, 2)`` project: the cell each falls
        in, or (``target="bilinear"``) the four cell centres around it, weighted bilinearly, whose mean is the
        point itself. ``valid`` ``(N, 2)`` marks the labels to use (points outside the image are left out too).
        ``heights`` ``(N,)`` (m, NaN: unknown): the place's, where its label is seen (`place_height`)."""
        h, w = size
        uv = apply_homography(self.table_to_image, xy.float())
        if heights is not None and self.place_height is not None:
            known = torch.isfinite(heights)
            place = torch.cat([xy[:, 1].float(), torch.nan_to_num(heights.float())[:, None],
                               torch.ones_like(heights.float())[:, None]], -1) @ self.projection.T
            uv = torch.stack([uv[:, 0], place[:, :2] / place[:, 2:]], dim=1)
            valid = valid & torch.stack([torch.ones_like(known), known], dim=1)
        col, row = (uv[..., 0] + 1) / 2 * w, (uv[..., 1] + 1) / 2 * h  # in cells, 0 at the image's edge
        use = valid & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        if not use.any():
            return logits.sum() * 0.0
        logits, col, row = logits[use].float(), col[use], row[use]
        if self.target == "cell":
            return F.cross_entropy(logits, row.floor().long() * w + col.floor().long())
        target = bilinear_cells(col - 0.5, row - 0.5, h, w)  # centres at integer coordinates
        return -(target * logits.log_softmax(-1)).sum(-1).mean()


def bilinear_cells(x: torch.Tensor, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(M, h*w)`` weights on the 4 cells around each point ``(x, y)`` (cell-centre units, ``(M,)`` each),
    clamped at the map's border, so that the weighted mean of the centres is the point."""
    x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)
    x0, y0 = x.floor().clamp(max=w - 2).long(), y.floor().clamp(max=h - 2).long()
    fx, fy = x - x0, y - y0
    out = torch.zeros(len(x), h * w, device=x.device)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            out.scatter_add_(1, ((y0 + dy) * w + x0 + dx)[:, None], (wy * wx)[:, None])
    return out
