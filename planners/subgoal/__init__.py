"""World models: a subgoal image per camera from the current observation and a subtask.

Backed by diffusers image-edit pipelines (InstructPix2Pix, FLUX.1 Kontext, Qwen-Image-Edit) or by
the small tabletop model trained from scratch (`tabletop_model.py`, `train.py`). Heavy libraries
(torch, diffusers, transformers) are imported only when a pipeline is loaded.
"""

from planners.subgoal.configuration import WorldModelConfig
from planners.subgoal.world_model import SubgoalWorldModel, WorldModelFault

__all__ = ["SubgoalWorldModel", "WorldModelConfig", "WorldModelFault"]
