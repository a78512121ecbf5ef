"""`hybrid bench executor` prints one JSON line of speed figures."""

from __future__ import annotations

import json

import yaml

from hybrid.cli import main as hybrid

KEYS = {"params_m", "chunk", "flow_steps", "latency_ms_p50", "latency_ms_p95", "latency_ms_1step"}


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_tabletop_config_json_line(capsys):
    assert hybrid(["bench", "executor", "--config", "tabletop", "--json", "--iters", "3", "--warmup", "1",
                   "--threads", "1"]) == 0
    result = last_json(capsys)
    assert KEYS <= result.keys()
    assert result["chunk"] == 16 and result["flow_steps"] == 10 and result["device"] == "cpu"
    assert 0 < result["latency_ms_1step"] and result["latency_ms_p50"] <= result["latency_ms_p95"]


def test_bench_custom_yaml_steps_and_language_only(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": {"chunk": 5, "image_size": 16, "vision_width": 16, "text_width": 16,
                                              "width": 32, "depth": 1, "heads": 2}}))
    assert hybrid(["bench", "executor", "--config", str(path), "--steps", "4", "--no-subgoal", "--json",
                   "--iters", "2", "--warmup", "1", "--threads", "1"]) == 0
    result = last_json(capsys)
    assert (result["chunk"], result["flow_steps"], result["subgoal"], result["threads"]) == (5, 4, False, 1)
    assert result["params_m"] < 1


def test_bench_of_the_shipped_executor_with_its_run_time_settings(tmp_path, capsys):
    from executors.flow.in_hand import InHandConfig, InHandOffset
    from hybrid.config import PROJECT_ROOT

    InHandOffset(InHandConfig(image_size=32, widths=[8, 8], hidden=16, colours=["red", "blue"])).save_pretrained(
        tmp_path / "in_hand")
    checkpoint = str(PROJECT_ROOT / "demos" / "tabletop" / "checkpoints" / "executor")
    assert hybrid(["bench", "executor", "--checkpoint", checkpoint, "--pick-persistence", "0.5", "--place-inhibition",
                   "3", "--place-lock-distance", "0.04", "--place-persistence", "3", "--in-hand",
                   str(tmp_path / "in_hand"), "--grasp-check", str(tmp_path / "in_hand"), "--json", "--iters", "2",
                   "--warmup", "1"]) == 0
    result = last_json(capsys)
    assert (result["pick_persistence"], result["place_inhibition"], result["place_lock_distance"],
            result["place_persistence"]) == (0.5, 3.0, 0.04, 3.0)
    assert result["latency_ms_p50"] > 0 and result["in_hand_ms_p50"] > 0 and result["grasp_check_ms_p50"] > 0


def test_bench_and_model_import_without_lerobot_or_hydra(tmp_path):
    """The GPU check runs where only torch and transformers are installed."""
    import subprocess
    import sys

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": {"chunk": 3, "image_size": 16, "vision_width": 16, "text_width": 16,
                                              "width": 32, "depth": 1, "heads": 2}}))
    script = f"""
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lerobot", "hydra", "omegaconf", "accelerate"):
            raise ImportError(name + " is not installed here")
sys.meta_path.insert(0, Missing())
from hybrid.cli import main
sys.exit(main(["bench", "executor", "--config", {str(path)!r}, "--json", "--iters", "1", "--warmup", "0",
               "--threads", "1"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["chunk"] == 3
