"""LeRobot's own ACT, saved the way `lerobot-train` saves it, runs as a hybrid executor."""

import numpy as np
import pytest

from hybrid.testing import fake_observation
from hybrid.testing.contract import check_executor
from hybrid.testing.datasets import make_tiny_dataset


def save_policy(cfg, root):
    """A random policy saved the way `lerobot-train` saves its checkpoints (weights + processors)."""
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    ds = make_tiny_dataset(root / "ds", episodes=1, frames_per_subtask=4)
    policy = make_policy(cfg, ds_meta=ds.meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=ds.meta.stats)
    out = root / "pretrained_model"
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def act_dir(tmp_path_factory):
    from lerobot.policies.act.configuration_act import ACTConfig

    cfg = ACTConfig(pretrained_backbone_weights=None, chunk_size=4, n_action_steps=4, dim_model=32, n_heads=2,
                    dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1, use_vae=False, device="cpu")
    return save_policy(cfg, tmp_path_factory.mktemp("act"))


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    cfg = DiffusionConfig(pretrained_backbone_weights=None, horizon=8, n_action_steps=4, down_dims=(16, 32),
                          diffusion_step_embed_dim=16, n_groups=4, spatial_softmax_num_keypoints=4,
                          noise_scheduler_type="DDIM", num_train_timesteps=10, num_inference_steps=2, device="cpu")
    return save_policy(cfg, tmp_path_factory.mktemp("diffusion"))


def test_act_checkpoint_meets_the_executor_contract(act_dir):
    from executors.lerobot_policy import LeRobotPolicyExecutor

    executor = LeRobotPolicyExecutor(act_dir)
    obs = fake_observation(cameras=("front", "wrist"), size=32, state_dim=4)
    chunk = check_executor(executor, obs, action_dim=4)
    assert chunk.horizon == 1  # one action per call; the policy keeps its own queue


def test_act_executor_names_a_missing_camera(act_dir):
    from executors.lerobot_policy import LeRobotPolicyExecutor

    executor = LeRobotPolicyExecutor(act_dir)
    with pytest.raises(ValueError, match="needs camera 'wrist'"):
        executor.act(fake_observation(cameras=("front",), size=32, state_dim=4), None, None)
    assert np.isfinite(executor.act(fake_observation(cameras=("front", "wrist"), size=32), None, None).actions).all()


def test_eval_runs_a_lerobot_baseline_beside_the_agents_on_its_family(act_dir, capsys):
    import json

    from hybrid.cli import main

    doubles = ["planner@tiers.planner=mock", "world_model@tiers.world_model=mock", "executor@tiers.executor=mock",
               "executor@tiers.flat=mock", "families=[pick_place,gather]", "loop.max_steps=6", "env.image_size=32"]
    argv = ["eval", "--episodes", "1", "--json", *doubles, "~agents.hierarchical", "~agents.oracle_subgoals",
            "~agents.language_only", "~agents.flat", "+baseline=act", f"agents.act.executor.path={act_dir}"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["agents"]) == {"oracle", "act"}
    assert set(report["agents"]["act"]["families"]) == {"pick_place"}  # ACT takes no language: one family
    assert report["agents"]["act"]["families"]["pick_place"]["faults"] == 0
    assert "executor" in report["agents"]["act"]["latency_ms_p50"]


def test_diffusion_policy_checkpoint_runs_as_an_executor_and_in_eval(diffusion_dir, capsys):
    import json

    from executors.lerobot_policy import LeRobotPolicyExecutor
    from hybrid.cli import main

    executor = LeRobotPolicyExecutor(diffusion_dir)
    obs = fake_observation(cameras=("front", "wrist"), size=32, state_dim=4)
    assert check_executor(executor, obs, action_dim=4).horizon == 1
    doubles = ["planner@tiers.planner=mock", "world_model@tiers.world_model=mock", "executor@tiers.executor=mock",
               "executor@tiers.flat=mock", "families=[pick_place]", "loop.max_steps=6", "env.image_size=32"]
    argv = ["eval", "--episodes", "1", "--json", *doubles, "~agents.hierarchical", "~agents.oracle_subgoals",
            "~agents.language_only", "~agents.flat", "~agents.oracle", "+baseline=diffusion",
            f"agents.diffusion.executor.path={diffusion_dir}"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["agents"]["diffusion"]["families"]["pick_place"]["faults"] == 0
