"""The tabletop's subtask language, reduced to one canonical phrasing per subtask.

Recorded subtasks come in several paraphrases ("drop a red block into the blue bowl", "carry a red
block over to the blue bowl"); the executor needs the meaning, not the wording. The tabletop planner
is trained to emit one canonical phrasing, its vocabulary is every canonical subtask, and evaluation
compares meanings, so a held-out paraphrase of a subtask counts as that subtask.
"""

from __future__ import annotations

import re

from planners.subtask.reply import normalize

ORDINALS = ("the", "a", "another", "the other", "the last")
_BLOCK = re.compile(r"\b(?:(the other|the last|another|the|a)\s+)?([a-z]+)\s+(?:block|cube)s?\b")
_BOWL = re.compile(r"\b([a-z]+)\s+bowl\b")


def canonical_subtask(text: str) -> str:
    """``put <ordinal> <colour> block in the <colour> bowl`` or ``put the <c> block on the <c> block``;
    text that is neither comes back normalized."""
    t = normalize(text)
    blocks = _BLOCK.findall(t)
    bowl = _BOWL.search(t)
    if bowl and blocks:
        ordinal, colour = blocks[0]
        return f"put {ordinal or 'the'} {colour} block in the {bowl.group(1)} bowl"
    if len(blocks) >= 2:
        return f"put the {blocks[0][1]} block on the {blocks[1][1]} block"
    return t


def colours_in(subtasks: list[str]) -> list[str]:
    found: set[str] = set()
    for s in subtasks:
        t = normalize(s)
        found.update(c for _, c in _BLOCK.findall(t))
        found.update(_BOWL.findall(t))
    return sorted(found)


def vocabulary(colours: list[str]) -> list[str]:
    """Every canonical subtask over ``colours``, including pairs never seen together in training."""
    place = [f"put {o} {c} block in the {b} bowl" for o in ORDINALS for c in colours for b in colours]
    stack = [f"put the {c} block on the {b} block" for c in colours for b in colours if c != b]
    return place + stack
