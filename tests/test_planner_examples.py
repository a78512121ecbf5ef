"""Planner training examples: which subtask is the right answer at each frame, in each runtime situation."""

from __future__ import annotations

import pytest

from hybrid.data import SubtaskIndex, open_dataset
from hybrid.testing.datasets import PLAN, make_tiny_dataset
from hybrid.types import PlanStep
from planners.subtask.examples import ExampleBuilder


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    ds = make_tiny_dataset(tmp_path_factory.mktemp("examples") / "data", episodes=1, frames_per_subtask=10)
    return ExampleBuilder(SubtaskIndex.from_dataset(open_dataset(ds.root)), done_tail_s=0.3)  # 3 frames at 10 fps


def test_every_subtask_counts_as_finished_in_its_tail(builder):
    # Frames 0-9 are the first subtask, 10-19 the second (the last); the last 3 of each show it finished.
    assert [builder.finished(i) for i in (0, 6, 7, 9, 10, 16, 17, 19)] == [0, 0, 1, 1, 1, 1, 2, 2]
    assert [builder.is_done_frame(i) for i in (9, 16, 17)] == [False, False, True]


def test_up_to_date_and_one_behind_answer_the_next_unfinished_subtask(builder):
    mid = builder.example(3, "current")
    assert (mid.done, mid.current, mid.target) == ([], PLAN[0], PlanStep(subtask=PLAN[0]))
    # The first subtask's retreat: a runtime still on it must move on, like one a few frames later.
    for frame in (8, 12):
        behind = builder.example(frame, "behind")
        assert (behind.done, behind.current, behind.target) == ([], PLAN[0], PlanStep(subtask=PLAN[1]))
    assert builder.example(3, "behind") is None  # nothing to be behind on
    end = builder.example(18, "current")
    assert (end.done, end.current, end.target) == (PLAN[:1], PLAN[1], PlanStep(done=True))
    assert builder.example(18, "fresh").done == PLAN


def test_resuming_without_history_reads_progress_from_the_frame_alone(builder):
    import numpy as np

    for frame, target in ((3, PlanStep(subtask=PLAN[0])), (12, PlanStep(subtask=PLAN[1])), (18, PlanStep(done=True))):
        ex = builder.example(frame, "resume")
        assert (ex.done, ex.current, ex.target) == ([], None, target)
    rng = np.random.default_rng(0)
    drawn = [builder.sample(rng, np.arange(20), {"resume": 1.0}) for _ in range(20)]
    assert all(ex.done == [] and ex.current is None for ex in drawn)


def test_the_subtasks_left_are_the_plan_after_the_finished_ones(builder):
    assert [builder.left(i) for i in (3, 8, 12, 18)] == [PLAN, PLAN[1:], PLAN[1:], []]


@pytest.fixture(scope="module")
def gripping(tmp_path_factory):
    import numpy as np

    ds = make_tiny_dataset(tmp_path_factory.mktemp("gripping") / "data", episodes=1, frames_per_subtask=10)
    # Each subtask closes the gripper on its block and lets go at frame 6 and 17.
    gripper = np.zeros(20)
    gripper[2:6], gripper[12:17] = 1.0, 1.0
    return ExampleBuilder(SubtaskIndex.from_dataset(open_dataset(ds.root)), done_tail_s=0.3, gripper=gripper)


def test_with_the_gripper_a_subtask_finishes_at_its_last_release(gripping):
    assert [gripping.finished(i) for i in (5, 6, 9, 10, 16, 17, 19)] == [0, 1, 1, 1, 1, 2, 2]
    assert [gripping.is_done_frame(i) for i in (16, 17)] == [False, True]


def test_examples_count_the_releases_since_their_current_subtask_began(gripping):
    assert gripping.example(4, "current").releases == 0
    behind = gripping.example(12, "behind")  # still on the first subtask, whose release the runtime saw
    assert (behind.current, behind.releases, behind.target) == (PLAN[0], 1, PlanStep(subtask=PLAN[1]))
    assert gripping.example(12, "current").releases == 0  # the second began after that release
    end = gripping.example(18, "current")
    assert (end.current, end.releases, end.target) == (PLAN[1], 1, PlanStep(done=True))
    assert gripping.example(12, "fresh").releases == 0  # no current subtask, nothing to count


def test_examples_name_the_frame_of_their_last_release_and_the_view_shown_after_it(gripping):
    from planners.subtask.examples import release_view_frame

    behind = gripping.example(12, "behind")  # the first subtask's release at frame 6
    assert behind.release_frame == 6 and release_view_frame(behind) == 8 and release_view_frame(behind, 0) == 6
    assert gripping.example(12, "current").release_frame is None  # the second has not let go yet
    assert gripping.example(12, "fresh").release_frame is None
    end = gripping.example(18, "current")  # the last subtask's release at frame 17: shown no later than frame 18
    assert end.release_frame == 17 and release_view_frame(end) == 18
    assert gripping.placing == {6, 17}  # each subtask's last release placed its block
    assert behind.release_placed and end.release_placed and gripping.example(12, "current").release_placed is None


def test_each_release_so_far_is_named_with_the_subtask_under_way_then(gripping):
    assert gripping.released_under(5) == []
    assert gripping.released_under(6) == gripping.released_under(16) == [(PLAN[0], 6)]
    assert gripping.released_under(19) == [(PLAN[0], 6), (PLAN[1], 17)]


def test_a_release_followed_by_another_under_the_same_subtask_missed(tmp_path):
    import numpy as np

    ds = make_tiny_dataset(tmp_path / "data", episodes=1, frames_per_subtask=10)
    gripper = np.zeros(20)
    gripper[1:3], gripper[4:6], gripper[12:17] = 1.0, 1.0, 1.0  # the first subtask lets go at 3 (a miss), then 6
    builder = ExampleBuilder(SubtaskIndex.from_dataset(open_dataset(ds.root)), gripper=gripper)
    assert builder.placing == {6, 17} and list(builder.release_frames) == [3, 6, 17]
    missed = builder.example(5, "current")
    assert (missed.releases, missed.release_frame, missed.target) == (1, 3, PlanStep(subtask=PLAN[0]))
    assert missed.release_placed is False


def test_a_plan_form_rewrites_every_plan(tmp_path):
    from planners.subtask.tabletop_language import canonical_subtask, history_ordinals

    plan = ["carry a red block over to the blue bowl", "carry the other red block over to the blue bowl"]
    ds = make_tiny_dataset(tmp_path / "data", episodes=1, frames_per_subtask=4, plan=plan)
    b = ExampleBuilder(SubtaskIndex.from_dataset(open_dataset(ds.root)), canonical_subtask, plan_form=history_ordinals)
    assert b.plans[0] == ["put the red block in the blue bowl", "put another red block in the blue bowl"]
    assert b.example(5, "current").current == "put another red block in the blue bowl"
