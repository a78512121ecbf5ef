"""The success detector: a classifier of (instruction, cameras) -> task finished, and the planner's "done" by it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from hybrid.testing.doubles import fake_observation
from hybrid.types import PlanStep
from planners.subtask import VLMPlanner
from planners.subtask.reply import reply_text
from planners.subtask.success import CLS, PAD, UNK, SuccessConfig, SuccessDetector, words

RED, BLUE = (f"put the {c} block in the {c} bowl" for c in ("red", "blue"))
VOCAB = [PAD, UNK, CLS, "sort", "the", "blocks", "red", "blue"]
TINY = SuccessConfig(cameras=["front", "wrist"], image_size=16, widths=[8, 8], layers=1, heads=2, max_words=8)


def detector_dir(tmp_path, bias: float | None = None, name: str = "sd"):
    """A tiny detector saved to disk; with ``bias`` its answer is fixed: sigmoid(bias) whatever it sees."""
    torch.manual_seed(0)
    net = SuccessDetector(TINY, VOCAB)
    if bias is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.fill_(bias)
    net.save_pretrained(tmp_path / name)
    return tmp_path / name


def obs_at(gripper: float, cameras=("front", "wrist")):
    """Two cameras and the tabletop's state (x, y, z, suction), the suction at ``gripper``."""
    obs = fake_observation(cameras=cameras, size=16)
    return obs.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32)})


def test_words_split_marks_and_unknown_words_share_one_id():
    assert words("Build a tower: red, then BLUE.") == ["build", "a", "tower", ":", "red", ",", "then", "blue", "."]
    net = SuccessDetector(TINY, VOCAB)
    ids = net.word_ids(["sort the blocks", "sort the cubes"])
    assert ids.shape == (2, TINY.max_words + 1) and (ids[:, 0] == VOCAB.index(CLS)).all()
    assert ids[1, 3] == VOCAB.index(UNK) and ids[0, 3] == VOCAB.index("blocks") and ids[0, 4] == 0


def test_the_detector_round_trips_through_safetensors_and_rejects_bad_images(tmp_path):
    path = detector_dir(tmp_path)
    assert (path / "model.safetensors").is_file() and json.loads((path / "vocab.json").read_text()) == VOCAB
    net, again = SuccessDetector(TINY, VOCAB), SuccessDetector.from_pretrained(path)
    net.load_state_dict(again.state_dict())
    obs = obs_at(0.0)
    p = again.prob(obs.images, "sort the blocks")
    assert 0 < p < 1 and p == pytest.approx(net.eval().prob(obs.images, "sort the blocks"))
    # other camera sizes are resized to the model's own
    big = {"front": np.zeros((40, 40, 3), np.uint8), "wrist": np.zeros((16, 16, 3), np.uint8)}
    assert 0 < again.prob(big, "sort") < 1
    with pytest.raises(ValueError, match="missing camera"):
        again.prob({"front": obs.images["front"]}, "sort")
    with pytest.raises(ValueError, match="uint8"):
        again.prob({"front": obs.images["front"], "wrist": np.zeros((16, 16), np.uint8)}, "sort")
    with pytest.raises(ValueError, match="uint8"):
        again.prob({"front": obs.images["front"], "wrist": np.zeros((16, 16, 3), np.float32)}, "sort")
    with pytest.raises(FileNotFoundError):
        SuccessDetector.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="vocabulary"):
        SuccessDetector(TINY, ["red", "blue"])


