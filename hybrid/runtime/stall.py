"""The runtime's stall signal for the planner's replan policy: how long the robot state has not moved."""

from __future__ import annotations

import numpy as np


class StallClock:
    """Seconds since the robot state last moved by more than ``tolerance`` in any entry (its units: metres and
    a gripper command on the tabletop). A robot that holds still on a subtask may need another one."""

    def __init__(self, tolerance: float = 1e-3):
        self.tolerance = tolerance
        self._ref: np.ndarray | None = None
        self._since = 0.0

    def update(self, state: np.ndarray | None, now: float) -> float:
        """Fold in the state observed at ``now``; the seconds it has been still (0 without a state)."""
        if state is None:
            return 0.0
        state = np.asarray(state, np.float64)
        if self._ref is None or self._ref.shape != state.shape or np.max(np.abs(state - self._ref)) > self.tolerance:
            self._ref, self._since = state.copy(), now
        return now - self._since
