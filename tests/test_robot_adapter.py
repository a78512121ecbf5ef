"""A LeRobot `Robot` (no hardware: a subclass defined here, with a registered config) through the async path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from lerobot.robots import Robot, RobotConfig
from runtime_support import rrd_entities

from hybrid.commands.run import execute
from hybrid.config import compose
from hybrid.runtime.robot_adapter import RobotEnv, RobotMapping, make_robot

JOINTS = ["shoulder_pan.pos", "elbow_flex.pos", "gripper.pos"]


@RobotConfig.register_subclass("hybrid_test_arm")
@dataclass(kw_only=True)
class FakeArmConfig(RobotConfig):
    start: float = 10.0
    interrupt_at: int | None = None  # raise KeyboardInterrupt from get_observation at this call
    report: str | None = None  # where disconnect() writes what the arm went through


class FakeArm(Robot):
    """A position-controlled arm simulated in memory: joints move halfway to the commanded target per action."""

    config_class = FakeArmConfig
    name = "hybrid_test_arm"

    def __init__(self, config: FakeArmConfig):
        super().__init__(config)
        self.config = config
        self.joints = np.full(len(JOINTS), config.start, np.float32)
        self.connected = False
        self.sent: list[dict[str, float]] = []
        self.observations = 0
        self.disconnects = 0

    @property
    def observation_features(self) -> dict:
        return {**{j: float for j in JOINTS}, "wrist_cam": (24, 32, 3)}

    @property
    def action_features(self) -> dict:
        return {j: float for j in JOINTS}

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self, calibrate: bool = True) -> None:
        self.connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict:
        assert self.connected, "get_observation on a disconnected arm"
        self.observations += 1
        if self.config.interrupt_at is not None and self.observations == self.config.interrupt_at:
            raise KeyboardInterrupt
        img = np.zeros((24, 32, 3), np.uint8)
        img[..., 0] = int(self.joints[0]) % 256
        return {**{j: float(v) for j, v in zip(JOINTS, self.joints)}, "wrist_cam": img}

    def send_action(self, action: dict) -> dict:
        assert self.connected, "send_action on a disconnected arm"
        target = np.array([action[j] for j in JOINTS], np.float32)
        self.joints += 0.5 * (target - self.joints)
        self.sent.append(dict(action))
        return action

    def disconnect(self) -> None:
        self.connected = False
        self.disconnects += 1
        if self.config.report:
            Path(self.config.report).write_text(json.dumps({"sent": self.sent, "joints": self.joints.tolist(),
                                                            "disconnects": self.disconnects}))


MAPPING = {"cameras": {"wrist_cam": "front"}, "state_keys": JOINTS, "action_keys": JOINTS, "low": -50.0, "high": 50.0,
           "instruction": "wave"}


def arm(tmp_path, **kw) -> FakeArm:
    return make_robot({"type": "hybrid_test_arm", "calibration_dir": str(tmp_path / "calib"), **kw})


def test_make_robot_builds_a_registered_lerobot_robot(tmp_path):
    robot = arm(tmp_path, start=3.0)
    assert isinstance(robot, FakeArm) and isinstance(robot, Robot) and robot.config.start == 3.0


def test_mapping_gives_cameras_state_and_hold_at_current_position(tmp_path):
    env = RobotEnv(arm(tmp_path), RobotMapping(**MAPPING))
    obs, info = env.reset()
    assert env.robot.is_connected and info["instruction"] == "wave"
    assert list(obs.images) == ["front"] and obs.images["front"].shape == (24, 32, 3)
    assert obs.state.tolist() == [10.0, 10.0, 10.0]
    env.send(np.array([20.0, 0.0, 10.0], np.float32))
    env.observe()
    assert env.hold_action().tolist() == [15.0, 5.0, 10.0]  # where the arm is now
    env.halt()
    assert env.robot.sent[-1] == dict(zip(JOINTS, [15.0, 5.0, 10.0]))
    env.close()
    assert not env.robot.is_connected


def test_mapping_rejects_keys_the_robot_does_not_take(tmp_path):
    with pytest.raises(ValueError, match="not actions of"):
        RobotEnv(arm(tmp_path), RobotMapping(**{**MAPPING, "action_keys": ["shoulder_pan.pos", "wrist_roll.pos"]}))


def robot_overrides(tmp_path, *extra):
    return ["runtime=async", "env=lerobot_robot", "env.robot.type=hybrid_test_arm", "~env.robot.port",
            "~env.robot.cameras", f"+env.robot.calibration_dir={tmp_path / 'calib'}",
            f"+env.robot.report={tmp_path / 'report.json'}",
            "~env.mapping.cameras", "+env.mapping.cameras={wrist_cam: front}", f"env.mapping.state_keys=[{','.join(JOINTS)}]",
            f"env.mapping.action_keys=[{','.join(JOINTS)}]", "env.mapping.low=-50", "env.mapping.high=50",
            "executor.action_dim=3", "planner.calls_per_subtask=1000", "runtime.loop.control_hz=50", "runtime.loop.planner_hz=20",
            "viz=save", f"viz.path={tmp_path / 'run.rrd'}", "+viz.position_dims=null", *extra]


def test_hybrid_run_drives_a_lerobot_robot_through_the_async_runtime(tmp_path):
    code = execute(compose("run", robot_overrides(tmp_path, "runtime.loop.max_steps=40")))
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0 and report["disconnects"] == 1
    # One action per tick, plus the hold on halt; a tick woken a whole period late skips the slots it missed (the
    # robot keeps its last command through them): a loaded machine skipped 5 of 40 and sent 36.
    assert len(report["sent"]) >= 30
    assert all(set(a) == set(JOINTS) for a in report["sent"])
    assert {"/obs/front", "/runtime/queue_depth", "/episode/summary"} <= rrd_entities(tmp_path / "run.rrd")


def test_keyboard_interrupt_holds_disconnects_and_keeps_the_recording(tmp_path):
    code = execute(compose("run", robot_overrides(tmp_path, "runtime.loop.max_steps=1000",
                                                  "+env.robot.interrupt_at=30")))
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 130 and report["disconnects"] == 1
    assert 25 <= len(report["sent"]) <= 31
    assert list(report["sent"][-1].values()) == pytest.approx(report["joints"], abs=1e-4)  # last command: hold here
    assert {"/obs/front", "/executor/action", "/episode/summary"} <= rrd_entities(tmp_path / "run.rrd")
