"""Flow-matching action expert (the Pi-0 / GR00T recipe) and the executor tier around it.

The conditioning prefix (observation images, subgoal images, text, proprioceptive state) is encoded
once per chunk; every action-expert block projects it to its own keys/values once, and the K Euler
flow steps only recompute the H action tokens, which attend jointly to [prefix; action chunk]. Flow
time enters each block through adaptive layer norm with zero-initialised gates (adaLN-zero, DiT).

Convention (GR00T's): x_t = (1 - t)·noise + t·action, velocity target action - noise, t = 0 is noise.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from executors.flow.affordance import AffordanceConfig, AffordanceHead, affordance_scores
from executors.flow.align import AlignConfig, align_over_place
from executors.flow.configuration_flow import FlowConfig
from executors.flow.encoders import MLP, Block, build_text, build_vision, vision_tokens
from executors.flow.grasp_check import GraspCheckConfig, let_go_and_rise, wrong_block
from executors.flow.guarded_place import (
    GuardedPlaceConfig,
    descend_holding,
    first_release,
    let_go,
    probe_down,
    rise_holding,
)
from executors.flow.in_hand import InHandOffset, WristReading
from executors.flow.place_check import PlaceCheckConfig, wrong_place
from executors.flow.processor_flow import Normalizer, load_tokenizer, observation_batch
from executors.flow.subtask_colours import in_bowl, subtask_colour, support_colour
from executors.flow.transit import TransitConfig, climb_straight_up, hold_transit_height
from executors.flow.waypoint_heads import PRIOR_RADIUS, HeatmapWaypointHead
from executors.flow.waypoints import GRIPPER_ON
from hybrid.attention import attention
from hybrid.types import ActionChunk, Observation, Subgoal, Subtask

log = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"
# Logits off the pick map where a grasp check let go of the wrong block: more than its peaks stand apart, so the
# look-alike there is not taken again under that subtask.
REJECTED_PENALTY = 10.0
# The most `affordance` gives what it reads off the cameras: a score of 1 means the executor felt it (a block it let go
# of not where it rested, a probe under way), which the planner's `retry_min: 1.0` trusts; the learned head's float32
# sigmoid rounds to exactly 1 past a logit of about 17, and the held block's reading scores its likeliest colour 1.
READ_MAX = 0.999
# ... and the least: 0 means it felt the subtask finished (a block let go of resting on its support), which a
# planner's `done_on_felt` trusts; a bowl subtask whose block it let go of where it aimed is read finished
# (`bowl_release_radius`).
READ_MIN = 0.001


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: a parameter-free layer norm, then a time-dependent scale (stored as 1 + scale) and shift."""
    x = nn.functional.layer_norm(x, x.shape[-1:])
    return torch.addcmul(shift[:, None], x, scale[:, None])


