"""`hybrid demo` runs the shipped tabletop tiers on a fresh checkout: no training, no download."""

import pytest
from runtime_support import rrd_entities

from hybrid.cli import main
from hybrid.config import compose


def test_demo_config_points_at_shipped_checkpoints():
    from pathlib import Path

    cfg = compose("demo")
    for path in (cfg.planner.model, cfg.world_model.path, cfg.executor.path):
        assert (Path(path) / "config.json").is_file() or (Path(path) / "model_index.json").is_file(), path


def test_one_key_points_every_tabletop_tier_at_a_train_demo_output(tmp_path):
    from omegaconf import OmegaConf

    from hybrid.config import SHIPPED_CHECKPOINTS

    for name, checkpoints in (("eval", tmp_path), ("demo", tmp_path), ("eval", None)):
        cfg = compose(name, [] if checkpoints is None else [f"checkpoints={checkpoints}"])
        tiers = OmegaConf.to_container(cfg.tiers if name == "eval" else cfg, resolve=True)
        executor = tiers["executor"]
        paths = [tiers["planner"]["model"], tiers["world_model"]["path"], executor["path"], executor["in_hand"],
                 executor["grasp_check"]["model"]] + ([tiers["flat"]["path"]] if name == "eval" else [])
        root = checkpoints or SHIPPED_CHECKPOINTS
        assert [p.removeprefix(f"{root}/") for p in paths] == ["planner", "world_model", "executor", "in_hand",
                                                               "held_colour", "executor_flat"][:len(paths)], name


@pytest.mark.slow
def test_demo_runs_the_trained_tiers_and_records_the_plan_stack(tmp_path, capsys):
    rrd = tmp_path / "demo.rrd"
    assert main(["demo", "--rerun", "save", str(rrd), "episodes=1", "runtime.loop.max_steps=30"]) == 0
    out = capsys.readouterr().out
    assert "TEST DOUBLES" not in out and "summary: 1 episodes" in out
    assert "runtime: 10 Hz" in out
    assert {"/instruction", "/plan/subtasks", "/plan/subgoal/front", "/obs/front", "/obs/wrist",
            "/executor/chunk", "/executor/chunk_path", "/latency/executor"} <= rrd_entities(rrd)
