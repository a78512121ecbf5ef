"""When the runtime should ask the planner again, and when its reply may replace the subtask under way."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReplanPolicy(BaseModel):
    """Replanning triggers a runtime reads from the planner's config, and how many replies the planner
    itself wants before it drops the subtask under way (`VLMPlanner`).

    The planner decides subtask completion from the image, so it is asked again when something reports the
    subtask done (`HybridAgent.report_subtask_done`), on a timer (completion can happen between reports), and
    when the robot has not moved for a while (a stuck subtask may need another one). Both runtimes ask through
    `HybridAgent.plan_due`: the synchronous loop on the env's clock (its chunks' ``dt`` per step), the
    asynchronous one on the wall clock, each at most as often as it offers (every chunk; ``planner_hz``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    on_subtask_done: bool = Field(True, description="replan when the current subtask is reported done")
    every_s: float | None = Field(2.0, gt=0, description="replan at least this often (None: no timer)")
    on_stall_s: float | None = Field(5.0, gt=0, description="replan once progress has stalled this long")
    # Asked every chunk, a planner that is right 95% of the time still names another subtask now and then in
    # the middle of a carry, and the executor turns to it. A change of subtask (or done) is taken only once
    # that many replies in a row name it; before the gripper has let go since the current subtask began
    # (with the prompt's gripper_index) a pick-and-place cannot have ended, so more are asked for there.
    switch_confirmations: int = Field(1, ge=1, description="consecutive replies naming a change before it is taken")
    switch_confirmations_before_release: int = Field(
        1, ge=1, description="the same while the gripper has not let go since the current subtask began")
    # "done" ends the episode, and the planner may say it as it lets go of the last block, before the cup has risen
    # and the block come to rest (traced in `sort`: a block pinned under the cup on the one below never came to rest
    # in its bowl).
    done_confirmations: int | None = Field(None, ge=1, description="consecutive replies saying \"done\" before it is "
                                           "taken (None: as any change)")
    # A pick-and-place finishes when its block is let go of: while the gripper holds one, a change of subtask
    # can only make the executor carry it somewhere else (to another bowl, as traced in `sort`).
    keep_while_holding: bool = Field(
        False, description="keep the current subtask, without asking the model, while the gripper is closed "
        "(needs the prompt's gripper_index)")
    # Between the descent onto a block and the grip, a change of subtask leaves the executor low over that block
    # with the gripper open, a state its demonstrations never pair with another subtask: it grips the block
    # below anyway and carries it to the new subtask's target (traced in `sort`: most wrong-block grasps came
    # within one action of a switch). So a descent from above, gripper open, holds the subtask until the grip.
    keep_while_approaching: float | None = Field(
        None, gt=0, description="keep the current subtask, without asking the model, while the gripper is open "
        "and the effector has come down below this height (state entry height_index) from above since the "
        "gripper last closed (needs the prompt's gripper_index); None: off")
    height_index: int | None = Field(None, description="the state entry of the effector's height")
    approach_max_calls: int = Field(4, ge=1, description="calls in a row one approach may keep the subtask "
                                    "(a robot hovering low must not hold the plan for ever)")
    # An executor's grasp check lets go of a wrong block (or of nothing) right after the lift: a release that placed
    # nothing. Counted, it told the model that the pick-and-place had ended, and the model moved on to the next
    # level of a tower still unbuilt (traced in `stack`: 28 such switches, every one in a failed episode). Which
    # let-gos placed nothing is the executor's to say: the tabletop's reports those under a tower's levels only
    # (under a bowl subtask the let-go can be the sign that the block named is not there, and counting it helps).
    skip_unplaced_releases: bool = Field(
        False, description="a release the executor reports as placing nothing (`VLMPlanner.use_unplaced_releases`) "
        "is not counted as one: not told to the model, not a reason to check or retry the subtask (it still counts "
        "towards the planner's stale_releases)")

    @model_validator(mode="after")
    def _approach_needs_height(self) -> ReplanPolicy:
        if self.keep_while_approaching is not None and self.height_index is None:
            raise ValueError("keep_while_approaching: needs height_index (the state entry of the effector's height)")
        return self

    def should_replan(self, now: float, last_plan_time: float | None, subtask_changed: bool = False,
                      stalled: bool | float = False) -> bool:
        """True when the planner should be asked now.

        ``last_plan_time`` is None before the first plan (always replan); ``subtask_changed`` means
        the current subtask was reported done; ``stalled`` is either a flag from the runtime or how
        many seconds progress has stalled (compared with ``on_stall_s``).
        """
        if last_plan_time is None:
            return True
        if subtask_changed and self.on_subtask_done:
            return True
        if self.every_s is not None and now - last_plan_time >= self.every_s - 1e-9:  # steps * dt rounds
            return True
        if self.on_stall_s is not None and stalled is not False:
            return stalled is True or float(stalled) >= self.on_stall_s
        return False
