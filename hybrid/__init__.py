"""hybrid: hierarchical robot agents joining a VLM planner, a world model and a flow-matching executor."""

from hybrid.agent import AgentConfig, HybridAgent
from hybrid.interfaces import Executor, SubtaskPlanner, WorldModel
from hybrid.types import ActionChunk, Observation, PlanStep, StepRecord, Subgoal, Subtask, TierFault

__all__ = [
    "ActionChunk", "AgentConfig", "Executor", "HybridAgent", "Observation", "PlanStep", "StepRecord",
    "Subgoal", "Subtask", "SubtaskPlanner", "TierFault", "WorldModel",
]
__version__ = "0.1.0"
