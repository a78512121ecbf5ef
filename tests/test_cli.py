import subprocess
import sys

import numpy as np
from runtime_support import rrd_entities

from hybrid.cli import COMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "hybrid.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert f"  {name}" in out


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_run_writes_a_readable_recording_with_the_plan_stack(tmp_path, capsys):
    rrd = tmp_path / "run.rrd"
    assert main(["run", "--rerun", "save", str(rrd), "env=point", "executor.action_dim=2", "episodes=2"]) == 0
    out = capsys.readouterr().out
    assert "summary: 2 episodes" in out and f"Rerun recording: {rrd}" in out
    assert {"/instruction", "/plan/subtasks", "/plan/subgoal/front", "/obs/front", "/executor/chunk",
            "/latency/executor"} <= rrd_entities(rrd)


def test_rerun_flag_needs_a_path_for_save():
    from hybrid.commands.run import rerun_overrides

    assert rerun_overrides(["--rerun", "save", "x.rrd", "env=point"]) == ["viz=save", "viz.path=x.rrd", "env=point"]
    for bad in (["--rerun", "save"], ["--rerun", "nowhere"]):
        try:
            rerun_overrides(bad)
        except SystemExit as err:
            assert "--rerun" in str(err)
        else:
            raise AssertionError(f"{bad} accepted")


def test_swap_one_tier_in_three_lines():
    from hybrid import HybridAgent
    from hybrid.api import load_tiers, make_env, run

    class GoRight:  # a user's own executor: any object with act() and reset()
        def act(self, obs, subtask, subgoal):
            from hybrid import ActionChunk
            return ActionChunk(actions=np.tile([[0.1, 0.0]], (4, 1)), dt=0.1, subtask=subtask.text)

        def reset(self):
            pass

    # The three lines from the README:
    planner, world_model, _ = load_tiers(["env=point"])
    agent = HybridAgent(planner, world_model, GoRight())
    results = run(agent, make_env(["env=point"]), episodes=1)

    assert results[0].steps > 0 and results[0].subtasks_completed >= 1
