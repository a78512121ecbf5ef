"""Word- and punctuation-noise augmentation of planner instructions: unknown words replaced and inserted, colours
kept; punctuation marks dropped, swapped and added, the words kept."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.data.augment import PunctuationNoise, WordNoise
from hybrid.envs.tabletop.tasks import COLOURS
from hybrid.types import PlanStep
from planners.subtask.examples import Example
from planners.subtask.train import augmentation

INSTRUCTION = "build a tower: red at the bottom, then blue, then green on top"


def test_colours_and_punctuation_survive_every_replacement():
    noise = WordNoise(set(COLOURS), p_replace=1.0, p_insert=0.0)
    out = noise(INSTRUCTION, np.random.default_rng(0)).split()
    words = INSTRUCTION.split()
    assert len(out) == len(words)
    for new, old in zip(out, words, strict=True):
        stem_new, stem_old = new.rstrip(",:"), old.rstrip(",:")
        if stem_old in COLOURS:
            assert new == old
        else:
            assert stem_new != stem_old and new[len(stem_new):] == old[len(stem_old):]


def test_insertions_add_unknown_words_and_keep_the_order_of_the_rest():
    noise = WordNoise(set(COLOURS), p_replace=0.0, p_insert=0.5)
    out = noise(INSTRUCTION, np.random.default_rng(1)).split()
    assert len(out) > len(INSTRUCTION.split())
    it = iter(out)
    assert all(word in it for word in INSTRUCTION.split())  # the original words, in order, as a subsequence
    assert not set(out) - set(INSTRUCTION.split()) & set(COLOURS)  # no colour is ever invented


def test_augmentation_noises_only_the_instruction():
    ex = Example(0, INSTRUCTION, ["put the blue block on the red block"], None,
                 PlanStep(subtask="put the green block on the blue block"), frozenset())
    frame = np.zeros((8, 8, 3), np.uint8)
    new, image = augmentation(np.random.default_rng(0), colour_swap=0.0, word_noise=1.0)(ex, frame)
    assert new.instruction != ex.instruction
    assert [w for w in new.instruction.split() if w.rstrip(",") in COLOURS] == ["red", "blue,", "green"]
    assert (new.done, new.current, new.target) == (ex.done, ex.current, ex.target) and image is frame


def test_punctuation_noise_changes_only_the_marks():
    noise = PunctuationNoise(p=1.0)
    outs = [noise(INSTRUCTION, np.random.default_rng(seed)) for seed in range(20)]
    words = [w.rstrip(",:") for w in INSTRUCTION.split()]
    for out in outs:
        assert [w.rstrip(",.:;") for w in out.split()] == words  # every word kept, in order
        assert all(w.rstrip(",.:;") == w or w[-1] in ",.:;" and w[-2] not in ",.:;" for w in out.split())
    marks = {w[len(w.rstrip(",.:;")):] for out in outs for w in out.split()}
    assert marks == set(PunctuationNoise.MARKS)  # each mark dropped, swapped and added somewhere
    assert PunctuationNoise(p=0.0)(INSTRUCTION, np.random.default_rng(0)) == INSTRUCTION


def test_augmentation_noises_punctuation_when_asked():
    ex = Example(0, INSTRUCTION, [], None, PlanStep(subtask="put the blue block on the red block"), frozenset())
    frame = np.zeros((8, 8, 3), np.uint8)
    augment = augmentation(np.random.default_rng(0), colour_swap=0.0, word_noise=0.0, punctuation_noise=1.0)
    outs = {augment(ex, frame)[0].instruction for _ in range(10)}
    assert len(outs) > 1 and all(o.replace(",", "").replace(":", "").replace(";", "").replace(".", "")
                                 == INSTRUCTION.replace(",", "").replace(":", "") for o in outs)
    plain = augmentation(np.random.default_rng(0), colour_swap=0.0, word_noise=0.0)
    assert plain(ex, frame)[0].instruction == INSTRUCTION


def test_familiar_noise_takes_spans_of_the_phrases_and_never_a_meaning_word():
    phrases = ["put each block in the bowl of the same colour", "stack red at the bottom, then blue"]
    noise = WordNoise(set(COLOURS), p_replace=0.5, p_insert=0.5, phrases=phrases, p_familiar=1.0,
                      placement=["bottom", "then"])
    assert "of the" in noise.spans and "bowl of the" in noise.spans
    assert not any(set(span.split()) & (set(COLOURS) | {"bottom", "then"}) for span in noise.spans)
    text = "collect all green blocks into the red bowl"
    outs = [noise(text, np.random.default_rng(seed)) for seed in range(30)]
    vocab = {w for p in phrases for w in p.replace(",", "").split()} | set(text.split())
    for out in outs:
        assert set(out.split()) <= vocab  # only words the phrases or the instruction hold: none invented
        assert [w for w in out.split() if w in COLOURS] == ["green", "red"]
    assert any(out != text for out in outs)


def test_familiar_noise_off_draws_as_before():
    plain = WordNoise(set(COLOURS))
    familiar_off = WordNoise(set(COLOURS), phrases=["the bowl of the same colour"], p_familiar=0.0)
    assert plain(INSTRUCTION, np.random.default_rng(3)) == familiar_off(INSTRUCTION, np.random.default_rng(3))


def test_familiar_noise_without_phrases_is_refused():
    with pytest.raises(ValueError, match="no phrases"):
        WordNoise(set(COLOURS), phrases=["red blue"], p_familiar=0.5)  # every word kept: no span to take


def test_familiar_spans_only_inserted_keep_every_word_of_the_instruction_in_order():
    phrases = ["put each block in the bowl of the same colour", "sort the blocks by colour into the matching bowls"]
    text = "sort the blocks into the bowls by colour"
    inserts = WordNoise(set(COLOURS), p_replace=0.0, p_insert=0.5, phrases=phrases, p_familiar=1.0,
                        familiar_replaces=False)
    out = inserts(text, np.random.default_rng(0)).split()
    assert len(out) > len(text.split())
    it = iter(out)
    assert all(word in it for word in text.split())  # the instruction's words are all there, in their order
    replaces = WordNoise(set(COLOURS), p_replace=1.0, p_insert=0.0, phrases=phrases, p_familiar=1.0,
                         familiar_replaces=False)
    vocab = {w for p in phrases for w in p.split()}
    for seed in range(10):
        out = replaces(text, np.random.default_rng(seed)).split()
        assert len(out) == len(text.split())
        assert not set(out) & (vocab - set(COLOURS))  # replaced by unknown words only, never familiar ones


def test_function_word_spans_carry_no_task_word():
    from hybrid.data.augment import FUNCTION_WORDS
    from hybrid.envs.tabletop.tasks import INSTRUCTIONS

    phrases = [t.format(colour="red", bowl="blue", order="red at the bottom, then blue")
               for family in INSTRUCTIONS.values() for t in family]
    noise = WordNoise(set(COLOURS), phrases=phrases, p_familiar=1.0, only_function_words=True)
    assert "of the" in noise.spans and "into the" in noise.spans
    assert all(set(span.split()) <= FUNCTION_WORDS for span in noise.spans)
    every = WordNoise(set(COLOURS), phrases=phrases, p_familiar=1.0)
    assert "by colour" in every.spans and "by colour" not in noise.spans  # sort's words stay decisive
