"""Token counters for chunking: anything with ``offsets(text) -> [(start, end), ...]``.

Chunk sizes are counted in the embedder's own tokens (``HFTokenizer`` over its
``tokenizer.json``), so a chunk never exceeds what the embedder reads. ``RegexTokenizer``
(words and punctuation) needs no files and suits tests and non-neural embedders.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@runtime_checkable
class Tokenizer(Protocol):
    """Splits text into tokens, reported as character offsets into the text."""

    def offsets(self, text: str) -> list[tuple[int, int]]: ...


class RegexTokenizer:
    """Words and single punctuation marks as tokens."""

    name = "regex"

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer loaded from a ``tokenizer.json`` file (no torch)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)

    @cached_property
    def _tok(self):  # type: ignore[no-untyped-def]
        from tokenizers import Tokenizer as _Tokenizer

        tok = _Tokenizer.from_file(str(self.path))
        tok.no_truncation()
        tok.no_padding()
        return tok

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in self._tok.encode(text, add_special_tokens=False).offsets if o[1] > o[0]]
