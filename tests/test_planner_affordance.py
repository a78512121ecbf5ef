"""Grounded decoding: candidate replies checked against the executor's affordance before a switch."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hybrid.agent import HybridAgent
from hybrid.testing.doubles import MockExecutor, MockWorldModel, fake_observation
from hybrid.types import PlanStep, Subtask
from planners.subtask import PlannerFault, VLMPlanner
from planners.subtask.affordance import choose
from planners.subtask.reply import reply_text

OBS = fake_observation(cameras=("front",), size=32)
RED, BLUE, GREEN = (f"put the {c} block in the {c} bowl" for c in ("red", "blue", "green"))
DONE = PlanStep(done=True)


def gripper_at(gripper: float):
    """`OBS` with the tabletop's state (x, y, z, suction): the effector 20 cm up, the suction at ``gripper``."""
    return OBS.model_copy(update={"state": np.array([0.1, 0.0, 0.2, gripper], np.float32)})


def steps(*texts):
    return [DONE if t is None else PlanStep(subtask=t) for t in texts]


def scorer(table):
    """An affordance from a dict text -> score; records what it was asked."""
    def score(obs, texts):
        score.asked.append(list(texts))
        return np.array([table[t] for t in texts])
    score.asked = []
    return score


def test_a_new_subtask_the_executor_cannot_start_is_passed_over_for_the_next_candidate():
    score = scorer({RED: 0.1, BLUE: 0.9})
    step = choose(steps(RED, BLUE), None, OBS, score, 0.5)
    assert step.subtask == BLUE and "skipped" in step.reason and RED in step.reason
    assert score.asked == [sorted([RED, BLUE])]  # one call for all candidates
    assert choose(steps(RED, BLUE), None, OBS, scorer({RED: 0.6, BLUE: 0.9}), 0.5).subtask == RED


def test_the_subtask_under_way_needs_no_check_and_none_passing_keeps_the_planners_reply():
    assert choose(steps(BLUE, RED), RED, OBS, scorer({BLUE: 0.1}), 0.5).subtask == RED
    assert choose(steps(BLUE, GREEN), RED, OBS, scorer({BLUE: 0.1, GREEN: 0.2}), 0.5).subtask == BLUE


def test_done_waits_while_a_candidate_subtask_can_still_be_started():
    assert choose(steps(None, RED), None, OBS, scorer({RED: 0.8}), 0.5).subtask == RED
    assert choose(steps(None, RED), None, OBS, scorer({RED: 0.2}), 0.5).done
    assert choose(steps(None), RED, OBS, scorer({}), 0.5).done


def test_the_product_rule_trades_the_planners_confidence_against_the_affordance():
    # SayCan: log p(reply) + log affordance. A slightly likelier subtask that cannot start loses ...
    step = choose(steps(RED, BLUE), None, OBS, scorer({RED: 0.05, BLUE: 0.9}), 0.5, log_probs=[-0.5, -1.0])
    assert step.subtask == BLUE and "0.05" in step.reason
    # ... a much likelier one that scores low but not hopeless wins, and the current subtask counts as afforded.
    assert choose(steps(RED, BLUE), None, OBS, scorer({RED: 0.3, BLUE: 0.9}), 0.5, log_probs=[-0.1, -4.0]).subtask == RED
    assert choose(steps(BLUE, RED), RED, OBS, scorer({BLUE: 0.2}), 0.5, log_probs=[-1.0, -1.2]).subtask == RED
    # "done" is afforded as far as no new subtask is.
    assert choose(steps(None, RED), None, OBS, scorer({RED: 0.95}), 0.5, log_probs=[-0.5, -1.5]).subtask == RED
    assert choose(steps(None, RED), None, OBS, scorer({RED: 0.05}), 0.5, log_probs=[-0.5, -1.5]).done


@pytest.mark.parametrize("bad", [RuntimeError("executor busy"), "nan", "short"])
def test_a_broken_affordance_check_falls_back_to_the_planners_reply(bad, caplog):
    def score(obs, texts):
        if isinstance(bad, Exception):
            raise bad
        return np.array([np.nan, 1.0]) if bad == "nan" else np.array([1.0])

    with caplog.at_level(logging.WARNING):
        assert choose(steps(RED, BLUE), None, OBS, score, 0.5).subtask == RED
    assert "affordance check failed" in caplog.text


class CandidatesBackend:
    """Ranked candidate replies from a list per call; ``complete`` gives the first of them."""

    def __init__(self, *calls):
        self.calls = list(calls)

    def complete(self, messages, image):
        return self.calls.pop(0)[0][0]

    def candidates(self, messages, image, k):
        return self.calls.pop(0)[:k]


def ranked(*replies):
    return [(r if isinstance(r, str) else reply_text(r), -float(i)) for i, r in enumerate(replies)]


def test_the_planner_weighs_its_candidates_only_once_a_scorer_is_given():
    call = ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE))
    planner = VLMPlanner(CandidatesBackend(call, call), vocabulary=[RED, BLUE], affordance={"candidates": 4})
    assert planner.wants_affordance
    assert planner.plan(OBS, "sort", []).subtask == RED  # no scorer yet: plain decoding
    planner.reset()
    planner.use_affordance(scorer({RED: 0.0, BLUE: 1.0}))
    assert planner.plan(OBS, "sort", []).subtask == BLUE


