"""On-policy planner data (DAgger): the situations a planner meets in its own closed loop, answered by the sim.

A planner trained on expert recordings is asked, in the loop, about states the expert never shows it: a history
that holds a subtask the executor never finished, a block let go beside its bowl, the executor's own odd grips
and hovers. `hybrid record planner_rollouts.enabled=true` rolls a whole agent out and, at every call where its
planner asks the model (`VLMPlanner.on_ask`), writes the frame, the robot state and what the model was told
(finished subtasks, the one under way, releases since it began) with the reply the simulator's success
predicates call right (`label`). `hybrid train planner=tabletop on_policy=DIR on_policy_fraction=F` mixes them
into training (`examples`), as DAgger aggregates the learner's own states with the expert's.

Labels are in the tabletop planner's language: canonical subtasks with same-coloured blocks named from the
history ("the", "another", "the last"; `tabletop_language.history_ordinals`).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np

from hybrid.types import PlanStep
from planners.subtask.examples import Example
from planners.subtask.tabletop_language import HISTORY_ORDINALS, canonical_subtask

# The dataset's per-frame columns besides the cameras, `observation.state` and LeRobot's `task`.
COLUMNS = {
    "done": "planner.done",  # JSON list: the finished subtasks the model was shown
    "current": "planner.current",  # the subtask under way ("" for none)
    "releases": "planner.releases",  # releases of the gripper since it began
    "target": "planner.target",  # the reply the simulator calls right ("" for "done")
    "accepted": "planner.accepted",  # JSON list: every reply that counts as right
}
# With a planner shown a release view (`PromptConfig.release_camera`): that view as the model was shown it
# (black before any release under the subtask under way), and whether the subtask under way is done in the sim.
RELEASE_VIEW = "observation.images.release_view"
CURRENT_DONE = "planner.current_done"
_PLACE = re.compile(r"put (?:the other|the last|another|the|a) ([a-z]+) block in the ([a-z]+) bowl")


def _key(text: str) -> tuple[str, ...]:
    """What a subtask does, whatever its ordinal: ("place", block colour, bowl colour) or ("stack", text)."""
    m = _PLACE.fullmatch(text)
    return ("place", *m.groups()) if m else ("stack", text)


def _named(key: tuple[str, ...], history: list[str]) -> str:
    """``key``'s subtask named after ``history``: the k-th block of a colour for a bowl gets the k-th ordinal."""
    if key[0] != "place":
        return key[1]
    k = min(sum(_key(s) == key for s in history), len(HISTORY_ORDINALS) - 1)
    return f"put {HISTORY_ORDINALS[k]} {key[1]} block in the {key[2]} bowl"


def label(plan: list[str], finished: list[bool], done: list[str], current: str | None
          ) -> tuple[PlanStep, frozenset[str]]:
    """The right reply to a planner told ``done`` and ``current``, and every reply that counts as right.

    ``plan``: the episode's reference plan (canonical); ``finished``: the success predicate of each of its
    subtasks now. The subtask under way is right while what it names is still to be done and it has not
    itself been done (more blocks of its kind placed than the history counts); then the first unfinished
    subtask of the plan, or any unfinished one when the rest are all placements in bowls (order-free).
    """
    if len(plan) != len(finished):
        raise ValueError(f"label: {len(plan)} subtasks in the plan, {len(finished)} success flags")
    plan = [canonical_subtask(s) for s in plan]
    keys = [_key(s) for s in plan]
    left = Counter(k for k, ok in zip(keys, finished) if not ok)
    placed = Counter(k for k, ok in zip(keys, finished) if ok)
    if current is not None:
        key = _key(current)
        told = sum(_key(s) == key for s in done)
        if left[key] and placed[key] <= told:  # still to be done, and this one not done yet
            return PlanStep(subtask=current), frozenset({current})
    if not left:
        return PlanStep(done=True), frozenset()
    history = done + ([current] if current is not None else [])  # the runtime files the current one as done
    pending = [k for k, ok in zip(keys, finished) if not ok]
    target = _named(pending[0], history)
    order_free = all(k[0] == "place" for k in pending)
    accepted = {_named(k, history) for k in pending} if order_free else {target}
    return PlanStep(subtask=target), frozenset(accepted)


