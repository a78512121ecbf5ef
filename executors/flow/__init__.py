"""Flow-matching action expert conditioned on observation + subgoal (+ subtask text + proprio)."""

from executors.flow.configuration_flow import FlowConfig
from executors.flow.modeling_flow import FlowExecutor, FlowModel

__all__ = ["FlowConfig", "FlowExecutor", "FlowModel"]