def test_bad_candidates_are_dropped_and_only_all_bad_costs_an_attempt():
    beams = [("not json", -0.5), *ranked(PlanStep(subtask=BLUE)), ('{"subtask": "dance", "done": false}', -2.0),
             ("x", float("-inf"))]
    planner = VLMPlanner(CandidatesBackend(beams, [("nope", -1.0)]), vocabulary=[RED, BLUE],
                         affordance={"candidates": 8}, max_attempts=1)
    planner.use_affordance(scorer({BLUE: 0.9}))
    assert planner.plan(OBS, "sort", []).subtask == BLUE
    with pytest.raises(PlannerFault, match="invalid_json"):
        planner.plan(OBS, "sort", [])


def test_candidates_need_a_backend_that_gives_them():
    class Plain:
        def complete(self, messages, image):
            return reply_text(DONE)

    with pytest.raises(ValueError, match="cannot return candidate replies"):
        VLMPlanner(Plain(), affordance={"candidates": 4})
    with pytest.raises(ValueError):
        VLMPlanner(Plain(), affordance={"candidates": -1})


class ScoringExecutor(MockExecutor):
    supports_affordance = True

    def affordance(self, obs, subtasks):
        return np.ones(len(subtasks))


def test_the_agent_hands_its_executors_affordance_to_a_planner_that_asks(caplog):
    planner = VLMPlanner(CandidatesBackend(), vocabulary=[RED], affordance={"candidates": 4})
    executor = ScoringExecutor()
    HybridAgent(planner, MockWorldModel(), executor)
    assert planner._score == executor.affordance
    with caplog.at_level(logging.WARNING):
        HybridAgent(planner, MockWorldModel(), MockExecutor())
    assert planner._score is None and "cannot score subtasks" in caplog.text


def test_widening_finds_the_afforded_subtask_the_beam_never_named():
    from planners.subtask.affordance import unafforded, widened

    score = scorer({RED: 0.1, BLUE: 0.2, GREEN: 0.9})
    assert unafforded(PlanStep(subtask=RED), None, OBS, score, 0.5)
    assert not unafforded(PlanStep(subtask=RED), RED, OBS, score, 0.5)  # the subtask under way is never checked
    assert unafforded(DONE, RED, OBS, score, 0.5)  # "done" is checked against the vocabulary
    texts = [RED, BLUE, GREEN]
    step = widened(texts, np.array([-0.1, -1.0, -6.0]), None, OBS, score, 0.5, k=3, nats=12.0)
    assert step.subtask == GREEN and "widened" in step.reason
    # what the planner deems impossible (beyond `nats`) or beyond the k likeliest is never taken
    assert widened(texts, np.array([-0.1, -1.0, -20.0]), None, OBS, score, 0.5, k=3, nats=12.0) is None
    assert widened(texts, np.array([-0.1, -1.0, -6.0]), None, OBS, score, 0.5, k=2, nats=12.0) is None
    assert widened(texts, np.array([-0.1, -1.0, -6.0]), GREEN, OBS, score, 0.5, k=3, nats=12.0) is None

    def broken(obs, texts):
        raise RuntimeError("executor gone")
    assert widened(texts, np.array([-0.1, -1.0, -6.0]), None, OBS, broken, 0.5, k=3, nats=12.0) is None
    assert not unafforded(PlanStep(subtask=RED), None, OBS, broken, 0.5)  # a broken check never stops the robot


def test_widening_needs_a_vocabulary_and_a_backend_that_scores():
    class Generates:
        def complete(self, messages, image):
            return '{"done": true}'

        def candidates(self, messages, image, k):
            return [('{"done": true}', -0.1)]

    with pytest.raises(ValueError, match="widen"):
        VLMPlanner(Generates(), vocabulary=[RED], affordance={"candidates": 4, "widen": 8})


def test_the_subtask_under_way_is_checked_too_once_the_gripper_has_let_go_since_it_began():
    keep_red = ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE))
    planner = VLMPlanner(CandidatesBackend(keep_red, keep_red, keep_red), vocabulary=[RED, BLUE],
                         prompt={"gripper_index": -1}, affordance={"candidates": 4, "recheck": True})
    planner.use_affordance(scorer({RED: 0.1, BLUE: 0.9}))
    planner.resume(RED, state=np.array([0.0, 0.0, 0.0, 1.0]))  # carrying the red block
    assert planner.plan(gripper_at(1.0), "sort", []).subtask == RED  # under way: not checked
    # let go: the red block may be placed, and the executor sees no red block left to pick
    assert planner.plan(gripper_at(0.0), "sort", []).subtask == BLUE


def test_with_a_block_held_the_planners_reply_is_not_checked():
    # The head judges what can start with the gripper open; a runtime restarted mid-carry asks with a block held.
    planner = VLMPlanner(CandidatesBackend(ranked(PlanStep(subtask=BLUE), PlanStep(subtask=RED))),
                         vocabulary=[RED, BLUE], prompt={"gripper_index": -1}, affordance={"candidates": 4})
    score = scorer({RED: 0.9, BLUE: 0.0})  # the blue block is in the cup, not on the table
    planner.use_affordance(score)
    planner.resume(None, state=np.array([0.0, 0.0, 0.0, 1.0]))
    held = gripper_at(1.0)
    assert planner.plan(held, "sort", []).subtask == BLUE and score.asked == []


def test_with_while_holding_the_reply_is_checked_against_the_block_held():
    planner = VLMPlanner(CandidatesBackend(ranked(PlanStep(subtask=BLUE), PlanStep(subtask=RED))),
                         vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         affordance={"candidates": 4, "while_holding": True})
    score = scorer({RED: 0.9, BLUE: 0.02})  # a scorer that judges the block in the cup: it reads red
    planner.use_affordance(score)
    planner.resume(None, state=np.array([0.0, 0.0, 0.0, 1.0]))
    assert planner.plan(gripper_at(1.0), "sort", []).subtask == RED and score.asked == [[BLUE, RED]]


