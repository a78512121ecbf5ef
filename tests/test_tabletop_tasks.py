"""Task families, paraphrases and the held-out split (no physics)."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.envs.tabletop.tasks import (
    FAMILIES,
    HELDOUT_PAIRS,
    HELDOUT_PARAPHRASES,
    INSTRUCTIONS,
    PlaceIn,
    StackOn,
    grounded_pairs,
    sample_task,
)

SUBTASK_COUNTS = {"pick_place": {1}, "gather": {2, 3}, "stack": {2, 3}, "sort": {3, 4}}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_decomposition(family):
    rng = np.random.default_rng(0)
    counts, instructions = set(), set()
    for _ in range(60):
        spec = sample_task(family, rng)
        counts.add(len(spec.subtasks))
        instructions.add(spec.instruction)
        assert len(spec.subtasks) == len(spec.goals)
        assert len(set(spec.subtasks)) == len(spec.subtasks), "subtask texts within an episode must differ"
        for text, goal in zip(spec.subtasks, spec.goals, strict=True):
            assert spec.block_colours[goal.block] in text
            if isinstance(goal, PlaceIn):
                assert spec.bowl_colours[goal.bowl] in text
                assert spec.block_colours[goal.block] == goal.colour
            else:
                assert isinstance(goal, StackOn) and spec.block_colours[goal.base] in text
        if family == "sort":
            assert all(spec.bowl_colours[g.bowl] == g.colour for g in spec.goals)
            assert len(spec.goals) == len(spec.block_colours)
    assert counts == SUBTASK_COUNTS[family]
    assert len(instructions) > 3  # paraphrases and colours vary


@pytest.mark.parametrize("family", FAMILIES)
def test_heldout_split_is_disjoint_from_train(family):
    rng = np.random.default_rng(1)
    heldout_templates = set(INSTRUCTIONS[family][-HELDOUT_PARAPHRASES:])
    train_templates = set(INSTRUCTIONS[family][:-HELDOUT_PARAPHRASES])
    for split in ("train", "heldout"):
        for _ in range(40):
            spec = sample_task(family, rng, split)
            grounds_heldout = bool(grounded_pairs(spec) & HELDOUT_PAIRS)
            assert grounds_heldout == (split == "heldout")
            if family != "stack":  # stack's instruction also embeds an order phrase; checked by pairs
                templates = heldout_templates if split == "heldout" else train_templates
                assert any(_matches(t, spec.instruction) for t in templates), spec.instruction


def _matches(template: str, text: str) -> bool:
    """Whether `text` could come from `template` (its fixed words appear in order)."""
    pos = 0
    for part in template.replace("{", "}").split("}")[::2]:
        found = text.find(part, pos)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def test_unknown_family_and_split_are_rejected():
    with pytest.raises(ValueError, match="task family"):
        sample_task("juggle", np.random.default_rng(0))
    with pytest.raises(ValueError, match="split"):
        sample_task("sort", np.random.default_rng(0), "validation")
