"""Which blocks a tabletop subtask names, by colour: the block it moves and the block it stacks that one on. The
executor's run-time rules (the grasp check, the place check, the tower memory, the guarded place) read a subtask this
way, with the colours its in-hand models know."""

from __future__ import annotations

import re


def _named(text: str | None, colours: list[str] | dict) -> tuple[list[str], list[str]]:
    words = re.findall(r"[a-z]+", (text or "").lower())
    return words, [w for w in words if w in colours]


def subtask_colour(text: str | None, colours: list[str] | dict) -> str | None:
    """The first of ``colours`` the subtask names (the block it moves), or None where it names none."""
    named = _named(text, colours)[1]
    return named[0] if named else None


def support_colour(text: str | None, colours: list[str] | dict) -> str | None:
    """The colour of the block subtask ``text`` puts its block on: the second of ``colours`` it names, where it
    names two and no bowl ("put the purple block on the yellow block"); None otherwise (a bowl placement, or a
    subtask this rule cannot read)."""
    words, named = _named(text, colours)
    if len(named) < 2 or "bowl" in words:
        return None
    return named[1]


def in_bowl(text: str | None) -> bool:
    """Whether subtask ``text`` puts its block in a bowl."""
    return "bowl" in _named(text, [])[0]