class PlacedBackend(CandidatesBackend):
    """Candidates as `CandidatesBackend`; reads every release as ``placed`` (the placed question's two answers)."""

    def __init__(self, placed, *calls):
        super().__init__(*calls)
        self.placed = placed

    def score(self, messages, image, replies):
        return np.array([0.0, -2.0] if self.placed else [-2.0, 0.0])


@pytest.mark.parametrize("placed", [True, False])
def test_done_when_placed_takes_done_unchecked_once_the_planner_saw_the_last_block_land(placed, caplog):
    views = fake_observation(cameras=("front", "wrist"), size=32)
    released = views.model_copy(update={"state": np.array([0.1, 0.0, 0.2, 0.0], np.float32)})
    prompt = {"gripper_index": -1, "image_size": 20, "release_camera": "wrist", "placed_in_prompt": True}
    planner = VLMPlanner(PlacedBackend(placed, ranked(DONE, PlanStep(subtask=BLUE))), vocabulary=[RED, BLUE],
                         prompt=prompt, affordance={"candidates": 4, "done_below": 0.1, "done_when_placed": True})
    planner.use_affordance(scorer({BLUE: 0.8}))  # the head scores the blue block, placed before, as still to move
    planner.resume(RED, state=np.array([0.0, 0.0, 0.0, 1.0]))  # carrying the red block, the last one
    history = [Subtask(text=BLUE, index=0, status="done")]
    step = planner.plan(released, "sort", history)
    assert step.done == placed and (not placed or "placed its block" in step.reason)
    # "done" second: as any switch once the block was seen placed (nothing scores min_score), else done_below
    planner = VLMPlanner(PlacedBackend(placed, ranked(PlanStep(subtask=BLUE), DONE)), vocabulary=[RED, BLUE],
                         prompt=prompt, affordance={"candidates": 4, "done_below": 0.1, "done_when_placed": True})
    planner.use_affordance(scorer({BLUE: 0.3}))
    planner.resume(RED, state=np.array([0.0, 0.0, 0.0, 1.0]))
    assert planner.plan(released, "sort", history).done == placed
    with caplog.at_level(logging.WARNING):
        VLMPlanner(CandidatesBackend(), affordance={"candidates": 4, "done_when_placed": True})
    assert "done_when_placed is off" in caplog.text


class ScoringBackend(CandidatesBackend):
    """Candidates as `CandidatesBackend`; `score` gives each reply of the vocabulary a fixed log-probability."""

    def __init__(self, log_probs, *calls):
        super().__init__(*calls)
        self.log_probs = log_probs

    def score(self, messages, image, replies):
        return np.array([self.log_probs.get(r, -30.0) for r in replies])


def test_a_planner_widens_to_its_vocabulary_when_its_beam_holds_nothing_the_executor_can_start():
    beam = ranked(PlanStep(subtask=RED), DONE)
    log_probs = {reply_text(PlanStep(subtask=RED)): -0.1, reply_text(PlanStep(subtask=BLUE)): -2.0,
                 reply_text(PlanStep(subtask=GREEN)): -5.0}
    planner = VLMPlanner(ScoringBackend(log_probs, beam, beam), vocabulary=[RED, BLUE, GREEN],
                         affordance={"candidates": 4, "widen": 8})
    planner.use_affordance(scorer({RED: 0.1, BLUE: 0.2, GREEN: 0.8}))
    step = planner.plan(OBS, "sort", [])
    assert step.subtask == GREEN and "widened" in step.reason
    planner.reset()
    planner.use_affordance(scorer({RED: 0.1, BLUE: 0.2, GREEN: 0.3}))
    assert planner.plan(OBS, "sort", []).done  # none passes: the beam's choice stands (no subtask can start)


def test_a_vocabulary_search_that_fails_keeps_the_reply_found_so_far(caplog):
    class Broken(ScoringBackend):
        def score(self, messages, image, replies):
            raise RuntimeError("out of memory")

    beam = ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE))
    planner = VLMPlanner(Broken({}, beam), vocabulary=[RED, BLUE, GREEN], affordance={"candidates": 4, "widen": 8})
    planner.use_affordance(scorer({RED: 0.1, BLUE: 0.2, GREEN: 0.9}))
    with caplog.at_level(logging.WARNING):
        assert planner.plan(OBS, "sort", []).subtask == RED
    assert "scoring the vocabulary failed" in caplog.text


