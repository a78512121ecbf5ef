"""The action queue between the executor thread and the control loop, indexed by control step.

Every queued action belongs to one control step. A chunk conditioned on the observation of step ``s``
has its i-th action meant for step ``s + i``; when it lands at step ``now`` the actions for steps
before ``now`` have elapsed and are dropped (a chunk whose start time has passed). The rest are
merged in one of three ways:

- ``rtc``: replace the queued future with the new chunk. With a prefix-conditioned executor the new
  chunk already starts with the actions committed while it was computed, so the seam is continuous.
- ``replace``: the same replacement, for executors that take no prefix (the seam may jump).
- ``ensemble``: temporal ensembling (ACT): every step's action is a weighted mean of all predictions
  made for it, older predictions weighted ``exp(-decay * k)`` for the k-th one.

Thread-safe: the executor thread merges, the control loop pops, both under one lock.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

BlendMode = Literal["rtc", "replace", "ensemble"]


@dataclass
class MergeReport:
    """What one merge did: actions dropped as elapsed, actions queued, and the seam it made."""

    dropped: int
    queued: int
    seam: float | None  # max |first new action - last committed action|; None when nothing was committed yet


class ChunkQueue:
    def __init__(self, mode: BlendMode = "rtc", ensemble_decay: float = 0.01, history: int = 64):
        self.mode, self.decay = mode, float(ensemble_decay)
        self._lock = threading.Lock()
        self._next = 0  # the control step the next pop serves
        self._actions: list[np.ndarray] = []  # _actions[i] serves step _next + i
        self._weights: list[float] = []  # ensembling: total weight folded into _actions[i]
        self._counts: list[int] = []  # ensembling: predictions folded into _actions[i]
        self._sent: deque[tuple[int, np.ndarray]] = deque(maxlen=history)  # (step, action the robot got)

    @property
    def next_step(self) -> int:
        return self._next

    @property
    def last_sent(self) -> np.ndarray | None:
        return self._sent[-1][1] if self._sent else None

    def depth(self) -> int:
        return len(self._actions)

    def pop(self) -> np.ndarray | None:
        """The action planned for the current control step (None when the queue ran dry); advances one step."""
        with self._lock:
            self._next += 1
            return self._take()

    def skip(self, n: int) -> None:
        """Control slots that passed without a tick: their actions have elapsed."""
        with self._lock:
            for _ in range(n):
                self._next += 1
                self._take()
                if self._sent:  # the robot kept its last command through the missed slot
                    self._sent.append((self._next - 1, self._sent[-1][1]))

    def sent(self, action: np.ndarray) -> None:
        """What actually reached the robot at the step just popped (after safety, or a hold)."""
        with self._lock:
            self._sent.append((self._next - 1, action))

    def committed(self, from_step: int, n: int) -> np.ndarray | None:
        """Up to ``n`` actions for steps ``from_step, from_step + 1, ...``: those already sent, then those
        queued. They are what the robot does while a chunk conditioned on step ``from_step`` is computed."""
        with self._lock:
            out = [a for step, a in self._sent if step >= from_step]
            out += self._actions[: max(0, n - len(out))]
            return np.stack(out[:n]) if n > 0 and out else None

    def clear(self) -> None:
        """Drop every queued action (after a fault the queued future is no longer trusted)."""
        with self._lock:
            self._actions, self._weights, self._counts = [], [], []

    def merge(self, actions: np.ndarray, start_step: int) -> MergeReport:
        """Fold a chunk whose first action serves ``start_step`` into the queue."""
        with self._lock:
            elapsed = max(0, self._next - start_step)
            fresh = list(np.asarray(actions, np.float32)[elapsed:])
            if self.mode == "ensemble":
                self._ensemble(fresh)
            else:
                self._actions, self._weights, self._counts = fresh, [], []
            last = self._sent[-1][1] if self._sent else None
            seam = float(np.max(np.abs(self._actions[0] - last))) if last is not None and self._actions else None
            return MergeReport(dropped=min(elapsed, len(actions)), queued=len(fresh), seam=seam)

    def _take(self) -> np.ndarray | None:
        if not self._actions:
            return None
        if self._weights:
            self._weights.pop(0)
            self._counts.pop(0)
        return self._actions.pop(0)

    def _ensemble(self, fresh: list[np.ndarray]) -> None:
        if not self._weights:  # a queue filled by another mode, or empty: each entry is one prediction
            self._weights, self._counts = [1.0] * len(self._actions), [1] * len(self._actions)
        for i, action in enumerate(fresh):
            if i < len(self._actions):
                w = math.exp(-self.decay * self._counts[i])
                total = self._weights[i] + w
                self._actions[i] = (self._actions[i] * self._weights[i] + action * w) / total
                self._weights[i], self._counts[i] = total, self._counts[i] + 1
            else:
                self._actions.append(action)
                self._weights.append(1.0)
                self._counts.append(1)
