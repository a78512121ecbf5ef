"""Colour-swap augmentation for the tabletop planner and executor: one permutation of the colour names,
applied to the text (instruction, history, reply, subtask) and to the pixels of the blocks and bowls alike.

A planner trained from scratch on a few hundred episodes learns the colour pairs it has seen
("green block" -> "green bowl") instead of copying the colours the instruction names, and fails on
pairs it has never seen. Colours are interchangeable in the task, so swapping them consistently in
the words and in the image gives every pair without recording more data. Pixels are classified by
hue (saturated pixels only: the table, the gantry and the shadows are left alone) and repainted with
the new colour at the same brightness, which keeps the shading.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

SATURATION_MIN = 0.55  # the table's tan stays below this, every block and bowl colour is above it
HUE_TOLERANCE = 0.07   # of a full turn (25°): a saturated pixel farther than this from every colour is kept
# Hue (degrees) of each colour as the tabletop renders it: the middle of its cluster in a hue histogram of
# recorded frames. Shading pulls orange toward yellow, so the palette's own hues split the orange bowls.
TABLETOP_HUES = {"red": 3.0, "orange": 35.0, "yellow": 55.0, "green": 122.0, "blue": 225.0, "purple": 278.0}


class ColourSwap:
    def __init__(self, palette: dict[str, tuple[float, float, float]], hues: dict[str, float] | None = None):
        self.names = list(palette)
        self.rgb = np.asarray([palette[n] for n in self.names], np.float32)
        self.hue = np.asarray([hues[n] / 360.0 for n in self.names], np.float32) if hues else _hue(self.rgb)
        self._word = re.compile(r"\b(" + "|".join(map(re.escape, self.names)) + r")\b")

    def draw(self, rng: np.random.Generator) -> dict[str, str]:
        """A random permutation of the colour names (the identity is as likely as any other)."""
        return dict(zip(self.names, (self.names[i] for i in rng.permutation(len(self.names)))))

    def text(self, text: str, mapping: dict[str, str]) -> str:
        return self._word.sub(lambda m: mapping[m.group(1)], text)

    def image(self, image: np.ndarray, mapping: dict[str, str]) -> np.ndarray:
        """uint8 HxWx3 with every block/bowl pixel of colour c repainted as ``mapping[c]``."""
        x = image.astype(np.float32) / 255.0
        value = x.max(-1)
        saturation = (value - x.min(-1)) / np.maximum(value, 1e-6)
        # Hue distance on the circle from each pixel to each palette colour.
        d = np.abs(_hue(x)[..., None] - self.hue)
        d = np.minimum(d, 1.0 - d)
        nearest = d.argmin(-1)
        target = np.asarray([self.names.index(mapping[n]) for n in self.names])[nearest]
        paint = (saturation >= SATURATION_MIN) & (d.min(-1) <= HUE_TOLERANCE) & (target != nearest)
        # Same brightness relative to the source colour: shading and lighting carry over.
        shade = value / self.rgb.max(-1)[nearest]
        new = np.clip(self.rgb[target] * shade[..., None], 0.0, 1.0)
        out = np.where(paint[..., None], new, x)
        return (out * 255.0).round().astype(np.uint8)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) of RGB values in [0, 1] (the HSV hue, vectorised)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / c) % 6.0, np.where(mx == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return (h / 6.0) % 1.0


def tabletop_colour_swap() -> ColourSwap:
    """The swap for the built-in tabletop's palette and rendered hues."""
    from hybrid.envs.tabletop.tasks import PALETTE  # imported here: the env package pulls in MuJoCo

    return ColourSwap(PALETTE, TABLETOP_HUES)


TRAILING_MARKS = ",.:;!?"  # punctuation that ends a word of an instruction (both noises keep the word apart from it)