def test_the_product_rule_weighs_the_widened_vocabulary_against_the_reply_it_would_displace():
    from planners.subtask.affordance import widened

    texts = [RED, BLUE, GREEN]
    # The likely reply scores just under the threshold; a far less likely subtask scores high. The threshold
    # rule takes the unlikely one, the product keeps the likely one ...
    score = scorer({RED: 0.4, BLUE: 0.1, GREEN: 0.9})
    lps = np.array([-0.1, -2.0, -9.0])
    assert widened(texts, lps, None, OBS, score, 0.5, k=3, nats=12.0).subtask == GREEN
    assert widened(texts, lps, None, OBS, score, 0.5, k=3, nats=12.0,
                   weigh_against=(PlanStep(subtask=RED), -0.1)).subtask == RED
    # ... unless the reply is hopeless (an absent block): then the vocabulary's afforded subtask wins, the more
    # readily the larger the weight.
    hopeless = scorer({RED: 0.01, BLUE: 0.1, GREEN: 0.9})
    lps = np.array([-0.1, -2.0, -4.0])  # (blue's 0.1 never passes: widening looks for what can start)
    step = widened(texts, lps, None, OBS, hopeless, 0.5, k=3, nats=12.0, weigh_against=(PlanStep(subtask=RED), -0.1))
    assert step.subtask == GREEN and "over" in step.reason
    assert widened(texts, np.array([-0.1, -2.0, -9.0]), None, OBS, hopeless, 0.5, k=3, nats=12.0,
                   weigh_against=(PlanStep(subtask=RED), -0.1), weight=1.0).subtask == RED
    assert widened(texts, np.array([-0.1, -2.0, -9.0]), None, OBS, hopeless, 0.5, k=3, nats=12.0,
                   weigh_against=(PlanStep(subtask=RED), -0.1), weight=2.0).subtask == GREEN
    # "done" is afforded as far as no subtask of the vocabulary is.
    assert widened(texts, lps, None, OBS, scorer({RED: 0.2, BLUE: 0.1, GREEN: 0.3}), 0.5, k=3, nats=12.0,
                   weigh_against=(DONE, -0.5)).done


def test_a_planner_with_the_product_rule_widens_and_weighs():
    beam = ranked(PlanStep(subtask=RED), DONE)
    log_probs = {reply_text(PlanStep(subtask=RED)): -0.1, reply_text(PlanStep(subtask=BLUE)): -2.0,
                 reply_text(PlanStep(subtask=GREEN)): -3.0}
    planner = VLMPlanner(ScoringBackend(log_probs, beam, beam), vocabulary=[RED, BLUE, GREEN],
                         affordance={"candidates": 4, "widen": 8, "rule": "product"})
    planner.use_affordance(scorer({RED: 0.4, BLUE: 0.1, GREEN: 0.9}))
    assert planner.plan(OBS, "gather", []).subtask == RED  # nearly afforded and far likelier: kept
    planner.reset()
    planner.use_affordance(scorer({RED: 0.0, BLUE: 0.1, GREEN: 0.9}))
    assert planner.plan(OBS, "gather", []).subtask == GREEN  # the likely one cannot start at all


def test_done_needs_stronger_evidence_than_a_switch_with_done_below():
    # The executor doubts the red block (0.3): by the threshold alone the planner would end the episode ...
    assert choose(steps(None, RED), None, OBS, scorer({RED: 0.3}), 0.5).done
    # ... with done_below it tries the doubtful subtask first; a hopeless one still lets the episode end.
    step = choose(steps(None, RED), None, OBS, scorer({RED: 0.3}), 0.5, done_below=0.2)
    assert step.subtask == RED and "not enough to end the episode" in step.reason
    assert choose(steps(None, RED), None, OBS, scorer({RED: 0.1}), 0.5, done_below=0.2).done
    # a subtask that passes min_score is taken as before, wherever "done" stands
    assert choose(steps(RED, None, BLUE), None, OBS, scorer({RED: 0.1, BLUE: 0.9}), 0.5, done_below=0.2).subtask == BLUE


def test_a_planner_widens_for_a_doubtful_subtask_before_ending_the_episode():
    beam = ranked(DONE, PlanStep(subtask=RED))
    log_probs = {reply_text(PlanStep(subtask=RED)): -1.0, reply_text(PlanStep(subtask=GREEN)): -5.0}
    table = {RED: 0.05, BLUE: 0.0, GREEN: 0.3}
    planner = VLMPlanner(ScoringBackend(log_probs, beam, beam), vocabulary=[RED, BLUE, GREEN],
                         affordance={"candidates": 4, "widen": 8})
    planner.use_affordance(scorer(table))
    assert planner.plan(OBS, "gather", []).done  # green's 0.3 is below min_score
    planner = VLMPlanner(ScoringBackend(log_probs, beam, beam), vocabulary=[RED, BLUE, GREEN],
                         affordance={"candidates": 4, "widen": 8, "done_below": 0.2})
    planner.use_affordance(scorer(table))
    assert planner.plan(OBS, "gather", []).subtask == GREEN


def test_a_subtask_without_a_grip_for_stale_after_calls_is_given_up_for_the_best_new_one():
    red_first = ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE))
    blue_first = ranked(PlanStep(subtask=BLUE), PlanStep(subtask=RED))
    planner = VLMPlanner(CandidatesBackend(*[red_first] * 6, *[blue_first] * 3), vocabulary=[RED, BLUE],
                         prompt={"gripper_index": -1}, affordance={"candidates": 4, "stale_after": 3})
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.9}))
    # a grip (1.0) restarts the count; three calls in a row without one give RED up, then BLUE
    got = [planner.plan(gripper_at(g), "sort", []).subtask for g in (0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)]
    assert got == [RED, RED, RED, RED, RED, BLUE, BLUE, BLUE, RED]
    # BLUE never let go of a block: the model is not told it is done, though the runtime's history says so;
    # RED let go of one and is told as done
    history = [Subtask(text=t, index=i, status="done") for i, t in enumerate((RED, BLUE))]
    done_line = next(line for line in planner.messages("sort", history)[1]["content"][1]["text"].splitlines()
                     if line.startswith("Done:"))
    assert RED in done_line and BLUE not in done_line
    with pytest.raises(ValueError, match="stale_after"):
        VLMPlanner(CandidatesBackend(), vocabulary=[RED], prompt={"gripper_index": -1},
                   affordance={"candidates": 1, "stale_after": 3})


