"""World-model configuration: which image-editing pipeline, and how to sample from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["tabletop", "instruct_pix2pix", "flux_kontext", "qwen_image_edit"]


class WorldModelConfig(BaseModel):
    """Everything `SubgoalWorldModel` needs besides the pipeline weights (saved beside them as JSON)."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field("tabletop", description="which diffusers image-edit pipeline the directory holds")
    cameras: list[str] | None = Field(None, description="cameras to imagine; None = every camera of the observation")
    prompt_template: str = Field("{subtask}", description="pipeline prompt; fields {subtask} and {camera}")
    num_inference_steps: int = Field(4, gt=0, description="denoising steps per subgoal")
    guidance_scale: float = Field(1.0, ge=0, description="text guidance (Kontext: distilled guidance; Qwen: true CFG)")
    image_guidance_scale: float = Field(1.0, ge=0, description="image guidance of two-way CFG (InstructPix2Pix, tabletop)")
    negative_prompt: str | None = Field(None, description="for backends with true CFG (Qwen-Image-Edit)")
    resolution: int | None = Field(None, gt=0, description="generate at this square size, then resize to the camera's; None = camera size")
    scheduler: str | None = Field(None, description="diffusers scheduler class replacing the saved one, e.g. FlowMatchEulerDiscreteScheduler")
    scheduler_kwargs: dict[str, Any] = Field(default_factory=dict, description="overrides of the scheduler's config")
    call_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra pipeline call arguments, e.g. max_sequence_length")
    timeout_s: float | None = Field(None, gt=0, description="deadline per imagine call; overrun is a world-model fault")
    seed: int | None = Field(0, description="noise seed per call (reproducible subgoals); None = fresh noise")
    device: str = Field("auto", description="cpu, cuda, cuda:1, or auto (cuda when available)")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads; None = torch's default")
