"""The tabletop's subtask language, reduced to one canonical phrasing per subtask.

Recorded subtasks come in several paraphrases ("drop a red block into the blue bowl", "carry a red
block over to the blue bowl"); the executor needs the meaning, not the wording. The tabletop planner
is trained to emit one canonical phrasing, its vocabulary is every canonical subtask, and evaluation
compares meanings, so a held-out paraphrase of a subtask counts as that subtask.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from planners.subtask.reply import normalize

# How the recording names the k-th of n same-coloured blocks (the env's words: they need n, i.e. the scene).
ORDINALS = ("the", "a", "another", "the other", "the last")
# The same named from the history alone: how many of that colour went to that bowl before (at most three do,
# so the third is the last). Words the executor was trained on: told "a red block" for a lone block, the oracle
# agent placed 15 of 20 held-out pick_place blocks; told "the", 20 of 20.
HISTORY_ORDINALS = ("the", "another", "the last")
_BLOCK = re.compile(r"\b(?:(the other|the last|another|the|a)\s+)?([a-z]+)\s+(?:block|cube)s?\b")
_PLACE = re.compile(r"put (?:the other|the last|another|the|a) ([a-z]+) block in the ([a-z]+) bowl")
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


def history_ordinals(plan: list[str]) -> list[str]:
    """A canonical plan with each placement's ordinal taken from the placements before it: the first red block
    for the blue bowl is "the red block", the next "another", the third "the last". The recording's "a red
    block" / "the other red block" say how many red blocks there are in all, which a planner must count from
    the picture before it names the first one (and, miscounted, it then asks for "the other" block that is
    not there). Named from the history, only the question the picture has to answer is left: is one left?
    Consecutive subtasks still never share a text."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for text in plan:
        m = _PLACE.fullmatch(text)
        if m is None:  # stacking names each block once: nothing to count
            out.append(text)
            continue
        k = seen[m.groups()] = seen.get(m.groups(), -1) + 1
        if k >= len(HISTORY_ORDINALS):
            raise ValueError(f"{text!r}: more than {len(HISTORY_ORDINALS)} blocks of one colour for one bowl")
        out.append(f"put {HISTORY_ORDINALS[k]} {m.group(1)} block in the {m.group(2)} bowl")
    return out


@dataclass(frozen=True)
class Naming:
    """How a planner's replies tell same-coloured blocks apart: the rewrite of each canonical plan into its
    words, and the ordinal words its vocabulary is built from."""

    rewrite: Callable[[list[str]], list[str]]
    ordinals: tuple[str, ...]


# planner.json "ordinals" (the trainer's ``ordinals``) -> its naming
NAMINGS = {"scene": Naming(list, ORDINALS), "history": Naming(history_ordinals, HISTORY_ORDINALS)}


def vocabulary(colours: list[str], ordinals: tuple[str, ...] = ORDINALS) -> list[str]:
    """Every canonical subtask over ``colours``, including pairs never seen together in training."""
    place = [f"put {o} {c} block in the {b} bowl" for o in ordinals for c in colours for b in colours]
    stack = [f"put the {c} block on the {b} block" for c in colours for b in colours if c != b]
    return place + stack