def test_a_subtask_let_go_of_stale_releases_times_is_given_up():
    # the executor, asked for a block already in its bowl, closes the suction on nothing by it and lets go, again and again
    red_first = ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE))
    planner = VLMPlanner(CandidatesBackend(*[red_first] * 5), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         affordance={"candidates": 4, "stale_releases": 2})
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.9}))
    got = [planner.plan(gripper_at(g), "sort", []).subtask for g in (0.0, 1.0, 0.0, 1.0, 0.0)]
    assert got == [RED, RED, RED, RED, BLUE]
    with pytest.raises(ValueError, match="stale_releases"):
        VLMPlanner(CandidatesBackend(), vocabulary=[RED], prompt={"gripper_index": -1},
                   affordance={"candidates": 1, "stale_releases": 3})


@pytest.mark.parametrize("skip", [True, False])
def test_a_release_the_executor_reports_as_placing_nothing_is_not_one(skip):
    # the grasp check let go of a wrong block right after the lift: no pick-and-place ended, so the model is told
    # none (it had moved on to a tower's next level); it still counts towards stale_releases
    let_go = {"count": 0}
    planner = VLMPlanner(CandidatesBackend(*[ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE))] * 9),
                         vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         replan={"keep_while_holding": True, "skip_unplaced_releases": skip},
                         affordance={"candidates": 4, "stale_releases": 2})
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.9}))
    planner.use_unplaced_releases(lambda: let_go["count"])
    assert planner.plan(gripper_at(0.0), "stack", []).subtask == RED
    planner.plan(gripper_at(1.0), "stack", [])
    let_go["count"] = 1  # commanded while the cup still holds
    planner.plan(gripper_at(1.0), "stack", [])
    assert planner.plan(gripper_at(0.0), "stack", []).subtask == RED
    assert planner.releases == (0 if skip else 1)
    assert f"Released: {planner.releases}" in planner.messages("stack", [])[1]["content"][1]["text"]
    planner.plan(gripper_at(1.0), "stack", [])
    # a placement's release counts, and with the let-go before it the subtask has let go twice: given up
    assert planner.plan(gripper_at(0.0), "stack", []).subtask == BLUE


def test_a_let_go_between_two_calls_is_not_taken_for_the_next_release():
    # the grip and the let-go both fell between two plan calls: the count rose while the gripper looked open
    let_go = {"count": 0}
    planner = VLMPlanner(CandidatesBackend(*[ranked(PlanStep(subtask=RED))] * 4), vocabulary=[RED, BLUE],
                         prompt={"gripper_index": -1}, replan={"skip_unplaced_releases": True},
                         affordance={"candidates": 4})
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.9}))
    planner.use_unplaced_releases(lambda: let_go["count"])
    planner.plan(gripper_at(0.0), "stack", [])
    let_go["count"] = 1
    planner.plan(gripper_at(0.0), "stack", [])
    planner.plan(gripper_at(1.0), "stack", [])
    planner.plan(gripper_at(0.0), "stack", [])
    assert planner.releases == 1


def test_a_failing_count_of_unplaced_releases_counts_every_release(caplog):
    def broken():
        raise RuntimeError("executor gone")

    planner = VLMPlanner(CandidatesBackend(*[ranked(PlanStep(subtask=RED))] * 2), vocabulary=[RED],
                         prompt={"gripper_index": -1}, replan={"skip_unplaced_releases": True},
                         affordance={"candidates": 4})
    planner.use_affordance(scorer({RED: 0.9}))
    planner.use_unplaced_releases(broken)
    with caplog.at_level(logging.WARNING):
        for g in (1.0, 0.0):
            planner.plan(gripper_at(g), "stack", [])
    assert planner.releases == 1 and "unplaced releases failed: executor gone" in caplog.text


def test_the_agent_hands_the_executors_count_of_unplaced_releases_over():
    class Counting(MockExecutor):
        unplaced_releases = 2

    planner = VLMPlanner(CandidatesBackend(), vocabulary=[RED], prompt={"gripper_index": -1},
                         affordance={"candidates": 4})
    HybridAgent(planner, MockWorldModel(), Counting())
    assert planner._unplaced() == 2
    HybridAgent(planner, MockWorldModel(), MockExecutor())  # none to read: every release counts
    assert planner._unplaced is None


def test_remember_given_up_tries_every_subtask_once_before_one_given_up_again():
    # `sort`: "done" is refused while a placed block scores 0.4; the block left scores 0.2 and is the planner's last
    # choice. Without the memory the planner goes back to RED as soon as it gives BLUE up; with it GREEN is tried.
    beam = ranked(DONE, PlanStep(subtask=RED), PlanStep(subtask=BLUE), PlanStep(subtask=GREEN))
    table = {RED: 0.4, BLUE: 0.4, GREEN: 0.2}
    grippers = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def run(remember):
        planner = VLMPlanner(CandidatesBackend(*[beam] * 9), vocabulary=[RED, BLUE, GREEN],
                             prompt={"gripper_index": -1}, replan={"keep_while_holding": True},
                             affordance={"candidates": 4, "stale_after": 2, "done_below": 0.1,
                                         "remember_given_up": remember})
        planner.use_affordance(scorer(table))
        return [planner.plan(gripper_at(g), "sort", []) for g in grippers]

    assert [s.subtask for s in run(False)][:7] == [RED, RED, BLUE, BLUE, RED, RED, BLUE]
    got = run(True)
    # RED and BLUE given up in turn, then GREEN; once GREEN goes stale too, everything has been tried: RED
    # (the first again), which now runs its course, through a grip (1.0)
    assert [s.subtask for s in got] == [RED, RED, BLUE, BLUE, GREEN, GREEN, RED, RED, RED]
    assert "not enough to end the episode" in got[4].reason


