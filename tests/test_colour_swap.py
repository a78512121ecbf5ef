"""Colour-swap augmentation of the tabletop planner: words and pixels permuted together, the rest kept."""

from __future__ import annotations

import numpy as np

from hybrid.data.augment import TABLETOP_HUES, ColourSwap, _hue
from hybrid.envs.tabletop.tasks import PALETTE
from hybrid.types import PlanStep
from planners.subtask.examples import Example
from planners.subtask.train import swap_colours

SWAP = ColourSwap(PALETTE, TABLETOP_HUES)
TABLE = np.array([0.62, 0.5, 0.38])
MAPPING = {"red": "blue", "blue": "red", "green": "green", "yellow": "orange", "orange": "yellow", "purple": "purple"}


def scene() -> np.ndarray:
    """A tan table with a shaded red square and a green square."""
    img = np.tile(TABLE, (32, 32, 1))
    img[4:12, 4:12] = np.array(PALETTE["red"]) * 0.8
    img[20:28, 20:28] = np.array(PALETTE["green"]) * 0.9
    return (img * 255).round().astype(np.uint8)


def test_text_swaps_whole_colour_words_only():
    assert SWAP.text("put the red block in the blue bowl", MAPPING) == "put the blue block in the red bowl"
    assert SWAP.text("tidy the cubes; reddish yellow", MAPPING) == "tidy the cubes; reddish orange"


def test_image_repaints_block_pixels_and_keeps_the_table_and_shading():
    img = scene()
    out = SWAP.image(img, MAPPING)
    assert np.array_equal(out[16:20, :], img[16:20, :])  # table rows untouched
    assert np.array_equal(out[20:28, 20:28], img[20:28, 20:28])  # green maps to green
    blue = out[8, 8].astype(float) / 255
    assert abs(_hue(blue) * 360 - TABLETOP_HUES["blue"]) < 15  # the red square is blue now
    assert np.isclose(blue.max(), 0.8 * max(PALETTE["blue"]), atol=0.02)  # at the red square's shade


def test_identity_keeps_a_rendered_tabletop_frame():
    from hybrid.envs.tabletop.env import TabletopEnv

    env = TabletopEnv(task="sort")
    try:
        frame = env.reset(seed=3)[0]["pixels"]["front"]
    finally:
        env.close()
    same = SWAP.image(frame, {c: c for c in PALETTE})
    changed = np.abs(same.astype(int) - frame.astype(int)).max(-1) > 40
    assert changed.mean() < 0.01


def test_swapped_example_is_consistent():
    ex = Example(0, "put all the red blocks in the yellow bowl", ["put a red block in the yellow bowl"],
                 "put the other red block in the yellow bowl", PlanStep(subtask="put the other red block in the yellow bowl"),
                 frozenset())
    rng = np.random.default_rng(0)
    new, image = swap_colours(ex, scene(), SWAP, rng)
    colours = {w for w in new.instruction.split() if w in PALETTE}
    assert len(colours) == 2 and all(c in new.target.subtask and c in new.current for c in colours)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_an_example_asking_what_is_left_has_its_list_swapped_too():
    ex = Example(0, "sort the blocks", [], None, PlanStep(subtask="put the red block in the red bowl"), frozenset(),
                 left=("put the red block in the red bowl", "put the green block in the green bowl"))
    for seed in range(5):
        out, _ = swap_colours(ex, scene(), SWAP, np.random.default_rng(seed))
        first, second = ({w for w in s.split() if w in PALETTE} for s in out.left)
        assert out.left[0] == out.target.subtask  # one permutation for the target and the list
        assert len(first) == len(second) == 1 and first != second
