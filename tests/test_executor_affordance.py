"""The executor's learned affordance head: its labels from a recording's plans, its training (every other weight
fixed) and the executor's `affordance` through it."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from executors.flow.train_affordance import Question, finished_subtasks, questions
from hybrid.data import SubtaskIndex
from hybrid.envs.tabletop.tasks import COLOURS

SORT = "sort the blocks into the bowls by colour"
SORT_PLAN = ["carry the red block over to the red bowl", "carry a blue block over to the blue bowl",
             "carry the other blue block over to the blue bowl"]


def index_of(plans: dict[int, tuple[str, list[str]]], frames: int) -> SubtaskIndex:
    """``frames`` frames per subtask, episodes in order."""
    episode, sub, texts, instr = [], [], [], []
    for ep, (instruction, plan) in plans.items():
        for k, text in enumerate(plan):
            episode += [ep] * frames
            sub += [k] * frames
            texts += [text] * frames
            instr += [instruction] * frames
    episode, sub = np.array(episode), np.array(sub)
    n = len(episode)
    first = {e: int(np.flatnonzero(episode == e)[0]) for e in plans}
    last = {e: int(np.flatnonzero(episode == e)[-1]) for e in plans}
    starts = np.array([i if i == 0 or (episode[i], sub[i]) != (episode[i - 1], sub[i - 1]) else -1 for i in range(n)])
    subtask_start = np.maximum.accumulate(starts)
    subtask_end = np.array([subtask_start[i] + frames - 1 for i in range(n)])
    return SubtaskIndex(episode=episode, episode_start=np.array([first[e] for e in episode]),
                        episode_end=np.array([last[e] for e in episode]), subtask_index=sub,
                        subtask_start=subtask_start, subtask_end=subtask_end, subtask_text=texts,
                        instruction=instr, plans={e: list(p) for e, (_, p) in plans.items()}, fps=10.0)


def gripper(frames: int, subtasks: int, close: int, open_: int) -> np.ndarray:
    """Closed from frame ``close`` to ``open_`` of every subtask: one release each."""
    one = np.zeros(frames, bool)
    one[close:open_] = True
    return np.tile(one, subtasks)


def test_a_subtask_is_finished_from_its_last_release_or_its_end():
    index = index_of({0: (SORT, SORT_PLAN)}, frames=6)
    closed = gripper(6, 3, 1, 4)  # let go at frame 4 of each subtask
    finished = finished_subtasks(index, closed)
    np.testing.assert_array_equal(finished, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3])
    never = finished_subtasks(index, np.zeros(18, bool))  # no release: finished once its frames end
    np.testing.assert_array_equal(never, np.repeat([0, 1, 2], 6))


def test_sort_asks_every_colour_and_only_blocks_still_to_be_placed_can_start():
    index = index_of({0: (SORT, SORT_PLAN)}, frames=6)
    qs = questions(index, gripper(6, 3, 1, 4))
    at = {(q.frame, q.block): q for q in qs}
    assert len(qs) == 18 * len(COLOURS) and all(q.target is None and not q.onto for q in qs)  # any bowl
    assert at[0, "red"].can_start and at[0, "blue"].can_start and not at[0, "green"].can_start
    assert at[0, "green"].absent and not at[16, "red"].absent  # no green block; the red one is placed
    assert at[3, "red"].can_start  # carried, not let go yet
    assert not at[4, "red"].can_start and at[4, "blue"].can_start  # in its bowl from its release on
    assert at[10, "blue"].can_start  # one blue block is still out
    assert not at[16, "blue"].can_start and not any(at[16, c].can_start for c in COLOURS)


def test_gather_asks_its_target_colour_and_stack_every_level_of_its_tower():
    gather = ("put all the green blocks in the red bowl",
              ["drop a green block into the red bowl", "drop the other green block into the red bowl"])
    stack = ("stack the blocks with the red block at the bottom, then blue, then green on top",
             ["put the blue block on the red block", "lay the green cube on top of the blue cube"])
    index = index_of({0: gather, 1: stack}, frames=4)
    qs = questions(index, gripper(4, 4, 1, 3))  # let go at frame 3 of each subtask
    asked = [q for q in qs if not q.onto]
    assert {q.frame for q in asked} == set(range(8)) and all((q.block, q.target) == ("green", "red") for q in asked)
    assert [q.can_start for q in asked] == [True] * 7 + [False]
    levels = {(q.frame, q.block): q for q in qs if q.onto}
    assert len(levels) == 16 and levels[8, "blue"].target == "red" and levels[8, "green"].target == "blue"
    assert levels[10, "blue"].can_start and not levels[11, "blue"].can_start and levels[11, "green"].can_start
    assert not levels[15, "green"].can_start


def test_the_head_trains_alone_and_the_executor_scores_through_it(tmp_path):
    """Record two sort episodes, train a tiny heatmap executor, then its affordance head: the executor's other
    weights come back unchanged and its `affordance` scores from the head."""
    from executors.flow import FlowExecutor
    from hybrid.cli import main as hybrid
    from hybrid.commands.record import main as record_main
    from hybrid.testing.doubles import fake_observation

    data = tmp_path / "sort"
    assert record_main(["env=tabletop", "task=sort", "episodes=2", f"out={data}", "seed=1", "env.image_size=32",
                        "progress=false"]) == 0
    tiny = ["model.chunk=4", "model.image_size=32", "model.vision_width=16", "model.vision_depth=1",
            "model.text_width=16", "model.text_depth=1", "model.max_text_len=48", "model.width=32", "model.depth=1",
            "model.heads=2", "batch_size=4", "warmup=1", "steps=1", "model.patch_size=8"]
    assert hybrid(["train", "executor=tabletop", f"data={data}", f"out={tmp_path / 'exec'}", *tiny]) == 0
    init = tmp_path / "exec" / "model"
    out = tmp_path / "aff"
    assert hybrid(["train", "executor=affordance", f"data={data}", f"init={init}", f"out={out}", "steps=3",
                   "batch_size=8", f"eval_data={data}"]) == 0
    before, after = FlowExecutor.from_pretrained(init), FlowExecutor.from_pretrained(out / "model")
    assert after.cfg.affordance_head and not before.cfg.affordance_head
    trained = after.model.state_dict()
    for name, value in before.model.state_dict().items():
        torch.testing.assert_close(trained[name], value, msg=name)
    assert any(name.startswith("affordance_head.") for name in trained)
    report = json.loads((out / "affordance_eval.json").read_text())
    assert 0 <= report["can_start_right"] <= 1 and 0 <= report["train"]["can_start_right"] <= 1
    assert 0 <= report["can_start_right_open"] <= 1  # the frames the planner asks on

    obs = fake_observation(cameras=tuple(after.cfg.cameras), size=32, seed=0)
    texts = [f"put the {c} block in the {c} bowl" for c in ("red", "blue", "green")]
    scores = after.affordance(obs, texts)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    head = torch.sigmoid(after.model.affordance_logits(
        torch.from_numpy(np.stack([obs.images["front"]] * 3)).permute(0, 3, 1, 2)[:, None],
        after.tokenizer(texts)))
    np.testing.assert_allclose(scores, head.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_affordance_training_refuses_an_executor_without_a_heatmap_head(tmp_path):
    from executors.flow.configuration_flow import FlowConfig
    from executors.flow.modeling_flow import FlowModel
    from executors.flow.processor_flow import ByteTokenizer
    from executors.flow.train_affordance import train_affordance

    cfg = FlowConfig(image_size=16, patch_size=8, vision_width=16, vision_depth=1, text_width=16, text_depth=1,
                     width=32, depth=1, heads=2, chunk=4)
    FlowModel(cfg).save_pretrained(tmp_path / "plain")
    ByteTokenizer(cfg.max_text_len).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="heatmap waypoint head"):
        train_affordance(data=str(tmp_path / "none"), init=str(tmp_path / "plain"), out=str(tmp_path / "out"))


def test_a_question_names_its_block_and_bowl_in_the_planners_words():
    from executors.flow.train_affordance import ORDINALS, question_text

    rng = np.random.default_rng(0)
    texts = {question_text(Question(0, "red", "blue", True), rng) for _ in range(50)}
    assert texts == {f"put {o} red block in the blue bowl" for o in ORDINALS}
    assert question_text(Question(0, "red", "blue", True, onto=True), rng) == "put the red block on the blue block"
    bowls = {question_text(Question(0, "red", None, True), rng).split()[-2] for _ in range(100)}
    assert bowls == set(COLOURS)


def test_a_recording_without_both_answers_is_refused_with_a_clear_error():
    from executors.flow.processor_flow import ByteTokenizer
    from executors.flow.train_affordance import QuestionSampler

    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    only_yes = [Question(0, "red", "blue", True), Question(1, "red", "blue", True)]
    with pytest.raises(ValueError, match="2 subtasks that can start and 0 that cannot"):
        QuestionSampler(only_yes, images, ByteTokenizer(16))
    both = QuestionSampler([*only_yes, Question(1, "green", None, False, absent=True)], images, ByteTokenizer(16))
    b = both.batch(np.random.default_rng(0), 8)
    assert b["labels"].tolist() == [1.0] * 4 + [0.0] * 4 and b["images"].shape == (8, 1, 3, 8, 8)


@pytest.mark.parametrize("place", [False, True])
def test_the_head_reads_the_pick_map_and_with_place_the_place_map_and_the_peak_cell(place):
    from executors.flow.affordance import AffordanceHead

    torch.manual_seed(0)
    head = AffordanceHead(channels=8, text_dim=6, width=16, place=place)
    logits, features = torch.randn(3, 2, 12), torch.randn(3, 8, 3, 4)
    text, peaks = torch.randn(3, 5, 6), torch.rand(3, 2, 2)
    out = head(logits, features, text, peaks)
    assert out.shape == (3,) and torch.isfinite(out).all()
    moved = features.clone()
    moved[:, :, 2, 3] += 5.0  # the place map's cell changes only what a head that reads the place map sees
    place_logits = logits.clone()
    place_logits[:, 1] = -1e4
    place_logits[:, 1, 11] = 1e4
    place_logits[:, 0, 11] = -1e4
    changed = not torch.allclose(head(place_logits, features, text, peaks), head(place_logits, moved, text, peaks))
    assert changed == place
