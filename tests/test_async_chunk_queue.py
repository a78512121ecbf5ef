"""The chunk queue and the subgoal board in isolation: merging, seams, elapsed actions, stale subgoals."""

import numpy as np
import pytest

from hybrid.runtime.chunk_queue import ChunkQueue
from hybrid.runtime.subgoals import SubgoalBoard
from hybrid.types import Subgoal, Subtask


def chunk(values):
    return np.asarray(values, np.float32).reshape(-1, 1)


def run_steps(q, n):
    out = []
    for _ in range(n):
        a = q.pop()
        q.sent(a if a is not None else np.zeros(1, np.float32))
        out.append(None if a is None else float(a[0]))
    return out


def test_actions_serve_consecutive_steps_and_queue_runs_dry():
    q = ChunkQueue("replace")
    q.merge(chunk([1, 2, 3]), start_step=0)
    assert run_steps(q, 4) == [1, 2, 3, None]


def test_chunk_whose_start_has_passed_drops_elapsed_actions():
    q = ChunkQueue("replace")
    run_steps(q, 3)  # steps 0..2 went by while the chunk was computed from the step-0 observation
    report = q.merge(chunk([10, 11, 12, 13, 14]), start_step=0)
    assert report.dropped == 3 and report.queued == 2
    assert run_steps(q, 2) == [13, 14]


def test_chunk_entirely_in_the_past_queues_nothing():
    q = ChunkQueue("replace")
    run_steps(q, 5)
    report = q.merge(chunk([1, 2]), start_step=0)
    assert report.queued == 0 and q.depth() == 0


def test_seam_is_jump_from_last_sent_action():
    q = ChunkQueue("replace")
    q.merge(chunk([0.0, 0.1, 0.2, 0.3]), start_step=0)
    run_steps(q, 2)  # sent 0.0, 0.1
    report = q.merge(chunk([5.0, 5.0, 5.0]), start_step=2)
    assert report.seam == pytest.approx(4.9)


def test_committed_prefix_is_sent_then_queued_actions_from_the_observation_step():
    q = ChunkQueue("rtc")
    q.merge(chunk([0, 1, 2, 3, 4, 5]), start_step=0)
    run_steps(q, 3)  # steps 0, 1, 2 sent
    prefix = q.committed(from_step=2, n=3)
    assert prefix[:, 0].tolist() == [2, 3, 4]  # step 2 (sent), steps 3, 4 (queued)


def test_skipped_slots_drop_their_actions_and_keep_the_last_command():
    q = ChunkQueue("replace")
    q.merge(chunk([0, 1, 2, 3, 4]), start_step=0)
    run_steps(q, 1)
    q.skip(2)
    assert q.next_step == 3 and run_steps(q, 1) == [3]
    assert q.committed(from_step=1, n=2)[:, 0].tolist() == [0, 0]  # the robot held its last command


def test_temporal_ensembling_weights_older_predictions_more():
    decay = 0.5
    q = ChunkQueue("ensemble", ensemble_decay=decay)
    q.merge(chunk([0, 0, 0, 0]), start_step=0)
    q.merge(chunk([1, 1, 1, 1, 1, 1]), start_step=0)
    w = np.exp(-decay)
    got = run_steps(q, 6)
    assert got[:4] == pytest.approx([w / (1 + w)] * 4)
    assert got[4:] == [1, 1]  # only the new chunk predicts these steps


def test_ensembling_softens_the_seam_that_replacement_makes():
    seams = {}
    for mode in ("replace", "ensemble"):
        q = ChunkQueue(mode, ensemble_decay=0.01)
        q.merge(chunk([0] * 10), start_step=0)
        run_steps(q, 4)
        seams[mode] = q.merge(chunk([1] * 10), start_step=4).seam
    assert seams["replace"] == pytest.approx(1.0) and seams["ensemble"] < 0.6


def sg(text):
    return Subgoal(images={"front": np.zeros((4, 4, 3), np.uint8)}, subtask=text)


def test_subgoal_for_another_subtask_is_stale_and_a_prefetch_is_kept():
    board = SubgoalBoard("none")
    cur = Subtask(text="go up", index=1)
    assert board.offer(sg("go right"), cur, upcoming="go left") == "stale"
    assert board.offer(sg("go left"), cur, upcoming="go left") == "prefetch"
    assert board.for_executor(cur) is None  # nothing for "go up", and gap=none
    assert board.for_executor(Subtask(text="go left", index=2)).subtask == "go left"


@pytest.mark.parametrize("gap,expected", [("keep_last", "go right"), ("none", None)])
def test_between_subtasks_the_gap_policy_decides(gap, expected):
    board = SubgoalBoard(gap)
    first = Subtask(text="go right", index=0)
    board.offer(sg("go right"), first, None)
    assert board.for_executor(first).subtask == "go right"
    got = board.for_executor(Subtask(text="go up", index=1))
    assert (None if got is None else got.subtask) == expected
