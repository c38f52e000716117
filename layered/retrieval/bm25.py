"""Keyword retrieval with BM25 (``bm25s``) over the chunks of a vector store.

:class:`BM25Retriever` indexes exactly the chunks its store holds and rebuilds itself when
the store changes (the store's ``version`` moves), so keyword and vector search can never
disagree about which chunks exist: a deleted chunk is gone from both. The index is derived
data, rebuilt from the store's chunks on load, so it adds nothing to a saved folder.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Protocol, Sequence

import numpy as np

from layered.errors import InputError
from layered.protocols import Filters
from layered.retrieval.filters import matches
from layered.types import Chunk, Hit

_WORD = re.compile(r"\w+", re.UNICODE)


class ChunkSource(Protocol):
    version: int

    def chunks(self) -> list[Chunk]: ...


class BM25Retriever:
    """BM25 (Lucene variant, k1=1.5, b=0.75) with English stop words and Snowball stemming.

    Contract: ``retrieve`` returns at most ``k`` hits with a positive score, best first,
    only of chunks whose metadata match ``filters`` (applied as a score mask inside the
    BM25 query, so ``k`` hits come back whenever ``k`` matching chunks contain a query term).
    """

    kind = "bm25"

    def __init__(self, source: ChunkSource, *, k1: float = 1.5, b: float = 0.75, stem: bool = True) -> None:
        self.source = source
        self.k1, self.b, self.stem = k1, b, stem
        self._lock = threading.Lock()
        self._built_version = -1
        self._chunks: list[Chunk] = []
        self._bm25: Any = None
        self._stemmer: Any = None

    def _tokens(self, texts: Sequence[str]) -> list[list[str]]:
        import bm25s

        if self.stem and self._stemmer is None:
            import Stemmer

            self._stemmer = Stemmer.Stemmer("english")
        out = []
        stop = set(bm25s.stopwords.STOPWORDS_EN)
        for text in texts:
            words = [w for w in _WORD.findall(text.lower()) if w not in stop]
            out.append(self._stemmer.stemWords(words) if self.stem else words)
        return out

    def _index(self) -> None:
        with self._lock:
            if self._built_version == self.source.version:
                return
            import bm25s

            chunks = self.source.chunks()
            bm25 = bm25s.BM25(k1=self.k1, b=self.b)
            if chunks:
                bm25.index(self._tokens([c.text for c in chunks]), show_progress=False)
            self._chunks, self._bm25, self._built_version = chunks, bm25, self.source.version

    def retrieve(self, query: str, *, k: int = 4, filters: Filters | None = None) -> list[Hit]:
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; pass a non-empty question")
        self._index()
        if not self._chunks or k < 1:
            return []
        vocab = self._bm25.vocab_dict
        terms = [t for t in self._tokens([query])[0] if t in vocab]
        if not terms:
            return []
        scores = np.asarray(self._bm25.get_scores(terms), dtype=np.float32)
        if filters:
            scores = scores * np.fromiter((matches(c.metadata, filters) for c in self._chunks), dtype=np.float32, count=len(self._chunks))
        top = np.argsort(-scores, kind="stable")[:k]
        hits = [(int(i), float(scores[i])) for i in top if scores[i] > 0]
        return [Hit(chunk=self._chunks[i], score=s, rank=r) for r, (i, s) in enumerate(hits, start=1)]

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "k1": self.k1, "b": self.b, "stem": self.stem}
