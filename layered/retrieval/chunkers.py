"""Chunkers: split documents into chunks that keep character offsets into their document.

* :class:`TokenChunker` (recursive, the default): windows of at most ``size`` tokens of the
  embedder's tokenizer, overlapping by about ``overlap`` tokens, cut at the last paragraph
  break, else sentence end, else word boundary in the second half of the window.
* :class:`SentenceChunker`: windows of ``window`` whole sentences, overlapping by ``overlap``.
* :class:`SemanticChunker`: cuts between adjacent sentences whose embeddings are least
  similar (below the ``percentile``-th percentile of the document's similarities), and
  whenever a chunk would exceed ``max_tokens``.

With ``title=True`` (token and sentence chunkers), a chunk that does not contain its
document's title carries it as :attr:`~layered.types.Chunk.context`, so a chunk from the
middle of a page is still embedded and keyword-indexed as part of that page
(:func:`document_title` says what counts as the title).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from layered.errors import ConfigError
from layered.retrieval.tokenizers import RegexTokenizer, Tokenizer
from layered.types import Chunk, Document

_SENTENCE_END = ".!?;:"
MAX_CHUNK_CHARS = 8000


@dataclass
class TokenChunker:
    """Token-aware chunker with overlap (see module docstring).

    Contract: for every chunk ``c`` of document ``d``, ``d.text[c.start:c.end] == c.text``;
    chunk ids are ``f"{d.id}#{i}"`` for i = 0, 1, ...; empty documents yield no chunks; no
    chunk is longer than ``max_chars`` characters (a "word" a tokenizer cannot split, such as
    a 50 MB run of letters that a WordPiece tokenizer maps to one unknown token, is cut hard).
    ``max_chunks`` keeps only a document's first chunks: for corpora of short pages whose
    opening says what the page is about (MedQuAD), one chunk per page is both the faster
    index (the embedder reads a fixed number of tokens per vector) and a page-level match.
    """

    size: int = 200
    overlap: int = 40
    tokenizer: Tokenizer = field(default_factory=RegexTokenizer)
    max_chars: int = MAX_CHUNK_CHARS
    max_chunks: int | None = None
    title: bool = False

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"chunk size must be at least 1 token, got {self.size}")
        if self.max_chars < 1:
            raise ConfigError(f"max_chars must be at least 1, got {self.max_chars}")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(f"chunk overlap must be in [0, size={self.size}), got {self.overlap}")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ConfigError(f"max_chunks must be at least 1 (or None for all), got {self.max_chunks}")

    def config(self) -> dict[str, object]:
        tokenizer = "regex" if isinstance(self.tokenizer, RegexTokenizer) else "embedder"
        return {"kind": "token", "size": self.size, "overlap": self.overlap, "tokenizer": tokenizer, "max_chunks": self.max_chunks,
                **({"title": True} if self.title else {})}

    def split(self, docs: Iterable[Document]) -> list[Chunk]:
        return [chunk for doc in docs for chunk in _chunks_from_groups(doc, self.spans(doc.text), self.max_chars, self.title)]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the chunks of ``text`` (none longer than ``max_chars``)."""
        out: list[tuple[int, int]] = []
        for s, e in self._token_spans(text):
            out.extend((a, min(a + self.max_chars, e)) for a in range(s, e, self.max_chars))
        return out if self.max_chunks is None else out[: self.max_chunks]

    def _token_spans(self, text: str) -> list[tuple[int, int]]:
        offs = self.tokenizer.offsets(text)
        n = len(offs)
        spans: list[tuple[int, int]] = []
        start = 0
        while start < n and (self.max_chunks is None or len(spans) < self.max_chunks):
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
        """Best token index in (start + size/2, end] to end the window before.

        Recursive preference: the last paragraph break, else the last sentence end, else
        the last word boundary, else a hard cut at ``end``.
        """
        lo = start + max(1, (end - start) // 2)
        best: dict[int, int] = {}
        for i in range(end, lo - 1, -1):
            if not self._word_start(text, offs, i):
                continue
            gap = text[offs[i - 1][1]:offs[i][0]]
            level = 0 if gap.count("\n") >= 2 else 1 if "\n" in gap or text[offs[i - 1][1] - 1] in _SENTENCE_END else 2
            best.setdefault(level, i)
            if level == 0:
                break
        return best[min(best)] if best else end


_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences (and lines) of ``text``, whitespace trimmed."""
    spans = []
    for m in _SENTENCE.finditer(text):
        s, e = m.span()
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))
    return spans


#: A first paragraph longer than this is not taken for a title.
MAX_TITLE_CHARS = 300


def document_title(doc: Document) -> tuple[str, int]:
    """(title, where it ends in ``doc.text``): the document's ``title`` metadata (ending at 0
    when the text does not open with it), else its first paragraph when that is at most
    :data:`MAX_TITLE_CHARS` characters and a blank line follows it (BEIR corpora, Markdown
    headings); ``("", 0)`` when it has neither."""
    meta = doc.metadata.get("title")
    if isinstance(meta, str) and meta.strip():
        title = meta.strip()
        return title, len(title) if doc.text.startswith(title) else 0
    cut = doc.text.find("\n\n")
    head = doc.text[:cut].strip() if cut > 0 else ""
    return (head, cut) if head and cut <= MAX_TITLE_CHARS else ("", 0)


def _chunks_from_groups(doc: Document, groups: list[tuple[int, int]], max_chars: int = MAX_CHUNK_CHARS, title: bool = False) -> list[Chunk]:
    # No chunk longer than max_chars, whatever the splitter saw as one sentence or word.
    bounded = [(a, min(a + max_chars, e)) for s, e in groups for a in range(s, e, max_chars)]
    head, head_end = document_title(doc) if title else ("", 0)
    return [
        Chunk(id=f"{doc.id}#{i}", doc_id=doc.id, text=doc.text[s:e], source=doc.source, start=s, end=e, metadata=dict(doc.metadata),
              context=head if head and s >= head_end else "")
        for i, (s, e) in enumerate(bounded)
    ]


@dataclass
class SentenceChunker:
    """Windows of ``window`` sentences; neighbours share ``overlap`` sentences."""

    window: int = 4
    overlap: int = 1
    title: bool = False

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ConfigError(f"need window >= 1 and 0 <= overlap < window, got window={self.window}, overlap={self.overlap}")

    def config(self) -> dict[str, object]:
        return {"kind": "sentence", "window": self.window, "overlap": self.overlap, **({"title": True} if self.title else {})}

    def split(self, docs: Iterable[Document]) -> list[Chunk]:
        out: list[Chunk] = []
        for doc in docs:
            sents = sentence_spans(doc.text)
            step = self.window - self.overlap
            groups = []
            for i in range(0, len(sents), step):
                part = sents[i:i + self.window]
                groups.append((part[0][0], part[-1][1]))
                if i + self.window >= len(sents):
                    break
            out.extend(_chunks_from_groups(doc, groups, title=self.title))
        return out


@dataclass
class SemanticChunker:
    """Cut where adjacent sentences are least similar (see module docstring)."""

    embedder: Any
    percentile: float = 25.0
    max_tokens: int = 200
    tokenizer: Tokenizer = field(default_factory=RegexTokenizer)

    def __post_init__(self) -> None:
        if not 0 <= self.percentile <= 100 or self.max_tokens < 1:
            raise ConfigError("percentile must be in [0, 100] and max_tokens positive")

    def config(self) -> dict[str, object]:
        tokenizer = "regex" if isinstance(self.tokenizer, RegexTokenizer) else "embedder"
        return {"kind": "semantic", "percentile": self.percentile, "max_tokens": self.max_tokens, "tokenizer": tokenizer}

    def split(self, docs: Iterable[Document]) -> list[Chunk]:
        out: list[Chunk] = []
        for doc in docs:
            sents = sentence_spans(doc.text)
            if not sents:
                continue
            vectors = np.asarray(self.embedder.embed([doc.text[s:e] for s, e in sents]), dtype=np.float32)
            sims = (vectors[:-1] * vectors[1:]).sum(axis=1)
            cut_below = float(np.percentile(sims, self.percentile)) if len(sims) else 0.0
            lengths = [len(self.tokenizer.offsets(doc.text[s:e])) for s, e in sents]
            groups, start, tokens = [], 0, lengths[0]
            for i in range(1, len(sents)):
                if sims[i - 1] <= cut_below or tokens + lengths[i] > self.max_tokens:
                    groups.append((sents[start][0], sents[i - 1][1]))
                    start, tokens = i, 0
                tokens += lengths[i]
            groups.append((sents[start][0], sents[-1][1]))
            out.extend(_chunks_from_groups(doc, groups))
        return out
