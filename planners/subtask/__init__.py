"""Subtask planners: a VLM (in process, or behind an OpenAI-compatible server) or a script decides
the subtask the robot should work on now.

Heavy backends (transformers, httpx) are imported only by the modules that use them.
"""

from planners.subtask.planner import VLMPlanner
from planners.subtask.replan import ReplanPolicy
from planners.subtask.reply import BadReply, PlannerFault, parse_reply
from planners.subtask.scripted import ScriptedPlanner

__all__ = ["BadReply", "PlannerFault", "ReplanPolicy", "ScriptedPlanner", "VLMPlanner", "parse_reply"]
