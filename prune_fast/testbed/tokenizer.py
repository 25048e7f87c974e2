"""A word-level tokenizer for the synthetic test-bed world.

Every whitespace-separated word is one token; the vocabulary is fixed when the tokenizer is built
and saved as JSON.  The methods the editors use (``encode``, ``decode``, ``convert_ids_to_tokens``,
``pad_token_id``, ``__len__``) mirror the Hugging Face tokenizer interface, so the editors treat
this tokenizer and a ``transformers`` tokenizer the same way.

Example::

    tok = WordTokenizer(["paris", "lives", "in"])
    tok.encode("lives in paris")        # -> [4, 5, 3]
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import InvalidInputError, UnknownNameError

__all__ = ["WordTokenizer"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<eos>")


class WordTokenizer:
    """Maps words to ids: ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<eos>``; words follow in order.

    ``encode`` never adds special tokens (the test-bed model is trained without a BOS token);
    unknown words map to ``<unk>``.
    """

    def __init__(self, words: Iterable[str]) -> None:
        vocab: list[str] = list(SPECIAL_TOKENS)
        seen = set(vocab)
        for word in words:
            if not word or any(ch.isspace() for ch in word):
                raise InvalidInputError(f"a vocabulary word must be non-empty without spaces, got {word!r}")
            if word not in seen:
                seen.add(word)
                vocab.append(word)
        self._vocab: tuple[str, ...] = tuple(vocab)
        self._ids: dict[str, int] = {w: i for i, w in enumerate(vocab)}

    # -- the Hugging Face-like interface -------------------------------------------------------
    pad_token_id: int = 0
    unk_token_id: int = 1
    eos_token_id: int = 2

    def __len__(self) -> int:
        return len(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` split on whitespace; ``add_special_tokens`` is accepted and ignored."""
        del add_special_tokens
        return [self._ids.get(w, self.unk_token_id) for w in text.split()]

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, int):
            ids = [ids]
        words = [self._vocab[int(i)] for i in ids]
        if skip_special_tokens:
            words = [w for w in words if w not in SPECIAL_TOKENS]
        return " ".join(words)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._vocab[int(i)] for i in ids]

    def token_id(self, word: str) -> int:
        """The id of one known word; ``KeyError`` naming the word if it is not in the vocabulary."""
        try:
            return self._ids[word]
        except KeyError:
            raise UnknownNameError(f"word {word!r} is not in the vocabulary ({len(self)} words)") from None

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": "prune_fast.word_tokenizer/1", "vocab": list(self._vocab)}))

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        data = json.loads(Path(path).read_text())
        if data.get("format") != "prune_fast.word_tokenizer/1":
            raise InvalidInputError(f"{path}: not a prune_fast word tokenizer file")
        vocab = data["vocab"]
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise InvalidInputError(f"{path}: special tokens missing or reordered")
        return cls(vocab[len(SPECIAL_TOKENS):])
