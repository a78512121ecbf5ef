"""Task families of the tabletop: language instructions with a known subtask decomposition.

A task is sampled, not scripted: colours, counts and paraphrases come from the episode's RNG. Each
subtask carries a *goal* that the physics can check (`PlaceIn`, `StackOn`) and names the block the
plan intends to move, which the scripted expert and the oracle subgoal renderer use.
A `sort` plan takes its blocks from the front image's left to its right (`Scene` lays them out so).

Held-out split. An episode *grounds* (object colour, target colour) pairs: block→bowl for
`pick_place` and `gather`, (upper, lower) for each level of a `stack`, and for `sort` (whose bowls
always match) every ordered pair of the colours being sorted together. `HELDOUT_PAIRS`
lists six of the thirty ordered pairs; a train episode grounds none of them, a held-out episode at
least one. The last `HELDOUT_PARAPHRASES` templates of every list are used only by held-out episodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

FAMILIES = ("pick_place", "gather", "stack", "sort")
Split = Literal["train", "heldout"]

# Base RGB of each colour name; the scene jitters them per episode within a range that keeps hues apart.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.15, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "orange": (0.98, 0.5, 0.05),
}
COLOURS = tuple(PALETTE)

# Each colour appears once as object and once as target, so no colour is unseen in training.
HELDOUT_PAIRS = frozenset(
    {
        ("red", "blue"),
        ("blue", "yellow"),
        ("yellow", "purple"),
        ("purple", "green"),
        ("green", "orange"),
        ("orange", "red"),
    }
)
HELDOUT_PARAPHRASES = 2
MAX_BLOCKS = 6
N_BOWLS = 3

INSTRUCTIONS: dict[str, list[str]] = {
    "pick_place": [
        "put the {colour} block in the {bowl} bowl",
        "place the {colour} block into the {bowl} bowl",
        "move the {colour} block to the {bowl} bowl",
        "pick up the {colour} block and drop it in the {bowl} bowl",
        "the {colour} block goes in the {bowl} bowl",
        "could you put the {colour} cube in the {bowl} bowl",
        "transfer the {colour} cube into the {bowl} bowl",
    ],
    "gather": [
        "put all the {colour} blocks in the {bowl} bowl",
        "place every {colour} block into the {bowl} bowl",
        "gather the {colour} blocks in the {bowl} bowl",
        "collect all {colour} blocks into the {bowl} bowl",
        "move each {colour} block to the {bowl} bowl",
        "get all of the {colour} cubes into the {bowl} bowl",
        "the {colour} cubes all belong in the {bowl} bowl",
    ],
    "stack": [
        "stack the blocks with {order}",
        "build a tower: {order}",
        "make a stack with {order}",
        "stack {order}",
        "build a tower of blocks with {order}",
        "pile up the cubes with {order}",
        "assemble a tower, {order}",
    ],
    "sort": [
        "sort the blocks by colour into the matching bowls",
        "put each block in the bowl of the same colour",
        "sort the blocks into the bowls by colour",
        "place every block in the bowl that matches its colour",
        "match the blocks to the bowls by colour",
        "tidy the cubes into the bowls of their own colour",
        "group the cubes by colour in the matching bowls",
    ],
}

# How `stack`'s {order} is spelled: bottom first, then each level up.
STACK_ORDERS = [
    "the {0} block at the bottom, then {rest}",
    "{0} at the bottom, then {rest}",
    "{0} first, then {rest}",
    "the {0} one on the table, then {rest}",
    "{0} at the base, then {rest}",
    "{0} as the base, followed by {rest}",
    "{0} on the bottom, then {rest}",
]
# The words of those orders that say which level a colour is: noise may drop them, never move them elsewhere.
STACK_PLACEMENT = ("bottom", "first", "table", "base", "then", "followed", "top")

SUBTASKS: dict[str, list[str]] = {
    "place": [
        "put {block} in the {bowl} bowl",
        "place {block} into the {bowl} bowl",
        "move {block} to the {bowl} bowl",
        "pick up {block} and put it in the {bowl} bowl",
        "drop {block} into the {bowl} bowl",
        "carry {block} over to the {bowl} bowl",
        "transfer {block} to the {bowl} bowl",
    ],
    "stack": [
        "put the {block} block on the {base} block",
        "place the {block} block on top of the {base} block",
        "stack the {block} block on the {base} block",
        "move the {block} block onto the {base} block",
        "set the {block} block on the {base} block",
        "lay the {block} cube on top of the {base} cube",
        "put the {block} cube onto the {base} cube",
    ],
}


@dataclass(frozen=True)
class PlaceIn:
    """Done when at least `count` blocks of `colour` rest in bowl `bowl`; `block` is the one planned."""

    block: int
    colour: str
    bowl: int
    count: int
    slot: int  # where in the bowl the plan puts it (0..slots-1)
    slots: int  # how many blocks the plan puts in this bowl in all


@dataclass(frozen=True)
class StackOn:
    """Done when `block` rests on top of `base`."""

    block: int
    base: int


Goal = PlaceIn | StackOn


@dataclass(frozen=True)
class TaskSpec:
    family: str
    instruction: str
    subtasks: tuple[str, ...]
    goals: tuple[Goal, ...]
    block_colours: tuple[str, ...]  # one per active block; blocks beyond these are parked off the table
    bowl_colours: tuple[str, ...]  # always N_BOWLS


def _pick(rng: np.random.Generator, options: list[str], split: Split) -> str:
    pool = options[:-HELDOUT_PARAPHRASES] if split == "train" else options[-HELDOUT_PARAPHRASES:]
    return pool[int(rng.integers(len(pool)))]


def _colours(rng: np.random.Generator, n: int, exclude: tuple[str, ...] = ()) -> list[str]:
    pool = [c for c in COLOURS if c not in exclude]
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def _ordinal(k: int, n: int, colour: str) -> str:
    """How the k-th of n same-coloured blocks is named, so consecutive subtasks never share a text."""
    if n == 1:
        return f"the {colour} block"
    if k == 0:
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} block"
    if k == n - 1:
        return f"the other {colour} block" if n == 2 else f"the last {colour} block"
    return f"another {colour} block"


def _place_goals(
    blocks: list[int], colours: list[str], bowls: list[int], bowl_names: list[str], template: str
) -> tuple[list[str], list[PlaceIn]]:
    """Subtasks that put `blocks[i]` into `bowls[i]`, in order, with counts per (colour, bowl)."""
    texts, goals = [], []
    per_bowl = {b: bowls.count(b) for b in set(bowls)}
    for i, (block, bowl) in enumerate(zip(blocks, bowls, strict=True)):
        colour = colours[block]
        same = [j for j in range(len(blocks)) if colours[blocks[j]] == colour and bowls[j] == bowl]
        k = same.index(i)
        slot = bowls[:i].count(bowl)
        texts.append(template.format(block=_ordinal(k, len(same), colour), bowl=bowl_names[bowl]))
        goals.append(PlaceIn(block, colour, bowl, k + 1, slot, per_bowl[bowl]))
    return texts, goals


def grounded_pairs(spec: TaskSpec) -> set[tuple[str, str]]:
    """The (object colour, target colour) pairs an episode grounds, which decide its split."""
    pairs: set[tuple[str, str]] = set()
    for goal in spec.goals:
        if isinstance(goal, StackOn):
            pairs.add((spec.block_colours[goal.block], spec.block_colours[goal.base]))
        elif spec.family == "sort":
            others = {spec.block_colours[g.block] for g in spec.goals} - {goal.colour}
            pairs.update((goal.colour, other) for other in others)
        else:
            pairs.add((goal.colour, spec.bowl_colours[goal.bowl]))
    return pairs


def in_split(spec: TaskSpec, split: Split) -> bool:
    heldout = bool(grounded_pairs(spec) & HELDOUT_PAIRS)
    return heldout if split == "heldout" else not heldout


def _draw(family: str, rng: np.random.Generator, split: Split) -> TaskSpec:
    bowls = _colours(rng, N_BOWLS)
    if family in ("pick_place", "gather"):
        bowl = int(rng.integers(N_BOWLS))
        target = _colours(rng, 1)[0]
        n_target = 1 if family == "pick_place" else int(rng.integers(2, 4))
        n_other = int(rng.integers(1, 4)) if family == "pick_place" else int(rng.integers(1, 3))
        colours = [target] * n_target + [
            str(c) for c in rng.choice([c for c in COLOURS if c != target], size=n_other)
        ]
        order = list(range(n_target))
        template = _pick(rng, SUBTASKS["place"], split)
        texts, goals = _place_goals(order, colours, [bowl] * n_target, bowls, template)
        instruction = _pick(rng, INSTRUCTIONS[family], split).format(colour=target, bowl=bowls[bowl])
    elif family == "stack":
        n = int(rng.integers(3, 5))
        tower = _colours(rng, n)
        colours = tower + _colours(rng, int(rng.integers(0, 2)), exclude=tuple(tower))
        template = _pick(rng, SUBTASKS["stack"], split)
        texts = [template.format(block=colours[i], base=colours[i - 1]) for i in range(1, n)]
        goals = [StackOn(i, i - 1) for i in range(1, n)]
        rest = ", then ".join(colours[1:n]) + " on top"
        order = _pick(rng, STACK_ORDERS, split).format(colours[0], rest=rest)
        instruction = _pick(rng, INSTRUCTIONS[family], split).format(order=order)
    elif family == "sort":
        n = int(rng.integers(3, 5))
        # Two or three of the bowls' colours, each bowl holding at most two blocks (room in a bowl).
        used = bowls[: int(rng.integers(2, 4))]
        colours = list(used) + [used[i] for i in rng.choice(len(used), size=n - len(used), replace=False)]
        rng.shuffle(colours)
        plan = [int(i) for i in rng.permutation(n)]
        template = _pick(rng, SUBTASKS["place"], split)
        texts, goals = _place_goals(plan, colours, [bowls.index(colours[b]) for b in plan], bowls, template)
        instruction = _pick(rng, INSTRUCTIONS[family], split)
    else:
        raise ValueError(f"task family: expected one of {FAMILIES}, got {family!r}")
    return TaskSpec(family, instruction, tuple(texts), tuple(goals), tuple(colours), tuple(bowls))


def sample_task(family: str, rng: np.random.Generator, split: Split = "train") -> TaskSpec:
    """Draw a task of `family` in `split` (rejection sampling over colour combinations)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
    for _ in range(1000):
        spec = _draw(family, rng, split)
        if in_split(spec, split):
            return spec
    raise RuntimeError(f"no {split} task of family {family!r} found in 1000 draws")


def family_of(instruction: str) -> str | None:
    """The task family whose instruction templates produce ``instruction`` (None if none does): how a
    recording's episodes are told apart, e.g. to train a single-task baseline on one family's episodes."""
    for family, templates in INSTRUCTIONS.items():
        for template in templates:
            pattern = re.escape(template).replace(r"\{colour\}", r"\w+").replace(r"\{bowl\}", r"\w+")
            if re.fullmatch(pattern.replace(r"\{order\}", ".+"), instruction.strip()):
                return family
    return None
