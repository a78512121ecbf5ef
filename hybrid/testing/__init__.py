"""Test doubles for the three tiers and a tiny dataset builder.

For tests of the runtime and for users who test their own modules against the others. They are
deliberately simple and never stand in for a real tier in a demo.
"""

from hybrid.testing.doubles import FailureMode, MockExecutor, MockPlanner, MockWorldModel, fake_observation
from hybrid.testing.envs import PointEnv

__all__ = ["FailureMode", "MockExecutor", "MockPlanner", "MockWorldModel", "PointEnv", "fake_observation"]