def test_training_labels_finished_frames_after_the_last_release_and_writes_a_detector(tmp_path):
    """Record two gather episodes, train a few steps: the frames from the last release on are finished, only
    open-gripper frames are used, and the model and its held-out figures are written."""
    from hybrid.cli import main as hybrid
    from hybrid.commands.record import main as record_main
    from planners.subtask.train_success import Frames

    data = tmp_path / "gather"
    assert record_main(["env=tabletop", "task=gather", "episodes=2", f"out={data}", "seed=1",
                        "env.image_size=32", "progress=false"]) == 0
    frames = Frames(data, ["front", "wrist"], 16)
    assert len(frames.pos) > 0 and len(frames.hard) > 0 and frames.images.shape[1:] == (2, 16, 16, 3)
    assert frames.recent[frames.pos].all()  # the episode ends soon after its last release
    # subtask questions: the last finished subtask (finished) or the first unfinished one, in the planner's words
    rng = np.random.default_rng(0)
    for k in rng.choice(len(frames.texts), 20):
        text, finished = frames.subtask_question(k, rng)
        plan, n = frames.plans[k], frames.count[k]
        assert text.startswith("put ") and plan.index(text) == (n - 1 if finished else n)
    out = tmp_path / "success"
    assert hybrid(["train", "planner=success", f"data={data}", f"out={out}", "steps=3", "batch_size=8",
                   "image_size=16", "widths=[8,8]", "layers=1", "heads=2", f"eval_data={data}", "save_every=2",
                   "subtask_fraction=0.5", "cameras=[front,wrist]"]) == 0
    net = SuccessDetector.from_pretrained(out / "model")
    assert "collect" in net.vocab or "place" in net.vocab
    assert (out / "checkpoint" / "trainer_state.pt").is_file()
    report = json.loads((out / "success_eval.json").read_text())
    assert 0 <= report["finished"]["called_finished@0.5"] <= 1 and report["finished"]["frames"] == len(frames.pos)
    assert report["subtask_finished"]["frames"] + report["subtask_unfinished"]["frames"] == len(frames.hard_or_pos)
    # resumed past its last step: nothing more to train, the model is written again
    assert hybrid(["train", "planner=success", f"data={data}", f"out={out}", "steps=3", "batch_size=8",
                   "image_size=16", "widths=[8,8]", "layers=1", "heads=2", "resume=true"]) == 0


