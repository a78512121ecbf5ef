"""Configuration of the flow-matching action expert: one dataclass, a comment per field."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_NAME = "config.json"


@dataclass
class FlowConfig:
    # --- embodiment (filled in from the dataset by the trainer)
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])  # cameras read each chunk, in order
    subgoal_cameras: list[str] = field(default_factory=lambda: ["front"])  # cameras a subgoal image comes for
    state_dim: int = 4  # proprioceptive state size
    action_dim: int = 4  # action size A
    chunk: int = 16  # actions per chunk H
    dt: float = 0.1  # seconds between two actions of a chunk (1 / dataset fps)
    # Action dimensions that are per-step deltas (the tabletop's dx, dy, dz), learned as their running sum
    # over the chunk: a path relative to where the chunk starts (UMI's relative trajectory), so one step's
    # error does not carry into every later step, and "go to the target" is one value, not a speed profile.
    path_dims: list[int] = field(default_factory=list)

    # --- what conditions the expert
    conditioning: str = "subtask"  # text read: the current "subtask", or the episode "instruction" (flat VLA)
    subgoal_dropout: float = 0.25  # training probability of hiding the subgoal; 1.0 never uses one
    image_size: int = 64  # images (observation and subgoal) are resized to this square side

    # --- vision encoder, shared by observation and subgoal images
    vision: str = "scratch"  # "scratch": a small ViT trained here; "siglip": transformers' SiglipVisionModel
    vision_path: str | None = None  # local directory of a pretrained SigLIP (vision tower or full model)
    vision_tower: dict | None = None  # SiglipVisionConfig as a dict; saved so a checkpoint needs no vision_path
    freeze_vision: bool = False  # keep the vision encoder's weights fixed
    patch_size: int = 8  # scratch ViT patch side (tokens per image = (image_size / patch_size)^2)
    vision_stem: str = "patch"  # scratch ViT tokeniser: one "patch" projection, or a "conv" stem of stride-2 convs
    vision_film: bool = False  # FiLM-condition the conv stem on the text (RT-1 / BC-Z style)
    keypoints: int = 0  # spatial-softmax keypoints per image from the conv stem, as one more token (0: none)
    keypoint_stride: int = 4  # which hidden map of the stem they are read from (its stride; finer finds small objects)
    keypoint_temperature: float = 1.0  # the keypoint softmax's initial temperature (learned from there)
    waypoint_loss: float = 0.0  # weight of the auxiliary loss regressing the subtask's pick/place xy (needs keypoints)
    waypoint_head: str = "mlp"  # "mlp": xy from all front keypoints + text; "heatmap": two text-queried attention maps
    #   over the front feature map, trained on where the labels project (needs table_homography; waypoint_heads.py)
    table_homography: list | None = None  # 3x3, table xy (m) -> front image (u, v) in [-1, 1]: the camera's calibration
    waypoint_map_target: str = "cell"  # what the heatmap is trained toward: the "cell" a label falls in, or
    #   "bilinear": its weight shared among the 4 nearest cell centres, so the map's soft-argmax can land between
    #   centres (a cell of the tabletop's 24x24 map is ~3.5 cm of table: a cell's centre misses a stack)
    waypoint_place_map: str = "observation"  # which front image the heatmap's place map reads: the
    #   "observation", or the "subgoal" where there is one (it shows the block where the subtask leaves it: where
    #   to place is then where to look, as where to pick is in the observation)
    waypoint_place_height: bool = False  # the place map finds where the effector lets go in space: trained on the
    #   image point of its (x, y, z) at the release, with the place's height regressed from the map; the place is
    #   where that camera ray meets the height (needs camera_projection). Otherwise the map is read on the plane of
    #   table_homography, and a tower's top, higher up, lands behind the tower (parallax: 5.7 cm on 3-block towers)
    place_height_below: float = 0.0  # m: the height the place map is trained on lies this far below the effector at the
    #   release (the held object's height: the map then finds the top of what it goes on, which the camera sees,
    #   rather than a point in the air above it)
    camera_projection: list | None = None  # 3x4, world xyz (m) -> front image (u s, v s, s): the full calibration
    waypoint_text: str = "mean"  # what the heatmap's queries read: the text's "mean" token, or its "tokens" (attention)
    waypoint_target: bool = False  # the waypoints relative to the effector (pick - xy, place - xy) as one more prefix
    #   token and added to every action token, so the expert steers toward what the head found instead of re-finding it
    waypoint_teacher_forcing: float = 0.5  # training probability that target is the recorded waypoint (+ noise)
    waypoint_noise: float = 0.02  # std of that noise, in the state's units (m): the head's own error at run time
    pick_persistence: float = 0.0  # logits; at run time the pick map's cells near the pick chosen for the chunk
    #   before get this much more, until the subtask changes or the gripper lets go (0: every chunk chooses afresh;
    #   no effect without a heatmap head and `waypoint_target`, which steer the expert to the pick)
    place_persistence: float = 0.0  # logits; at run time, while the gripper holds, the place map's cells near the
    #   place chosen from afar for this subtask get this much more (0: every chunk chooses afresh)
    place_inhibition: float = 0.0  # logits; at run time the pick map's cells near where the gripper let go under an
    #   earlier subtask get this much less (inhibition of return: what an earlier subtask placed is not to be picked
    #   again; a release under the subtask still under way is a miss to retry, not inhibited)
    place_lock_distance: float = 0.0  # m; at run time, while the gripper holds and the effector is this close to the
    #   place chosen from further away, the expert is steered to that place, not to the place map's estimate of the
    #   moment (the held block hides the spot from the front camera as it gets there; 0: off)
    gripper_index: int = -1  # the state entry of the gripper command (open below 0.5)
    affordance_head: bool = False  # a learned check whether the subtask's block can be picked from here, read off
    #   the pick map (executors/flow/affordance.py; trained apart by `hybrid train executor=affordance`)
    affordance_width: int = 64  # its hidden width
    affordance_place: bool = False  # it reads the place map's pooled features and the pick peak's own too
    vision_width: int = 128  # scratch ViT width
    vision_depth: int = 2  # scratch ViT blocks

    # --- text encoder
    text: str = "bytes"  # "bytes": UTF-8 bytes + a small transformer; "siglip": transformers' SiglipTextModel
    text_path: str | None = None  # local directory of a pretrained SigLIP (text tower or full model) + tokenizer
    text_tower: dict | None = None  # SiglipTextConfig as a dict; saved so a checkpoint needs no text_path
    freeze_text: bool = False  # keep the text encoder's weights fixed
    max_text_len: int = 48  # text tokens (bytes) per prompt, padded or cut to this length
    text_width: int = 128  # byte encoder width
    text_depth: int = 2  # byte encoder blocks

    # --- prefix mixer and action expert
    width: int = 256  # token width of the prefix and of the action expert
    depth: int = 6  # action-expert blocks, each attending to the cached prefix
    heads: int = 4  # attention heads (everywhere but inside a pretrained tower)
    mlp_ratio: float = 4.0  # MLP hidden size / width
    prefix_depth: int = 1  # blocks that mix the prefix tokens (vision, text, state) once per chunk

    # --- flow matching
    flow_steps: int = 10  # Euler steps K at inference
    time_beta: tuple[float, float] = (1.5, 1.0)  # Beta(a, b) of training flow times, skewed toward noise
    time_max: float = 0.999  # flow times are time_max · (1 - Beta sample), in [0, time_max]

    def __post_init__(self):
        self.cameras, self.subgoal_cameras = list(self.cameras), list(self.subgoal_cameras)
        self.path_dims = [int(d) for d in self.path_dims]
        self.time_beta = tuple(float(x) for x in self.time_beta)
        checks = {
            "conditioning": self.conditioning in ("subtask", "instruction"),
            "vision": self.vision in ("scratch", "siglip"),
            "text": self.text in ("bytes", "siglip"),
            "subgoal_dropout": 0.0 <= self.subgoal_dropout <= 1.0,
            "subgoal_cameras": set(self.subgoal_cameras) <= set(self.cameras),
            "width": self.width % self.heads == 0,
            "vision_width": self.vision != "scratch" or self.vision_width % self.heads == 0,
            "text_width": self.text != "bytes" or self.text_width % self.heads == 0,
            "image_size": self.vision != "scratch" or self.image_size % self.patch_size == 0,
            "vision_stem": self.vision_stem == "patch" or (self.vision_stem == "conv" and _power_of_two(self.patch_size)),
            "vision_film": not self.vision_film or (self.vision == "scratch" and self.vision_stem == "conv"),
            "keypoints": self.keypoints == 0 or (self.vision == "scratch" and self.vision_stem == "conv"),
            "waypoint_loss": self.waypoint_loss == 0 or (self.waypoint_loss > 0 and self.keypoints > 0),
            "keypoint_temperature": self.keypoint_temperature > 0,
            "waypoint_head": self.waypoint_head == "mlp" or (self.waypoint_head == "heatmap"
                                                             and self.table_homography is not None),
            "waypoint_text": self.waypoint_text in ("mean", "tokens"),
            "waypoint_place_height": not self.waypoint_place_height or (
                self.waypoint_head == "heatmap" and self.camera_projection is not None
                and len(self.camera_projection) == 3 and all(len(row) == 4 for row in self.camera_projection)),
            "place_height_below": self.place_height_below >= 0,
            "waypoint_map_target": self.waypoint_map_target in ("cell", "bilinear"),
            "waypoint_place_map": self.waypoint_place_map == "observation" or (
                self.waypoint_place_map == "subgoal" and self.waypoint_head == "heatmap" and self.use_subgoal
                and self.subgoal_cameras[0] == self.cameras[0]),
            "waypoint_target": not self.waypoint_target or self.waypoint_loss > 0,
            "affordance_head": not self.affordance_head or (self.waypoint_loss > 0 and self.waypoint_head == "heatmap"),
            "waypoint_teacher_forcing": 0.0 <= self.waypoint_teacher_forcing <= 1.0,
            "pick_persistence": self.pick_persistence >= 0,
            "place_persistence": self.place_persistence >= 0,
            "place_inhibition": self.place_inhibition >= 0,
            "place_lock_distance": self.place_lock_distance >= 0,
            "gripper_index": -self.state_dim <= self.gripper_index < self.state_dim,
            "flow_steps": self.flow_steps >= 1,
            "path_dims": len(set(self.path_dims)) == len(self.path_dims)
            and all(0 <= d < self.action_dim for d in self.path_dims),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"FlowConfig: invalid {', '.join(bad)} ({ {b: getattr(self, b) for b in bad} })")

    @property
    def use_subgoal(self) -> bool:
        """False for the flat baseline: the model then has no subgoal slots at all."""
        return self.subgoal_dropout < 1.0 and bool(self.subgoal_cameras)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, directory: str | Path) -> None:
        (Path(directory) / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> FlowConfig:
        if not (Path(directory) / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no flow executor checkpoint in {directory}: {CONFIG_NAME} is missing")
        return cls(**json.loads((Path(directory) / CONFIG_NAME).read_text()))


def _power_of_two(n: int) -> bool:
    return n >= 2 and n & (n - 1) == 0
