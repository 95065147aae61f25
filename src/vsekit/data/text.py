"""Word tokenisation and the vocabulary of the word-level (GRU) text encoder.

Tokenisation: Unicode NFKC normalisation, case folding, then every maximal run of Unicode
letters and digits is one word; everything else (spaces, punctuation, symbols, ``_``)
separates words. So ``"A dog's ball."`` → ``["a", "dog", "s", "ball"]`` and
``"Café"`` → ``["café"]``; a caption without letters or digits has no words. Scripts
written without spaces (Chinese, Japanese) give a whole run of characters as one word.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from vsekit.errors import VsekitError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_WORD = re.compile(r"[^\W_]+")


def tokenize(caption: str) -> list[str]:
    """Lower-cased words of ``caption`` (see the module docstring for the exact rule)."""
    return _WORD.findall(unicodedata.normalize("NFKC", caption).casefold())


class Vocabulary:
    """Word ↔ id map with ``<pad>`` = 0 and ``<unk>`` = 1; words get ids 2, 3, ... ."""

    def __init__(self, words: Sequence[str]) -> None:
        """``words``: the ordinary words in id order (ids 2, 3, ...), without the specials."""
        tokens = [PAD, UNK, *words]
        self._index = {token: i for i, token in enumerate(tokens)}
        if len(self._index) != len(tokens):
            raise VsekitError("vocabulary has duplicate or reserved words; rebuild it from the "
                              "training captions")
        self._tokens = tokens

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        if min_count < 1:
            raise VsekitError(f"vocabulary min_count must be at least 1, got {min_count}")
        counts = Counter(word for caption in captions for word in tokenize(caption))
        kept = [w for w, c in counts.items() if c >= min_count]
        return cls(sorted(kept, key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def id(self, word: str) -> int:
        """The id of ``word``, ``UNK_ID`` when unknown."""
        return self._index.get(word, UNK_ID)

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and lengths for a batch of B captions.

        Returns ``(ids, lengths)``: int64 [B, L] padded with ``PAD_ID`` (L = longest caption)
        and int64 [B]. A caption with no words becomes the single token ``<unk>`` (length 1),
        so every length is at least 1, as packed RNN sequences require.
        """
        rows = [[self.id(w) for w in tokenize(c)] or [UNK_ID] for c in captions]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max()) if rows else 0), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, lengths

    def to_list(self) -> list[str]:
        """All tokens in id order, specials included (what :meth:`from_list` reads back)."""
        return list(self._tokens)

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> Vocabulary:
        """Inverse of :meth:`to_list`; a list not starting with the specials → VsekitError."""
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK] or not all(isinstance(t, str) for t in tokens):
            raise VsekitError("saved vocabulary is malformed (it must start with '<pad>', "
                              "'<unk>'); the checkpoint is corrupt or from another program")
        return cls(tokens[2:])


_FNE_DROPPED = re.compile(r"[,.'!?\"()*#:;~]")
_FNE_SPACED = re.compile(r"[-/]")


def clean_caption_fne(caption: str, max_words: int = 30) -> str:
    """The FNE reference's caption preprocessing: lower-case, drop ``, . ' ! ? " ( ) * # : ; ~``,
    turn ``-`` and ``/`` into spaces, collapse whitespace, keep the first ``max_words`` words."""
    text = _FNE_SPACED.sub(" ", _FNE_DROPPED.sub("", caption.lower()))
    return " ".join(text.split()[:max_words])
