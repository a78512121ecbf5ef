import numpy as np
import pytest

from hybrid.data import SubtaskIndex, open_dataset
from hybrid.testing.datasets import PLAN, make_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tiny"
    make_tiny_dataset(root, episodes=2, frames_per_subtask=5)
    return open_dataset(root)


def test_tiny_dataset_reads_back_through_lerobot(tiny):
    item = tiny[0]
    assert item["observation.images.front"].shape == (3, 32, 32)
    assert item["subtask"] == PLAN[0] and item["task"] == "put the red block in the blue bowl"


def test_subtask_index_segments(tiny):
    idx = SubtaskIndex.from_dataset(tiny)
    assert len(idx) == 20 and idx.plans == {0: PLAN, 1: PLAN}
    assert idx.subtask_end[0] == 4 and idx.subtask_end[5] == 9 and idx.subtask_end[10] == 14
    assert idx.episode_start[12] == 10 and idx.episode_end[12] == 19
    assert idx.done_subtasks(3) == [] and idx.done_subtasks(7) == [PLAN[0]]
    assert idx.is_last_subtask(7) and not idx.is_last_subtask(3)
    assert idx.instruction[0] == "put the red block in the blue bowl"


def test_indices_of_several_recordings_join_with_frames_and_episodes_numbered_on(tiny):
    one = SubtaskIndex.from_dataset(tiny)
    both = SubtaskIndex.concat([one, one])
    assert len(both) == 40 and set(both.plans) == {0, 1, 2, 3} and both.plans[3] == PLAN
    assert both.episode[25] == 2 and both.episode_start[25] == 20 and both.episode_end[25] == 29
    assert both.subtask_start[27] == 25 and both.subtask_end[27] == 29 and both.subtask_index[27] == 1
    assert both.done_subtasks(27) == [PLAN[0]] and both.instruction[27] == one.instruction[7]
    with pytest.raises(ValueError, match="fps"):
        SubtaskIndex.concat([one, SubtaskIndex(*[getattr(one, f) for f in one.__dataclass_fields__][:-1], fps=1.0)])


def test_hindsight_goals_stay_in_episode_and_ahead(tiny):
    idx = SubtaskIndex.from_dataset(tiny)
    rng = np.random.default_rng(0)
    goals = [idx.hindsight_goal(i, rng) for i in range(len(idx)) for _ in range(20)]
    frames = np.repeat(np.arange(len(idx)), 20)
    assert all(idx.episode[g] == idx.episode[i] and g >= i for g, i in zip(goals, frames))
    at_end = np.mean([g == idx.subtask_end[i] for g, i in zip(goals, frames)])
    assert at_end >= 0.25  # p=0.25 by construction, plus the ahead-samples that land there
