"""`hybrid eval planner --data DIR --model DIR --json`: next-subtask and done-detection accuracy.

Frames of held-out episodes are turned into the runtime situations of `examples.py` (up to date,
starting afresh, one subtask behind); the planner answers each from the frame. A reply counts when
it means an accepted subtask (tabletop subtasks are compared in canonical form, so a paraphrase is
the same subtask); a `PlannerFault` counts as wrong. Done detection is scored on the frames of each
episode's last subtask (done or not yet) with the last subtask current.

With ``--affordance`` the planner weighs its candidate replies against the tabletop executor's affordance
(`planners/subtask/affordance.py`) as the agent does: the settings of configs/planner/tabletop.yaml and the
executor of configs/executor/flow_tabletop.yaml, which is shown the frame's cameras at its own size.

With ``--on-policy`` the data are the situations an agent's planner met in its own rollouts (`on_policy.py`):
each reply is scored against the simulator's label, split by what the label asks (keep, move on, done).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hybrid.report import print_result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hybrid eval planner", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="LeRobot dataset directory (held-out episodes)")
    p.add_argument("--model", default=None, help="planner model directory (default: the shipped tabletop planner)")
    p.add_argument("--examples", type=int, default=600, help="how many examples to score")
    p.add_argument("--done-tail-s", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gripper-index", type=int, default=None,
                   help="state entry of the gripper: subtasks finish at their last release (default: the "
                        "planner's own gripper_index; without one, the last --done-tail-s of each subtask)")
    p.add_argument("--exact", action="store_true", help="compare subtask text exactly, not canonically")
    p.add_argument("--affordance", action="store_true",
                   help="check candidate replies against the tabletop executor's affordance, as the agent does")
    p.add_argument("--checkpoints", default=None, help="a `hybrid train-demo` output: its planner, and with "
                   "--affordance its executor (default: the shipped ones)")
    p.add_argument("--executor-override", action="append", default=[], metavar="KEY=VALUE",
                   help="with --affordance, a Hydra override of configs/executor/flow_tabletop.yaml (repeatable), "
                        "e.g. executor.bowl_release_radius=0.08")
    p.add_argument("--on-policy", action="store_true",
                   help="--data holds situations from an agent's own rollouts (`hybrid record "
                        "planner_rollouts.enabled=true`): score the planner's reply to each against the sim's label")
    p.add_argument("--errors", default=None, help="write every wrong reply (situation, reply, target) to this "
                   "JSON-lines file, to read what the planner gets wrong")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/planner/tabletop.yaml, e.g. "
                   "planner.affordance.rule=product")
    args = p.parse_args(argv)

    from hybrid.config import compose, instantiate
    from hybrid.data import FEATURES, SubtaskIndex, numeric_column, open_dataset
    from hybrid.envs.tabletop.tasks import family_of
    from planners.subtask.examples import VARIANTS, ExampleBuilder
    from planners.subtask.frames import camera_key, decode_frames
    from planners.subtask.prompting import cameras
    from planners.subtask.reply import normalize
    from planners.subtask.tabletop_language import NAMINGS, canonical_subtask
    from planners.subtask.transformers_backend import load_settings, transformers_planner

    checkpoint_set = [] if args.checkpoints is None else [f"+checkpoints={args.checkpoints}"]  # tabletop_checkpoints
    config = compose("planner/tabletop", checkpoint_set + args.overrides).planner
    args.model = args.model or config.model
    # the success detector judges "done" as in the agent (configs/planner/tabletop.yaml's success)
    planner = transformers_planner(args.model, affordance=config.affordance if args.affordance else None,
                                   success=config.get("success"))
    canon = (lambda s: normalize(s)) if args.exact else canonical_subtask
    dataset = open_dataset(args.data)
    states = numeric_column(dataset, FEATURES["state"])
    names, size = set(cameras(planner.prompt)), planner.prompt.image_size or 224
    if planner.prompt.release_camera is not None:
        if args.on_policy:
            raise SystemExit("--on-policy: the recorded situations hold no release view, and this planner is shown "
                             f"{planner.prompt.release_camera!r} at the last release")
        names.add(planner.prompt.release_camera)
    if planner.detector is not None:
        names |= set(planner.detector.cfg.cameras)
    executor = None
    if args.affordance:  # the executor's cameras at its size; the planner resizes its own as at run time
        executor = instantiate(compose("executor/flow_tabletop", checkpoint_set + args.executor_override).executor)
        planner.use_affordance(executor.affordance)
        names, size = names | set(executor.cfg.cameras), executor.cfg.image_size
        if executor.colour_reader is not None:  # it judges a held block (AffordanceCheck.while_holding)
            names.add(executor.colour_reader.cfg.camera)
    frames = {c: decode_frames(dataset, camera_key(c), size) for c in sorted(names)}
    errors: list[dict] = []  # every wrong reply, for --errors
    if args.on_policy:
        result = score_situations(planner, dataset, frames, states, canon, args.examples, errors)
        if args.errors:
            write_jsonl(args.errors, errors)
        print_result({**result, "model": str(args.model), "data": str(args.data), "affordance": bool(args.affordance),
                      "overrides": list(args.overrides)}, args.json)
        return 0
    index = SubtaskIndex.from_dataset(dataset)
    grip = planner.prompt.gripper_index if args.gripper_index is None else args.gripper_index
    # The planner's own naming of same-coloured blocks (planner.json; `train.py`'s ``ordinals``).
    plan_form = NAMINGS[load_settings(args.model).get("ordinals", "scene")].rewrite
    builder = ExampleBuilder(index, canon, args.done_tail_s, None if grip is None else states[:, grip],
                             planner.prompt.gripper_closed, plan_form)

    rng = np.random.default_rng(args.seed)
    last = np.flatnonzero([index.is_last_subtask(i) for i in range(len(index))])
    done_hits = done_n = faults = 0
    by_variant = {v: [0, 0] for v in VARIANTS}  # next-subtask hits, examples
    as_planned = 0  # hits that are the recorded plan's own next subtask (where any remaining placement counts)
    by_family: dict[str, list[int]] = {}  # the same per task family (tabletop instructions; else "other")
    tp = fp = fn = 0
    # "done" said while the episode is not finished, per situation, and over the questions asked after a release
    # under the subtask under way (where the loop asks, and a premature "done" ends the episode)
    premature = {v: [0, 0] for v in VARIANTS}
    premature_after_release = [0, 0]
    latencies = []
    aimed: dict[int, np.ndarray | None] = {}  # release frame -> the place the executor steers to from afar
    for j in range(args.examples):
        # Alternate next-subtask examples (any frame) and done-detection examples (last-subtask frames).
        scoring_done = j % 3 == 2
        if scoring_done:
            frame, variant = int(rng.choice(last)), "current"
        else:
            frame, variant = int(rng.integers(len(index))), VARIANTS[int(rng.integers(3))]
        ex = builder.example(frame, variant)
        if ex is None or (not scoring_done and ex.target.done):
            continue
        if executor is not None:  # where the episode let go so far, as the runtime's executor remembers
            released = builder.released_under(frame)
            aims = None  # where it steered from afar, for a bowl subtask read finished by where it let go
            if executor.bowl_release_radius is not None:
                aims = [aimed_place(executor, text, r, frames, states, index, aimed) for text, r in released]
            executor.remember_releases([(text, states[r]) for text, r in released], aims)
        step, ms = ask(planner, ex, frames, states)
        faults += step is None
        latencies.append(ms)
        said_done = step is not None and step.done
        if scoring_done:
            done_n += 1
            done_hits += said_done == ex.target.done
            tp += said_done and ex.target.done
            fp += said_done and not ex.target.done
            fn += (not said_done) and ex.target.done
        else:
            hit = step is not None and not step.done and canon(step.subtask) in ex.accepted
            as_planned += hit and canon(step.subtask) == ex.target.subtask
            for counts in [premature[variant]] + ([premature_after_release] if ex.releases else []):
                counts[0] += said_done
                counts[1] += 1
            for counts in (by_variant[variant], by_family.setdefault(family_of(ex.instruction) or "other", [0, 0])):
                counts[0] += hit
                counts[1] += 1
        if (said_done == ex.target.done) if scoring_done else hit:
            continue
        errors.append({**error_row(ex, step), "situation": variant, "scoring": "done" if scoring_done else "next"})
    next_hits, next_n = (sum(counts) for counts in zip(*by_variant.values()))
    result = {
        "next_subtask_accuracy": round(next_hits / max(next_n, 1), 4),
        # up to date / starting afresh / one subtask behind (the image must show the current one finished)
        "next_subtask_accuracy_by_situation": {v: round(h / max(n, 1), 4) for v, (h, n) in by_variant.items()},
        "next_subtask_accuracy_by_family": {f: round(h / n, 4) for f, (h, n) in sorted(by_family.items())},
        # the recorded plan's order only (a `sort` plan goes left to right in the front image)
        "next_subtask_accuracy_as_planned": round(as_planned / max(next_n, 1), 4),
        "done_accuracy": round(done_hits / max(done_n, 1), 4),
        "done_precision": round(tp / max(tp + fp, 1), 4),
        "done_recall": round(tp / max(tp + fn, 1), 4),
        "premature_done": round(sum(d for d, _ in premature.values()) / max(next_n, 1), 4),
        "premature_done_by_situation": {v: round(d / max(n, 1), 4) for v, (d, n) in premature.items()},
        "premature_done_after_release": round(premature_after_release[0] / max(premature_after_release[1], 1), 4),
        "next_examples": next_n, "done_examples": done_n, "faults": faults,
        "episodes": len(index.plans), "latency_ms_p50": round(float(np.median(latencies)), 2) if latencies else None,
        "model": str(args.model), "data": str(args.data), "affordance": bool(args.affordance),
        "overrides": list(args.overrides),
    }
    if args.errors:
        write_jsonl(args.errors, errors)
    print_result(result, args.json)
    return 0


def write_jsonl(path: str, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def error_row(ex, step) -> dict:
    """A wrong reply ``step`` (None: a fault) to example ``ex``, as one line of --errors."""
    return {"frame": ex.frame, "instruction": ex.instruction, "done": ex.done, "current": ex.current,
            "releases": ex.releases, "target": "<done>" if ex.target.done else ex.target.subtask,
            "accepted": sorted(ex.accepted), "reply": None if step is None else "<done>" if step.done else step.subtask}


def aimed_place(executor, text: str, release: int, frames: dict, states: np.ndarray, index, cache: dict):
    """For a release under a bowl subtask, the place the executor finds for it from afar, as it would have steered
    there (`FlowExecutor.aimed_place`): read on the last frame before ``release`` with the effector at least the lock's
    distance (`FlowConfig.place_lock_distance`) away from where it let go; None for other subtasks. Cached by frame."""
    from executors.flow.subtask_colours import in_bowl
    from hybrid.types import Observation

    if release not in cache:
        cache[release] = None
        if in_bowl(text):
            far, start = max(executor.cfg.place_lock_distance, 0.01), int(index.episode_start[release])
            f = release
            while f > start and np.linalg.norm(states[f, :2] - states[release, :2]) < far:
                f -= 1
            obs = Observation(images={c: v[f] for c, v in frames.items()}, state=states[f])
            cache[release] = executor.aimed_place(obs, text)
    return cache[release]


MAX_CONFIRMATIONS = 10  # plan calls per example at most, while a change waits for confirmation


def ask(planner, ex, frames: dict, states) -> tuple:
    """The planner's reply to example ``ex``, taken up as a runtime would be in it (None for a `PlannerFault`), and
    the milliseconds its first plan call took."""
    from hybrid.types import Observation, Subtask
    from planners.subtask.examples import release_view_frame
    from planners.subtask.reply import PlannerFault

    camera = planner.prompt.release_camera
    shown = None if camera is None else release_view_frame(ex)
    planner.resume(ex.current, ex.releases, states[ex.frame], None if shown is None else frames[camera][shown])
    obs = Observation(images={c: f[ex.frame] for c, f in frames.items()}, state=states[ex.frame])
    history = [Subtask(text=s, index=k, status="done") for k, s in enumerate(ex.done)]
    t, ms = time.perf_counter(), None
    try:
        # a change that waits for more replies in a row (`ReplanPolicy`) is asked again, as the runtime's next calls
        # would ask it while the scene stays as in this frame
        for _ in range(MAX_CONFIRMATIONS):
            step = planner.plan(obs, ex.instruction, history)
            ms = (time.perf_counter() - t) * 1e3 if ms is None else ms
            if not getattr(planner, "pending", False):
                break
    except PlannerFault:
        step = None
    return step, (time.perf_counter() - t) * 1e3 if ms is None else ms


def score_situations(planner, dataset, frames: dict, states, canon, limit: int, errors: list | None = None) -> dict:
    """Accuracy on an on-policy dataset: the reply to each recorded situation against the simulator's label, over
    all of them and split by what the label asks (keep the subtask under way, move on to another, say done).
    Wrong replies are appended to ``errors``."""
    from planners.subtask.on_policy import examples

    situations = examples(dataset)
    if limit and len(situations) > limit:  # an even spread over the recording
        situations = [situations[i] for i in np.linspace(0, len(situations) - 1, limit).round().astype(int)]
    by_kind: dict[str, list[int]] = {}
    faults = 0
    for ex in situations:
        step, _ = ask(planner, ex, frames, states)
        faults += step is None
        if ex.target.done:
            kind, hit = "done", step is not None and step.done
        else:
            kind = "keep" if ex.target.subtask == ex.current else "move_on"
            hit = step is not None and not step.done and canon(step.subtask) in ex.accepted
        counts = by_kind.setdefault(kind, [0, 0])
        counts[0] += hit
        counts[1] += 1
        if not hit and errors is not None:
            errors.append({**error_row(ex, step), "label": kind})
    hits, n = (sum(c) for c in zip(*by_kind.values())) if by_kind else (0, 0)
    return {"on_policy_accuracy": round(hits / max(n, 1), 4),
            "on_policy_accuracy_by_label": {k: round(h / c, 4) for k, (h, c) in sorted(by_kind.items())},
            "on_policy_examples": {k: c for k, (_, c) in sorted(by_kind.items())}, "faults": faults}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