def test_a_subtask_given_up_that_the_check_now_passes_is_a_candidate_like_any_other():
    open_gripper = gripper_at(0.0)
    beam = ranked(DONE, PlanStep(subtask=RED), PlanStep(subtask=BLUE), PlanStep(subtask=GREEN))
    table = {RED: 0.4, BLUE: 0.4, GREEN: 0.2}
    planner = VLMPlanner(CandidatesBackend(*[beam] * 6), vocabulary=[RED, BLUE, GREEN], prompt={"gripper_index": -1},
                         affordance={"candidates": 4, "stale_after": 2, "done_below": 0.1, "remember_given_up": True})
    planner.use_affordance(scorer(table))
    assert [planner.plan(open_gripper, "sort", []).subtask for _ in range(5)] == [RED, RED, BLUE, BLUE, GREEN]
    table[BLUE] = 0.9  # e.g. a block that hid it has moved
    assert planner.plan(open_gripper, "sort", []).subtask == BLUE


def test_a_stale_subtask_alone_in_the_beam_widens_to_the_vocabulary_or_is_kept():
    beam = ranked(PlanStep(subtask=RED))
    log_probs = {reply_text(PlanStep(subtask=RED)): -0.1, reply_text(PlanStep(subtask=BLUE)): -2.0}
    planner = VLMPlanner(ScoringBackend(log_probs, *[beam] * 4), vocabulary=[RED, BLUE],
                         prompt={"gripper_index": -1}, affordance={"candidates": 4, "stale_after": 1, "widen": 8})
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.8}))
    open_gripper = gripper_at(0.0)
    assert planner.plan(open_gripper, "sort", []).subtask == RED
    step = planner.plan(open_gripper, "sort", [])
    assert step.subtask == BLUE and "widened" in step.reason
    planner.resume(RED)
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.1}))
    planner.plan(open_gripper, "sort", [])
    assert planner.plan(open_gripper, "sort", []).subtask == RED  # nothing else can start: kept


def test_beam_nats_keeps_what_the_planner_deems_unlikely_from_replacing_a_reply_that_fails_the_check():
    beam = [(reply_text(PlanStep(subtask=RED)), -0.1), (reply_text(PlanStep(subtask=BLUE)), -3.0)]
    loose = VLMPlanner(CandidatesBackend(beam), vocabulary=[RED, BLUE], affordance={"candidates": 4})
    loose.use_affordance(scorer({RED: 0.1, BLUE: 0.9}))
    step = loose.plan(OBS, "sort", [])
    assert step.subtask == BLUE and "log p -2.9 from the best" in step.reason  # the trace says how unlikely
    tight = VLMPlanner(CandidatesBackend(beam), vocabulary=[RED, BLUE],
                       affordance={"candidates": 4, "beam_nats": 2.0})
    tight.use_affordance(scorer({RED: 0.1, BLUE: 0.9}))
    assert tight.plan(OBS, "sort", []).subtask == RED  # no candidate left passes: the planner's own reply stands


def test_replace_nats_lets_a_confident_planners_subtask_stand_and_still_guards_done():
    red, blue, green = (reply_text(PlanStep(subtask=t)) for t in (RED, BLUE, GREEN))
    beam = [(red, -0.1), (blue, -3.0), (reply_text(DONE), -4.0)]
    vocab = {red: -0.1, blue: -3.0, green: -5.0}
    check = {"candidates": 4, "widen": 8, "replace_nats": 2.0, "done_below": 0.1}

    def planner(table, *calls):
        p = VLMPlanner(ScoringBackend(vocab, *calls), vocabulary=[RED, BLUE, GREEN], affordance=check)
        p.use_affordance(scorer(table))
        return p

    # The check turns red down; blue (2.9 nats below) and green (4.9, widened) pass but are too unlikely.
    step = planner({RED: 0.3, BLUE: 0.9, GREEN: 0.9}, beam, beam).plan(OBS, "stack", [])
    assert step.subtask == RED and "nothing within 2.0 nats" in step.reason  # the trace says why it stands
    # Within replace_nats the check still decides, in the beam and in the widened vocabulary.
    near = [(red, -0.1), (blue, -1.0)]
    assert planner({RED: 0.3, BLUE: 0.9, GREEN: 0.9}, near, near).plan(OBS, "stack", []).subtask == BLUE
    widened = planner({RED: 0.3, BLUE: 0.2, GREEN: 0.9}, [(red, -0.1)])
    widened.backend.log_probs = {red: -0.1, green: -1.5}
    step = widened.plan(OBS, "stack", [])
    assert step.subtask == GREEN and "widened" in step.reason
    # "done" is not a replacement: it still waits for every subtask of the beam, however unlikely, to score
    # below done_below (blue's 0.3 here), and it widens as far as widen_nats for one that might start.
    ending = [(reply_text(DONE), -0.1), (blue, -6.0)]
    assert planner({BLUE: 0.3, RED: 0.0, GREEN: 0.0}, ending, ending).plan(OBS, "stack", []).subtask == BLUE
    only_done = [(reply_text(DONE), -0.1)]
    assert planner({BLUE: 0.0, RED: 0.0, GREEN: 0.3}, only_done, only_done).plan(OBS, "stack", []).subtask == GREEN


