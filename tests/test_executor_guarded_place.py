"""The guarded place: a block-on-block release waits until the held block rests on something, and a block resting on
no block gives the place up."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_executor_in_hand import TINY, spy_on_place
from test_executor_model import TOP_DOWN, observation, tiny_model

from executors.flow import FlowExecutor
from executors.flow.guarded_place import (
    GuardedPlaceConfig,
    descend_holding,
    first_release,
    let_go,
    probe_down,
    rise_holding,
)
from executors.flow.in_hand import InHandOffset, WristReading
from hybrid.types import Observation, Subtask

GUARD = {"step": 0.01, "stall": 0.004, "floor": 0.06, "rise": 0.05, "rise_step": 0.02, "retries": 1}
STACK = Subtask(text="put the red block on the blue block", index=0)


def at(x: float, z: float, gripper: float = 1.0) -> Observation:
    return Observation(images=observation().images, state=np.array([x, 0.2, z, gripper], np.float32))


def releasing(n: int, at_step: int = 1) -> np.ndarray:
    """A chunk of ``n`` (dx, dy, dz, suction) steps coming down 5 mm a step and letting go at ``at_step``."""
    chunk = np.tile(np.array([0.0, 0.0, -0.005, 1.0], np.float32), (n, 1))
    chunk[at_step:, 3] = 0.0
    return chunk


def test_the_chunk_edits():
    chunk = releasing(6, at_step=2)
    assert first_release(chunk) == 2 and first_release(chunk, committed=3) == 3
    assert first_release(releasing(6, at_step=6)) is None
    down = descend_holding(chunk, 2, 0.01)
    assert np.array_equal(down[:2], chunk[:2]) and (down[2:, 3] == 1.0).all()
    assert np.allclose(down[2:, :3], [0.0, 0.0, -0.01])
    up = rise_holding(chunk, GuardedPlaceConfig(**GUARD), committed=1)
    assert np.array_equal(up[:1], chunk[:1]) and (up[1:, 3] == 1.0).all() and np.allclose(up[1:, :2], 0.0)
    assert np.isclose(up[1:, 2].sum(), 0.05) and up[1:, 2].max() <= 0.02
    let = let_go(chunk, GuardedPlaceConfig(**GUARD), pressed=0.03, committed=1)
    assert np.array_equal(let[:1], chunk[:1])
    assert np.allclose(let[1], [0.0, 0.0, 0.03, 1.0])  # what the descent pressed below where the cup stopped: taken back
    assert (let[2:, 3] == 0.0).all() and np.allclose(let[2:, :2], 0.0) and np.isclose(let[2:, 2].sum(), 0.05)
    short = let_go(chunk, GuardedPlaceConfig(**GUARD), pressed=0.0, rise=0.03)
    assert np.isclose(short[1:, 2].sum(), 0.03)
    feel = probe_down(chunk, z=0.12, bottom=0.085, step=0.01, committed=1)
    assert np.array_equal(feel[:1], chunk[:1]) and (feel[1:, 3] == 0.0).all() and np.allclose(feel[1:, :2], 0.0)
    assert np.isclose(feel[1:, 2].sum(), -0.035) and feel[1:, 2].min() >= -0.01  # down to the bottom, then still


@pytest.fixture
def guarded(tmp_path):
    """A tiny executor with the guarded place, whose every chunk lets go at its second step, and the place xy each
    chunk steers to."""
    InHandOffset(replace(TINY, colours=["red", "blue", "green"])).save_pretrained(tmp_path / "in_hand")
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, action_dim=4, place_lock_distance=0.04)
    executor = FlowExecutor(model, in_hand=str(tmp_path / "in_hand"), place_on_released=True, guarded_place=GUARD)
    executor.in_hand.read = lambda image: WristReading(np.array([0.01, 0.0], np.float32))  # held 1 cm +x of the cup
    model.sample_actions = lambda batch, *a, **k: torch.from_numpy(releasing(model.cfg.chunk))[None]
    return executor, spy_on_place(model)


def test_a_stack_release_waits_until_the_held_block_rests_on_something(guarded):
    executor, _ = guarded
    chunk = executor.act(at(0.3, 0.12), STACK)  # 4 cm above where it would rest: come down instead
    assert (chunk.actions[:, 3] == 1.0).all() and np.allclose(chunk.actions[:, 2], -0.01) and chunk.note is None
    model, chunks = executor.model, executor.model.sample_actions
    model.sample_actions = lambda batch, *a, **k: torch.from_numpy(releasing(model.cfg.chunk, at_step=99))[None]
    chunk = executor.act(at(0.3, 0.09), STACK)  # it came down 3 cm: not resting yet
    assert (chunk.actions[:, 3] == 1.0).all() and np.allclose(chunk.actions[:, 2], -0.01)  # on down, held back or not
    model.sample_actions = chunks
    chunk = executor.act(at(0.3, 0.088), STACK)  # 2 mm: the block rests on the one below
    assert np.allclose(chunk.actions[0], [0.0, 0.0, 0.038, 1.0])  # what the last 4 steps pressed on, taken back
    assert (chunk.actions[1:, 3] == 0.0).all() and chunk.note is None  # then let go of, rising straight up
    bowl = Subtask(text="put the red block in the blue bowl", index=1)
    assert executor.act(at(0.3, 0.12), bowl).actions[1, 3] == 0.0  # a bowl: let go as learned


def test_a_block_resting_on_no_block_gives_the_place_up(guarded, caplog):
    executor, _ = guarded
    executor.act(at(0.3, 0.12), STACK)
    with caplog.at_level("INFO", logger="executors.flow.modeling_flow"):
        chunk = executor.act(at(0.3, 0.041), STACK)  # down on the table: nothing of a block's height under it
    assert chunk.note.startswith("guarded place: the held block rests on no block (4.1 cm up)")
    assert "rests on no block" in caplog.text
    assert (chunk.actions[:, 3] == 1.0).all() and np.isclose(chunk.actions[:, 2].sum(), 0.05)  # rises, holding
    assert np.allclose(executor._wrong_places[0][1].cpu(), [0.31, 0.2])  # where the block came down: off the map
    executor.act(at(0.3, 0.09), STACK)  # one retry per subtask: the next time on the table it is let go of there
    assert executor.act(at(0.3, 0.041), STACK).note is None  # still coming down
    assert executor.act(at(0.3, 0.04), STACK).actions[1, 3] == 0.0  # resting: let go of


def test_a_tower_memory_that_sent_the_block_nowhere_is_forgotten(guarded):
    executor, steered = guarded
    for z, gripper in ((0.12, 1.0), (0.088, 1.0), (0.088, 0.0)):  # red let go of on blue, resting
        executor.act(at(0.49, z, gripper), STACK)
    green_on_red = Subtask(text="put the green block on the red block", index=1)
    executor.act(at(0.0, 0.12), green_on_red)
    assert steered[-1] == [0.49, 0.2]  # the tower memory: where red was let go of, less the offset held now
    executor.act(at(0.49, 0.041), green_on_red)  # red is not there any more: the block came down on the table
    executor.act(at(0.49, 0.09), green_on_red)
    assert steered[-1] != [0.49, 0.2] and "red" not in executor._released


def test_the_guarded_place_needs_colours_to_tell_a_stack():
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, action_dim=4)
    with pytest.raises(ValueError, match="colours"):
        FlowExecutor(model, guarded_place=GUARD)
    with pytest.raises(ValueError, match="retries"):
        GuardedPlaceConfig(**{**GUARD, "retries": -1})
    for key in ("bowl_floor", "bowl_step", "bowl_probe"):  # heights and speeds: > 0
        with pytest.raises(ValueError, match=key):
            GuardedPlaceConfig(**{**GUARD, key: 0.0})


def test_a_block_let_go_of_resting_on_a_block_tells_the_planners_check_its_subtask_is_finished(guarded):
    executor, _ = guarded
    other = "put the green block on the red block"
    executor.act(at(0.3, 0.12), STACK)
    executor.act(at(0.3, 0.12), STACK)  # rests: let go
    finished, still = executor.affordance(at(0.3, 0.2, 0.0), [STACK.text, other])
    assert finished == 0.0 and still > 0.0  # the planner's recheck will not keep it
    executor.act(at(0.3, 0.2, 0.0), Subtask(text=other, index=1))  # the planner moved on: forgotten
    assert executor.affordance(at(0.3, 0.2, 0.0), [STACK.text])[0] > 0.0


def test_a_learned_descent_that_stalls_lets_go_where_it_rests(guarded):
    executor, _ = guarded
    model, chunks = executor.model, executor.model.sample_actions
    pressing = releasing(model.cfg.chunk, at_step=10)
    pressing[:, 2] = -0.012  # 1.2 cm a step down, letting go beyond the next chunk
    model.sample_actions = lambda batch, *a, **k: torch.from_numpy(pressing)[None]
    chunk = executor.act(at(0.3, 0.16), STACK)  # as learned: the release is planned again at the next chunk
    assert np.array_equal(chunk.actions, pressing)
    chunk = executor.act(at(0.3, 0.159), STACK)  # it did not come down: resting on a tower higher than expected
    assert np.allclose(chunk.actions[0], [0.0, 0.0, 0.047, 1.0])  # 4.8 cm commanded, 1 mm of it moved: taken back
    assert (chunk.actions[1:, 3] == 0.0).all()  # let go of, rising
    executor.reset()
    executor.act(at(0.3, 0.16), STACK)
    assert executor.act(at(0.3, 0.12), STACK).actions[0, 3] == 1.0  # it came down 4 cm: nothing to do
    still = np.tile(np.array([0.0, 0.0, 0.0, 1.0], np.float32), (model.cfg.chunk, 1))
    model.sample_actions = lambda batch, *a, **k: torch.from_numpy(still)[None]
    executor.act(at(0.3, 0.12), STACK)  # holding still, as learned: no descent to watch
    assert np.array_equal(executor.act(at(0.3, 0.12), STACK).actions, still)
    model.sample_actions = chunks


def test_a_learned_descent_is_watched_only_when_every_step_before_the_next_chunk_comes_down(guarded):
    executor, _ = guarded
    pressing = releasing(executor.model.cfg.chunk, at_step=10)
    pressing[:, 2] = -0.012

    def sample(batch, steps, noise, prefix=None, context=None):  # real-time chunking: the prefix comes back as given
        out = pressing.copy()
        if prefix is not None:
            out[: prefix.shape[1]] = prefix[0].numpy()
        return torch.from_numpy(out)[None]

    executor.model.sample_actions = sample
    holding = np.array([[0.0, 0.0, 0.0, 1.0]], np.float32)  # a committed prefix holding still
    executor.act(at(0.3, 0.16), STACK, prefix=holding)
    chunk = executor.act(at(0.3, 0.16), STACK, prefix=holding)  # only the prefix may have run: no rest read from it
    assert executor._rested is None and np.allclose(chunk.actions[1:], pressing[1:])
    executor.act(at(0.3, 0.16), STACK, prefix=pressing[:1])  # the prefix comes down too
    chunk = executor.act(at(0.3, 0.16), STACK, prefix=pressing[:1])  # and the cup did not: it rests
    assert executor._rested == STACK.text and (chunk.actions[2:, 3] == 0.0).all()


PROBE = {**GUARD, "probe": 0.03, "probe_depth": 0.01, "probe_step": 0.01}


def let_go_resting(executor) -> None:
    """Come down over the place and rest there at 8.8 cm: the guarded place lets go."""
    executor.act(at(0.3, 0.12), STACK)
    executor.act(at(0.3, 0.088), STACK)
    chunk = executor.act(at(0.3, 0.088), STACK)
    assert (chunk.actions[1:, 3] == 0.0).all() and np.isclose(chunk.actions[1:, 2].sum(), 0.03)  # rises `probe` only


@pytest.fixture
def probing(guarded):
    executor, steered = guarded
    executor.guarded_place = GuardedPlaceConfig(**PROBE)
    return executor, steered


def test_a_block_that_stays_where_it_rested_is_felt_there_and_its_subtask_finished(probing):
    executor, _ = probing
    let_go_resting(executor)
    assert executor.affordance(at(0.3, 0.118, 0.0), [STACK.text])[0] == 1.0  # not felt yet: still under way
    chunk = executor.act(at(0.3, 0.118, 0.0), STACK)  # let go of, risen: come back down to 1 cm below the block's top
    assert (chunk.actions[:, 3] == 0.0).all() and np.isclose(chunk.actions[:, 2].sum(), -0.04)
    chunk = executor.act(at(0.3, 0.0885, 0.0), STACK)  # the block's top holds the cup up
    assert executor._rested == STACK.text and np.isclose(chunk.actions[:, 2].sum(), 0.05)  # finished: rise
    assert executor.affordance(at(0.3, 0.14, 0.0), [STACK.text])[0] == 0.0


def test_a_block_that_fell_off_is_felt_gone_and_its_subtask_left_to_do(probing, caplog):
    executor, _ = probing
    let_go_resting(executor)
    executor.act(at(0.3, 0.118, 0.0), STACK)
    assert "red" in executor._released  # the tower's memory of where red went
    with caplog.at_level("INFO", logger="executors.flow.modeling_flow"):
        chunk = executor.act(at(0.3, 0.079, 0.0), STACK)  # nothing stopped the cup where the block's top was
    assert "is not where it rested" in caplog.text and np.isclose(chunk.actions[:, 2].sum(), 0.05)
    assert chunk.note.endswith("is not where it rested (the cup -0.9 cm from there): not placed")
    assert executor._rested is None and executor._missed == STACK.text and "red" not in executor._released
    assert executor.affordance(at(0.3, 0.13, 0.0), [STACK.text])[0] == 1.0  # still to do: the planner may retry
    executor.act(at(0.3, 0.04), STACK)  # gripped again: the next placement is judged afresh
    assert executor._missed is None


def test_a_cup_held_up_above_where_the_block_rested_calls_it_a_miss(probing):
    executor, _ = probing
    let_go_resting(executor)
    for z in (0.118, 0.1, 0.1, 0.1):  # something tilted holds the cup 1.2 cm above the block's top, 3 chunks
        chunk = executor.act(at(0.3, z, 0.0), STACK)
    assert executor._missed == STACK.text and np.isclose(chunk.actions[:, 2].sum(), 0.05)


def test_the_probe_climbs_clear_before_it_comes_down(probing):
    executor, _ = probing
    let_go_resting(executor)
    chunk = executor.act(at(0.3, 0.09, 0.0), STACK)  # asked again 2 mm up: the let-go's climb was cut short
    assert (chunk.actions[:, 3] == 0.0).all() and np.isclose(chunk.actions[:, 2].sum(), 0.028)
    chunk = executor.act(at(0.3, 0.118, 0.0), STACK)  # clear of it now: come back down
    assert np.isclose(chunk.actions[:, 2].sum(), -0.04) and executor._probe[2] == 1


def test_the_probe_waits_for_a_committed_descent(probing):
    executor, _ = probing
    let_go_resting(executor)
    down = np.array([[0.0, 0.0, -0.01, 0.0]], np.float32)
    chunk = executor.act(at(0.3, 0.118, 0.0), STACK, prefix=down)  # the prefix still comes down: no verdict yet
    assert executor._probe is not None and np.allclose(chunk.actions[1:], 0.0)


def test_a_subtask_let_go_of_on_no_block_after_its_retries_is_left_to_do(guarded):
    executor, _ = guarded
    executor.act(at(0.3, 0.12), STACK)
    executor.act(at(0.3, 0.041), STACK)  # the one retry given up
    executor.act(at(0.3, 0.09), STACK)
    executor.act(at(0.3, 0.041), STACK)
    executor.act(at(0.3, 0.04), STACK)  # let go of on the table
    assert executor._rested is None and executor._missed == STACK.text
    assert executor.affordance(at(0.3, 0.2, 0.0), [STACK.text])[0] == 1.0


def test_only_what_the_executor_felt_scores_1(probing):
    executor, _ = probing
    executor._front_scores = lambda batch, subtasks: np.ones(len(subtasks))  # a head saturated at 1
    other = "put the green block on the red block"
    assert executor.affordance(at(0.3, 0.2, 0.0), [STACK.text, other]).tolist() == [0.999, 0.999]
    let_go_resting(executor)  # a probe under way: still to do, as the executor knows
    assert executor.affordance(at(0.3, 0.118, 0.0), [STACK.text, other]).tolist() == [1.0, 0.999]


@pytest.fixture
def bowl_guarded(tmp_path):
    InHandOffset(replace(TINY, colours=["red", "blue", "green"])).save_pretrained(tmp_path / "in_hand")
    model = tiny_model(vision_stem="conv", keypoints=4, waypoint_loss=1.0, waypoint_head="heatmap",
                       table_homography=TOP_DOWN, waypoint_target=True, action_dim=4, place_lock_distance=0.04)
    executor = FlowExecutor(model, in_hand=str(tmp_path / "in_hand"), place_on_released=True,
                            guarded_place={**GUARD, "bowl_floor": 0.05, "bowl_read_finished": True}, affordance={"contrast_at": 0.0,
                                                                                     "reach_at": 0.0})
    executor.in_hand.read = lambda image: WristReading(np.array([0.0, 0.0], np.float32))
    model.sample_actions = lambda batch, *a, **k: torch.from_numpy(releasing(model.cfg.chunk))[None]
    return executor


BOWL = Subtask(text="put the red block in the blue bowl", index=0)


def test_a_bowl_release_waits_for_the_bowls_floor_and_is_read_finished(bowl_guarded):
    from executors.flow.modeling_flow import READ_MIN

    executor = bowl_guarded
    chunk = executor.act(at(0.3, 0.12), BOWL)  # the learned chunk would let go 8 cm up: come down instead
    assert (chunk.actions[:, 3] == 1.0).all() and np.allclose(chunk.actions[:, 2], -0.01)
    executor.act(at(0.3, 0.045), BOWL)
    chunk = executor.act(at(0.3, 0.044), BOWL)  # resting 4.4 cm up: on the bowl's floor
    assert (chunk.actions[1:, 3] == 0.0).all() and chunk.note is None
    assert executor.affordance(at(0.3, 0.2, 0.0), [BOWL.text])[0] == READ_MIN


def test_a_bowl_release_resting_on_the_rim_or_a_block_gives_the_place_up(bowl_guarded):
    executor = bowl_guarded
    executor.act(at(0.3, 0.12), BOWL)
    executor.act(at(0.3, 0.07), BOWL)
    chunk = executor.act(at(0.3, 0.069), BOWL)  # resting 6.9 cm up: on the rim
    assert chunk.note.startswith("guarded place: the held block rests not on the bowl's floor (6.9 cm up)")
    assert (chunk.actions[:, 3] == 1.0).all() and np.isclose(chunk.actions[:, 2].sum(), 0.05)  # rises, holding
    executor.act(at(0.3, 0.12), BOWL)  # out of retries (1): let go where it rests, nothing read
    executor.act(at(0.3, 0.07), BOWL)
    chunk = executor.act(at(0.3, 0.069), BOWL)
    assert (chunk.actions[1:, 3] == 0.0).all() and executor._on_bowl_floor is None


def test_a_bowl_release_on_the_floor_is_left_to_the_check_unless_read_finished(bowl_guarded):
    executor = bowl_guarded
    executor.guarded_place = executor.guarded_place.model_copy(update={"bowl_read_finished": False})
    for z in (0.12, 0.045, 0.044):
        chunk = executor.act(at(0.3, z), BOWL)
    assert (chunk.actions[1:, 3] == 0.0).all() and executor._on_bowl_floor is None  # let go of, nothing read


def test_a_bowl_release_comes_down_at_its_own_speed(bowl_guarded):
    executor = bowl_guarded
    executor.guarded_place = executor.guarded_place.model_copy(update={"bowl_step": 0.02})
    chunk = executor.act(at(0.3, 0.12), BOWL)
    assert (chunk.actions[:, 3] == 1.0).all() and np.allclose(chunk.actions[:, 2], -0.02)
    executor.act(at(0.3, 0.045), BOWL)
    chunk = executor.act(at(0.3, 0.044), BOWL)  # resting: the press taken back is the faster descent's
    assert (chunk.actions[1:, 3] == 0.0).all() and np.isclose(chunk.actions[0, 2], 4 * 0.02 - 0.001)  # 4: horizon


def test_a_bowl_release_low_in_the_bowl_lets_go_without_waiting_for_a_stall(bowl_guarded):
    executor = bowl_guarded
    executor.guarded_place = executor.guarded_place.model_copy(update={"bowl_low_let_go": True})
    executor.act(at(0.3, 0.12), BOWL)  # coming down 1 cm a step (GUARD's step), 4 steps a chunk
    chunk = executor.act(at(0.3, 0.09), BOWL)  # above the floor's height and moving: on down
    assert (chunk.actions[:, 3] == 1.0).all() and np.allclose(chunk.actions[:, 2], -0.01)
    chunk = executor.act(at(0.3, 0.048), BOWL)  # still moving, but inside the bowl's wall: let go now
    assert (chunk.actions[1:, 3] == 0.0).all() and chunk.actions[0, 2] == 0.0  # it came down all it was told


def test_a_bowl_release_probed_on_the_floor_is_felt_finished_and_higher_not_placed(bowl_guarded):
    executor = bowl_guarded
    executor.guarded_place = executor.guarded_place.model_copy(
        update={"bowl_low_let_go": True, "bowl_read_finished": False, "probe": 0.03, "bowl_probe": 0.044})
    executor.act(at(0.3, 0.12), BOWL)
    chunk = executor.act(at(0.3, 0.048), BOWL)  # let go inside the bowl's wall, rising to 3 cm above the block's top
    assert (chunk.actions[1:, 3] == 0.0).all() and np.isclose(chunk.actions[:, 2].sum(), 0.044 + 0.03 - 0.048)
    executor.act(at(0.3, 0.074, 0.0), BOWL)  # comes down, suction off
    chunk = executor.act(at(0.3, 0.045, 0.0), BOWL)  # stopped on the block's top: it lies on the floor
    assert executor._rested == BOWL.text and executor.affordance(at(0.3, 0.2, 0.0), [BOWL.text])[0] == 0.0
    executor.reset()
    executor.act(at(0.3, 0.12), BOWL)
    executor.act(at(0.3, 0.048), BOWL)
    for _ in range(4):  # held up 2 cm higher (tilted on another block), `probe_chunks` chunks
        chunk = executor.act(at(0.3, 0.064, 0.0), BOWL)
    assert executor._missed == BOWL.text and "not where it rested" in chunk.note
