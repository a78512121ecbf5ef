"""`hybrid eval executor --data DIR --model DIR --json`: open-loop agreement with the recorded expert.

For sampled frames the executor predicts a chunk from the frame's cameras, state and subtask, with the
end-of-subtask frame as its subgoal; the score is the cosine between the predicted and the expert's
displacement over the first ``horizon`` actions. At episode start the direction depends only on where
the target block is, which only the cameras show: there the score is also computed with the images of
another episode's frame. If the two are close, the executor is replaying an average trajectory instead
of looking (the failure of a visuomotor policy trained too briefly).

For an executor with a waypoint head, the median error of its pick and place xy against the recorded
grasp and release positions (`executors.flow.waypoints`) on the same frames, in centimetres (state in
metres), on the frames that are still ``--waypoint-min-distance`` away from them; the place error also on
the frames of stacking subtasks alone (a place on a block, 2 cm of tolerance, where a bowl has 8).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from hybrid.report import print_result


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hybrid eval executor", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="LeRobot dataset directory")
    p.add_argument("--model", default=None, help="executor directory (default: the shipped tabletop executor)")
    p.add_argument("--frames", type=int, default=200, help="frames to score, and as many episode starts")
    p.add_argument("--horizon", type=int, default=8, help="actions compared per chunk")
    p.add_argument("--start-window", type=int, nargs=2, default=(3, 12), metavar=("FIRST", "LAST"),
                   help="frames after an episode's start that count as 'episode start'")
    p.add_argument("--waypoint-min-distance", type=float, default=0.08,
                   help="score a waypoint only on frames at least this far from it (as the trainer supervises it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)

    from executors.flow import FlowExecutor
    from executors.flow.waypoints import pick_place_waypoints
    from hybrid.data import FEATURES, SubtaskIndex, decode_camera, numeric_column, open_dataset
    from hybrid.types import Observation, Subgoal, Subtask

    if args.model is None:
        from hybrid.config import compose

        args.model = compose("executor/flow_tabletop").executor.path
    executor = FlowExecutor.from_pretrained(args.model)
    cfg = executor.cfg
    dataset = open_dataset(args.data)
    index = SubtaskIndex.from_dataset(dataset)
    frames = {cam: decode_camera(dataset, f"observation.images.{cam}") for cam in cfg.cameras}
    state = numeric_column(dataset, FEATURES["state"])
    actions = numeric_column(dataset, FEATURES["action"])
    pos = slice(0, min(3, actions.shape[1]))  # the displacement part of the action (tabletop: dx, dy, dz)
    labels, labelled = pick_place_waypoints(state, actions, index.subtask_end,
                                            min_distance=args.waypoint_min_distance)

    def inputs(i: int, images_from: int):
        obs = Observation(images={c: frames[c][images_from] for c in cfg.cameras}, state=state[i],
                          instruction=index.instruction[i])
        goal = int(index.subtask_end[images_from])
        subgoal = Subgoal(images={c: frames[c][goal] for c in cfg.subgoal_cameras}, subtask=index.subtask_text[i])
        return obs, Subtask(text=index.subtask_text[i], index=0), subgoal

    def predicted(i: int, images_from: int) -> np.ndarray:
        executor.reset()
        return executor.act(*inputs(i, images_from)).actions

    def expert(i: int) -> np.ndarray:
        return actions[i:min(i + args.horizon, int(index.episode_end[i]) + 1), pos].sum(0)

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    anywhere, pick_cm, place_cm, stack_cm = [], [], [], []
    for i in rng.integers(0, len(index), args.frames):
        guess = executor.waypoints(*inputs(i, i))
        if guess is not None:
            for errors, xy in ((pick_cm, slice(0, 2)), (place_cm, slice(2, 4))):
                if labelled[i, xy].all():
                    errors.append(100 * float(np.linalg.norm(guess[xy] - labels[i, xy])))
            if labelled[i, 2:].all() and "bowl" not in index.subtask_text[i]:
                stack_cm.append(place_cm[-1])
        target = expert(i)
        if np.linalg.norm(target) > 0.02:  # a resting expert has no direction to agree with
            anywhere.append(cosine(predicted(i, i)[: args.horizon, pos].sum(0), target))
    offset = np.arange(len(index)) - index.episode_start
    starts = np.flatnonzero((offset >= args.start_window[0]) & (offset <= args.start_window[1]))
    own, other = [], []
    for i in rng.choice(starts, args.frames):
        target = expert(i)[:2]  # the horizontal direction, which only the block's position decides
        own.append(cosine(predicted(i, i)[: args.horizon, :2].sum(0), target))
        elsewhere = starts[index.episode[starts] != index.episode[i]]
        if len(elsewhere):  # a one-episode dataset has no other episode to borrow images from
            other.append(cosine(predicted(i, int(rng.choice(elsewhere)))[: args.horizon, :2].sum(0), target))
    result = {
        "eval": "executor", "direction_cosine": round(float(np.mean(anywhere)), 4),
        "start_cosine_own_images": round(float(np.mean(own)), 4),
        "start_cosine_other_images": round(float(np.mean(other)), 4) if other else None,
        "pick_error_cm_p50": round(float(np.median(pick_cm)), 2) if pick_cm else None,
        "place_error_cm_p50": round(float(np.median(place_cm)), 2) if place_cm else None,
        "place_error_cm_p50_stack": round(float(np.median(stack_cm)), 2) if stack_cm else None,
        "frames": len(anywhere), "starts": len(own), "horizon": args.horizon,
        "seconds": round(time.perf_counter() - t0, 1), "model": str(args.model), "data": str(args.data),
    }
    print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
