"""Every implementation of a tier interface passes the same contract (as LeRobot tests every policy).

Implementations register a factory here: (name, factory) where the factory takes tmp_path so a real
model can be built tiny, saved and loaded back before it is checked.
"""

import numpy as np
import pytest

from hybrid.testing import MockExecutor, MockPlanner, MockWorldModel, fake_observation
from hybrid.testing.contract import check_executor, check_planner, check_world_model

OBS = fake_observation(cameras=("front", "wrist"), size=32, state_dim=4)



def scripted_planner(tmp):
    from planners.subtask import ScriptedPlanner

    return ScriptedPlanner(["pick up the red block", "put it in the blue bowl"])


def saved_world_model(builder_name: str):
    def build(tmp):
        import test_world_model_backends as wm_tests

        from planners.subgoal import SubgoalWorldModel

        builder, overrides = wm_tests.BACKENDS[builder_name]
        builder().save_pretrained(str(tmp / "pipe"))
        return SubgoalWorldModel.from_pretrained(tmp / "pipe", device="cpu", **overrides)

    return build


def saved_flow_executor(tmp):
    from test_executor_model import tiny_model

    from executors.flow import FlowExecutor

    tiny_model().save_pretrained(tmp / "flow")  # 2 cameras, state 4, actions 3
    return FlowExecutor.from_pretrained(tmp / "flow"), 3


PLANNERS = {"mock": lambda tmp: MockPlanner(["pick up the red block"]), "scripted": scripted_planner}
WORLD_MODELS = {"mock": lambda tmp: MockWorldModel(), "mock_fixed_image": lambda tmp: MockWorldModel(
    image=np.zeros((32, 32, 3), np.uint8)), "tabletop": saved_world_model("tabletop"),
    "instruct_pix2pix": saved_world_model("instruct_pix2pix")}
EXECUTORS = {"mock": lambda tmp: (MockExecutor(horizon=5, action_dim=4), 4), "flow": saved_flow_executor}


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_planner_contract(name, tmp_path):
    check_planner(PLANNERS[name](tmp_path), OBS)


@pytest.mark.parametrize("name", sorted(WORLD_MODELS))
def test_world_model_contract(name, tmp_path):
    check_world_model(WORLD_MODELS[name](tmp_path), OBS)


@pytest.mark.parametrize("name", sorted(EXECUTORS))
def test_executor_contract(name, tmp_path):
    executor, action_dim = EXECUTORS[name](tmp_path)
    check_executor(executor, OBS, action_dim)


def test_contract_catches_a_wrong_shape_subgoal():
    with pytest.raises(AssertionError, match="subgoal\\['front'\\]"):
        check_world_model(MockWorldModel(image=np.zeros((8, 8, 3), np.uint8)), OBS)
