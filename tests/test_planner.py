"""Subtask planner: reply validation, retries and faults, replanning, the scripted planner, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid.interfaces import SubtaskPlanner
from hybrid.testing.doubles import fake_observation
from hybrid.types import PlanStep, Subtask
from planners.subtask import BadReply, PlannerFault, ReplanPolicy, ScriptedPlanner, VLMPlanner, parse_reply
from planners.subtask.planner import BackendError
from planners.subtask.reply import make_vocabulary, reply_text
from planners.subtask.tabletop_language import (
    HISTORY_ORDINALS,
    canonical_subtask,
    colours_in,
    history_ordinals,
    vocabulary,
)

OBS = fake_observation(cameras=("front", "wrist"), size=40)
VOCAB = ["pick up the red block", "put it in the blue bowl"]


class CannedBackend:
    """Replies from a list, in order (an exception in the list is raised); records what it was sent."""

    def __init__(self, replies):
        self.replies, self.sent = list(replies), []

    def complete(self, messages, image):
        self.sent.append((messages, image))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def done_history(*texts):
    return [Subtask(text=t, index=i, status="done") for i, t in enumerate(texts)]


# --- replies ------------------------------------------------------------------------------------

def test_parse_reply_accepts_plain_fenced_and_wrapped_json():
    assert parse_reply('{"subtask": "pick up the red block", "done": false}').subtask == "pick up the red block"
    assert parse_reply('```json\n{"subtask": "a", "done": false}\n```').subtask == "a"
    step = parse_reply('Sure: {"done": true, "reason": "all placed"} ok')
    assert step.done and step.subtask is None and step.reason == "all placed"


@pytest.mark.parametrize("text, kind", [
    ("", "empty"),
    ("   ", "empty"),
    ("pick up the red block", "invalid_json"),
    ('{"subtask": "pick up", "done": fals', "invalid_json"),
    ('{"subtask": "", "done": false}', "schema"),
    ('{"subtask": null, "done": false}', "schema"),
    ('{"subtask": 3, "done": false}', "schema"),
    ('{"subtask": "x", "done": "maybe"}', "schema"),
    ('{"subtask": "x", "done": false, "extra": 1}', "schema"),
])
def test_parse_reply_rejects_bad_replies(text, kind):
    with pytest.raises(BadReply) as err:
        parse_reply(text)
    assert err.value.kind == kind


def test_vocabulary_canonicalises_case_and_space_and_rejects_unknown():
    vocab = make_vocabulary(VOCAB)
    assert parse_reply('{"subtask": " Pick up  the RED block. ", "done": false}', vocab).subtask == VOCAB[0]
    with pytest.raises(BadReply, match="not in the planner's vocabulary") as err:
        parse_reply('{"subtask": "dance", "done": false}', vocab)
    assert err.value.kind == "unknown_subtask"
    assert parse_reply('{"done": true}', vocab).done  # done needs no vocabulary entry


def test_reply_text_round_trips_through_the_schema():
    for step in (PlanStep(subtask="put it in the blue bowl"), PlanStep(done=True)):
        assert parse_reply(reply_text(step)) == step
        PlanStep.model_validate(json.loads(reply_text(step)))


# --- the VLM planner over a backend ---------------------------------------------------------------

def test_vlm_planner_meets_the_interface_and_tracks_the_current_subtask():
    backend = CannedBackend(['{"subtask": "pick up the red block", "done": false}',
                             '{"subtask": "put it in the blue bowl", "done": false}'])
    planner = VLMPlanner(backend, prompt={"image_size": 28, "system": "be brief"}, vocabulary=VOCAB)
    assert isinstance(planner, SubtaskPlanner)
    assert planner.plan(OBS, "put the red block in the blue bowl", []).subtask == VOCAB[0]
    step = planner.plan(OBS, "put the red block in the blue bowl", done_history())
    assert step == PlanStep(subtask=VOCAB[1])
    (first, image), (second, _) = backend.sent
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8  # resized front camera
    assert first[0] == {"role": "system", "content": [{"type": "text", "text": "be brief"}]}
    text = second[-1]["content"][1]["text"]
    # The runtime only reports finished subtasks; the planner adds the one it asked for last.
    assert "Current: pick up the red block" in text and "Done: nothing" in text
    assert '"done"' in text  # the PlanStep schema is in the prompt by default
    planner.reset()
    assert planner.current is None


def test_state_in_prompt_writes_the_robot_state_and_needs_it():
    from planners.subtask.prompting import PromptConfig, build_messages

    backend = CannedBackend(['{"subtask": "pick up the red block", "done": false}'])
    planner = VLMPlanner(backend, prompt={"state_in_prompt": True, "schema_in_prompt": False}, vocabulary=VOCAB)
    obs = fake_observation(cameras=("front",), size=40).model_copy(
        update={"state": np.array([0.1234, -0.05, 0.2, 1.0], np.float32)})
    planner.plan(obs, "put the red block in the blue bowl", [])
    text = backend.sent[0][0][-1]["content"][1]["text"]
    assert text.splitlines()[-1] == "State: 0.12 -0.05 0.20 1.00"
    with pytest.raises(ValueError, match="state_in_prompt"):
        build_messages(PromptConfig(state_in_prompt=True), "stack", [], None)
    # Off (the default): no state line, whatever the observation holds.
    assert "State:" not in build_messages(PromptConfig(), "stack", [], None, obs.state)[-1]["content"][1]["text"]


def test_several_cameras_are_shown_side_by_side_as_one_image_and_a_missing_one_is_named():
    backend = CannedBackend(['{"subtask": "pick up the red block", "done": false}'])
    planner = VLMPlanner(backend, prompt={"camera": ["front", "wrist"], "image_size": 20}, vocabulary=VOCAB)
    planner.plan(OBS, "put the red block in the blue bowl", [])
    image = backend.sent[0][1]
    assert image.shape == (20, 40, 3)  # each 40 px camera at 20 px, front on the left
    from PIL import Image

    half = np.asarray(Image.fromarray(OBS.images["wrist"]).resize((20, 20), Image.BILINEAR))
    assert np.array_equal(image[:, 20:], half) and not np.array_equal(image[:, :20], half)
    front_only = fake_observation(cameras=("front",), size=40)
    with pytest.raises(ValueError, match=r"no \['wrist'\]"):
        planner.plan(front_only, "put the red block in the blue bowl", [])
    assert backend.replies == [] and len(backend.sent) == 1  # the model was not asked
    from pydantic import ValidationError

    from planners.subtask.prompting import PromptConfig

    with pytest.raises(ValidationError, match="camera"):
        PromptConfig(camera=[])


def test_gripper_releases_since_the_current_subtask_began_are_counted_into_the_prompt():
    replies = [VOCAB[0], VOCAB[0], VOCAB[1], VOCAB[1], VOCAB[1]]
    backend = CannedBackend([json.dumps({"subtask": r, "done": False}) for r in replies])
    planner = VLMPlanner(backend, prompt={"gripper_index": -1, "schema_in_prompt": False}, vocabulary=VOCAB)

    def at(gripper):
        return OBS.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32)})

    # open -> closed (carrying) -> open (released: the planner moves on) -> the next subtask starts at 0.
    for gripper in (0.0, 1.0, 0.0, 0.0, 1.0):
        planner.plan(at(gripper), "put the red block in the blue bowl", [])
    lines = [sent[-1]["content"][1]["text"].splitlines() for sent, _ in backend.sent]
    assert [ln[3] for ln in lines] == ["Released: 0", "Released: 0", "Released: 1", "Released: 0", "Released: 0"]
    assert [ln[2] for ln in lines[2:4]] == [f"Current: {VOCAB[0]}", f"Current: {VOCAB[1]}"]
    planner.resume(VOCAB[1], releases=2, state=at(1.0).state)  # a situation taken up from a recording
    assert (planner.current, planner.releases) == (VOCAB[1], 2)
    planner.reset()
    assert (planner.current, planner.releases) == (None, 0)


def test_the_release_camera_shows_the_last_release_until_the_next_subtask_begins():
    replies = [VOCAB[0], VOCAB[0], VOCAB[0], VOCAB[1], VOCAB[1], VOCAB[1]]
    backend = CannedBackend([json.dumps({"subtask": r, "done": False}) for r in replies])
    planner = VLMPlanner(backend, prompt={"gripper_index": -1, "image_size": 20, "release_camera": "wrist"},
                         vocabulary=VOCAB)
    rng = np.random.default_rng(0)

    def at(gripper):  # a new wrist picture every call
        wrist = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        return OBS.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32),
                                      "images": {**OBS.images, "wrist": wrist}})

    # open, closed (carrying), released (seen), still open, then the next subtask begins: black again.
    calls = [at(g) for g in (0.0, 1.0, 0.0, 0.0, 0.0)]
    for obs in calls:
        planner.plan(obs, "put the red block in the blue bowl", [])
    from PIL import Image

    def small(img):
        return np.asarray(Image.fromarray(img).resize((20, 20), Image.BILINEAR))

    shown = [image[:, 20:] for _, image in backend.sent]
    assert [image.shape for _, image in backend.sent] == [(20, 40, 3)] * 5
    assert not shown[0].any() and not shown[1].any()  # no release yet: black
    released = small(calls[2].images["wrist"])
    assert np.array_equal(shown[2], released) and np.array_equal(shown[3], released)  # kept, not the live view
    assert not shown[4].any()  # VOCAB[1] began at the 4th call: nothing released under it
    planner.resume(VOCAB[1], releases=1, state=calls[0].state, release_view=calls[1].images["wrist"])
    planner.plan(calls[0], "put the red block in the blue bowl", [])
    assert np.array_equal(backend.sent[-1][1][:, 20:], small(calls[1].images["wrist"]))


class ReadingBackend(CannedBackend):
    """Canned replies; scores the two answers to the placed question as ``reading`` says (an exception: raised)."""

    def __init__(self, replies, reading):
        super().__init__(replies)
        self.reading, self.asked = list(reading), []

    def score(self, messages, image, replies):
        from planners.subtask.prompting import PLACED_QUESTION, PLACED_REPLIES

        assert list(replies) == list(PLACED_REPLIES) and messages[-1]["content"][1]["text"].endswith(PLACED_QUESTION)
        self.asked.append(image)
        answer = self.reading.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return np.array([0.0, -2.0] if answer else [-2.0, 0.0])


def test_the_planner_reads_once_per_release_whether_it_placed_its_block_and_says_so_in_the_prompt(caplog):
    replies = [json.dumps({"subtask": VOCAB[0], "done": False})] * 7
    backend = ReadingBackend(replies, [False, RuntimeError("server down"), True])
    prompt = {"gripper_index": -1, "image_size": 20, "release_camera": "wrist", "placed_in_prompt": True,
              "schema_in_prompt": False}
    planner = VLMPlanner(backend, prompt=prompt, vocabulary=VOCAB)

    def at(gripper):
        return OBS.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32)})

    # open, carrying, released (read once: missed), still open, carrying again (the reading stands), released
    # (the reading fails: the line is left out), still open (read again: placed)
    for gripper in (0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0):
        planner.plan(at(gripper), "put the red block in the blue bowl", [])
    lines = [sent[-1]["content"][1]["text"].splitlines() for sent, _ in backend.sent]
    assert [ln[-1] for ln in lines] == ["Released: 0", "Released: 0", "Placed: no", "Placed: no", "Placed: no",
                                       "Released: 2", "Placed: yes"]
    assert len(backend.asked) == 3 and "reading the release view failed" in caplog.text
    assert backend.asked[0][:, 20:].any()  # asked about the release view
    with pytest.raises(ValueError, match="placed_in_prompt: CannedBackend cannot score"):
        VLMPlanner(CannedBackend([]), prompt=prompt, vocabulary=VOCAB)
    from pydantic import ValidationError

    from planners.subtask.prompting import PromptConfig

    with pytest.raises(ValidationError, match="placed_in_prompt: needs release_camera"):
        PromptConfig(gripper_index=-1, placed_in_prompt=True)


def test_a_release_camera_needs_the_gripper_and_a_missing_one_is_named():
    from pydantic import ValidationError

    from planners.subtask.prompting import PromptConfig

    with pytest.raises(ValidationError, match="release_camera: needs gripper_index"):
        PromptConfig(release_camera="wrist")
    backend = CannedBackend([json.dumps({"subtask": VOCAB[0], "done": False})])
    planner = VLMPlanner(backend, prompt={"gripper_index": -1, "release_camera": "top"}, vocabulary=VOCAB)
    with pytest.raises(ValueError, match="no such camera"):
        planner.plan(OBS.model_copy(update={"state": np.zeros(4, np.float32)}), "put the red block", [])
    assert backend.sent == []  # the model was not asked
    wrist = VLMPlanner(backend, prompt={"gripper_index": -1, "release_camera": "wrist"}, vocabulary=VOCAB)
    wrist.resume(VOCAB[0], releases=1, release_view=np.zeros((40, 40), np.uint8))  # a grey image, not RGB
    with pytest.raises(ValueError, match=r"release view: expected an \(H, W, 3\) image, got shape \(40, 40\)"):
        wrist.plan(OBS.model_copy(update={"state": np.zeros(4, np.float32)}), "put the red block", [])
    assert backend.sent == [] and wrist.current == VOCAB[0]  # not asked; the subtask under way is kept


def test_a_change_of_subtask_is_taken_only_after_the_replies_in_a_row_the_policy_asks_for():
    a, b = VOCAB
    replies = [a, b, a, b, b, b, {"done": True}, {"done": True}]
    backend = CannedBackend([json.dumps(r if isinstance(r, dict) else {"subtask": r, "done": False}) for r in replies])
    planner = VLMPlanner(backend, prompt={"gripper_index": -1}, vocabulary=VOCAB,
                         replan={"switch_confirmations": 2, "switch_confirmations_before_release": 3})

    def at(gripper):
        return OBS.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32)})

    steps = [planner.plan(at(gripper), "put the red block in the blue bowl", [])
             for gripper in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)]
    # A stray b is dropped; with the gripper closed since a began, b takes 3 replies in a row; once the
    # gripper has let go (step 7), done takes 2.
    assert ["done" if s.done else s.subtask for s in steps] == [a, a, a, a, a, b, b, "done"]
    assert "unconfirmed change to '<done>' (1/2)" in steps[6].reason
    assert planner.current is None and planner._proposal is None
    with pytest.raises(ValueError, match="switch_confirmations"):  # a change needs at least one reply
        VLMPlanner(CannedBackend([]), vocabulary=VOCAB, replan={"switch_confirmations": 0})


def test_a_subtask_is_kept_without_asking_the_model_while_the_gripper_holds_a_block():
    a, b = VOCAB
    backend = CannedBackend([json.dumps({"subtask": t, "done": False}) for t in (a, b, b)])
    planner = VLMPlanner(backend, prompt={"gripper_index": -1}, vocabulary=VOCAB,
                         replan={"keep_while_holding": True})

    def at(gripper):
        return OBS.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32)})

    steps = [planner.plan(at(g), "put the red block in the blue bowl", []) for g in (0.0, 1.0, 1.0, 0.0)]
    assert [s.subtask for s in steps] == [a, a, a, b]
    assert "holding a block" in steps[1].reason and len(backend.replies) == 1  # two model calls skipped
    assert planner.releases == 0  # the release started subtask b, which counts from there


def test_a_descent_onto_a_block_keeps_the_subtask_until_the_grip_and_for_at_most_approach_max_calls():
    a, b = VOCAB
    backend = CannedBackend([json.dumps({"subtask": t, "done": False}) for t in (a,) + (b,) * 8])
    planner = VLMPlanner(backend, prompt={"gripper_index": -1}, vocabulary=VOCAB,
                         replan={"keep_while_holding": True, "keep_while_approaching": 0.08, "height_index": 2,
                                 "approach_max_calls": 2})

    def at(z, gripper=0.0):
        return OBS.model_copy(update={"state": np.array([0.1, 0.0, z, gripper], np.float32)})

    def plan(*states):
        steps = [planner.plan(s, "put the red block in the blue bowl", []) for s in states]
        return [s.subtask for s in steps], [s.reason for s in steps]

    # high, then down to grip (kept without asking), then the grip and the carry (kept while holding)
    subtasks, reasons = plan(at(0.2), at(0.06), at(0.045), at(0.045, 1.0), at(0.1, 1.0))
    assert subtasks == [a, a, a, a, a] and "coming down to grip" in reasons[1] and "holding" in reasons[3]
    assert len(backend.replies) == 8  # one model call in five
    # Let go low (in a bowl): that is no approach, the model is asked at once and may switch.
    assert plan(at(0.05))[0] == [b]
    planner.reset()
    # A robot hovering low keeps the plan for approach_max_calls calls, then the model is asked again.
    assert plan(at(0.2), at(0.05), at(0.05), at(0.05))[0] == [b, b, b, b]
    assert len(backend.replies) == 5
    with pytest.raises(ValueError, match="height_index"):
        ReplanPolicy(keep_while_approaching=0.08)
    outside = VLMPlanner(CannedBackend([]), prompt={"gripper_index": -1}, vocabulary=VOCAB,
                         replan={"keep_while_approaching": 0.08, "height_index": 9})
    with pytest.raises(ValueError, match="height_index 9 is outside the robot state"):
        outside.plan(at(0.2), "go", [])


def test_the_gripper_rules_are_off_with_a_warning_when_the_prompt_reads_no_gripper(caplog):
    backend = CannedBackend([json.dumps({"subtask": t, "done": False}) for t in VOCAB])
    planner = VLMPlanner(backend, vocabulary=VOCAB,
                         replan={"keep_while_holding": True, "keep_while_approaching": 0.08, "height_index": 2})
    assert "are off" in caplog.text
    low = OBS.model_copy(update={"state": np.array([0.1, 0.0, 0.05, 1.0], np.float32)})
    assert [planner.plan(low, "go", []).subtask for _ in VOCAB] == VOCAB  # the model is asked each time


def test_a_gripper_index_outside_the_state_is_a_clear_error():
    planner = VLMPlanner(CannedBackend([]), prompt={"gripper_index": 7}, vocabulary=VOCAB)
    with pytest.raises(ValueError, match="gripper_index 7 is outside the robot state"):
        planner.plan(OBS, "put the red block in the blue bowl", [])


@pytest.mark.parametrize("bad", [
    "not json at all", '{"subtask": "", "done": false}', "", '{"subtask": "juggle", "done": false}',
    BackendError("no reply within 1 s", kind="timeout"),
])
def test_a_bad_reply_is_retried_then_accepted(bad):
    backend = CannedBackend([bad, '{"subtask": "pick up the red block", "done": false}'])
    step = VLMPlanner(backend, vocabulary=VOCAB, max_attempts=2).plan(OBS, "go", [])
    assert step.subtask == VOCAB[0] and len(backend.sent) == 2


@pytest.mark.parametrize("bad, kind, words", [
    ("{not json", "bad_reply", "invalid_json"),
    ('{"subtask": 1}', "bad_reply", "schema"),
    ("", "bad_reply", "empty"),
    ('{"subtask": "juggle", "done": false}', "bad_reply", "unknown_subtask"),
    (BackendError("no reply within 2 s", kind="timeout"), "timeout", "no reply within 2 s"),
])
def test_bounded_retries_end_in_a_planner_fault(bad, kind, words):
    backend = CannedBackend([bad] * 3)
    planner = VLMPlanner(backend, vocabulary=VOCAB, max_attempts=3)
    with pytest.raises(PlannerFault) as err:
        planner.plan(OBS, "go", [])
    assert err.value.kind == kind and len(err.value.attempts) == 3 and words in str(err.value)
    assert len(backend.sent) == 3 and planner.current is None  # a fault keeps no new subtask


def test_a_non_retryable_server_error_faults_at_once():
    backend = CannedBackend([BackendError("server answered 400: bad model", retryable=False)] * 3)
    with pytest.raises(PlannerFault, match="400: bad model") as err:
        VLMPlanner(backend, max_attempts=3).plan(OBS, "go", [])
    assert err.value.kind == "server_error" and len(backend.sent) == 1


def test_the_runtime_turns_a_planner_fault_into_a_tier_fault():
    from hybrid.runtime.tier_call import TierCaller

    planner = VLMPlanner(CannedBackend(["nope"] * 2), max_attempts=2)
    res = TierCaller("planner", PlanStep)(planner.plan, OBS, "go", [])
    assert res.value is None and res.fault.kind == "raised" and "PlannerFault" in res.fault.message


# --- replanning -----------------------------------------------------------------------------------

def test_replan_policy():
    policy = ReplanPolicy(on_subtask_done=True, every_s=2.0, on_stall_s=3.0)
    assert policy.should_replan(now=0.0, last_plan_time=None)
    assert not policy.should_replan(now=1.0, last_plan_time=0.0)
    assert policy.should_replan(now=1.0, last_plan_time=0.0, subtask_changed=True)
    assert policy.should_replan(now=2.5, last_plan_time=0.0)
    assert policy.should_replan(now=1.0, last_plan_time=0.0, stalled=True)
    assert policy.should_replan(now=1.0, last_plan_time=0.0, stalled=3.5)
    assert not policy.should_replan(now=1.0, last_plan_time=0.0, stalled=1.0)
    quiet = ReplanPolicy(on_subtask_done=False, every_s=None, on_stall_s=None)
    assert not quiet.should_replan(now=100.0, last_plan_time=0.0, subtask_changed=True, stalled=True)
    with pytest.raises(ValueError):
        ReplanPolicy(every_s=0)


# --- scripted -------------------------------------------------------------------------------------

def test_scripted_planner_follows_history():
    planner = ScriptedPlanner(VOCAB)
    assert isinstance(planner, SubtaskPlanner)
    assert planner.plan(OBS, "go", []).subtask == VOCAB[0]
    assert planner.plan(OBS, "go", done_history(VOCAB[0])).subtask == VOCAB[1]
    assert planner.plan(OBS, "go", done_history(*VOCAB)).done


def test_scripted_planner_per_call_and_manual():
    per_call = ScriptedPlanner(VOCAB, advance="per_call", calls_per_subtask=2)
    got = [per_call.plan(OBS, "go", []) for _ in range(5)]
    assert [s.subtask for s in got[:4]] == [VOCAB[0], VOCAB[0], VOCAB[1], VOCAB[1]] and got[4].done
    manual = ScriptedPlanner(VOCAB, advance="manual")
    assert manual.plan(OBS, "go", done_history(*VOCAB)).subtask == VOCAB[0]  # only the operator moves it
    manual.advance()
    assert manual.plan(OBS, "go", []).subtask == VOCAB[1]
    manual.advance(5)
    assert manual.plan(OBS, "go", []).done
    manual.reset()
    assert manual.plan(OBS, "go", []).subtask == VOCAB[0]
    with pytest.raises(ValueError):
        ScriptedPlanner([])


# --- tabletop language and configs ----------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("carry the other red block over to the blue bowl", "put the other red block in the blue bowl"),
    ("Pick up a green block and put it in the red bowl.", "put a green block in the red bowl"),
    ("transfer the yellow block to the purple bowl", "put the yellow block in the purple bowl"),
    ("lay the red cube on top of the blue cube", "put the red block on the blue block"),
    ("wave hello", "wave hello"),
])
def test_canonical_subtask(text, canonical):
    assert canonical_subtask(text) == canonical


def test_tabletop_vocabulary_covers_unseen_pairs():
    colours = colours_in(["put the red block in the blue bowl", "put the green block on the red block"])
    assert colours == ["blue", "green", "red"]
    vocab = vocabulary(colours)
    assert "put the last blue block in the green bowl" in vocab and "put the blue block on the green block" in vocab
    assert all(canonical_subtask(v) == v for v in vocab)


def test_history_ordinals_name_same_coloured_blocks_from_the_history_alone():
    gather = ["put a red block in the blue bowl", "put another red block in the blue bowl",
              "put the last red block in the blue bowl"]
    assert history_ordinals(gather) == ["put the red block in the blue bowl", "put another red block in the blue bowl",
                                        "put the last red block in the blue bowl"]
    # Two red blocks or one: the first is named alike, so naming it needs no count from the picture.
    two = ["put a red block in the red bowl", "put the yellow block in the yellow bowl",
           "put the other red block in the red bowl"]
    assert history_ordinals(two) == ["put the red block in the red bowl", "put the yellow block in the yellow bowl",
                                     "put another red block in the red bowl"]
    stack = ["put the green block on the red block", "put the blue block on the green block"]
    assert history_ordinals(stack) == stack
    with pytest.raises(ValueError, match="more than 3"):
        history_ordinals(["put the red block in the blue bowl"] * 4)
    vocab = vocabulary(["blue", "red"], HISTORY_ORDINALS)
    assert "put the last red block in the blue bowl" in vocab and "put a red block in the blue bowl" not in vocab
    assert all(canonical_subtask(v) == v for v in vocab)


@pytest.mark.parametrize("name", ["tabletop", "transformers", "vllm", "scripted"])
def test_planner_configs_compose(name):
    from hybrid.config import compose

    node = compose(f"planner/{name}").planner
    assert node._target_.startswith("planners.subtask.")


def test_scripted_and_http_configs_instantiate():
    from hybrid.config import compose, instantiate

    assert isinstance(instantiate(compose("planner/scripted").planner), ScriptedPlanner)
    planner = instantiate(compose("planner/vllm", ["planner.base_url=http://127.0.0.1:9/v1"]).planner)
    assert isinstance(planner, VLMPlanner) and planner.replan.every_s == 2.0
