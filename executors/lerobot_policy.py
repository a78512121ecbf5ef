"""Any policy trained with LeRobot's own training code (ACT, Diffusion Policy, ...) as an executor.

It is how the evaluation runs LeRobot's baselines on the same recorded data: the checkpoint
directory `lerobot-train` writes (`.../pretrained_model`) is loaded with LeRobot's factory, and each
call runs LeRobot's pre-processor, `select_action`, and post-processor, exactly as `lerobot-eval`
does. `select_action` keeps the policy's own action queue and observation history, so the chunk
returned here is one action long and the runtime calls it every control step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybrid.types import ActionChunk, Observation, Subgoal, Subtask


class LeRobotPolicyExecutor:
    """Wraps a LeRobot `PreTrainedPolicy` directory. These policies take no subgoal; ACT/DP take no language."""

    def __init__(self, path: str | Path, device: str = "cpu", dt: float = 0.1):
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        path = str(path)
        cfg = PreTrainedConfig.from_pretrained(path)
        cfg.device = device
        self.policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
        self.policy.eval()
        self.pre, self.post = make_pre_post_processors(cfg, pretrained_path=path)
        self.image_keys = list(cfg.image_features)
        self.dt = dt

    def act(self, obs: Observation, subtask: Subtask | None, subgoal: Subgoal | None) -> ActionChunk:
        import torch

        batch = {}
        for key in self.image_keys:
            cam = key.rsplit(".", 1)[-1]
            if cam not in obs.images:
                raise ValueError(f"images: the policy needs camera {cam!r}, observation has {sorted(obs.images)}")
            batch[key] = torch.from_numpy(obs.images[cam]).permute(2, 0, 1)[None].float() / 255.0
        batch["observation.state"] = torch.from_numpy(obs.state)[None]
        batch["task"] = [subtask.text if subtask else ""]
        with torch.inference_mode():
            action = self.post(self.policy.select_action(self.pre(batch)))
        actions = np.asarray(action.reshape(1, -1).cpu().numpy(), np.float32)
        return ActionChunk(actions=actions, dt=self.dt, start_time=obs.timestamp,
                           subtask=None if subtask is None else subtask.text)

    def reset(self) -> None:
        self.policy.reset()
        self.pre.reset()
        self.post.reset()