def test_an_agents_rollouts_add_the_scenes_it_leaves_labelled_by_the_simulator(tmp_path):
    """A rollout recording's questions: finished where the sim's answer is "done", just after a release where one
    came under the subtask under way; only open-gripper frames, and no subtask questions."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from planners.subtask.on_policy import features, situation_frame
    from planners.subtask.train_success import Frames

    dataset = LeRobotDataset.create("local/onpol", fps=10, root=tmp_path / "onpol", robot_type="tabletop",
                                    use_videos=False, features=features({"front": (16, 16, 3), "wrist": (16, 16, 3)}, 4,
                                                                        video=False))
    asked = [(0.0, 0, PlanStep(subtask=RED)), (0.0, 1, PlanStep(subtask=BLUE)), (1.0, 1, PlanStep(subtask=BLUE)),
             (0.0, 1, PlanStep(done=True)), (0.0, 2, PlanStep(done=True))]  # (suction, releases, the sim's answer)
    for gripper, releases, target in asked:
        frame = situation_frame(obs_at(gripper), "sort the blocks", [], RED, releases, target, frozenset())
        dataset.add_frame(frame)
    dataset.save_episode()
    dataset.finalize()
    frames = Frames(tmp_path / "onpol", ["front", "wrist"], 16)
    assert frames.on_policy.all() and len(frames.texts) == 4  # the closed-gripper question left out
    assert frames.finished.tolist() == [False, False, True, True] and frames.recent.tolist() == [False, True, True, True]
    assert len(frames.pos) == 0 and frames.pos_on_policy.tolist() == [2, 3] and frames.hard.tolist() == [1]
    assert (frames.count == -1).all() and len(frames.hard_or_pos) == 0


class Beams:
    """Ranked candidate replies, the same every call; ``complete`` gives the first."""

    def __init__(self, *replies):
        self.replies = [(reply_text(PlanStep(done=True) if r is None else PlanStep(subtask=r)), -float(i))
                        for i, r in enumerate(replies)]

    def complete(self, messages, image):
        return self.replies[0][0]

    def candidates(self, messages, image, k):
        return self.replies[:k]


def planner_with(path, *replies, affordance=True, **success):
    planner = VLMPlanner(Beams(*replies), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         affordance={"candidates": 4} if affordance else None,
                         success={"model": str(path), **success})
    if affordance:
        planner.use_affordance(lambda obs, texts: np.full(len(texts), 0.9))
    return planner


@pytest.mark.parametrize("affordance", [True, False])
def test_done_is_taken_on_the_detectors_word_after_a_release_with_the_gripper_open(tmp_path, affordance):
    sure = detector_dir(tmp_path, bias=5.0)  # p = 0.993
    planner = planner_with(sure, RED, BLUE, affordance=affordance)
    planner.resume(RED, releases=1, state=obs_at(0.0).state)
    step = planner.plan(obs_at(0.0), "sort the blocks", [])
    assert step.done and "success detector finds the task finished (0.99)" in step.reason
    planner.resume(RED, releases=0, state=obs_at(0.0).state)  # no release under it yet: the planner decides
    assert planner.plan(obs_at(0.0), "sort the blocks", []).subtask == RED
    # below done_at: the planner decides
    planner = planner_with(sure, RED, BLUE, affordance=affordance, done_at=0.999)
    planner.resume(RED, releases=1, state=obs_at(0.0).state)
    assert planner.plan(obs_at(0.0), "sort the blocks", []).subtask == RED


@pytest.mark.parametrize("done_nats, done", [(0.5, True), (2.0, False)])
def test_with_done_nats_the_detector_and_the_planners_ranking_must_agree(tmp_path, done_nats, done):
    # replies ranked 1 nat apart: the subtask under way, "done", a new subtask
    planner = planner_with(detector_dir(tmp_path, bias=5.0), RED, None, BLUE, done_nats=done_nats)
    planner.resume(RED, releases=1, state=obs_at(0.0).state)
    step = planner.plan(obs_at(0.0), "sort the blocks", [])
    assert step.done == done
    if done:
        assert "every new subtask 1.0 nats below" in step.reason
    ranked_new_first = planner_with(detector_dir(tmp_path, bias=5.0, name="sure"), RED, BLUE, None, done_nats=0.5)
    ranked_new_first.resume(RED, releases=1, state=obs_at(0.0).state)
    assert not ranked_new_first.plan(obs_at(0.0), "sort the blocks", []).done


@pytest.mark.parametrize("affordance", [True, False])
def test_done_is_refused_while_the_detector_finds_the_task_unfinished(tmp_path, affordance):
    unsure = detector_dir(tmp_path, bias=-5.0)  # p = 0.007
    planner = planner_with(unsure, None, BLUE, affordance=affordance)
    planner.resume(RED, releases=1, state=obs_at(0.0).state)
    step = planner.plan(obs_at(0.0), "sort the blocks", [])
    if affordance:  # the next candidate is taken
        assert step.subtask == BLUE
    else:  # the subtask under way goes on
        assert step.subtask == RED and "refused" in step.reason
    only_done = planner_with(unsure, None, affordance=affordance)
    only_done.resume(RED, releases=1, state=obs_at(0.0).state)
    step = only_done.plan(obs_at(0.0), "sort the blocks", [])
    assert step.subtask == RED and "refused: the success detector finds the task unfinished (0.01)" in step.reason
    # refuse_below off: "done" stands
    free = planner_with(unsure, None, affordance=affordance, refuse_below=None, done_at=None)
    free.resume(RED, releases=1, state=obs_at(0.0).state)
    assert free.plan(obs_at(0.0), "sort the blocks", []).done


def test_the_subtask_under_way_gives_way_once_the_detector_finds_it_finished(tmp_path):
    sure = detector_dir(tmp_path, bias=5.0)
    planner = planner_with(sure, RED, BLUE, done_at=None, subtask_at=0.9)
    planner.resume(RED, releases=1, state=obs_at(0.0).state)
    assert planner.plan(obs_at(0.0), "sort the blocks", []).subtask == BLUE
    planner.resume(RED, releases=0, state=obs_at(0.0).state)  # not let go of yet: kept
    assert planner.plan(obs_at(0.0), "sort the blocks", []).subtask == RED
    alone = planner_with(sure, RED, done_at=None, subtask_at=0.9)  # nothing else among the replies: kept
    alone.resume(RED, releases=1, state=obs_at(0.0).state)
    assert alone.plan(obs_at(0.0), "sort the blocks", []).subtask == RED
    unsure = planner_with(detector_dir(tmp_path, bias=-5.0, name="unsure"), RED, BLUE, done_at=None, subtask_at=0.9)
    unsure.resume(RED, releases=1, state=obs_at(0.0).state)
    assert unsure.plan(obs_at(0.0), "sort the blocks", []).subtask == RED


def test_a_failing_detector_leaves_the_planner_to_decide(tmp_path, caplog):
    planner = planner_with(detector_dir(tmp_path, bias=-5.0), None, BLUE, affordance=False)
    planner.resume(RED, releases=1, state=obs_at(0.0).state)
    with caplog.at_level(logging.WARNING):  # no wrist camera: the detector cannot read
        step = planner.plan(obs_at(0.0, cameras=("front",)), "sort the blocks", [])
    assert step.done and caplog.text.count("success detector failed") == 1  # read once per call


def test_a_bad_success_setting_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="done_at"):
        planner_with(detector_dir(tmp_path), RED, done_at=1.5)
    with pytest.raises(FileNotFoundError, match="SuccessDetector"):
        planner_with(tmp_path / "missing", RED)


def test_the_success_bench_prints_a_latency(tmp_path, capsys):
    from hybrid.commands.bench import main as bench

    assert bench(["success", "--model", str(detector_dir(tmp_path)), "--calls", "3", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "success" and result["calls"] == 3 and result["latency_ms_p50"] > 0
