"""`hybrid eval trace=FILE`: one JSON line per event of every episode, to read why an agent failed.

Success rates say how often an agent fails, not why. The trace records, for each episode, the seed and the
reference plan, every change of the subtask under way with the planner's reason and the physics state at
that moment, every grasp and release (both from an env that can ``describe()`` itself, as the tabletop
does), what the executor's run-time rules did (a chunk's ``note``: a grasp check letting go of a block), and how the
episode ended.
A failed episode is then read line by line: the subtask that named a block already placed, the release
that missed, the step budget that ran out with a block in the gripper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class EpisodeTrace:
    """A runtime subscriber writing events to a new JSON-lines file (an older one at ``path`` is replaced: one
    file, one evaluation); `hybrid eval` sets ``env``, ``agent`` and ``context`` (agent, family, seed) before each
    episode. Lines are flushed as written, so a crashed evaluation keeps its trace."""

    def __init__(self, path: str | Path, env=None, agent=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        self.env, self.agent = env, agent
        self.context: dict[str, Any] = {}
        self._current: tuple[int, str] | None = None
        self._held: list[str] = []
        self._noted: float | None = None  # the start time of the last chunk whose note was written

    def _write(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps({"event": event, **self.context, **fields}, default=str) + "\n")
        self._file.flush()

    def _state(self) -> dict[str, Any]:
        describe = getattr(self.env, "describe", None)
        return {"state": describe()} if callable(describe) else {}

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        self._current, self._held, self._noted = None, [], None
        self._write("start", instruction=instruction, plan=info.get("subtasks"), **self._state())

    def on_step(self, record) -> None:
        scene = self._state()  # read once per step: the scene for a change of subtask and for the gripper
        subtask = record.current_subtask
        key = None if subtask is None else (subtask.index, subtask.text)
        if key != self._current:
            self._current = key
            reply = getattr(self.agent, "last_reply", None)
            self._write("subtask", step=record.step, index=None if subtask is None else subtask.index,
                        subtask=None if subtask is None else subtask.text,
                        reason=None if reply is None else reply.reason, **scene)
        if scene:  # grasps and releases: what the gripper holds, each time that changes
            held = sorted(b["colour"] for b in scene["state"]["blocks"] if b["held"])
            if held != self._held:
                self._write("grasp" if len(held) > len(self._held) else "release", step=record.step, held=held,
                            **scene)
                self._held = held
        chunk = record.chunk
        if chunk is not None and chunk.note and chunk.start_time != self._noted:
            self._write("executor", step=record.step, note=chunk.note)
            self._noted = chunk.start_time
        for fault in record.faults:
            self._write("fault", step=record.step, tier=fault.tier, kind=fault.kind, message=fault.message)

    def on_episode_end(self, result) -> None:
        self._write("end", status=result.status, success=result.success, steps=result.steps,
                    success_step=result.success_step, done_step=result.done_step,
                    subtask_success=result.info.get("subtask_success"), planned=result.subtasks, **self._state())

    def close(self) -> None:
        self._file.close()
