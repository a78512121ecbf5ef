"""Ctrl-C: a real SIGINT to a process running the async runtime on a robot stops it cleanly."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from runtime_support import rrd_entities

# A robot with LeRobot's Robot methods (duck-typed here, so the child process need not import LeRobot).
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from hybrid import HybridAgent
    from hybrid.agent import AgentConfig
    from hybrid.api import run_async
    from hybrid.runtime.async_runtime import AsyncRuntimeConfig
    from hybrid.runtime.robot_adapter import RobotEnv, RobotMapping
    from hybrid.testing import MockExecutor, MockPlanner, MockWorldModel
    from hybrid.viz import RerunView, RerunViewConfig

    out = sys.argv[1]

    class Arm:
        action_features = {"j0.pos": float, "j1.pos": float}
        def __init__(self):
            self.is_connected, self.q, self.sent = False, np.array([5.0, -5.0]), []
        def connect(self, calibrate=True):
            self.is_connected = True
        def get_observation(self):
            return {"j0.pos": float(self.q[0]), "j1.pos": float(self.q[1]), "cam": np.zeros((16, 16, 3), np.uint8)}
        def send_action(self, action):
            self.q = np.array([action["j0.pos"], action["j1.pos"]])
            self.sent.append(action)
            return action
        def disconnect(self):
            self.is_connected = False
            json.dump({"sent": len(self.sent), "last": self.sent[-1], "prev": self.sent[-2], "q": self.q.tolist()}, open(out + "/arm.json", "w"))

    class Announce:
        def on_episode_start(self, instruction, info): pass
        def on_step(self, record):
            if record.step == 15:
                print("RUNNING", flush=True)
        def on_episode_end(self, result):
            print("STATUS", result.status, flush=True)
        def close(self): pass

    push = np.tile(np.array([[0.5, -0.5]], np.float32), (20, 1)) + np.arange(20, dtype=np.float32)[:, None]
    agent = HybridAgent(MockPlanner(["wave"], calls_per_subtask=10**6), MockWorldModel(),
                        MockExecutor(actions=push, latency_s=0.01), AgentConfig())
    env = RobotEnv(Arm(), RobotMapping(cameras={"cam": "front"}, state_keys=["j0.pos", "j1.pos"],
                                       action_keys=["j0.pos", "j1.pos"], low=-100, high=100))
    view = RerunView(RerunViewConfig(mode="save", path=out + "/run.rrd", position_dims=None))
    try:
        results = run_async(agent, env, 1, 0, AsyncRuntimeConfig(control_hz=50, max_steps=100_000), [view, Announce()])
    finally:
        view.close()
        agent.close()
        env.close()
    sys.exit(130 if results[-1].status == "interrupted" else 0)
""")


def test_sigint_halts_disconnects_and_leaves_a_readable_recording(tmp_path):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        for line in proc.stdout:
            if line.startswith("RUNNING"):
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "STATUS interrupted" in rest
    arm = json.loads((tmp_path / "arm.json").read_text())
    assert arm["sent"] >= 15
    assert arm["last"] == arm["prev"]  # on halt the arm was re-sent where it stood: it holds there
    assert {"/obs/front", "/executor/action", "/runtime/queue_depth", "/episode/summary"} <= rrd_entities(
        tmp_path / "run.rrd")
