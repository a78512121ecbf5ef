"""Which subgoal the executor acts on, in the async runtime: the stale-subgoal rule in one place.

The world model lags the planner. A subgoal is valid for the subtask it names; one that lands after
the planner moved on is stale and dropped, unless it is for the subtask known to come next (a prefetch,
kept until that subtask starts). Between a new subtask and its subgoal the executor keeps the last valid
subgoal (``keep_last``) or acts language-only (``none``).
"""

from __future__ import annotations

import threading
from typing import Literal

from hybrid.types import Subgoal, Subtask

SubgoalGap = Literal["keep_last", "none"]


class SubgoalBoard:
    def __init__(self, gap: SubgoalGap = "keep_last"):
        self.gap = gap
        self._lock = threading.Lock()
        self._by_subtask: dict[str, Subgoal] = {}
        self._last: Subgoal | None = None  # the last subgoal handed to the executor

    def has(self, subtask: str) -> bool:
        return subtask in self._by_subtask

    def offer(self, subgoal: Subgoal, current: Subtask | None, upcoming: str | None) -> Literal["current", "prefetch", "stale"]:
        """Keep ``subgoal`` if it serves the current or the next subtask; say which (or that it is stale)."""
        if current is not None and subgoal.subtask == current.text:
            verdict = "current"
        elif upcoming is not None and subgoal.subtask == upcoming:
            verdict = "prefetch"
        else:
            return "stale"
        with self._lock:
            keep = {s for s in (None if current is None else current.text, upcoming) if s}
            self._by_subtask = {k: v for k, v in self._by_subtask.items() if k in keep}
            self._by_subtask[subgoal.subtask] = subgoal
        return verdict

    def for_executor(self, subtask: Subtask) -> Subgoal | None:
        with self._lock:
            own = self._by_subtask.get(subtask.text)
            if own is not None:
                self._last = own
                return own
            return self._last if self.gap == "keep_last" else None
