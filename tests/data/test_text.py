"""Tokenisation and vocabulary, against character loops and hand-built expectations."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.data.text import PAD, PAD_ID, UNK, UNK_ID, Vocabulary, clean_caption_fne, tokenize
from vsekit.errors import VsekitError


def slow_tokenize(caption: str) -> list[str]:
    """Reference: NFKC + casefold, then runs of characters for which str.isalnum() holds."""
    text = unicodedata.normalize("NFKC", caption).casefold()
    words, current = [], ""
    for ch in text:
        if ch.isalnum():
            current += ch
        elif current:
            words.append(current)
            current = ""
    if current:
        words.append(current)
    return words


@pytest.mark.parametrize("caption, expected", [
    ("A dog's ball.", ["a", "dog", "s", "ball"]),
    ("Two  DOGS\tplay\n", ["two", "dogs", "play"]),
    ("", []),
    ("   ", []),
    ("!?.,;:-- \"'", []),
    ("snake_case well-known", ["snake", "case", "well", "known"]),
    ("Café ÜBER straße", ["café", "über", "strasse"]),
    ("ＡＢＣ１２３", ["abc123"]),  # full-width forms fold to ASCII under NFKC
    ("3 kids, 2 dogs", ["3", "kids", "2", "dogs"]),
    ("犬が走る", ["犬が走る"]),
])
def test_tokenize_examples(caption, expected):
    assert tokenize(caption) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_tokenize_matches_character_loop(caption):
    words = tokenize(caption)
    assert words == slow_tokenize(caption)
    assert all(w and not any(c.isspace() for c in w) for w in words)


def test_build_orders_by_count_then_alphabet_and_applies_min_count():
    captions = ["b a c", "a b", "a d", "e"]
    vocab = Vocabulary.build(captions)
    assert vocab.to_list() == [PAD, UNK, "a", "b", "c", "d", "e"]
    vocab2 = Vocabulary.build(captions, min_count=2)
    assert vocab2.to_list() == [PAD, UNK, "a", "b"]
    assert vocab2.id("c") == UNK_ID and vocab2.id("a") == 2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="abc xyz.", max_size=20), max_size=12), st.integers(1, 3))
def test_build_matches_dictionary_count(captions, min_count):
    counts: dict[str, int] = {}
    for caption in captions:
        for word in slow_tokenize(caption):
            counts[word] = counts.get(word, 0) + 1
    kept = [w for w in counts if counts[w] >= min_count]
    expected = sorted(kept, key=lambda w: (-counts[w], w))
    assert Vocabulary.build(captions, min_count).to_list() == [PAD, UNK, *expected]


def test_build_rejects_min_count_zero():
    with pytest.raises(VsekitError, match="min_count"):
        Vocabulary.build(["a"], min_count=0)


def test_encode_pads_and_maps_unknown_and_empty():
    vocab = Vocabulary(["the", "dog", "runs"])
    ids, lengths = vocab.encode(["The dog runs!", "a cat", "", "dog"])
    assert ids.dtype == torch.long and lengths.dtype == torch.long
    assert lengths.tolist() == [3, 2, 1, 1]
    assert ids.tolist() == [[2, 3, 4], [UNK_ID, UNK_ID, PAD_ID], [UNK_ID, PAD_ID, PAD_ID],
                            [3, PAD_ID, PAD_ID]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="abcd .", max_size=15), min_size=1, max_size=8))
def test_encode_matches_loop(captions):
    vocab = Vocabulary.build(["a b", "c", "a"])
    ids, lengths = vocab.encode(captions)
    table = {w: i for i, w in enumerate(vocab.to_list())}
    rows = []
    for caption in captions:
        row = [table.get(w, UNK_ID) for w in slow_tokenize(caption)]
        rows.append(row if row else [UNK_ID])
    width = max(len(r) for r in rows)
    assert lengths.tolist() == [len(r) for r in rows]
    assert ids.tolist() == [r + [PAD_ID] * (width - len(r)) for r in rows]


def test_list_round_trip_and_equality():
    vocab = Vocabulary.build(["zebra apple", "apple"])
    again = Vocabulary.from_list(vocab.to_list())
    assert again == vocab and len(again) == 4
    assert again != Vocabulary(["apple"])


@pytest.mark.parametrize("tokens", [["a", "b"], [UNK, PAD, "a"], [PAD, UNK, "a", "a"],
                                    [PAD, UNK, PAD], [PAD, UNK, 3]])
def test_from_list_rejects_malformed(tokens):
    with pytest.raises(VsekitError, match="vocabulary"):
        Vocabulary.from_list(tokens)


@pytest.mark.parametrize(("caption", "expected"), [
    ("A Dog's ball.", "a dogs ball"),
    ("Two kids (a boy/girl) jump-rope!", "two kids a boy girl jump rope"),
    ('He said: "hi"; ok? ~*#', "he said hi ok"),
    ("  many\tspaces \n here ", "many spaces here"),
    ("", ""),
])
def test_clean_caption_fne_examples(caption, expected):
    assert clean_caption_fne(caption) == expected


def test_clean_caption_fne_keeps_at_most_max_words():
    words = [f"w{i}" for i in range(40)]
    assert clean_caption_fne(" ".join(words)) == " ".join(words[:30])
    assert clean_caption_fne("a b c", max_words=2) == "a b"


def test_clean_caption_fne_matches_a_character_loop():
    dropped, spaced = set(",.'!?\"()*#:;~"), set("-/")
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ -/,.'!?\"()*#:;~\t12")
    for _ in range(200):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))
        chars = []
        for ch in text.lower():
            if ch in dropped:
                continue
            chars.append(" " if ch in spaced else ch)
        expected = " ".join("".join(chars).split()[:30])
        assert clean_caption_fne(text) == expected