def test_a_subtask_the_check_still_sees_to_do_after_a_release_is_tried_again_up_to_retry_limit():
    hold = {"keep_while_holding": True}
    blue_first = ranked(PlanStep(subtask=BLUE), PlanStep(subtask=RED))
    planner = VLMPlanner(CandidatesBackend(*[blue_first] * 8), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         replan=hold, affordance={"candidates": 4, "retry_min": 0.7, "retry_limit": 2})
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.9}))
    planner.resume(RED)
    # grip, let go: RED is tried again though the planner moves on; after the second release it moves on
    got = [planner.plan(gripper_at(g), "stack", []) for g in (1.0, 0.0, 1.0, 0.0, 1.0, 0.0)]
    assert [s.subtask for s in got] == [RED, RED, RED, RED, RED, BLUE]
    assert "tried again" in got[1].reason and "after 1 release" in got[1].reason
    # a check below retry_min leaves the planner's reply
    planner.resume(RED)
    planner.use_affordance(scorer({RED: 0.5, BLUE: 0.9}))
    assert [planner.plan(gripper_at(g), "stack", []).subtask for g in (1.0, 0.0)] == [RED, BLUE]
    # before any release nothing is retried, and "done" after one is refused for the subtask too
    planner = VLMPlanner(CandidatesBackend(*[ranked(DONE)] * 3), vocabulary=[RED, BLUE],
                         prompt={"gripper_index": -1}, replan=hold, affordance={"candidates": 4, "retry_min": 0.7})
    planner.use_affordance(scorer({RED: 0.9, BLUE: 0.0}))
    planner.resume(RED)
    assert planner.plan(gripper_at(0.0), "stack", []).done
    planner.resume(RED)
    assert [planner.plan(gripper_at(g), "stack", []).done for g in (1.0, 0.0)] == [False, False]
    with pytest.raises(ValueError, match="retry_min"):
        VLMPlanner(CandidatesBackend(), vocabulary=[RED], prompt={"gripper_index": -1},
                   affordance={"candidates": 1, "retry_min": 0.7})


def test_a_failing_check_after_a_release_leaves_the_planners_reply(caplog):
    def broken(obs, texts):
        raise RuntimeError("executor gone")

    at = [gripper_at(g) for g in (1.0, 0.0)]
    planner = VLMPlanner(CandidatesBackend(*[ranked(PlanStep(subtask=BLUE), PlanStep(subtask=RED))] * 2),
                         vocabulary=[RED, BLUE], prompt={"gripper_index": -1}, replan={"keep_while_holding": True},
                         affordance={"candidates": 4, "retry_min": 0.7})
    planner.use_affordance(broken)
    planner.resume(RED)
    with caplog.at_level(logging.WARNING):
        got = [planner.plan(obs, "stack", []).subtask for obs in at]
    assert got == [RED, BLUE]  # held through the grip, then the planner's own reply: nothing retried on no evidence
    assert "affordance check failed: executor gone" in caplog.text


@pytest.mark.parametrize("red, gives_way, expected", [(0.0, True, BLUE), (0.0, False, RED), (0.2, True, RED)])
def test_a_finished_subtask_gives_way_to_the_likeliest_reply_that_may_still_start(red, gives_way, expected):
    keep_red = ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE), PlanStep(subtask=GREEN))
    planner = VLMPlanner(CandidatesBackend(keep_red, keep_red), vocabulary=[RED, BLUE, GREEN],
                         prompt={"gripper_index": -1}, replan={"keep_while_holding": True},
                         affordance={"candidates": 4, "recheck": True, "done_below": 0.1,
                                     "finished_gives_way": gives_way})
    planner.use_affordance(scorer({RED: red, BLUE: 0.3, GREEN: 0.05}))  # none passes min_score 0.5
    planner.resume(RED)
    assert planner.plan(gripper_at(1.0), "stack", []).subtask == RED  # carrying: not asked
    got = planner.plan(gripper_at(0.0), "stack", [])  # let go: the executor finds RED finished when it scores 0
    assert got.subtask == expected
    if expected == BLUE:
        assert "looks finished (0.00); 0.30 for" in got.reason


def test_a_failing_check_leaves_a_kept_subtask_under_finished_gives_way(caplog):
    def broken(obs, texts):
        raise RuntimeError("executor gone")

    keep_red = ranked(PlanStep(subtask=RED), PlanStep(subtask=BLUE))
    planner = VLMPlanner(CandidatesBackend(keep_red, keep_red), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         replan={"keep_while_holding": True},
                         affordance={"candidates": 4, "recheck": True, "finished_gives_way": True})
    planner.use_affordance(broken)
    planner.resume(RED)
    with caplog.at_level(logging.WARNING):
        got = [planner.plan(gripper_at(g), "stack", []).subtask for g in (1.0, 0.0)]
    assert got == [RED, RED]  # no evidence that it finished: the planner's own reply stands
    assert "affordance check failed" in caplog.text


def beam(*replies):
    """Candidate replies with the given log-probabilities: (PlanStep or None for "done", log p) pairs."""
    return [(reply_text(DONE if r is None else PlanStep(subtask=r)), lp) for r, lp in replies]