class FlowTimeEmbedding(nn.Module):
    """Sinusoidal features of the flow time t ∈ [0, 1], then an MLP."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = 1000 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class ActionBlock(nn.Module):
    """Action tokens attend to [prefix; action tokens]; flow time modulates norms and gates (adaLN-zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.prefix_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.prefix_kv = nn.Linear(width, 2 * width)  # the prefix's own projection (Pi-0: its own expert)
        self.proj = nn.Linear(width, width)
        self.mlp = MLP(width, mlp_ratio)
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.adaln[1].weight)
        nn.init.zeros_(self.adaln[1].bias)  # zero gates: each block starts as the identity

    def modulation(self, time: torch.Tensor) -> torch.Tensor:
        """Shift, 1 + scale and gate of both sub-layers, ``(N, 6W)``; depends on the flow time only."""
        mod = self.adaln(time)
        w = mod.shape[-1] // 6
        mod[:, w : 2 * w] += 1
        mod[:, 4 * w : 5 * w] += 1
        return mod

    def prefix_cache(self, prefix: torch.Tensor, chunk: int) -> torch.Tensor:
        """Keys and values ``(B, P + H, 2, heads, D)``: the prefix's, computed once per chunk, then room
        for the action chunk's, overwritten at every flow step (no per-step copy of the prefix)."""
        b, p, w = prefix.shape
        kv = prefix.new_empty(b, p + chunk, 2, self.heads, w // self.heads)
        kv[:, :p] = self.prefix_kv(self.prefix_norm(prefix)).view(b, p, 2, self.heads, w // self.heads)
        return kv

    def forward(self, x: torch.Tensor, mod: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        qkv = self.qkv(modulate(x, shift1, scale1)).view(b, s, 3, self.heads, w // self.heads)
        kv[:, -s:] = qkv[:, :, 1:]  # the chunk's keys/values join the cached prefix's
        attended = attention(qkv[:, :, 0], kv[:, :, 0], kv[:, :, 1]).reshape(b, s, w)
        x = torch.addcmul(x, gate1[:, None], self.proj(attended))
        return torch.addcmul(x, gate2[:, None], self.mlp(modulate(x, shift2, scale2)))


class VelocityHead(nn.Module):
    """Final adaLN and projection of action tokens to velocities (zero-initialised, as in DiT)."""

    def __init__(self, width: int, action_dim: int):
        super().__init__()
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, action_dim)
        for layer in (self.adaln[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def modulation(self, time: torch.Tensor) -> torch.Tensor:
        mod = self.adaln(time)
        mod[:, mod.shape[-1] // 2 :] += 1
        return mod

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale = mod.chunk(2, dim=-1)
        return self.out(modulate(x, shift, scale))


class FlowModel(nn.Module):
    """The whole network: prefix encoders, prefix mixer, action expert, normalisation statistics."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.normalizer = Normalizer(cfg.state_dim, cfg.action_dim, cfg.chunk, cfg.path_dims)
        self.text = build_text(cfg)
        self.vision = build_vision(cfg, self.text.out_dim)
        n_img = len(cfg.cameras) + (len(cfg.subgoal_cameras) if cfg.use_subgoal else 0)
        self.vision_proj = nn.Linear(self.vision.out_dim, w)
        self.text_proj = nn.Linear(self.text.out_dim, w)
        self.state_proj = nn.Linear(cfg.state_dim, w)
        # Which slot an image token fills: (camera, observation) or (camera, subgoal).
        self.image_slot = nn.Parameter(torch.randn(n_img, 1, w) * 0.02)
        if cfg.use_subgoal:
            # Stands in for the subgoal's tokens when there is none (dropout in training, language-only acting).
            self.no_subgoal = nn.Parameter(torch.randn(len(cfg.subgoal_cameras), vision_tokens(cfg), w) * 0.02)
        if cfg.waypoint_loss > 0:
            # The subtask's pick and place xy from the first camera (executors/flow/waypoint_heads.py); also a
            # prefix token.
            if cfg.waypoint_head == "heatmap":
                self.waypoint_head = HeatmapWaypointHead(
                    self.text.out_dim, self.vision.keypoints.logits.in_channels, cfg.table_homography,
                    cfg.keypoint_temperature, cfg.waypoint_text, cfg.waypoint_map_target,
                    cfg.camera_projection if cfg.waypoint_place_height else None)
            else:
                self.waypoint_head = nn.Sequential(nn.Linear(2 * cfg.keypoints + self.text.out_dim, w), nn.GELU(),
                                                   nn.Linear(w, 4))
            self.waypoint_proj = nn.Linear(4, w)
            if cfg.waypoint_target:
                self.target_proj = nn.Linear(4, w)
                # The same vector added to every action token (as DiT adds its class embedding), zero at first.
                self.target_in = nn.Linear(4, w)
                nn.init.zeros_(self.target_in.weight)
                nn.init.zeros_(self.target_in.bias)
        if cfg.affordance_head:
            self.affordance_head = AffordanceHead(self.vision.keypoints.logits.in_channels, self.text.out_dim,
                                                  cfg.affordance_width, cfg.affordance_place)
        self.prefix_blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.prefix_depth))
        self.prefix_norm = nn.LayerNorm(w)

        self.action_in = nn.Linear(cfg.action_dim, w)
        self.action_pos = nn.Parameter(torch.randn(1, cfg.chunk, w) * 0.02)
        self.time_embed = FlowTimeEmbedding(w)
        self.blocks = nn.ModuleList(ActionBlock(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.head = VelocityHead(w, cfg.action_dim)
        self.time_dist = torch.distributions.Beta(*cfg.time_beta)

    # --- prefix: once per chunk
    def encode_prefix(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prefix tokens ``(B, P, W)`` from uint8 images ``(B, C, 3, S, S)``, token ids and the raw state."""
        return self.encode_context(batch)[0]

    def encode_context(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the action expert reads, once per chunk: the prefix tokens and the vector added to every
        action token (the steering target's embedding; None without `waypoint_target`)."""
        prefix, _, _, steer = self._encode(batch)
        return prefix, self._action_condition(steer)

    def encode_steering(self, batch: dict[str, torch.Tensor]):
        """`encode_context`'s prefix tokens and condition, and the pick and place xy ``(B, 2, 2)`` the expert is
        steered to (None without a heatmap's `waypoint_target`)."""
        prefix, _, heatmap, steer = self._encode(batch)
        waypoints = None
        if steer is not None and heatmap is not None:  # steer = waypoints - effector xy, in the state's scale
            here = batch["state"].float()[:, None, :2]
            waypoints = here + steer.float().unflatten(1, (2, 2)) * self.normalizer.state_std[:2]
        return prefix, self._action_condition(steer), waypoints

    def _action_condition(self, steer: torch.Tensor | None) -> torch.Tensor | None:
        return None if steer is None else self.target_in(steer.to(self.target_in.weight.dtype))

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prefix tokens and the predicted waypoints ``(B, 4)`` (normalised like the state's xy; None
        without a waypoint head): where the expert is told to go (a heatmap's strongest mode)."""
        prefix, waypoints, heatmap, _ = self._encode(batch)
        if heatmap is not None:
            waypoints = self.normalizer.waypoints(self._peaks(batch, heatmap))
        return prefix, waypoints

    def _peaks(self, batch, heatmap) -> torch.Tensor:
        """Pick and place xy ``(B, 4)`` the expert is steered to: the maps' strongest modes, at run time the pick
        held near the one chosen before (``batch["pick_prior"]``, `FlowConfig.pick_persistence`) and kept off
        what earlier subtasks placed (``batch["pick_avoid"]``, `FlowConfig.place_inhibition`); the place where
        ``batch["place_lock"]`` holds one (`FlowConfig.place_lock_distance`), moved by ``batch["place_shift"]`` (the
        held block's offset from the cup, negated: `FlowExecutor`'s ``in_hand``). Where a grasp check let go of the
        wrong block (``batch["pick_reject"]`` ``(B, K, 2)``), the pick map is `REJECTED_PENALTY` logits lower, and the
        place map where a place check found the wrong support (``batch["place_reject"]``)."""
        logits, size, heights = heatmap
        if self.training:
            return self.waypoint_head.peak(logits, size, heights=heights).flatten(1)
        logits = self.waypoint_head.inhibit(logits, size, batch.get("pick_reject"), REJECTED_PENALTY)
        logits = self.waypoint_head.inhibit(logits, size, batch.get("place_reject"), REJECTED_PENALTY, which=1)
        peaks = self.waypoint_head.peak(logits, size, batch.get("pick_prior"), self.cfg.pick_persistence,
                                        batch.get("pick_avoid"), self.cfg.place_inhibition, heights,
                                        batch.get("place_prior"), self.cfg.place_persistence)
        locked = batch.get("place_lock")  # (B, 2), NaN rows: none
        if locked is not None:
            peaks[:, 1] = torch.where(torch.isfinite(locked), locked.to(peaks.dtype), peaks[:, 1])
        shift = batch.get("place_shift")  # (B, 2): where the cup goes for the held block to land on the place
        if shift is not None:
            peaks[:, 1] = peaks[:, 1] + shift.to(peaks.dtype)
        return peaks.flatten(1)

    def _encode(self, batch):
        """Prefix tokens, the waypoints as trained (a heatmap's soft-argmax), the heatmap head's logits
        ``(B, 2, h*w)`` and map size, and the steering target (`_steer`) (None where there is none)."""
        cfg, images = self.cfg, batch["images"]
        b, n_cam = images.shape[:2]
        dtype = self.vision_proj.weight.dtype
        subgoal = batch.get("subgoal") if cfg.use_subgoal else None
        if subgoal is not None:
            images = torch.cat([images, subgoal], dim=1)
        text = self.text(batch["text_ids"])
        pixels = images.flatten(0, 1).to(dtype) / 255
        text_mean = text.mean(1).to(dtype)  # read by the FiLM stem (and the mlp waypoint head)
        # With FiLM, the text's mean token conditions every image of its sample.
        film = text_mean.repeat_interleave(images.shape[1], dim=0) if cfg.vision_film else None
        if cfg.keypoints:
            feats, points, maps = self.vision.forward_keypoints(pixels, film)
        else:
            feats, points = (self.vision(pixels, film) if cfg.vision_film else self.vision(pixels)), None
        tokens = self.vision_proj(feats).unflatten(0, (b, images.shape[1])) + self.image_slot[: images.shape[1]]
        if cfg.use_subgoal:
            missing = self.no_subgoal.to(tokens.dtype).expand(b, -1, -1, -1)
            if subgoal is None:
                tokens = torch.cat([tokens, missing + self.image_slot[n_cam:]], dim=1)
            else:
                has = batch["has_subgoal"].to(tokens.device).view(b, 1, 1, 1)
                goal = tokens[:, n_cam:]
                tokens = torch.cat([tokens[:, :n_cam], torch.where(has, goal, missing + self.image_slot[n_cam:])], 1)
        state = self.state_proj(self.normalizer.state(batch["state"].float()).to(dtype))[:, None]
        parts, waypoints, heatmap, steer = [tokens.flatten(1, 2), self.text_proj(text), state], None, None, None
        if cfg.waypoint_loss > 0:
            if cfg.waypoint_head == "heatmap":
                all_maps = maps.unflatten(0, (b, images.shape[1]))
                front_map, goal_map = all_maps[:, 0], None
                if cfg.waypoint_place_map == "subgoal" and subgoal is not None:
                    goal_map = (all_maps[:, n_cam], batch["has_subgoal"].to(front_map.device))
                xy, logits, heights = self.waypoint_head(text.to(dtype), front_map, goal_map)
                waypoints = self.normalizer.waypoints(xy.flatten(1)).to(dtype)
                heatmap = (logits, tuple(front_map.shape[-2:]), heights)
            else:
                front = points.unflatten(0, (b, images.shape[1]))[:, 0].flatten(1)
                waypoints = self.waypoint_head(torch.cat([front, text_mean], dim=-1))
            parts.append(self.waypoint_proj(waypoints)[:, None])
            if cfg.waypoint_target:
                steer = self._steer(batch, waypoints, heatmap).to(dtype)
                parts.append(self.target_proj(steer)[:, None])
        x = torch.cat(parts, dim=1)
        for block in self.prefix_blocks:
            x = block(x)
        return self.prefix_norm(x), waypoints, heatmap, steer

    def affordance_inputs(self, images: torch.Tensor, text_ids: torch.Tensor, avoid: torch.Tensor | None = None):
        """What the affordance head reads of the front camera alone, in training and at run time alike: the
        heatmap head's logits ``(N, 2, h*w)`` (the pick map less `place_inhibition` logits near ``avoid`` ``(N, K,
        2)``, NaN: none), the FiLM-conditioned feature map ``(N, C, h, w)``, the text's tokens (the same numbers
        `_encode` computes for them) and the maps' peaks ``(N, 2, 2)`` (table xy)."""
        dtype = self.vision_proj.weight.dtype
        text = self.text(text_ids)
        pixels = images[:, 0].to(dtype) / 255
        _, _, maps = self.vision.forward_keypoints(pixels, text.mean(1).to(dtype) if self.cfg.vision_film else None)
        logits, heights = self.waypoint_head.maps(text.to(dtype), maps)
        size = tuple(maps.shape[-2:])
        logits = self.waypoint_head.inhibit(logits, size, avoid, self.cfg.place_inhibition)
        return logits, maps, text, self.waypoint_head.peak(logits, size, heights=heights)

    def affordance_logits(self, images: torch.Tensor, text_ids: torch.Tensor,
                          avoid: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)``: the learned check that each text's block can be picked (`FlowConfig.affordance_head`), on the
        pick map less `place_inhibition` logits near ``avoid`` ``(N, K, 2)`` (NaN: none), as the executor acts."""
        return self.affordance_head(*self.affordance_inputs(images, text_ids, avoid))

    def _steer(self, batch, waypoints: torch.Tensor, heatmap) -> torch.Tensor:
        """Pick and place minus the effector's xy ``(B, 4)``, normalised: where the head says the subtask goes
        (its strongest mode), or in training, with probability `waypoint_teacher_forcing`, the recorded
        waypoint plus noise. Detached: the head learns from its own losses, not from the expert's."""
        cfg = self.cfg
        found = self.normalizer.waypoints(self._peaks(batch, heatmap)) if heatmap else waypoints
        found = found.detach().float()
        if self.training and "waypoints_known" in batch:
            labels = batch["waypoints"].float()
            labels = labels + cfg.waypoint_noise * torch.randn_like(labels)
            forced = batch["waypoints_known"] & (torch.rand(len(labels), 1, device=labels.device)
                                                 < cfg.waypoint_teacher_forcing)
            found = torch.where(forced, self.normalizer.waypoints(labels), found)
        here = self.normalizer.state(batch["state"].float())[:, :2].repeat(1, 2)
        return found - here

    def prefix_caches(self, prefix: torch.Tensor) -> list[torch.Tensor]:
        return [block.prefix_cache(prefix, self.cfg.chunk) for block in self.blocks]

    # --- action expert: once per flow step
    def modulations(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every block's adaLN parameters for flow times ``t`` ``(N,)``: the head's last."""
        time = self.time_embed(t)
        return [block.modulation(time) for block in self.blocks] + [self.head.modulation(time)]

    def velocity(self, x_t: torch.Tensor, mods: list[torch.Tensor], caches,
                 condition: torch.Tensor | None = None) -> torch.Tensor:
        x = self.action_in(x_t) + self.action_pos[:, : x_t.shape[1]]
        if condition is not None:
            x = x + condition[:, None]
        for block, mod, cache in zip(self.blocks, mods, caches):
            x = block(x, mod, cache)
        return self.head(x, mods[-1])

    def sample_time(self, n: int, device: torch.device) -> torch.Tensor:
        """Flow times skewed toward noise (t = 0), as Pi-0 and GR00T train them."""
        return self.cfg.time_max * (1 - self.time_dist.sample((n,)).to(device))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, parts)`` on a training batch, as LeRobot's policies return it: raw ``actions`` ``(B, H, A)``
        and ``action_is_pad``; with a waypoint head also raw ``waypoints`` ``(B, 4)`` and ``waypoints_valid``."""
        actions = self.normalizer.action(batch["actions"].float())
        prefix, waypoints, heatmap, steer = self._encode(batch)
        loss = flow = self.flow_loss(prefix, actions, batch["action_is_pad"], self._action_condition(steer))
        parts = {"flow": flow.item()}
        if waypoints is not None:
            target = self.normalizer.waypoints(batch["waypoints"].float())
            valid = batch["waypoints_valid"].float()
            waypoint = ((waypoints.float() - target) ** 2 * valid).sum() / valid.sum().clamp_min(1)
            loss = flow + self.cfg.waypoint_loss * waypoint
            parts["waypoint"] = waypoint.item()
            if heatmap is not None:
                logits, size, heights = heatmap
                b = logits.shape[0]
                valid = batch["waypoints_valid"].view(b, 2, 2).all(-1)
                labels = batch.get("place_height")
                maps = self.waypoint_head.loss(logits, batch["waypoints"].view(b, 2, 2), valid, size, labels)
                loss = loss + self.cfg.waypoint_loss * maps
                parts["heatmap"] = maps.item()
                if heights is not None and labels is not None:
                    known = (valid[:, 1] & torch.isfinite(labels)).float()
                    error = F.smooth_l1_loss(100 * heights, 100 * torch.nan_to_num(labels.float()), reduction="none")
                    height = (error * known).sum() / known.sum().clamp_min(1)  # centimetres
                    loss = loss + self.cfg.waypoint_loss * height
                    parts["height"] = height.item()
        return loss, parts

    def flow_loss(self, prefix: torch.Tensor, actions: torch.Tensor, is_pad: torch.Tensor,
                  condition: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching loss of normalised ``actions`` given the prefix (and the action tokens' condition),
        padded steps left out."""
        caches = self.prefix_caches(prefix)
        noise = torch.randn_like(actions)
        t = self.sample_time(actions.shape[0], actions.device)
        x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * actions
        velocity = self.velocity(x_t.to(caches[0].dtype), self.modulations(t), caches, condition)
        error = (velocity.float() - (actions - noise)) ** 2
        valid = (~is_pad).float()[..., None].expand_as(error)
        return (error * valid).sum() / valid.sum().clamp_min(1)

    @torch.inference_mode()
    def sample_actions(self, batch: dict[str, torch.Tensor], steps: int | None = None,
                       noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                       context: tuple | None = None) -> torch.Tensor:
        """Raw action chunks ``(B, H, A)``: K Euler steps from ``noise`` (default: fresh) along the velocity.

        ``prefix`` (raw actions ``(B, d, A)``, d < H) is real-time chunking by inpainting: at every flow
        step the first d actions are set to where the straight noise→prefix path is at that time, so
        the chunk starts with the actions already committed and the rest is integrated to continue them.
        ``context``: `encode_context`'s output for ``batch``, when the caller has it already.
        """
        steps = steps or self.cfg.flow_steps
        prefix_tokens, condition = context or self.encode_context(batch)
        caches = self.prefix_caches(prefix_tokens)
        b, dtype, device = batch["state"].shape[0], caches[0].dtype, caches[0].device
        # The chunk is integrated in float32 whatever the compute dtype; only the network runs in it.
        x = torch.randn(b, self.cfg.chunk, self.cfg.action_dim, device=device) if noise is None else noise.float()
        # The K flow times are known in advance: their adaLN parameters come from one batched call.
        mods = self.modulations(torch.arange(steps, device=device, dtype=torch.float32) / steps)
        if prefix is not None:
            d = prefix.shape[1]
            start, target = x[:, :d].clone(), self.normalizer.action(prefix.float())
        for k in range(steps):
            if prefix is not None:
                t = k / steps
                x[:, :d] = (1 - t) * start + t * target
            velocity = self.velocity(x.to(dtype), [m[k : k + 1].expand(b, -1) for m in mods], caches, condition)
            x = x + velocity.float() / steps
        if prefix is not None:
            x[:, :d] = target
        return self.normalizer.unaction(x)

    # --- checkpoint: safetensors weights (normalisation statistics included) + JSON config
    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.cfg.save(directory)
        save_model(self, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> FlowModel:
        from safetensors.torch import load_model

        cfg = FlowConfig.load(directory)
        # Towers are rebuilt from their stored configs; the weights all come from this checkpoint.
        cfg.vision_path = cfg.text_path = None
        model = cls(cfg)
        load_model(model, str(Path(directory) / WEIGHTS_NAME), device=str(device))
        return model.to(device).eval()


def _text(subtask: Subtask | None) -> str | None:
    return None if subtask is None else subtask.text


class FlowExecutor:
    """The executor tier: ``act(obs, subtask, subgoal) -> ActionChunk`` with a `FlowModel`.

    On CUDA, ``cuda_graph=True`` records a chunk's whole computation (prefix and K flow steps) once per
    input layout and replays it: at batch 1 the eager model is bound by kernel launches, not arithmetic.
    """

    def __init__(self, model: FlowModel, tokenizer=None, device: str | torch.device = "cpu",
                 flow_steps: int | None = None, dtype: torch.dtype | str = torch.float32, seed: int = 0,
                 cuda_graph: bool = False, noise_scale: float = 1.0, affordance: dict | None = None,
                 pick_persistence: float | None = None, place_inhibition: float | None = None,
                 place_lock_distance: float | None = None, affordance_inhibition: bool = True,
                 transit: dict | None = None, in_hand: str | Path | None = None, support_snap: float = 0.04,
                 align: dict | None = None, offset_over_support_only: bool = True,
                 place_persistence: float | None = None, grasp_check: dict | None = None,
                 place_check: dict | None = None, place_on_released: bool = False,
                 guarded_place: dict | None = None, bowl_release_radius: float | None = None):
        """``affordance``: `AffordanceConfig` fields, how `affordance` turns the waypoint maps into scores.
        ``pick_persistence``, ``place_inhibition``, ``place_lock_distance``, ``place_persistence``: override the
        checkpoint's `FlowConfig` fields of those names (run-time settings). ``affordance_inhibition``: `affordance`
        reads the pick map as `act` would under each subtask, less `place_inhibition` near what other subtasks placed.
        ``transit``: `TransitConfig` fields, the height a held block is carried at away from its place (None: as
        learned).
        ``in_hand``: an `InHandOffset` directory; while the gripper holds, the cup is steered to the place minus the
        held block's offset from it, read off that model's camera (None: to the place). ``support_snap``: with an
        ``in_hand`` model that finds supports (`InHandConfig.support`), a support it sees within this distance (m) of
        the place found from afar becomes the place (a stack goes onto the block seen under the held one). ``align``:
        `AlignConfig` fields, the final alignment over such a support (None: as learned).
        ``offset_over_support_only``: steer by the held block's offset only over such a support (a bowl is wide enough
        without it, and the hierarchical agent's `sort` lost with it everywhere); False: whenever the gripper holds.
        ``grasp_check``: `GraspCheckConfig` fields (`executors/flow/grasp_check.py`): holding a block that an in-hand
        model with colours (its ``model``, or ``in_hand``'s) names another colour than the subtask's, let go, rise and
        keep that spot off the pick map for the subtask (None: off). ``place_check``: `PlaceCheckConfig` fields
        (`executors/flow/place_check.py`): coming over the place of a block-on-block subtask, a model with support
        colours (its ``model``, or the grasp check's) reading another colour or nothing under the held block keeps that
        spot off the place map for the subtask (None: off). ``place_on_released``: a subtask that stacks on a block
        this executor let go of earlier in the episode steers to where it let it go (the cup's xy plus the held
        block's offset read then), not to the place its maps find; the colours are those of the in-hand models.
        ``guarded_place``: `GuardedPlaceConfig` fields (`executors/flow/guarded_place.py`): under a block-on-block
        subtask the release waits until the held block rests on something, coming straight down; resting lower than
        a block's height, the place is given up and the cup rises still holding (None: off). ``bowl_release_radius``
        (m): a subtask that puts a block in a bowl, whose block this episode let go of (not a grasp check's let-go)
        within this distance (xy) of the place it steered to from afar, scores `READ_MIN` in `affordance`: read
        finished (None: off)."""
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.affordance_cfg = AffordanceConfig.model_validate(dict(affordance or {}))
        if not math.isfinite(noise_scale) or noise_scale < 0:
            raise ValueError(f"noise_scale: expected a finite number >= 0, got {noise_scale!r}")
        self.noise_scale = float(noise_scale)
        self.affordance_inhibition = bool(affordance_inhibition)
        self.transit = None if transit is None else TransitConfig.model_validate(dict(transit))
        self.in_hand = None if in_hand is None else InHandOffset.from_pretrained(in_hand, device)
        if not math.isfinite(support_snap) or support_snap < 0:
            raise ValueError(f"support_snap: expected a distance in metres >= 0, got {support_snap!r}")
        self.support_snap = float(support_snap)
        self.align = None if align is None else AlignConfig.model_validate(dict(align))
        self.offset_over_support_only = bool(offset_over_support_only)
        self.grasp_check = None if grasp_check is None else GraspCheckConfig.model_validate(dict(grasp_check))
        self.colour_reader = None  # the in-hand model the grasp check reads the held block's colour with
        if self.grasp_check is not None:
            self.colour_reader = (self.in_hand if self.grasp_check.model is None
                                  else InHandOffset.from_pretrained(self.grasp_check.model, device))
            if self.colour_reader is None or not self.colour_reader.cfg.colours:
                raise ValueError("grasp_check reads the held block's colour: it needs an in-hand model with colours "
                                 "(its model, or in_hand; hybrid train executor=in_hand colour=true)")
        self.place_check = None if place_check is None else PlaceCheckConfig.model_validate(dict(place_check))
        self.support_reader = None  # the in-hand model the place check reads the support's colour with
        if self.place_check is not None:
            self.support_reader = (self.colour_reader if self.place_check.model is None
                                   else InHandOffset.from_pretrained(self.place_check.model, device))
            if self.support_reader is None or not self.support_reader.cfg.support_colours:
                raise ValueError("place_check reads the support's colour: it needs an in-hand model with support "
                                 "colours (its model, or the grasp check's; hybrid train executor=in_hand colour=true "
                                 "support=0.6 support_colour=true)")
        self.place_on_released = bool(place_on_released)
        if self.place_on_released and not self._colours:
            raise ValueError("place_on_released names blocks by colour: it needs an in-hand model with colours "
                             "(in_hand, or the grasp check's)")
        self.guarded_place = None if guarded_place is None else GuardedPlaceConfig.model_validate(dict(guarded_place))
        if self.guarded_place is not None and not self._colours:
            raise ValueError("guarded_place tells a block-on-block subtask by its colours: it needs an in-hand model "
                             "with colours (in_hand, or the grasp check's)")
        if bowl_release_radius is not None and not (math.isfinite(bowl_release_radius) and bowl_release_radius > 0):
            raise ValueError(f"bowl_release_radius: expected a distance in metres > 0, got {bowl_release_radius!r}")
        self.bowl_release_radius = bowl_release_radius
        self._steers = (any(x is not None for x in (self.in_hand, self.transit, self.grasp_check, self.place_check,
                                                    self.guarded_place))
                        or self.place_on_released)
        if self._steers and not model.cfg.waypoint_target:
            raise ValueError("in_hand, transit and the checks move the pick or place the executor steers to: the "
                             "checkpoint has no steering target (FlowConfig.waypoint_target)")
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype).eval()
        self.model.normalizer.float()  # statistics stay float32 whatever the compute dtype
        self.cfg = model.cfg
        for name, value in (("pick_persistence", pick_persistence), ("place_inhibition", place_inhibition),
                            ("place_lock_distance", place_lock_distance), ("place_persistence", place_persistence)):
            if value is not None:
                FlowConfig(**{**self.cfg.to_dict(), name: value})  # validates it
                setattr(self.cfg, name, float(value))
        self.tokenizer = tokenizer or load_tokenizer(self.cfg)
        self.flow_steps = flow_steps or self.cfg.flow_steps
        self.seed = seed
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._graphs: dict[tuple, tuple] = {}
        self.reset()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **settings) -> FlowExecutor:
        """The executor saved in ``path`` (`save_pretrained`), with the run-time ``settings`` of `__init__` by name
        (flow_steps, dtype, seed, the pick and place rules...): a checkpoint holds the weights, a config the rules."""
        model = FlowModel.from_pretrained(path)
        return cls(model, load_tokenizer(model.cfg, path), device, **settings)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def reset(self) -> None:
        """Restart the noise stream, so an episode's chunks are reproducible, and forget the picks and places."""
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        # Keyed by the subtask's text (None for an executor acting on the instruction: one pick-and-place after another)
        self._pick: tuple[str | None, torch.Tensor] | None = None  # (subtask, pick xy (1, 2)) of the chunk before
        self._held = False  # whether the gripper held at the chunk before
        self._subtask: str | None = None  # the subtask of the chunk before
        self._placed: list[tuple[str | None, torch.Tensor]] = []  # (subtask, effector xy (2,)) at each release
        # (subtask, effector xy (2,), place xy steered to from afar (2,)) at each release under a bowl subtask
        self._bowl_releases: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self._place: tuple[str | None, torch.Tensor] | None = None  # (subtask, place xy (1, 2)) seen from afar, held
        self._supports: list[torch.Tensor] = []  # the support's xy (1, 2) as each chunk of this placement saw it
        self._stacked = False  # whether a block was let go of on a support this episode (a tower may stand)
        self._rejected: list[tuple[str | None, torch.Tensor]] = []  # (subtask, effector xy (2,)) at each grasp let go
        self._letting_go = False  # a grasp check let go: that release placed nothing
        self._grasp_checked = False  # whether the block held now was checked already
        self._wrong_places: list[tuple[str | None, torch.Tensor]] = []  # (subtask, place xy (2,)) a place check gave up
        self._place_checked = False  # whether the place steered to now was checked already
        self._released: dict[str, torch.Tensor] = {}  # colour -> where this episode let go of that block, xy (1, 2)
        self._held_offset: torch.Tensor | None = None  # the held block's offset from the cup (1, 2), last read
        # (subtask, effector z, how far below it the command went, whether the guard made the descent) at the chunk
        # before, where the held block came down under a block-on-block subtask
        self._guard: tuple[str | None, float, float, bool] | None = None
        self._rested: str | None = None  # the subtask under way, if its block was let go of resting on a block
        self._on_bowl_floor: str | None = None  # the subtask under way, if its block was let go of on a bowl's floor
        self._missed: str | None = None  # the subtask under way, if its block, let go of, is not on its support
        # (subtask, effector z where the block let go of rested, probe chunks so far) while the cup feels whether
        # that block stayed (`GuardedPlaceConfig.probe`)
        self._probe: tuple[str | None, float, int] | None = None
        self._places_given_up: dict[str | None, int] = {}  # subtask -> places the guarded place gave up under it

    def remember_releases(self, releases: list[tuple[str | None, np.ndarray]],
                          aims: list[np.ndarray | None] | None = None) -> None:
        """Take up a runtime's memory of this episode's releases, (the subtask under way, the effector's xy) each,
        which `act` and `affordance` keep their picks off, and for each the place steered to from afar (``aims``,
        None where unknown; `aimed_place`) (evaluation builds situations from recorded frames)."""
        def xy(value) -> torch.Tensor:
            return torch.as_tensor(np.asarray(value, np.float32).reshape(-1)[:2], device=self.device)

        self._placed = [(text, xy(at)) for text, at in releases]
        aims = aims if aims is not None else [None] * len(releases)
        self._bowl_releases = [(text, xy(at), xy(aim)) for (text, at), aim in zip(releases, aims, strict=True)
                               if aim is not None and in_bowl(text)]

    def aimed_place(self, obs: Observation, subtask: str) -> np.ndarray:
        """``(2,)``: the place the maps find for ``subtask`` in ``obs``, as `act` steers to it from afar (the place
        a release under a bowl subtask is judged against, `bowl_release_radius`)."""
        return np.asarray(self.waypoints(obs, Subtask(text=subtask, index=0))[2:4], np.float64)

    def _nowhere(self) -> torch.Tensor:
        """``(1, 2)`` NaN: no point (what `HeatmapWaypointHead.peak` and `FlowModel._peaks` read as none)."""
        return torch.full((1, 2), float("nan"), device=self.device)

    def _pick_memory(self, state: torch.Tensor, subtask: Subtask | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pick chosen for the chunk before ``(1, 2)``, NaN once the subtask has changed or the gripper is open
        again after holding (a pick-and-place ended: the block picked is where it was let go of now), and where the
        gripper let go under other subtasks than this one ``(1, K, 2)`` (K >= 0). ``state``: the batch's ``(1, S)``;
        this also updates whether the gripper holds, which `_place_lock` reads."""
        held = float(state[0, self.cfg.gripper_index]) >= GRIPPER_ON
        text = _text(subtask)
        released = self._held and not held
        if released and not self._letting_go:  # seen at the first chunk after it: the effector has risen, not moved
            self._placed.append((self._subtask, state[0, :2].float()))
            if in_bowl(self._subtask) and self._place is not None and self._place[0] == self._subtask:
                self._bowl_releases.append((self._subtask, state[0, :2].float(), self._place[1][0].float()))
            on_released = self._released_support(self._subtask) is not None  # steered to a block let go of before
            self._stacked = self._stacked or bool(self._supports) or on_released
            self._remember_release(state)
        if released or text != self._subtask:
            self._letting_go = False
        if self._pick is not None and (self._pick[0] != text or released):
            self._pick = None
        self._held, self._subtask = held, text
        prior = self._pick[1] if self._pick is not None else self._nowhere()
        return prior, self._points([xy for done, xy in self._placed if done != text])

    @property
    def _colours(self) -> list[str]:
        """The block colours the in-hand models know (none without a colour head)."""
        readers = (self.colour_reader, self.in_hand)
        return next((list(r.cfg.colours) for r in readers if r is not None and r.cfg.colours), [])

    def _remember_release(self, state: torch.Tensor) -> None:
        """Where the block of the subtask just finished was let go of, by its colour: the effector's xy (it has risen,
        not moved) plus the held block's offset read last (`place_on_released`). Only blocks let go of on a block: a
        tower's next level goes there."""
        colour = subtask_colour(self._subtask, self._colours)
        if self.place_on_released and colour and support_colour(self._subtask, self._colours):
            self._released[colour] = self._held_block_xy(state)
        self._held_offset = None

    def _held_block_xy(self, state: torch.Tensor) -> torch.Tensor:
        """``(1, 2)``: where the held block is, the effector's xy plus its offset read last off the wrist camera."""
        if self._held_offset is None:
            return state[:, :2].float()
        return state[:, :2].float() + self._held_offset

    def _released_support(self, text: str | None) -> torch.Tensor | None:
        """``(1, 2)``: where this episode let go of the block subtask ``text`` stacks on, if it did
        (`place_on_released`)."""
        if not self.place_on_released:
            return None
        return self._released.get(support_colour(text, self._colours) or "")

    def _points(self, points: list[torch.Tensor]) -> torch.Tensor:
        """``(1, K, 2)`` of ``points`` (K >= 0)."""
        return torch.stack(points)[None] if points else torch.zeros(1, 0, 2, device=self.device)

    def _place_lock(self, state: torch.Tensor, subtask: Subtask | None) -> torch.Tensor:
        """The place ``(1, 2)`` to steer to while the gripper holds and the effector is within
        `FlowConfig.place_lock_distance` of the place seen from further away; NaN otherwise. Near it, the held block
        hides where it goes from the front camera, and the place map's estimate drifts."""
        if self._place is None or not self._held or self._place[0] != _text(subtask):
            self._place, self._supports, self._place_checked = None, [], False
        elif torch.linalg.norm(state[:, :2].float() - self._place[1]) < self.cfg.place_lock_distance:
            return self._place[1]
        return self._nowhere()

    def _wrist(self, obs: Observation, state: torch.Tensor, model: InHandOffset | None) -> WristReading | None:
        """What in-hand ``model`` reads off its camera while the gripper holds; None without one or with the gripper
        open."""
        if model is None or float(state[0, self.cfg.gripper_index]) < GRIPPER_ON:
            return None
        camera = model.cfg.camera
        if camera not in obs.images:
            raise ValueError(f"in-hand model: the observation has no {camera!r} camera (got {sorted(obs.images)})")
        return model.read(obs.images[camera])

    def _check_grasp(self, obs: Observation, state: torch.Tensor, subtask: Subtask | None,
                     reading: WristReading | None) -> str | None:
        """Why to let go of the block held (None: keep it): the grasp check, once per grasp, at the first chunk the
        cup holds at `GraspCheckConfig.min_height` or above. ``reading``: the ``in_hand`` model's of this chunk."""
        if self.grasp_check is None or not self._held:
            self._grasp_checked = False
            return None
        if self._grasp_checked or float(state[0, 2]) < self.grasp_check.min_height:
            return None
        self._grasp_checked = True
        held = reading if self.colour_reader is self.in_hand else self._wrist(obs, state, self.colour_reader)
        if not wrong_block(held, _text(subtask), self.grasp_check.min_prob):
            return None
        seen = max(held.colours, key=held.colours.get)
        if held.nothing > held.colours[seen]:  # came down beside the block, or on one it cannot lift: try elsewhere
            why = f"grasp check: the cup holds nothing (p={held.nothing:.2f}) under {_text(subtask)!r}: letting go"
        else:
            why = (f"grasp check: the block held looks {seen} (p={held.colours[seen]:.2f}), not what "
                   f"{_text(subtask)!r} moves: letting go")
        log.info(why)
        return why

    def _check_place(self, obs: Observation, state: torch.Tensor, subtask: Subtask | None) -> str | None:
        """Why the place steered to is not the block the subtask stacks on (None: keep it): the place check, once
        per place, at the first chunk the cup holds within `PlaceCheckConfig.radius` of it. A place given up is kept
        off the place map for the subtask and forgotten, with the supports seen under it."""
        if self.place_check is None or self._place is None or self._place_checked or not self._held:
            return None
        if support_colour(_text(subtask), self.support_reader.cfg.colours) is None:
            return None  # not a block on a block
        if float(torch.linalg.norm(state[:, :2].float() - self._place[1])) > self.place_check.radius:
            return None
        self._place_checked = True
        why = wrong_place(self._wrist(obs, state, self.support_reader), _text(subtask), self.place_check)
        if why is not None:
            log.info(why)
            self._wrong_places.append((_text(subtask), self._place[1][0]))
            self._place, self._supports = None, []
        return why

    def _guard_place(self, actions: np.ndarray, state: torch.Tensor, subtask: Subtask | None,
                     committed: int) -> tuple[np.ndarray, str | None]:
        """``actions`` with a block-on-block subtask's release held back until the held block rests on something
        (`guarded_place`), and why the place was given up (None: it was not). Once a chunk would let go, the
        descent runs chunk after chunk until the block rests: held back, the learned chunks come back up and down
        over the place instead of letting go there."""
        cfg, text, grip = self.guarded_place, _text(subtask), self.cfg.gripper_index
        guard, self._guard = self._guard, None
        if self._held or text != self._rested:
            self._rested = None
        if self._held or text != self._on_bowl_floor:
            self._on_bowl_floor = None
        if self._held or text != self._missed:
            self._missed = None
        if self._probe is not None and not self._held and self._probe[0] == text:
            return self._probe_place(actions, state, committed)
        self._probe = None
        bowl = cfg.bowl_floor is not None and in_bowl(text)
        if not self._held or (support_colour(text, self._colours) is None and not bowl):
            return actions, None
        # (text, z, how far below the cup the command went, guarded) at the chunk before, coming down
        came = guard if guard is not None and guard[0] == text else None
        release, z = first_release(actions, committed, grip), float(state[0, 2])
        resting = came is not None and abs(came[1] - z) < cfg.stall  # pressed down and did not move
        if not resting and (came is None or not came[3]) and (release is None or release >= committed + cfg.horizon):
            # no release before the next chunk (a later one is planned again); a learned descent that stalls lets
            # go all the same (it rests on a tower higher than the chunks expect, and they would press on for ever).
            # Every step up to then comes down, the committed prefix's too: whichever of them run before the next
            # chunk (an asynchronous runtime's count varies), a cup that did not move rests on something.
            dz = np.asarray(actions)[: committed + cfg.horizon, 2]
            down = -float(dz[committed:].sum())
            if (dz < 0).all() and down >= cfg.horizon * cfg.step:
                self._guard = (text, z, down, False)
            return actions, None
        retry = self._places_given_up.get(text, 0) < cfg.retries
        if not bowl and z < cfg.floor and retry:  # coming down or resting on no block
            return self._rise_from(actions, state, text, z, committed)
        on_floor = bowl and z <= cfg.bowl_floor  # the held block inside the bowl's wall
        # On a block, or a bowl's floor (or out of retries): let go, pressing no more; low in a bowl, with
        # `bowl_low_let_go`, without waiting for the stall.
        if resting or (on_floor and cfg.bowl_low_let_go):
            pressed = 0.0 if came is None else came[2] - (came[1] - z)
            if bowl:  # on the floor, or on the bowl's rim or a block in it
                if not on_floor and retry:
                    return self._rise_from(actions, state, text, z, committed, "not on the bowl's floor")
                self._on_bowl_floor = text if on_floor and cfg.bowl_read_finished else None
                if on_floor and cfg.bowl_probe is not None and cfg.probe is not None:
                    # feel the block's top where one lying on the floor has it; the climb ends `probe` above that
                    self._probe = (text, cfg.bowl_probe, 0)
                    rise = max(cfg.probe_step, cfg.bowl_probe + cfg.probe - z)
                    return let_go(actions, cfg, pressed, committed, grip, rise=rise), None
            elif z < cfg.floor:  # out of retries: let go on no block, a miss the planner is to see
                self._missed = text
            elif cfg.probe is not None:  # feel whether it stays before calling the subtask finished
                self._probe = (text, z, 0)
                return let_go(actions, cfg, pressed, committed, grip, rise=cfg.probe), None
            else:
                self._rested = text
            return let_go(actions, cfg, pressed, committed, grip), None
        step = cfg.bowl_step if bowl and cfg.bowl_step is not None else cfg.step
        self._guard = (text, z, cfg.horizon * step, True)
        return descend_holding(actions, committed, step, grip), None

    def _probe_place(self, actions: np.ndarray, state: torch.Tensor,
                     committed: int) -> tuple[np.ndarray, str | None]:
        """The probe after letting go on a block (`GuardedPlaceConfig.probe`): the cup comes straight down to
        ``probe_depth`` below where the block rested; stopped at the block's top (within half of that below it and
        ``stall`` above it), the block stayed (`_rested`: its subtask is finished); past it, or held up elsewhere for
        ``probe_chunks`` chunks, it did not (`_missed`: the block fell off or lies tilted, and the tower's memory of it
        is dropped). The verdict's chunk rises ``rise``; a miss says why. A cup not yet risen half of ``probe`` (the
        runtime asked again before the let-go's climb ran) climbs on first: a block tipping off needs the room."""
        cfg, grip = self.guarded_place, self.cfg.gripper_index
        text, rest, chunks = self._probe
        z = float(state[0, 2])
        if committed and np.abs(np.asarray(actions)[:committed, 2]).sum() > 0:  # still on its way: judge after
            out = np.array(actions, dtype=np.float32, copy=True)
            out[committed:] = 0.0
            return out, None
        if not chunks and z < rest + cfg.probe / 2:  # not risen clear yet (a runtime that asked again at once)
            return climb_straight_up(actions, rest + cfg.probe - z, cfg.rise_step, 0.0, committed, grip), None
        why = None
        if chunks and z < rest - cfg.probe_depth / 2 or chunks >= cfg.probe_chunks:
            self._missed, self._probe = text, None
            self._released.pop(subtask_colour(text, self._colours) or "", None)
            why = (f"guarded place: the block let go of under {text!r} is not where it rested (the cup "
                   f"{100 * (z - rest):+.1f} cm from there): not placed")
            log.info(why)
        elif chunks and z <= rest + cfg.stall:  # the block's top holds the cup where it rested
            self._rested, self._probe = text, None
        else:
            self._probe = (text, rest, chunks + 1)
            return probe_down(actions, z, rest - cfg.probe_depth, cfg.probe_step, committed, grip), None
        return climb_straight_up(actions, cfg.rise, cfg.rise_step, 0.0, committed, grip), why

    def _rise_from(self, actions: np.ndarray, state: torch.Tensor, text: str | None, z: float,
                   committed: int, where: str = "on no block") -> tuple[np.ndarray, str]:
        """Give the place up (`_give_up_place`): the chunk rises still holding, and why."""
        self._give_up_place(state, text)
        why = f"guarded place: the held block rests {where} ({100 * z:.1f} cm up) under {text!r}: another place"
        log.info(why)
        return rise_holding(actions, self.guarded_place, committed, self.cfg.gripper_index), why

    def _give_up_place(self, state: torch.Tensor, text: str | None) -> None:
        """Keep where the held block came down off the place map for subtask ``text``, and forget the place steered
        to there (a tower memory that sent it there included: the block let go of there is gone)."""
        self._wrong_places.append((text, self._held_block_xy(state)[0]))
        self._places_given_up[text] = self._places_given_up.get(text, 0) + 1
        self._place, self._supports = None, []
        self._released.pop(support_colour(text, self._colours) or "", None)

    def _support_place(self, state: torch.Tensor, subtask: Subtask | None, reading: WristReading) -> torch.Tensor:
        """``(1, 2)``: the support seen under the held block, where it lies within `support_snap` of the place found
        from afar for this subtask, averaged over the chunks of this placement that saw it (each view, from another
        height and side, errs its own way); NaN while none has (a bowl below, nothing seen, or another block)."""
        if (reading.support is not None and reading.support_prob >= 0.5 and self._place is not None
                and self._place[0] == _text(subtask)):
            support = state[:, :2].float() + torch.as_tensor(reading.support, dtype=torch.float32, device=self.device)
            if torch.linalg.norm(support - self._place[1]) <= self.support_snap:
                self._supports.append(support)
        return torch.stack(self._supports).mean(0) if self._supports else self._nowhere()

    def _remember_place(self, state: torch.Tensor, subtask: Subtask | None, place: torch.Tensor) -> None:
        """Keep the place steered to as the one to lock on, if it was seen from beyond the lock's distance."""
        far = torch.linalg.norm(state[:, :2].float() - place) >= self.cfg.place_lock_distance
        if self._held and (self.cfg.place_lock_distance > 0 or self.cfg.place_persistence > 0) and bool(far):
            if self._place is None or float(torch.linalg.norm(self._place[1] - place)) > PRIOR_RADIUS:
                self._place_checked = False  # another place: the place check reads it afresh
            self._place = (_text(subtask), place)

    # Real-time chunking: the async runtime passes the actions already committed as ``prefix``.
    supports_prefix = True

    @torch.inference_mode()
    def act(self, obs: Observation, subtask: Subtask | None, subgoal: Subgoal | None = None,
            prefix: np.ndarray | None = None) -> ActionChunk:
        cfg = self.cfg
        batch = observation_batch(cfg, self.tokenizer, obs, subtask, subgoal)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        context, place, snapped, rejected, misplaced = None, None, False, None, None
        remembers = (cfg.pick_persistence > 0 or cfg.place_inhibition > 0 or cfg.place_lock_distance > 0
                     or cfg.place_persistence > 0 or self._steers)
        if remembers and cfg.waypoint_target:
            batch["pick_prior"], batch["pick_avoid"] = self._pick_memory(batch["state"], subtask)
            batch["pick_reject"] = self._points([xy for done, xy in self._rejected if done == _text(subtask)])
            batch["place_lock"] = self._place_lock(batch["state"], subtask)
            misplaced = self._check_place(obs, batch["state"], subtask)
            if misplaced is not None:
                batch["place_lock"] = self._nowhere()
            batch["place_reject"] = self._points([xy for done, xy in self._wrong_places if done == _text(subtask)])
            batch["place_prior"] = self._place[1] if self._place is not None else self._nowhere()
            reading, shift = self._wrist(obs, batch["state"], self.in_hand), None
            released = self._released_support(_text(subtask)) if self._held else None
            if released is not None:  # the tower's top is the block let go of last: steer there all along the carry
                batch["place_lock"], snapped = released, True
            if reading is not None:
                self._held_offset = torch.as_tensor(reading.held, dtype=torch.float32, device=self.device)[None]
                if released is None:
                    support = self._support_place(batch["state"], subtask, reading)
                    snapped = bool(torch.isfinite(support).all())
                    if snapped:
                        batch["place_lock"] = support
                if snapped or not self.offset_over_support_only:
                    shift = -self._held_offset
                    batch["place_shift"] = shift
            *context, waypoints = self.model.encode_steering(batch)
            self._pick = (_text(subtask), waypoints[:, 0])
            # the lock keeps the place itself; the cup's target moves with the offset of the moment
            self._remember_place(batch["state"], subtask, waypoints[:, 1] - (0 if shift is None else shift))
            place = waypoints[0, 1].float().cpu().numpy()
            rejected = self._check_grasp(obs, batch["state"], subtask, reading)
        noise = self.noise_scale * torch.randn(1, cfg.chunk, cfg.action_dim, device=self.device,
                                               generator=self.generator)
        if prefix is not None and len(prefix):
            prefix = np.asarray(prefix, np.float32)[: cfg.chunk - 1]
            if prefix.ndim != 2 or prefix.shape[1] != cfg.action_dim or not np.isfinite(prefix).all():
                raise ValueError(f"prefix: expected finite float32 [d, {cfg.action_dim}], got {prefix.shape}")
            actions = self.model.sample_actions(batch, self.flow_steps, noise,
                                                torch.from_numpy(prefix)[None].to(self.device),
                                                context)[0].cpu().numpy()
        elif context is not None or not self.cuda_graph:  # a CUDA graph would not hand back the pick chosen
            actions = self.model.sample_actions(batch, self.flow_steps, noise, context=context)[0].cpu().numpy()
        else:
            actions = self._replay(batch, self.flow_steps, noise)[0].cpu().numpy()
        position, committed = batch["state"][0, :3].float().cpu().numpy(), 0 if prefix is None else len(prefix)
        if rejected is not None:  # the wrong block: let go of it where it is, and pick elsewhere under this subtask
            self._rejected.append((_text(subtask), batch["state"][0, :2].float()))
            self._pick, self._letting_go = None, True
            return ActionChunk(actions=let_go_and_rise(actions, self.grasp_check, committed, cfg.gripper_index),
                               dt=cfg.dt, start_time=obs.timestamp, subtask=_text(subtask), note=rejected)
        if self.transit is not None and place is not None and (self._stacked or not self.transit.towers_only):
            actions = hold_transit_height(actions, position, place, self._held, self.transit, committed,
                                          cfg.gripper_index)
        if self.guarded_place is not None and remembers and cfg.waypoint_target:
            actions, given_up = self._guard_place(actions, batch["state"], subtask, committed)
            if given_up is not None:  # rise, still holding: the next chunk steers to another place
                return ActionChunk(actions=actions, dt=cfg.dt, start_time=obs.timestamp, subtask=_text(subtask),
                                   note=given_up)
        if self.align is not None and snapped:
            actions = align_over_place(actions, position, place, self.align, committed, cfg.gripper_index)
        used_subgoal = subgoal is not None and cfg.use_subgoal
        return ActionChunk(actions=actions, dt=cfg.dt, start_time=obs.timestamp,
                           subtask=_text(subtask), note=misplaced,
                           subgoal_created_at=subgoal.created_at if used_subgoal else None)

    @torch.inference_mode()
    def waypoints(self, obs: Observation, subtask: Subtask | None, subgoal: Subgoal | None = None) -> np.ndarray | None:
        """Where the executor believes its subtask picks and places: ``(pick x, pick y, place x, place y)`` in
        the state's frame, or None for a model without a waypoint head (`FlowConfig.waypoint_loss`)."""
        if self.cfg.waypoint_loss <= 0:
            return None
        batch = observation_batch(self.cfg, self.tokenizer, obs, subtask, subgoal)
        _, predicted = self.model.encode({k: v.to(self.device) for k, v in batch.items()})
        return self.model.normalizer.unwaypoints(predicted.float())[0].cpu().numpy()

    @property
    def unplaced_releases(self) -> int:
        """This episode's releases that placed nothing under a subtask that stacks a block on a block: the grasp
        check let go of the wrong block, or of nothing, right after the lift (counted as the let-go is commanded,
        before the gripper opens). The planner does not take them for the end of a pick-and-place
        (`ReplanPolicy.skip_unplaced_releases`). A tower's levels name blocks the scene holds, so such a let-go is a
        look-alike picked; under a bowl subtask it may be all there is to say that the block named is not there (a
        planner's "another green block" with none left), and there the planner goes on counting it as a release."""
        return sum(support_colour(text, self._colours) is not None for text, _ in self._rejected)

    @property
    def supports_affordance(self) -> bool:
        """Whether `affordance` can score subtasks: it reads the heatmap waypoint head's maps."""
        return self.cfg.waypoint_loss > 0 and self.cfg.waypoint_head == "heatmap"

    @torch.inference_mode()
    def affordance(self, obs: Observation, subtasks: list[str]) -> np.ndarray:
        """How likely each of ``subtasks`` can be started from ``obs``, in [0, 1] (`executors/flow/affordance.py`):
        the planner's SayCan-style check before it switches to a new subtask. One batch for all of them. With a
        block held and the grasp check's colour model, how likely the held block is the one each moves. What is read
        off the cameras, or from where it let go of a block, stays within [`READ_MIN`, `READ_MAX`]; 0 and 1 are what
        the guarded place felt (finished, still to do)."""
        if not self.supports_affordance:
            raise ValueError("affordance: this executor has no heatmap waypoint head (FlowConfig.waypoint_head)")
        if not subtasks:
            return np.zeros(0)
        batch = observation_batch(self.cfg, self.tokenizer, obs, Subtask(text=subtasks[0], index=0), None)
        released = self._released_in_bowl(subtasks)
        held = self._held_scores(obs, batch["state"], subtasks)
        if held is not None:
            return np.where(released, READ_MIN, np.clip(held, READ_MIN, READ_MAX))
        scores = np.where(released, READ_MIN, np.clip(self._front_scores(batch, subtasks), READ_MIN, READ_MAX))
        if self._rested is not None:  # the guarded place felt its block come to rest on a block: finished
            scores[[text == self._rested for text in subtasks]] = 0.0
        if self._on_bowl_floor is not None:  # let go of resting on a bowl's floor: read finished (not felt to stay)
            scores[[text == self._on_bowl_floor for text in subtasks]] = READ_MIN
        unplaced = self._missed if self._probe is None else self._probe[0]
        if unplaced is not None:  # let go of on no block, fallen off, or not yet felt to stay: still to do
            scores[[text == unplaced for text in subtasks]] = 1.0
        return scores

    def _released_in_bowl(self, subtasks: list[str]) -> np.ndarray:
        """``bool (k,)``: which of ``subtasks`` put a block in a bowl and had it let go of this episode (not by a grasp
        check) within `bowl_release_radius` of the place steered to from afar. The learned head reads a block just
        let go of in its bowl as still to move in up to half of the expert's last frames (0.14-0.85); the expert's
        missed placements land 3-5 cm past the rim, 11-13 cm from the bowl's centre. In the loop a block let go of
        there may still rest on the rim or on a block already in the bowl, which this cannot tell."""
        finished = np.zeros(len(subtasks), bool)
        if self.bowl_release_radius is None:
            return finished
        for text, at, aimed in self._bowl_releases:
            if float(torch.linalg.norm(at - aimed)) < self.bowl_release_radius:
                finished |= np.array([t == text for t in subtasks], bool)
        return finished

    def _front_scores(self, batch: dict[str, torch.Tensor], subtasks: list[str]) -> np.ndarray:
        """`affordance` off the front camera: the learned head, or the waypoint maps' contrast and reach."""
        k = len(subtasks)
        batch = {name: value.expand(k, *value.shape[1:]) for name, value in batch.items()}
        batch["text_ids"] = self.tokenizer(list(subtasks))
        batch = {name: value.to(self.device) for name, value in batch.items()}
        avoid = self._placed_by_others(subtasks) if self.affordance_inhibition else None
        if self.cfg.affordance_head:  # the learned check; the front camera alone
            scores = torch.sigmoid(self.model.affordance_logits(batch["images"], batch["text_ids"], avoid).float())
            out = scores.cpu().numpy().astype(np.float64)
            if not np.isfinite(out).all():
                raise ValueError(f"affordance: non-finite scores {out.tolist()} (check the executor's weights)")
            return out
        _, _, (logits, size, heights), _ = self.model._encode(batch)
        logits = self.model.waypoint_head.inhibit(logits, size, avoid, self.cfg.place_inhibition)
        return affordance_scores(logits, self.model.waypoint_head.peak(logits, size, heights=heights),
                                 self.affordance_cfg)

    def _held_scores(self, obs: Observation, state: torch.Tensor, subtasks: list[str]) -> np.ndarray | None:
        """With the gripper holding and the grasp check's colour model: how likely the block in the cup is the one
        each subtask moves, against the likeliest colour (the colour it names first; 1 where it names none the
        model knows). The pick map judges blocks on the table, not the one held (a runtime restarted mid-carry asks
        with a block in the cup). None with the gripper open or without a colour model."""
        reading = self._wrist(obs, state, self.colour_reader)
        if reading is None:
            return None
        # Relative: on the held-out recordings the true colour is the likeliest in 96% of held frames, above 0.5
        # in 91-93% (the probability is shared with look-alikes and an empty cup).
        best = max(max(reading.colours.values()), 1e-6)
        colours = [subtask_colour(text, reading.colours) for text in subtasks]
        return np.array([1.0 if c is None else reading.colours[c] / best for c in colours], np.float64)

    def _placed_by_others(self, subtasks: list[str]) -> torch.Tensor | None:
        """``(k, K, 2)``: for each of ``subtasks``, where the gripper let go under the other subtasks of this episode
        (NaN where it was under that one: a retry), the places `act` keeps its pick off; None before any release."""
        if not self._placed:
            return None
        points = torch.stack([xy for _, xy in self._placed])
        own = torch.tensor([[done == text for done, _ in self._placed] for text in subtasks], device=self.device)
        return torch.where(own[..., None], torch.full_like(points, float("nan")), points)

    def _replay(self, batch: dict[str, torch.Tensor], steps: int, noise: torch.Tensor) -> torch.Tensor:
        """`sample_actions` through a CUDA graph recorded for this input layout and step count."""
        key = (steps, *((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items())))
        if key not in self._graphs:
            static = {k: v.clone() for k, v in batch.items()}
            static_noise = noise.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph (kernel selection, workspaces)
                for _ in range(2):
                    self.model.sample_actions(static, steps, static_noise)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.model.sample_actions(static, steps, static_noise)
            self._graphs[key] = (graph, static, static_noise, out)
        graph, static, static_noise, out = self._graphs[key]
        for k, v in batch.items():
            static[k].copy_(v)
        static_noise.copy_(noise)
        graph.replay()
        return out.clone()