class WordNoise:
    """Unknown words, replaced and inserted at random in an instruction, with the words that carry its meaning kept.

    A language model trained from scratch has an embedding only for the words of its training instructions; a
    paraphrase with a word it never saw ("could you put the green *cube* in the orange bowl") throws it off,
    often onto the most common reading. Training on instructions whose other words are sometimes gibberish
    teaches it that an unfamiliar word is noise and the kept words (colours) plus the familiar ones decide.

    A familiar word in an unfamiliar place throws it off too: "of the" occurs only in `sort`'s "the bowl of the
    same colour", and a planner read the held-out "get all *of the* green cubes into the orange bowl" as sorting
    (of 26 situations it answered wrong, right in 8 as worded, 11 with "blocks" for "cubes", 24 without "of the",
    e.g. "put all the green cubes ..."). With ``p_familiar`` that share of the replaced and inserted words are spans of one to three
    words of the ``phrases`` (the training instructions) instead, so no word of one task's wording decides the
    task alone. A span never carries a kept word nor one of ``placement`` (words that say where the kept ones
    go, e.g. "bottom" in a stack's order: moved elsewhere they would change the meaning).

    With ``familiar_replaces=False`` familiar spans are only inserted and a replaced word always becomes an
    unknown one, so an instruction keeps all its own words. Neither way kept the tabletop's `sort`: spans of its
    words ("by colour", "matching bowls") inserted into the other tasks' instructions teach that they decide
    nothing either, and the planners asked for moves no goal holds (a block into another colour's bowl) in about
    a fifth of `sort`'s subtasks, against 6-11% without familiar spans (docs/experiments.md). With
    ``only_function_words`` a span is made of `FUNCTION_WORDS` alone ("of the", "into the"): the words that tell
    no task from another, so the tasks' own words stay decisive (untried in training).
    """

    def __init__(self, keep: set[str] | frozenset[str], p_replace: float = 0.2, p_insert: float = 0.1,
                 phrases: Iterable[str] = (), p_familiar: float = 0.0, placement: Iterable[str] = (),
                 familiar_replaces: bool = True, only_function_words: bool = False):
        self.keep = frozenset(w.lower() for w in keep)
        self.p_replace, self.p_insert, self.p_familiar = p_replace, p_insert, p_familiar
        self.familiar_replaces = familiar_replaces
        avoid = self.keep | {w.lower() for w in placement}
        only = FUNCTION_WORDS if only_function_words else None
        self.spans = familiar_spans(phrases, avoid, only=only) if p_familiar > 0 else []
        if p_familiar > 0 and not self.spans:
            raise ValueError("p_familiar: no phrases to take familiar words from")

    def pseudo_word(self, rng: np.random.Generator) -> str:
        while True:
            word = "".join(chr(ord("a") + int(i)) for i in rng.integers(26, size=int(rng.integers(2, 8))))
            if word not in self.keep:
                return word

    def filler(self, rng: np.random.Generator, familiar: bool = True) -> str:
        if familiar and self.spans and rng.random() < self.p_familiar:
            return self.spans[int(rng.integers(len(self.spans)))]
        return self.pseudo_word(rng)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        out = []
        for token in text.split():
            word = token.rstrip(TRAILING_MARKS)
            if rng.random() < self.p_insert:
                out.append(self.filler(rng))
            if word and word.lower() not in self.keep and rng.random() < self.p_replace:
                token = self.filler(rng, self.familiar_replaces) + token[len(word):]  # keep trailing punctuation
            out.append(token)
        return " ".join(out)


# Closed-class words (articles, prepositions, pronouns): in any instruction they may sit anywhere without naming a task.
FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "in", "into", "to", "on", "at", "by", "with", "up", "over",
                            "it", "its", "their"})


def familiar_spans(phrases: Iterable[str], avoid: set[str] | frozenset[str], longest: int = 3,
                   only: set[str] | frozenset[str] | None = None) -> list[str]:
    """Every run of 1..``longest`` consecutive words of ``phrases`` without a word of ``avoid`` (and with
    ``only``, of its words alone), marks stripped."""
    spans = set()
    for phrase in phrases:
        words = [w.rstrip(TRAILING_MARKS).lower() for w in phrase.split()]
        for n in range(1, longest + 1):
            for i in range(len(words) - n + 1):
                span = words[i:i + n]
                if all(w and w not in avoid and (only is None or w in only) for w in span):
                    spans.add(" ".join(span))
    return sorted(spans)


class PunctuationNoise:
    """Each word's trailing punctuation dropped, swapped or added at random (``p`` per word).

    A small planner trained on a few templates learns to parse them by their punctuation: the tabletop planner
    read "build a tower: red at the bottom, then blue" right and the held-out "assemble a tower, red on the
    bottom, then blue" as "red on blue" (traced: the same instructions with the comma after "tower" a colon
    were all read right, without any punctuation all wrong). Noised marks leave the words to carry the order.
    """

    MARKS = ("", ",", ":", ";", ".")

    def __init__(self, p: float = 0.2):
        self.p = float(p)

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        out = []
        for token in text.split():
            word = token.rstrip(TRAILING_MARKS)
            if word and rng.random() < self.p:
                token = word + self.MARKS[int(rng.integers(len(self.MARKS)))]
            out.append(token)
        return " ".join(out)