@pytest.mark.parametrize("others, red, done", [(-4.0, 0.05, True), (-2.0, 0.05, False), (-4.0, 0.3, False)])
def test_done_nats_ends_the_episode_after_a_release_when_done_leads_every_new_subtask(others, red, done):
    # As traced after the last placement: the subtask under way first, "done" next, every new subtask far below;
    # the check scores them 0.6-0.8 (it would hold "done" back) and the subtask under way finished (below 0.1).
    after = beam((RED, -0.5), (None, -1.0), (BLUE, others), (GREEN, others - 1))
    planner = VLMPlanner(CandidatesBackend(after, after), vocabulary=[RED, BLUE, GREEN], prompt={"gripper_index": -1},
                         replan={"keep_while_holding": True},
                         affordance={"candidates": 4, "recheck": True, "done_below": 0.1, "finished_gives_way": True,
                                     "retry_min": 1.0, "done_nats": 2.5})
    planner.use_affordance(scorer({RED: red, BLUE: 0.6, GREEN: 0.8}))
    planner.resume(RED, state=np.array([0.0, 0.0, 0.0, 1.0]))  # carrying the last block
    step = planner.plan(gripper_at(0.0), "sort", [])
    assert step.done == done
    if done:
        assert "looks finished (0.05), every new subtask 3.0 nats below" in step.reason


def test_done_nats_waits_for_a_release_and_a_subtask_under_way_found_finished():
    ending = beam((None, -0.2), (BLUE, -6.0))
    rules = {"candidates": 4, "done_below": 0.1, "retry_min": 1.0, "done_nats": 2.0}
    planner = VLMPlanner(CandidatesBackend(ending, ending), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         affordance=rules)
    planner.use_affordance(scorer({RED: 1.0, BLUE: 0.5}))
    planner.resume(RED)
    assert not planner.plan(gripper_at(0.0), "sort", []).done  # no release under RED yet: checked as any reply
    planner.resume(RED, releases=1)  # released, but the executor felt the block fall off (1.0): tried again
    step = planner.plan(gripper_at(0.0), "sort", [])
    assert step.subtask == RED and "tried again" in step.reason


def test_done_waits_for_done_confirmations_replies_in_a_row_and_the_evaluation_asks_them():
    from planners.subtask.evaluate import ask
    from planners.subtask.examples import Example

    ending = beam((None, -0.2), (BLUE, -6.0))
    rules = {"candidates": 4, "done_below": 0.1, "done_nats": 2.0}
    planner = VLMPlanner(CandidatesBackend(*[ending] * 6), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         replan={"done_confirmations": 3}, affordance=rules)
    planner.use_affordance(scorer({RED: 0.0, BLUE: 0.5}))
    planner.resume(RED, releases=1)
    got = [planner.plan(gripper_at(0.0), "sort", []) for _ in range(3)]
    assert [s.done for s in got] == [False, False, True] and "(2/3)" in got[1].reason
    assert planner.pending is False
    # `hybrid eval planner` asks an example again while a change waits, as the runtime's next calls would
    ex = Example(0, "sort", [], RED, DONE, frozenset(), releases=1)
    step, ms = ask(planner, ex, {"front": OBS.images["front"][None]}, gripper_at(0.0).state[None])
    assert step.done and ms > 0 and planner.backend.calls == []


@pytest.mark.parametrize("red_when_taken, done", [(0.9, True), (0.3, False)])
def test_done_nats_needs_the_subtask_under_way_to_have_passed_the_check_when_it_was_taken(red_when_taken, done):
    first, after = beam((RED, -0.1)), beam((RED, -0.5), (None, -1.0), (BLUE, -5.0))
    planner = VLMPlanner(CandidatesBackend(first, after), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         replan={"keep_while_holding": True}, affordance={"candidates": 4, "done_nats": 2.0,
                                                                          "done_below": 0.1})
    table = {RED: red_when_taken, BLUE: 0.3}
    planner.use_affordance(scorer(table))
    assert planner.plan(gripper_at(0.0), "sort", []).subtask == RED  # taken (in doubt at 0.3: nothing else)
    planner.plan(gripper_at(1.0), "sort", [])  # grip: kept unasked
    table[RED] = 0.05  # let go: the check finds RED finished
    step = planner.plan(gripper_at(0.0), "sort", [])
    assert step.done == done  # in doubt: the planner keeps RED (no recheck) instead of ending the episode


def test_done_nats_takes_no_done_on_a_failing_check(caplog):
    def broken(obs, texts):
        raise RuntimeError("executor gone")

    after = beam((RED, -0.5), (None, -1.0), (BLUE, -6.0))
    planner = VLMPlanner(CandidatesBackend(after, after), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         affordance={"candidates": 4, "done_below": 0.1, "done_nats": 2.0})
    planner.use_affordance(broken)
    planner.resume(RED, releases=1)
    with caplog.at_level(logging.WARNING):
        step = planner.plan(gripper_at(0.0), "sort", [])
    assert not step.done and step.subtask == RED  # no evidence that RED finished: the planner's own reply stands
    assert "affordance check failed: executor gone" in caplog.text



@pytest.mark.parametrize("red, on_felt, done", [(0.0, True, True), (0.001, True, False), (0.001, False, True)])
def test_done_on_felt_takes_done_only_after_what_the_executor_felt(red, on_felt, done):
    # a tower's level felt resting scores 0; a bowl subtask read finished (where its block was let go of) 0.001
    after = beam((RED, -0.5), (None, -1.0), (BLUE, -5.0))
    planner = VLMPlanner(CandidatesBackend(after, after), vocabulary=[RED, BLUE], prompt={"gripper_index": -1},
                         affordance={"candidates": 4, "done_below": 0.1, "done_nats": 2.0, "done_on_felt": on_felt})
    planner.use_affordance(scorer({RED: red, BLUE: 0.3}))
    planner.resume(RED, releases=1)
    assert planner.plan(gripper_at(0.0), "sort", []).done == done
