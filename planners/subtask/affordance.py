"""Grounded decoding: the planner's candidate replies, checked against what the executor can do from here.

A small planner trained from scratch leans on its language prior: asked what comes after "put a red block in
the red bowl" it names "the other red block" whether or not the picture shows one (on the tabletop's `sort`
a third of the subtasks it switched to named a block that was not there). As SayCan weighs each skill a
language model proposes by the policy's own value of it, the planner here takes its ``candidates`` best
replies (beam search) and switches only to a new subtask the executor's `affordance` scores at least
``min_score``; "done" only while no candidate subtask does (a block left on the table is a subtask left), and
the subtask under way needs no check. A beam's few replies are often the same block named in several ways
("a blue block", "the other blue block", ...), so with ``widen`` the planner, when its beam holds nothing the
executor can start (or only "done"), scores its whole vocabulary by teacher forcing and checks its ``widen``
likeliest new subtasks within ``widen_nats`` of the best: the block the beam never named is found there.
When still no candidate passes, the planner's own best reply stands: a check that fails must not stop the robot.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hybrid.types import Observation, PlanStep

log = logging.getLogger(__name__)

# (observation, subtask texts) -> one score in [0, 1] per text: e.g. `FlowExecutor.affordance`
AffordanceFn = Callable[[Observation, list[str]], np.ndarray]


class AffordanceCheck(BaseModel):
    """``candidates``: replies weighed per plan call (beam search; 0 or 1: plain decoding, no check)."""

    model_config = ConfigDict(extra="forbid")
    candidates: int = Field(0, ge=0)
    rule: Literal["threshold", "product"] = Field("threshold", description="threshold: the likeliest reply "
                                                  "scoring min_score; product: the best log p + weight * log "
                                                  "affordance (SayCan), over the beam and, widened, the vocabulary")
    weight: float = Field(1.0, gt=0, description="the product rule's weight of log affordance (1: SayCan's product)")
    min_score: float = Field(0.5, ge=0, le=1)
    beam_nats: float | None = Field(None, gt=0, description="a beam reply this far below the likeliest one "
                                    "(log-probability) is no candidate (None: all the beam's replies are)")
    replace_nats: float | None = Field(None, gt=0, description="a new subtask the check turns down is replaced "
                                       "only by a subtask at most this far below the planner's likeliest reply "
                                       "(log-probability; the beam's and the widened vocabulary's), else it stands; "
                                       "\"done\" still needs every subtask of the beam and of widen_nats below "
                                       "done_below (None: no limit but beam_nats and widen_nats)")
    widen: int = Field(0, ge=0, description="new subtasks of the whole vocabulary checked when the beam holds "
                       "none the executor can start (0: the beam's alone)")
    widen_nats: float = Field(12.0, gt=0, description="how far below the likeliest reply a widened subtask may "
                              "lie (log-probability): what the planner itself deems impossible is never taken")
    done_below: float | None = Field(None, ge=0, le=1, description="\"done\" ends the episode, so it is taken "
                                     "only while no new subtask checked scores this much; one that does (below "
                                     "min_score) is tried instead (None: min_score)")
    # A runtime restarted mid-carry (and the evaluation's situations with a block held) asks with a block in the
    # cup: misread, the planner names a colour the cup does not hold.
    while_holding: bool = Field(False, description="check while the gripper holds too: the scorer must then judge "
                                "the block in the cup (the tabletop executor's reads its colour with the grasp "
                                "check's model); off: the model's own reply stands while the gripper holds")
    recheck: bool = Field(False, description="check the subtask under way too once the gripper has let go since "
                          "it began (it may be finished; needs the prompt's gripper_index)")
    # Traced in `gather` and `sort`: a third of the lost episodes end with the robot busy for 10+ s on one subtask
    # without a grip, either one the executor cannot start (a block the planner imagined) or one it has finished
    # while the planner keeps it (another block of that colour lets the recheck pass).
    stale_after: int | None = Field(None, ge=1, description="plan calls in a row without the gripper closing "
                                    "after which the subtask under way is no candidate any more and the best "
                                    "new one is taken (needs the prompt's gripper_index; None: never)")
    # Traced in `sort`: asked for "another purple block" when the only one is in the purple bowl, the executor
    # comes down by it, rises with the suction on and nothing held and lets go over the bowl, again and again; the
    # grips keep stale_after from giving the subtask up.
    stale_releases: int | None = Field(None, ge=1, description="releases under the subtask under way after which "
                                       "it is given up as stale_after gives one up (needs the prompt's "
                                       "gripper_index; None: never)")
    # Traced in `sort`: with one block the check scores low (0.2) and the blocks placed higher (0.4), "done" is
    # refused for a placed block's subtask, given up after stale_after calls, and the planner's next likeliest
    # reply is the placed block given up just before: the episode runs out cycling between them (the executor
    # closes the suction on nothing by a placed block, so a grip is no sign that the scene moved on).
    remember_given_up: bool = Field(False, description="a subtask given up (stale_after, stale_releases) comes "
                                    "last among the candidates while the check turns it down (below min_score), "
                                    "until it is taken again; it still holds \"done\" back, and the widened "
                                    "search passes it over")

    # Traced on the tabletop's `stack` (hierarchical agent): after a block was let go of resting on its support the
    # executor scores that subtask 0, but the right next one scored 0.1-0.5 and the planner kept the finished one;
    # its chunks then took the block off the tower again (6-9 of 100 episodes).
    finished_gives_way: bool = Field(False, description="once the gripper has let go since the subtask under way "
                                     "began, a reply that keeps it while the check scores it below done_below (its "
                                     "block placed) gives way to the likeliest new subtask among the replies that "
                                     "scores done_below (needs recheck)")
    # Traced on the tabletop's `stack` (hierarchical agent): after a placement that did not stay up the planner
    # most often carries on as if the tower stood; the executor's check still sees the block to be put there.
    retry_min: float | None = Field(None, ge=0, le=1, description="once the gripper has let go since the subtask "
                                    "under way began, that subtask is kept (tried again) while the check scores it "
                                    "at least this much, whatever the planner replies (needs the prompt's "
                                    "gripper_index; None: the planner decides)")
    retry_limit: int = Field(2, ge=1, description="releases under one subtask after which retry_min no longer "
                             "keeps it")
    # The executor's head scores the blocks already placed as still to move (traced on the expert's held-out
    # recording: every "done" of the planner was held back), while a planner that reads the wrist camera's view of
    # the last release (`PromptConfig.placed_in_prompt`) has seen the block land.
    done_when_placed: bool = Field(False, description="when the planner's reading of the last release under the "
                                   "subtask under way says the block was placed, take its likeliest reply \"done\" "
                                   "unchecked, and \"done\" further down its replies as any switch (no checked "
                                   "subtask scoring min_score, not done_below; needs the prompt's placed_in_prompt)")

    # Traced in the loop with episodes going on after success (`hybrid eval loop.after_success_steps=60`): after the
    # last placement the planner's replies were the subtask under way, then "done", every new subtask 3-6 nats below,
    # but the check held "done" back (it scored subtasks no scene allows 0.1-0.8) and the agent took on new
    # subtasks; in `stack` it took finished towers apart. The check must find the subtask under way finished, and
    # must have passed it when it was taken: in `sort` the planner had said "done" with a block left, after a
    # subtask naming a block that was not there.
    done_nats: float | None = Field(None, gt=0, description="once the gripper has let go under the subtask under "
                                    "way, which the check passed (min_score) when it was taken and now scores below "
                                    "done_below (its block placed), "
                                    "\"done\" is taken when it is the planner's likeliest reply besides that subtask "
                                    "and every new subtask among its replies is at least this much less likely "
                                    "(log-probability), however the check scores them; None: \"done\" is checked as "
                                    "any reply")
    # Traced in the loop (`hybrid eval loop.after_success_steps=60`) with a bowl subtask scored finished once its block
    # was let go of where the executor aimed (`FlowExecutor` bowl_release_radius): the planner said "done" with
    # blocks left in 17 of 46 `gather` stops; a tower's level the guarded place felt rest is another matter.
    done_on_felt: bool = Field(False, description="done_nats counts the subtask under way finished only at a score "
                               "of 0, what the executor felt, not what it reads (the tabletop executor floors its "
                               "readings at 0.001)")

    @property
    def done_score(self) -> float:
        """The score no checked subtask may reach for "done" to be taken."""
        return self.min_score if self.done_below is None else self.done_below


def choose(steps: Sequence[PlanStep], current: str | None, obs: Observation, score: AffordanceFn,
           min_score: float, log_probs: Sequence[float] | None = None, weight: float = 1.0,
           done_below: float | None = None) -> PlanStep:
    """With ``log_probs`` (the planner's, per step) the step that maximises log-probability + ``weight`` * log
    affordance (SayCan's product; "done" counts as afforded as far as no new subtask is, the current subtask fully).
    Without, the first of ``steps`` (best first) that keeps ``current``, scores ``min_score`` or is "done" while
    no new subtask among them scores ``done_below`` (default ``min_score``); else, when "done" was among them, the
    first new subtask scoring ``done_below``; else the first. A scorer that raises or returns the wrong number of finite
    scores is logged and ignored."""
    new = sorted({s.subtask for s in steps if not s.done and s.subtask != current})
    try:
        values = np.asarray(score(obs, new), np.float64).reshape(-1) if new else np.zeros(0)
        if len(values) != len(new) or not np.isfinite(values).all():
            raise ValueError(f"expected {len(new)} finite scores, got {values.tolist()}")
    except Exception as err:  # noqa: BLE001 - a broken check falls back to the planner's own reply
        log.warning("planner: affordance check failed, taking the planner's reply: %s", err)
        return steps[0]
    scores = dict(zip(new, values.tolist(), strict=True))
    can_start = max(scores.values(), default=0.0)
    if log_probs is not None:
        def afforded(step: PlanStep) -> float:
            return 1.0 - can_start if step.done else 1.0 if step.subtask == current else scores[step.subtask]

        weighed = [_weigh(lp, afforded(s), weight) for s, lp in zip(steps, log_probs, strict=True)]
        best = int(np.argmax(weighed))
        if best == 0:
            return steps[0]
        why = f"affordance: {afforded(steps[0]):.2f} for the likelier {steps[0].subtask or 'done'!r}"
        return steps[best].model_copy(update={"reason": why})
    done_below = min_score if done_below is None else done_below
    skipped = []
    for step in steps:
        if step.done:
            ok, name, value = can_start < done_below, "done", can_start
        else:
            ok, name = step.subtask == current or scores[step.subtask] >= min_score, step.subtask
            value = scores.get(step.subtask, 1.0)
        if ok:
            if not skipped:
                return step
            why = "; ".join(f"{s!r} ({v:.2f})" for s, v in skipped)
            return step.model_copy(update={"reason": f"affordance: skipped {why}"})
        skipped.append((name, value))
    if any(s.done for s in steps):  # "done" refused: ending the episode needs stronger evidence than a switch
        doubtful = next((s for s in steps if not s.done and scores.get(s.subtask, 1.0) >= done_below), None)
        if doubtful is not None:
            value = scores.get(doubtful.subtask, 1.0)
            return doubtful.model_copy(update={"reason": f"affordance: {value:.2f}, not enough to end the episode"})
    return steps[0]


def unafforded(step: PlanStep, current: str | None, obs: Observation, score: AffordanceFn, min_score: float) -> bool:
    """Whether ``step`` leaves the executor nothing it can start: "done", or a new subtask scored below
    ``min_score`` (a scorer that fails counts as passing: the check must not stop the robot)."""
    if step.done:
        return True
    if step.subtask == current:
        return False
    value = score_one(score, obs, step.subtask)
    return value is not None and not value >= min_score


def score_one(score: AffordanceFn, obs: Observation, subtask: str) -> float | None:
    """``score``'s value for one subtask, or None (logged) when the scorer fails: callers then leave the planner's
    reply as it is."""
    try:
        return float(np.asarray(score(obs, [subtask]), np.float64).reshape(-1)[0])
    except Exception as err:  # noqa: BLE001
        log.warning("planner: affordance check failed: %s", err)
        return None


def _weigh(log_prob: float, affordance: float, weight: float) -> float:
    return log_prob + weight * float(np.log(max(affordance, 1e-3)))  # floored: a zero score is not -inf


def widened(texts: Sequence[str], log_probs: np.ndarray, current: str | None, obs: Observation,
            score: AffordanceFn, min_score: float, k: int, nats: float,
            weigh_against: tuple[PlanStep, float] | None = None, weight: float = 1.0,
            exclude: Collection[str] = ()) -> PlanStep | None:
    """The likeliest of ``texts`` (every subtask, scored by the planner) that is new (neither ``current`` nor in
    ``exclude``), within ``nats`` of the likeliest and passes ``min_score``, among the ``k`` likeliest new ones;
    None when none does.

    With ``weigh_against`` (the product rule: the reply found so far and its log-probability) that reply and
    the passing ones among the ``k`` are weighed by log p + ``weight`` * log affordance instead, and the best is
    returned: a subtask the planner deems unlikely must be that much more clearly possible than the reply it
    displaces."""
    order = np.argsort(-np.asarray(log_probs, np.float64), kind="stable")
    best = float(np.max(log_probs))
    pool = [i for i in order if texts[i] != current and texts[i] not in exclude and log_probs[i] >= best - nats][:k]
    if not pool:
        return None
    asked = [texts[i] for i in pool]
    reply = weigh_against[0] if weigh_against else None
    if reply is not None and not reply.done and reply.subtask != current and reply.subtask not in asked:
        asked.append(reply.subtask)
    try:
        values = np.asarray(score(obs, asked), np.float64).reshape(-1)
        if len(values) != len(asked) or not np.isfinite(values).all():
            raise ValueError(f"expected {len(asked)} finite scores, got {values.tolist()}")
    except Exception as err:  # noqa: BLE001
        log.warning("planner: affordance check failed, taking the planner's reply: %s", err)
        return None
    if weigh_against is not None:
        return _weigh_widened(texts, log_probs, pool, dict(zip(asked, values.tolist(), strict=True)),
                              current, weigh_against, min_score, weight, best)
    for i, value in zip(pool, values.tolist(), strict=True):
        if value >= min_score:
            why = f"affordance: widened to the vocabulary, {value:.2f} (log p {log_probs[i] - best:.1f} from the best)"
            return PlanStep(subtask=texts[i], reason=why)
    return None


def _weigh_widened(texts, log_probs, pool, scores: dict[str, float], current, reply: tuple[PlanStep, float],
                   min_score: float, weight: float, best: float) -> PlanStep:
    step, log_prob = reply
    can_start = max(scores[texts[i]] for i in pool)
    kept = 1.0 - can_start if step.done else 1.0 if step.subtask == current else scores[step.subtask]
    passing = [i for i in pool if scores[texts[i]] >= min_score]  # widening looks for what the executor can start
    if not passing:
        return step
    top = max(passing, key=lambda i: _weigh(float(log_probs[i]), scores[texts[i]], weight))
    value = scores[texts[top]]
    if _weigh(float(log_probs[top]), value, weight) <= _weigh(log_prob, kept, weight):
        return step
    why = (f"affordance: widened to the vocabulary, {value:.2f} (log p {log_probs[top] - best:.1f} from the best) "
           f"over {step.subtask or 'done'!r} ({kept:.2f})")
    return PlanStep(subtask=texts[top], reason=why)


# transformers' beam search scores the beams it pads its output with (fewer replies than beams) -1e9
_PADDING_SCORE = -1e8


def distinct(candidates: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Each reply once, best first, without the padding beams (cut-off, empty or repeated sequences)."""
    seen: set[str] = set()
    out = []
    for text, s in candidates:
        if math.isfinite(s) and s > _PADDING_SCORE and text.strip() and text not in seen:
            seen.add(text)
            out.append((text, s))
    return out
