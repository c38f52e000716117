"""Chunkers: split documents into overlapping, token-counted chunks.

``TokenChunker`` cuts each document into windows of at most ``size`` tokens (of the
embedder's tokenizer) that overlap by about ``overlap`` tokens. Cuts prefer, in order, a
paragraph or sentence end and then a word boundary within the second half of the window,
so chunks rarely end mid-sentence and never mid-word unless a single word is longer than
the window. Every chunk keeps its character offsets into its document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from layered.errors import ConfigError
from layered.retrieval.tokenizers import RegexTokenizer, Tokenizer
from layered.types import Chunk, Document

_SENTENCE_END = ".!?;:"


@dataclass
class TokenChunker:
    """Token-aware chunker with overlap (see module docstring).

    Contract: for every chunk ``c`` of document ``d``, ``d.text[c.start:c.end] == c.text``;
    chunk ids are ``f"{d.id}#{i}"`` for i = 0, 1, ...; empty documents yield no chunks.
    """

    size: int = 200
    overlap: int = 40
    tokenizer: Tokenizer = field(default_factory=RegexTokenizer)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"chunk size must be at least 1 token, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(f"chunk overlap must be in [0, size={self.size}), got {self.overlap}")

    def config(self) -> dict[str, object]:
        tokenizer = "regex" if isinstance(self.tokenizer, RegexTokenizer) else "embedder"
        return {"kind": "token", "size": self.size, "overlap": self.overlap, "tokenizer": tokenizer}

    def split(self, docs: Iterable[Document]) -> list[Chunk]:
        chunks: list[Chunk] = []
        for doc in docs:
            for i, (start, end) in enumerate(self.spans(doc.text)):
                chunks.append(Chunk(
                    id=f"{doc.id}#{i}", doc_id=doc.id, text=doc.text[start:end], source=doc.source,
                    start=start, end=end, metadata=dict(doc.metadata),
                ))
        return chunks

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the chunks of ``text``."""
        offs = self.tokenizer.offsets(text)
        n = len(offs)
        spans: list[tuple[int, int]] = []
        start = 0
        while start < n:
            end = min(start + self.size, n)
            if end < n:
                end = self._cut(text, offs, start, end)
            spans.append((offs[start][0], offs[end - 1][1]))
            if end >= n:
                break
            nxt = max(end - self.overlap, start + 1)
            while nxt < end and not self._word_start(text, offs, nxt):
                nxt += 1
            start = nxt
        return spans

    @staticmethod
    def _word_start(text: str, offs: list[tuple[int, int]], i: int) -> bool:
        # A token starts a word when whitespace separates it from the previous token.
        return i == 0 or offs[i][0] > offs[i - 1][1]

    def _cut(self, text: str, offs: list[tuple[int, int]], start: int, end: int) -> int:
        """Best token index in (start + size/2, end] to end the window before."""
        lo = start + max(1, (end - start) // 2)
        word_cut = None
        for i in range(end, lo - 1, -1):
            if not self._word_start(text, offs, i):
                continue
            gap = text[offs[i - 1][1]:offs[i][0]]
            if "\n" in gap or text[offs[i - 1][1] - 1] in _SENTENCE_END:
                return i
            if word_cut is None:
                word_cut = i
        return word_cut if word_cut is not None else end