def current_done(plan: list[str], finished: list[bool], done: list[str], current: str | None) -> bool:
    """Whether the subtask under way is done in the sim: more blocks of its kind placed than the history counts
    (one the plan does not hold never is)."""
    if current is None:
        return False
    key = _key(canonical_subtask(current))
    placed = sum(ok for s, ok in zip(plan, finished) if _key(canonical_subtask(s)) == key)
    return placed > sum(_key(s) == key for s in done)


def situation_frame(obs, instruction: str, done: list[str], current: str | None, releases: int,
                    target: PlanStep, accepted: frozenset[str], release_view: np.ndarray | None = None,
                    finished: bool = False) -> dict:
    """One LeRobot frame of an on-policy dataset (`COLUMNS`; with ``release_view``, `RELEASE_VIEW` and
    `CURRENT_DONE`, ``finished``: `current_done`)."""
    frame = {f"observation.images.{cam}": img for cam, img in obs.images.items()}
    if release_view is not None:
        frame[RELEASE_VIEW] = release_view
        frame[CURRENT_DONE] = np.array([finished], np.int64)
    frame["observation.state"] = np.asarray(obs.state, np.float32)
    frame[COLUMNS["done"]] = json.dumps(list(done))
    frame[COLUMNS["current"]] = current or ""
    frame[COLUMNS["releases"]] = np.array([releases], np.int64)
    frame[COLUMNS["target"]] = "" if target.done else target.subtask
    frame[COLUMNS["accepted"]] = json.dumps(sorted(accepted))
    frame["task"] = instruction
    return frame


def features(images: dict[str, tuple[int, int, int]], state_dim: int, video: bool = True,
             release_view: tuple[int, int, int] | None = None) -> dict:
    """The LeRobot feature spec of an on-policy dataset: ``images`` maps each camera to its (H, W, 3); with
    ``release_view`` (its shape) the planner's release view too (`RELEASE_VIEW`)."""
    keys = {f"observation.images.{cam}": shape for cam, shape in images.items()}
    if release_view is not None:
        keys[RELEASE_VIEW] = release_view
    spec = {key: {"dtype": "video" if video else "image", "shape": tuple(shape),
                  "names": ["height", "width", "channels"]} for key, shape in keys.items()}
    if release_view is not None:
        spec[CURRENT_DONE] = {"dtype": "int64", "shape": (1,), "names": None}
    spec["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
    for name in ("done", "current", "target", "accepted"):
        spec[COLUMNS[name]] = {"dtype": "string", "shape": (1,), "names": None}
    spec[COLUMNS["releases"]] = {"dtype": "int64", "shape": (1,), "names": None}
    return spec


def examples(dataset, offset: int = 0) -> list[Example]:
    """Every frame of an on-policy dataset as a training `Example`; frame numbers shifted by ``offset`` (where
    its frames start in the trainer's frame array)."""
    columns = [COLUMNS[n] for n in ("done", "current", "releases", "target", "accepted")]
    missing = [c for c in columns if c not in dataset.features]
    if missing:
        raise ValueError(f"{dataset.root}: no {', '.join(missing)}: not a recording of a planner's own situations "
                         f"(`hybrid record planner_rollouts.enabled=true`)")
    viewed = RELEASE_VIEW in dataset.features
    table = dataset.hf_dataset.with_format(None).select_columns(
        ["index", "task_index", *columns, *([CURRENT_DONE] if viewed else [])])[:]
    tasks = dataset.meta.tasks
    task_text = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"])}
    out = []
    for row, i in enumerate(table["index"]):
        target = str(table[COLUMNS["target"]][row])
        releases = np.asarray(table[COLUMNS["releases"]][row]).reshape(-1)[0]
        current = str(table[COLUMNS["current"]][row]) or None
        released = bool(current and releases)
        out.append(Example(
            frame=offset + int(i),
            instruction=task_text[int(table["task_index"][row])],
            done=list(json.loads(table[COLUMNS["done"]][row])),
            current=current,
            target=PlanStep(subtask=target) if target else PlanStep(done=True),
            accepted=frozenset(json.loads(table[COLUMNS["accepted"]][row])),
            releases=int(releases) if current else 0,
            # the release view is this frame's own (`RELEASE_VIEW`); it placed its block when the sim says the
            # subtask under way is done (`CURRENT_DONE`)
            release_frame=offset + int(i) if viewed and released else None,
            release_placed=bool(np.asarray(table[CURRENT_DONE][row]).reshape(-1)[0]) if viewed and released else None,
        ))
    return out
