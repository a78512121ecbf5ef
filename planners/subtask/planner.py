"""`VLMPlanner`: prompt a vision-language backend, validate its reply, retry, or fault cleanly."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from hybrid.types import Observation, PlanStep, Subtask
from planners.subtask.affordance import (
    AffordanceCheck,
    AffordanceFn,
    choose,
    distinct,
    score_one,
    unafforded,
    widened,
)
from planners.subtask.prompting import (
    PLACED_QUESTION,
    PLACED_REPLIES,
    PromptConfig,
    build_messages,
    camera_image,
    planner_image,
)
from planners.subtask.replan import ReplanPolicy
from planners.subtask.reply import BadReply, PlannerFault, make_vocabulary, parse_reply, reply_text
from planners.subtask.success import SuccessCheck, SuccessDetector

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A backend call that failed before giving a reply (timeout, server error, connection)."""

    def __init__(self, message: str, kind: str = "server_error", retryable: bool = True):
        self.kind, self.retryable = kind, retryable
        super().__init__(message)


class Backend(Protocol):
    def complete(self, messages: list[dict], image: np.ndarray) -> str: ...


class VLMPlanner:
    """A `SubtaskPlanner` over any backend that turns (messages, image) into reply text.

    The planner remembers the subtask it last asked for: the runtime's history holds only finished
    subtasks, and the model needs to know which one is under way to judge from the image whether it
    is finished. With ``prompt.gripper_index`` it also counts the gripper's releases since that subtask
    began, from the states it is shown (so the replan period must be shorter than a carry), and can keep
    a subtask through a grip (`ReplanPolicy.keep_while_holding`, `keep_while_approaching`) or give it up
    after calls without one (`AffordanceCheck.stale_after`). Each bad
    reply (invalid JSON, schema violation, empty or unknown subtask) and each retryable backend error
    costs one of ``max_attempts``; then `PlannerFault` is raised.
    """

    def __init__(self, backend: Backend, prompt: PromptConfig | dict | None = None,
                 vocabulary: list[str] | None = None, max_attempts: int = 3, retry_backoff_s: float = 0.0,
                 replan: ReplanPolicy | dict | None = None, affordance: AffordanceCheck | dict | None = None,
                 success: SuccessCheck | dict | None = None):
        """``affordance``: weigh that many candidate replies against the executor's affordance before switching
        subtask (`planners/subtask/affordance.py`); the runtime hands the scorer over with `use_affordance`.
        ``success``: a success detector's word on "done" (`planners/subtask/success.py`; None: off)."""
        if max_attempts < 1:
            raise ValueError("max_attempts: expected >= 1")
        self.affordance = affordance if isinstance(affordance, AffordanceCheck) else \
            AffordanceCheck.model_validate(dict(affordance or {}))
        if self.affordance.candidates > 1 and not callable(getattr(backend, "candidates", None)):
            raise ValueError(f"affordance.candidates: {type(backend).__name__} cannot return candidate replies")
        if self.affordance.retry_min is not None and self.affordance.candidates < 2:
            raise ValueError("affordance.retry_min: needs candidates >= 2 (the check is on with them)")
        for name in ("stale_after", "stale_releases"):
            if getattr(self.affordance, name) and self.affordance.candidates < 2:
                raise ValueError(f"affordance.{name}: needs candidates >= 2 (replies to choose from instead)")
        if self.affordance.widen and not (callable(getattr(backend, "score", None)) and vocabulary):
            raise ValueError(f"affordance.widen: needs a subtask vocabulary and a backend that scores replies "
                             f"({type(backend).__name__})")
        self._score: AffordanceFn | None = None
        self.success = success if isinstance(success, SuccessCheck) or success is None else \
            SuccessCheck.model_validate(dict(success))
        self.detector = None if self.success is None else \
            SuccessDetector.from_pretrained(self.success.model, self.success.device)
        # the detector's readings in the plan call under way, by the text asked about (nan: the reading failed)
        self._success_p: dict[str, float] = {}
        self._instruction = ""
        # The executor's count of this episode's releases that placed nothing (`use_unplaced_releases`), the count
        # last seen, and such releases under the subtask under way
        self._unplaced: Callable[[], int] | None = None
        self._unplaced_seen = self._unplaced_under = 0
        self.backend = backend
        self.prompt = prompt if isinstance(prompt, PromptConfig) else PromptConfig.model_validate(dict(prompt or {}))
        if self.prompt.placed_in_prompt and not callable(getattr(backend, "score", None)):
            raise ValueError(f"prompt.placed_in_prompt: {type(backend).__name__} cannot score the two answers")
        self.vocabulary = make_vocabulary(None if vocabulary is None else list(vocabulary))
        # What a widened check scores: every subtask once, as the reply the model gives (fixed with the vocabulary)
        self._widen_texts = sorted(set(self.vocabulary.values())) if self.affordance.widen else []
        self._widen_replies = [reply_text(PlanStep(subtask=t)) for t in self._widen_texts]
        self.max_attempts, self.retry_backoff_s = int(max_attempts), float(retry_backoff_s)
        self.replan = replan if isinstance(replan, ReplanPolicy) else ReplanPolicy.model_validate(dict(replan or {}))
        replan = self.replan
        grip_rules = (replan.keep_while_holding or replan.keep_while_approaching or self.affordance.stale_after
                      or self.affordance.stale_releases or self.affordance.retry_min is not None)
        if grip_rules and self.prompt.gripper_index is None:  # e.g. the tabletop config over a model without one
            log.warning("planner: replan.keep_while_holding / keep_while_approaching and affordance.stale_after / "
                        "stale_releases / retry_min are off: they read the gripper, and the prompt has no "
                        "gripper_index")
        if self.affordance.done_when_placed and not self.prompt.placed_in_prompt:
            log.warning("planner: affordance.done_when_placed is off: the prompt reads no release view "
                        "(placed_in_prompt)")
        self.current: str | None = None
        self.releases, self._closed = 0, False
        self._release_view: np.ndarray | None = None  # prompt.release_camera at the last release under `current`
        self._placed: bool | None = None  # the model's reading of that view (prompt.placed_in_prompt), once read
        self._armed, self._approach_calls = False, 0  # came down from above since the last grip; calls held
        self._idle_calls = 0  # calls since the gripper last closed or the subtask began
        self._dropped: list[str] = []  # given up before any release: the runtime's history counts them done
        self._given_up: set[str] = set()  # given up and not taken again since (AffordanceCheck.remember_given_up)
        # The subtask under way was taken while the check scored it below min_score (or could not score it): its
        # release is no sign that anything was placed (traced in `sort`: a block named that was not there, "done"
        # after it with a block of another colour left). Read by `AffordanceCheck.done_nats`.
        self._doubted = False
        self._proposal: tuple[str, int] | None = None  # an unconfirmed change of subtask, and its replies so far
        # Called as (obs, instruction, done, current, releases) whenever the model is asked: on-policy data
        # collection (`planners/subtask/on_policy.py`) records what it was asked in its own closed loop.
        self.on_ask: Callable[[Observation, str, list[str], str | None, int], None] | None = None

    def reset(self) -> None:
        self.resume(None)
        self._dropped = []
        self._unplaced_seen = 0

    @property
    def release_view(self) -> np.ndarray | None:
        """What `prompt.release_camera` saw at the last release under the subtask under way (None: none yet, or no
        release camera): the view the model is shown beside the cameras, as on-policy recordings keep it."""
        return self._release_view if self.releases else None

    @property
    def pending(self) -> bool:
        """Whether a change of subtask (or "done") waits for more replies in a row (`ReplanPolicy`): the runtime's next
        calls decide it."""
        return self._proposal is not None

    @property
    def wants_affordance(self) -> bool:
        return self.affordance.candidates > 1

    def use_affordance(self, score: AffordanceFn | None) -> None:
        """Check new subtasks with ``score`` (e.g. the executor's `affordance`); None turns the check off."""
        self._score = score

    def use_unplaced_releases(self, count: Callable[[], int] | None) -> None:
        """Read with ``count`` (e.g. the executor's `unplaced_releases`) how many of this episode's releases placed
        nothing, so that they do not count as releases (`ReplanPolicy.skip_unplaced_releases`); None: every
        release counts."""
        self._unplaced = count
        self._unplaced_seen = 0

    def _unplaced_since(self) -> int:
        """Releases the executor reports as placing nothing since the last call that saw the gripper open (0
        without a count, or when reading it fails)."""
        if self._unplaced is None or not self.replan.skip_unplaced_releases:
            return 0
        try:
            count = int(self._unplaced())
        except Exception as err:  # noqa: BLE001 - a failed reading must not stop the planner
            log.warning("planner: reading the executor's unplaced releases failed: %s", err)
            return 0
        new, self._unplaced_seen = max(count - self._unplaced_seen, 0), max(count, self._unplaced_seen)
        return new

    def _reply(self, messages: list[dict], image: np.ndarray, obs: Observation) -> PlanStep:
        """One reply: the backend's, or with an affordance check the best candidate the executor can start."""
        # The executor's check asks whether a subtask can start with the gripper open (its head is trained on such
        # frames): with a block in the cup, e.g. a runtime restarted mid-carry, the model's own reply stands unless
        # the scorer judges a held block (`AffordanceCheck.while_holding`).
        if (not self.wants_affordance or self._score is None
                or (self._closed and not self.affordance.while_holding)):
            step = self._detected_done(obs)
            if step is not None:
                return step
            step = parse_reply(self.backend.complete(messages, image), self.vocabulary)
            if step.done and self._refuses_done(obs) and self.current is not None:
                return PlanStep(subtask=self.current, reason=self._refusal())
            return step
        detected = self._detected_done(obs) if self.success is None or self.success.done_nats is None else None
        if detected is not None:
            return detected
        check = self.affordance
        stale = self._stale()
        steps, log_probs, bad = [], [], []
        for text, log_prob in distinct(self.backend.candidates(messages, image, check.candidates)):
            try:
                step = parse_reply(text, self.vocabulary)
            except BadReply as err:
                bad.append(err)
                continue
            if not (stale and not step.done and step.subtask == self.current):
                steps.append(step)
                log_probs.append(log_prob)
        if stale:
            log.info("planner: %d calls without a grip, %d releases: %r is given up", self._idle_calls, self.releases,
                     self.current)
            if check.remember_given_up:
                self._given_up.add(self.current)
            if not steps:  # the beam named only the stale subtask: look further, or keep it
                found = self._widened(messages, image, obs, self.current, None, None)
                return found or PlanStep(subtask=self.current)
        if not steps:
            raise bad[0] if bad else BadReply("empty", "no candidate reply")
        if self._closed and any(not s.done for s in steps):  # a block in the cup: a subtask is under way
            keep = [i for i, s in enumerate(steps) if not s.done]
            steps, log_probs = [steps[i] for i in keep], [log_probs[i] for i in keep]
        if self.success is not None and self.success.done_nats is not None:
            detected = self._detected_done(obs, steps, log_probs)
            if detected is not None:
                return detected
        if self._current_finished(obs):  # its block is where it goes: a new subtask (or "done") comes next
            keep = [i for i, s in enumerate(steps) if s.done or s.subtask != self.current]
            if not keep:
                found = self._widened(messages, image, obs, self.current, None, None)
                return found or PlanStep(subtask=self.current)
            steps, log_probs = [steps[i] for i in keep], [log_probs[i] for i in keep]
        if any(s.done for s in steps) and self._refuses_done(obs):
            keep = [i for i, s in enumerate(steps) if not s.done]
            if not keep:  # nothing but "done": the subtask under way goes on
                return PlanStep(subtask=self.current, reason=self._refusal()) if self.current else steps[0]
            steps, log_probs = [steps[i] for i in keep], [log_probs[i] for i in keep]
        if check.done_when_placed and steps[0].done and self._placed:
            return steps[0].model_copy(update={"reason": "done: the last release placed its block (release view)"})
        done = self._done_after_release(steps, log_probs, obs)
        if done is not None:
            return self._retried(done, obs, stale)
        if check.beam_nats is not None:  # what the planner itself deems unlikely is not taken for a failed check
            keep = [i for i, lp in enumerate(log_probs) if lp >= max(log_probs) - check.beam_nats]
            steps, log_probs = [steps[i] for i in keep], [log_probs[i] for i in keep]
        last = self._last_resorts(steps, obs)
        if last:  # tried after every other; they still hold "done" back as any candidate does
            order = sorted(range(len(steps)), key=lambda i: steps[i].subtask in last)
            steps, log_probs = [steps[i] for i in order], [log_probs[i] for i in order]
        # The subtask under way needs no check, or (recheck) none until the gripper has let go since it began.
        may_be_finished = check.recheck and self.prompt.gripper_index is not None and self.releases > 0
        current = None if may_be_finished or stale else self.current
        product = check.rule == "product"
        step = choose(steps, current, obs, self._score, check.min_score, log_probs if product else None,
                      check.weight, self._done_score())
        if step is not steps[0] and step.reason:  # how much less likely the reply taken is, for traces
            gap = _log_prob_of(step, steps, log_probs) - max(
                (lp for s, lp in zip(steps, log_probs, strict=True) if s.subtask not in last), default=log_probs[0])
            # (not while holding: a reading of the block in the cup outweighs the planner, replace_nats guards
            # the pick map's check of blocks on the table)
            if not self._closed and _too_unlikely(check, steps[0], step, gap):
                why = f"affordance: turned down, and nothing within {check.replace_nats} nats of it passes"
                step = steps[0].model_copy(update={"reason": why})
            else:
                step = step.model_copy(update={"reason": f"{step.reason} (log p {gap:.1f} from the best)"})
        if check.finished_gives_way and may_be_finished and not step.done and step.subtask == self.current:
            step = self._past_finished(steps, obs) or step
        if check.widen and unafforded(step, current, obs, self._score, check.min_score):
            reply = None
            if product:  # the reply found so far, with the beam's log-probability of it
                reply = (step, _log_prob_of(step, steps, log_probs))
            step = self._widened(messages, image, obs, current, step, reply, step.subtask in last) or step
        return self._retried(step, obs, stale)

    def _success_prob(self, obs: Observation, text: str | None = None) -> float | None:
        """The success detector's probability that ``text`` (default: the instruction) is finished in ``obs``, read
        once per plan call; None without a detector or when it fails (logged: the planner then decides as without
        one)."""
        if self.detector is None:
            return None
        text = self._instruction if text is None else text
        if text not in self._success_p:
            try:
                self._success_p[text] = self.detector.prob(obs.images, text)
            except Exception as err:  # noqa: BLE001 - a failed reading must not stop the planner
                log.warning("planner: the success detector failed on %r: %s", text, err)
                self._success_p[text] = math.nan  # not read again in this call
        p = self._success_p[text]
        return None if math.isnan(p) else p

    def _detected_done(self, obs: Observation, steps: list[PlanStep] | None = None,
                       log_probs: list[float] | None = None) -> PlanStep | None:
        """"done" when the gripper has let go under the subtask under way and is open, and the success detector is
        `SuccessCheck.done_at` sure that the task is finished (with `SuccessCheck.done_nats`, and the planner ranks
        "done" that far above every new subtask of ``steps``); None otherwise."""
        check = self.success
        if (check is None or check.done_at is None or self.current is None or self.releases == 0 or self._closed
                or self.prompt.gripper_index is None):
            return None
        gap = None
        if check.done_nats is not None:
            others = [(s, lp) for s, lp in zip(steps or [], log_probs or [], strict=True)
                      if s.done or s.subtask != self.current]
            if not others or not others[0][0].done:
                return None
            gap = others[0][1] - max((lp for _, lp in others[1:]), default=-math.inf)
            if gap < check.done_nats:
                return None
        p = self._success_prob(obs)
        if p is None or p < check.done_at:
            return None
        also = "" if gap is None else f", every new subtask {gap:.1f} nats below \"done\""
        return PlanStep(done=True, reason=f"done: the success detector finds the task finished ({p:.2f}){also}")

    def _current_finished(self, obs: Observation) -> bool:
        """Whether the success detector, asked about the subtask under way after a release under it with the gripper
        open, is `SuccessCheck.subtask_at` sure that it is finished (False when off or when the reading fails)."""
        check = self.success
        if (check is None or check.subtask_at is None or self.current is None or self.releases == 0 or self._closed
                or self.prompt.gripper_index is None):
            return False
        p = self._success_prob(obs, self.current)
        if p is None:
            return False
        if p >= check.subtask_at:
            log.info("planner: the success detector finds %r finished (%.2f)", self.current, p)
        return p >= check.subtask_at

    def _refuses_done(self, obs: Observation) -> bool:
        """Whether the success detector is less than `SuccessCheck.refuse_below` sure that the task is finished."""
        if self.success is None or self.success.refuse_below is None:
            return False
        p = self._success_prob(obs)
        return p is not None and p < self.success.refuse_below

    def _refusal(self) -> str:
        p = self._success_p[self._instruction]
        return f"\"done\" refused: the success detector finds the task unfinished ({p:.2f})"

    def _done_after_release(self, steps: list[PlanStep], log_probs: list[float], obs: Observation) -> PlanStep | None:
        """"done" when, after a release under the subtask under way that the check scores finished (below
        `done_score`; 0 with `done_on_felt`) and passed (`min_score`) when it was taken, "done" is the likeliest of
        ``steps`` but that subtask and every new subtask lies `AffordanceCheck.done_nats` below it; None otherwise (or
        with the rule off)."""
        if (self.affordance.done_nats is None or self.releases == 0 or self._closed or self.current is None
                or self._doubted):
            return None
        others = [(s, lp) for s, lp in zip(steps, log_probs, strict=True) if s.done or s.subtask != self.current]
        if not others or not others[0][0].done:
            return None
        gap = others[0][1] - max((lp for _, lp in others[1:]), default=-math.inf)
        if gap < self.affordance.done_nats:
            return None
        value = score_one(self._score, obs, self.current)  # a failing check: no evidence, "done" is checked as ever
        finished = value is not None and (value <= 0.0 if self.affordance.done_on_felt else value < self._done_score())
        if not finished:
            return None
        why = f"done: {self.current!r} looks finished ({value:.2f}), every new subtask {gap:.1f} nats below \"done\""
        return others[0][0].model_copy(update={"reason": why})

    def _taken_in_doubt(self, step: PlanStep, obs: Observation) -> bool:
        """Whether the check scores ``step``, a subtask being taken, below `min_score` or fails to score it (asked
        only for `AffordanceCheck.done_nats`)."""
        if self.affordance.done_nats is None or self._score is None or step.done:
            return False
        value = score_one(self._score, obs, step.subtask)
        return value is None or not value >= self.affordance.min_score

    def _past_finished(self, steps: list[PlanStep], obs: Observation) -> PlanStep | None:
        """The likeliest new subtask among ``steps`` that the check scores `done_score`, when it scores the subtask
        under way below that (the executor finds nothing left of it: its block let go of resting where it goes)
        (`AffordanceCheck.finished_gives_way`); None otherwise, or when the check fails."""
        others = [s.subtask for s in steps if not s.done and s.subtask != self.current]
        if not others:
            return None
        try:
            values = np.asarray(self._score(obs, [self.current, *others]), np.float64).reshape(-1)
            if len(values) != len(others) + 1 or not np.isfinite(values).all():
                raise ValueError(f"expected {len(others) + 1} finite scores, got {values.tolist()}")
        except Exception as err:  # noqa: BLE001 - the check must not stop the robot
            log.warning("planner: affordance check failed: %s", err)
            return None
        threshold = self._done_score()
        if values[0] >= threshold:
            return None
        for text, value in zip(others, values[1:].tolist(), strict=True):
            if value >= threshold:
                why = f"affordance: {self.current!r} looks finished ({values[0]:.2f}); {value:.2f} for {text!r}"
                return PlanStep(subtask=text, reason=why)
        return None

    def _read_placed(self, instruction: str, done: list[str], current: str | None, state: np.ndarray,
                     releases: int, image: np.ndarray) -> bool | None:
        """With `prompt.placed_in_prompt`, whether the last release placed its block, as the model reads the
        release view (asked once per release); None when off or when the reading fails (the line is left out)."""
        if not self.prompt.placed_in_prompt or self._placed is not None:
            return self._placed
        messages = build_messages(self.prompt, instruction, done, current, state, releases, question=PLACED_QUESTION)
        try:
            yes, no = np.asarray(self.backend.score(messages, image, list(PLACED_REPLIES)), np.float64).reshape(2)
        except Exception as err:  # noqa: BLE001 - a failed reading must not stop the planner
            log.warning("planner: reading the release view failed: %s", err)
            return None
        self._placed = bool(yes > no)
        return self._placed

    def _retried(self, step: PlanStep, obs: Observation, stale: bool) -> PlanStep:
        """``step``, or the subtask under way again when the gripper has let go since it began (at most
        `retry_limit` times) and the check still scores it `retry_min`: the placement did not stay."""
        check = self.affordance
        keeps = not step.done and step.subtask == self.current
        if (check.retry_min is None or keeps or stale or self.current is None or self.prompt.gripper_index is None
                or not 0 < self.releases <= check.retry_limit):
            return step
        value = score_one(self._score, obs, self.current)
        if value is None or not value >= check.retry_min:
            return step
        why = f"affordance: {value:.2f} that it can still start after {self.releases} release(s): tried again"
        return PlanStep(subtask=self.current, reason=why)

    def _widened(self, messages: list[dict], image: np.ndarray, obs: Observation, current: str | None,
                 step: PlanStep | None, reply: tuple[PlanStep, float] | None,
                 last_resort: bool = False) -> PlanStep | None:
        """The vocabulary's best subtask other than ``current`` (and those given up) that the executor can start,
        in place of ``step`` (None: nothing found so far; ``last_resort``: one given up and still turned down);
        None when the widened search finds none or fails."""
        check = self.affordance
        if not check.widen:
            return None
        try:
            scores = self.backend.score(messages, image, self._widen_replies)
        except Exception as err:  # noqa: BLE001 - a failed search keeps the reply found so far
            kept = step and (step.subtask or "done")
            log.warning("planner: scoring the vocabulary failed, keeping %r: %s", kept, err)
            return None
        # in place of "done", or of a last resort, any subtask the executor might start will do (done_below)
        in_place_of_done = step is not None and (step.done or last_resort)
        threshold = self._done_score() if in_place_of_done else check.min_score
        nats = check.widen_nats
        if step is not None and not in_place_of_done and check.replace_nats is not None and not self._closed:
            nats = min(nats, check.replace_nats)
        return widened(self._widen_texts, scores, current, obs, self._score, threshold, check.widen,
                       nats, reply, check.weight, exclude=self._given_up)

    def _done_score(self) -> float:
        """The score no checked subtask may reach for "done" to be taken: `AffordanceCheck.done_score`, or with
        `done_when_placed` and the last release read as placed, `min_score` (as for any switch)."""
        placed = self.affordance.done_when_placed and self._placed
        return self.affordance.min_score if placed else self.affordance.done_score

    def _last_resorts(self, steps: list[PlanStep], obs: Observation) -> set[str]:
        """The candidate subtasks given up before that the check still turns down (below ``min_score``): tried
        after every other. One it now passes is a candidate like any other (the executor may have stalled on it
        for a while, e.g. behind another block); a failing scorer leaves the order as it is."""
        given_up = sorted({s.subtask for s in steps if not s.done and s.subtask in self._given_up})
        if not given_up:
            return set()
        try:
            values = np.asarray(self._score(obs, given_up), np.float64).reshape(-1)
            if len(values) != len(given_up):
                raise ValueError(f"expected {len(given_up)} scores, got {len(values)}")
        except Exception as err:  # noqa: BLE001 - the check must not stop the robot
            log.warning("planner: affordance check failed: %s", err)
            return set()
        min_score = self.affordance.min_score
        return {text for text, value in zip(given_up, values.tolist(), strict=True) if not value >= min_score}

    def _stale(self) -> bool:
        """Whether the subtask under way has gone `stale_after` calls without a grip or let go `stale_releases`
        times (it is given up)."""
        after, releases = self.affordance.stale_after, self.affordance.stale_releases
        return self.current is not None and ((after is not None and self._idle_calls >= after)
                                             or (releases is not None
                                                 and self.releases + self._unplaced_under >= releases))

    def resume(self, current: str | None, releases: int = 0, state: np.ndarray | None = None,
               release_view: np.ndarray | None = None) -> None:
        """Take up a runtime's situation: ``current`` under way, the gripper released ``releases`` times since
        it began and now as in ``state``, the last release seen as ``release_view`` by `prompt.release_camera`
        (evaluation builds situations from recorded frames this way)."""
        self.current, self.releases, self._proposal = current, int(releases), None
        self._release_view = release_view if releases else None
        self._placed = None
        self._closed = state is not None and self.prompt.gripper_index is not None and self._gripper_closed(state)
        self._armed, self._approach_calls = False, 0  # an approach is seen only as it comes down
        self._idle_calls = self._unplaced_under = 0
        self._given_up = set()
        self._doubted = False

    def _confirmed(self, step: PlanStep) -> PlanStep:
        """``step``, or the current subtask while a change to ``step`` lacks the replies in a row that
        `ReplanPolicy` asks for (more of them before the gripper has let go since the current one began)."""
        if self.current is None or (step.subtask == self.current and not step.done):
            self._proposal = None
            return step
        released = self.prompt.gripper_index is None or self.releases > 0
        needed = self.replan.switch_confirmations if released else self.replan.switch_confirmations_before_release
        if step.done and self.replan.done_confirmations is not None:
            needed = self.replan.done_confirmations
        change = "<done>" if step.done else step.subtask
        count = self._proposal[1] + 1 if self._proposal and self._proposal[0] == change else 1
        if count < needed:
            self._proposal = (change, count)
            log.debug("planner: holding %r (%d/%d replies for %r)", self.current, count, needed, change)
            return PlanStep(subtask=self.current, reason=f"unconfirmed change to {change!r} ({count}/{needed})")
        self._proposal = None
        return step

    def _gripper_closed(self, state: np.ndarray) -> bool:
        return _state_entry(state, self.prompt.gripper_index, "gripper_index") >= self.prompt.gripper_closed

    def _track_gripper(self, obs: Observation) -> None:
        if self.prompt.gripper_index is None:
            return
        state = obs.state
        closed = self._gripper_closed(state)
        # read while the gripper is open: a let-go the executor reports before the gripper opens is this release's
        unplaced = 0 if closed else self._unplaced_since()
        self._unplaced_under += unplaced
        released = self._closed and not closed
        if released and unplaced:
            log.info("planner: the executor reports that the release placed nothing: %r goes on", self.current)
        elif released:
            self.releases += 1
            if self.prompt.release_camera is not None:  # the first call to see the gripper open looks at the release
                view = camera_image(obs, self.prompt.release_camera)  # (planner_image names a missing camera)
                self._release_view, self._placed = None if view is None else np.array(view), None
        self._closed = closed
        self._idle_calls = 0 if closed else self._idle_calls + 1
        if self.replan.keep_while_approaching is None:
            return
        high = _state_entry(state, self.replan.height_index, "height_index") >= self.replan.keep_while_approaching
        # armed by an open gripper up high, disarmed by a grip: right after a release the effector is low but
        # leaving, and only a new descent is an approach
        self._armed = not closed and (high or self._armed)
        approaching = self._armed and not high
        self._approach_calls = self._approach_calls + 1 if approaching else 0

    def _approaching(self) -> bool:
        """A descent onto a block is under way and has not yet held the subtask ``approach_max_calls`` times."""
        return 0 < self._approach_calls <= self.replan.approach_max_calls

    def situation(self, history: list[Subtask]) -> tuple[list[str], str | None, int]:
        """What the model is told: the finished subtasks (less those given up), the one under way, and the
        gripper's releases since it began."""
        done = [s.text for s in history if s.status == "done"]
        for text in self._dropped:  # given up, not finished: the model is not told otherwise
            if text in done:
                done.remove(text)
        current = self.current if self.current is not None and self.current not in done else None
        return done, current, self.releases if current else 0

    def messages(self, instruction: str, history: list[Subtask], state: np.ndarray | None = None) -> list[dict]:
        done, current, releases = self.situation(history)
        return build_messages(self.prompt, instruction, done, current, state, releases)

    def plan(self, obs: Observation, instruction: str, history: list[Subtask]) -> PlanStep:
        self._track_gripper(obs)
        self._success_p, self._instruction = {}, instruction
        if self.replan.keep_while_holding and self._closed and self.current is not None:
            return PlanStep(subtask=self.current, reason="holding a block: the subtask under way is kept")
        if self._approaching() and self.current is not None:
            return PlanStep(subtask=self.current, reason="coming down to grip: the subtask under way is kept")
        done, current, releases = self.situation(history)
        if self.on_ask is not None:
            self.on_ask(obs, instruction, done, current, releases)
        image = planner_image(obs, self.prompt, self._release_view if releases else None)
        placed = self._read_placed(instruction, done, current, obs.state, releases, image) if releases else None
        messages = build_messages(self.prompt, instruction, done, current, obs.state, releases, placed)
        attempts: list[str] = []
        kind = "bad_reply"
        for attempt in range(self.max_attempts):
            if attempt and self.retry_backoff_s:
                time.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            try:
                step = self._reply(messages, image, obs)
            except BadReply as err:
                kind = "bad_reply"
                attempts.append(str(err))
                log.warning("planner: bad reply on attempt %d: %s", attempt + 1, err)
                continue
            except BackendError as err:
                kind = err.kind
                attempts.append(str(err))
                log.warning("planner: backend error on attempt %d: %s", attempt + 1, err)
                if not err.retryable:
                    break
                continue
            stale = self._stale()
            step = self._confirmed(step)
            if step.subtask != self.current:  # a new subtask begins now
                if stale and not self.releases:  # never let go of a block: not done, whatever the history says
                    self._dropped.append(self.current)
                self._given_up.discard(step.subtask)  # taken again (nothing else was left): it runs its course
                self.releases, self._idle_calls, self._release_view, self._placed = 0, 0, None, None
                self._unplaced_under = 0
                self._doubted = self._taken_in_doubt(step, obs)
            self.current = step.subtask
            return step
        raise PlannerFault(kind, attempts)


def _too_unlikely(check: AffordanceCheck, reply: PlanStep, taken: PlanStep, gap: float) -> bool:
    """Whether ``taken``, ``gap`` nats below the planner's ``reply`` (a new subtask the check turned down), lies
    beyond ``check.replace_nats``: the check is weaker evidence than a confident planner (on the tabletop's `stack`
    it turned down 8 of 50 right first subtasks for pairs up to 11 nats less likely)."""
    return (check.replace_nats is not None and not reply.done and not taken.done
            and gap < -check.replace_nats)


def _state_entry(state: np.ndarray, index: int, name: str) -> float:
    """``state[index]``, or a ValueError naming the setting ``name`` when the state has no such entry."""
    state = np.asarray(state).reshape(-1)
    if not -len(state) <= index < len(state):
        raise ValueError(f"{name} {index} is outside the robot state ({len(state)} entries)")
    return float(state[index])


def _log_prob_of(step: PlanStep, steps: list[PlanStep], log_probs: list[float]) -> float:
    """The beam's log-probability of ``step`` (a reply of ``steps``, or a copy of one with its reason changed)."""
    return next(lp for s, lp in zip(steps, log_probs, strict=True) if (s.done, s.subtask) == (step.done, step.subtask))
