"""Keyword retrieval with BM25 (``bm25s``) over the chunks of a vector store.

:class:`BM25Retriever` indexes exactly the chunks its store holds and rebuilds itself when
the store changes (the store's ``version`` moves), so keyword and vector search can never
disagree about which chunks exist: a deleted chunk is gone from both. The index is derived
data, rebuilt from the store's chunks on load, so it adds nothing to a saved folder.

``unit="document"`` scores each document as one text (its chunks' spans joined without their
overlaps, after their context) and returns, for each document, its chunk that shares most
query terms. On a corpus cut into small chunks (sentence windows), length normalisation over
whole pages ranks better than over the pieces (SciFact train, ``benchmarks/results/retriever_finetune.md``).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from layered.errors import ConfigError, InputError
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

    def __init__(self, source: ChunkSource, *, k1: float = 1.5, b: float = 0.75, stem: bool = True, unit: str = "chunk") -> None:
        if unit not in ("chunk", "document"):
            raise ConfigError(f"unit must be 'chunk' or 'document', got {unit!r}")
        self.source = source
        self.k1, self.b, self.stem, self.unit = k1, b, stem, unit
        self._lock = threading.Lock()
        self._built_version = -1
        self._chunks: list[Chunk] = []
        self._units: list[list[Chunk]] = []  # the chunks each indexed text covers (one each for unit="chunk")
        self._where: dict[str, int] = {}  # unit key (document or chunk id) -> its row
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
            if self.unit == "chunk":
                units, texts = [[c] for c in chunks], [c.indexed_text for c in chunks]
            else:
                by_doc: dict[str, list[Chunk]] = {}
                for c in chunks:
                    by_doc.setdefault(c.doc_id, []).append(c)
                units = list(by_doc.values())
                texts = [_page_text(u) for u in units]
            bm25 = bm25s.BM25(k1=self.k1, b=self.b)
            if chunks:
                bm25.index(self._tokens(texts), show_progress=False)
            self._where = {self._key(u): i for i, u in enumerate(units)}
            self._chunks, self._units, self._bm25, self._built_version = chunks, units, bm25, self.source.version

    def _key(self, unit: list[Chunk]) -> str:
        return unit[0].doc_id if self.unit == "document" else unit[0].id

    def _query(self, query: str) -> tuple[list[str], np.ndarray | None]:
        """(the query's indexed terms, every unit's score; None when no unit can score)."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; pass a non-empty question")
        self._index()
        vocab = self._bm25.vocab_dict if self._chunks else {}
        terms = [t for t in self._tokens([query])[0] if t in vocab]
        return terms, np.asarray(self._bm25.get_scores(terms), dtype=np.float32) if terms else None

    def scores(self, query: str, keys: Iterable[str]) -> dict[str, float]:
        """The score of each indexed unit named in ``keys`` (document ids for ``unit="document"``,
        else chunk ids), 0.0 when it shares no term with the query; unknown keys are left out."""
        _, scores = self._query(query)
        found = [(key, self._where[key]) for key in keys if key in self._where]
        return {key: float(scores[i]) if scores is not None else 0.0 for key, i in found}

    def retrieve(self, query: str, *, k: int = 4, filters: Filters | None = None) -> list[Hit]:
        terms, scores = self._query(query)
        if scores is None or k < 1:
            return []
        if filters:  # a document's chunks share its metadata
            scores = scores * np.fromiter((matches(u[0].metadata, filters) for u in self._units), dtype=np.float32, count=len(self._units))
        top = np.argsort(-scores, kind="stable")[:k]
        hits = [(int(i), float(scores[i])) for i in top if scores[i] > 0]
        return [Hit(chunk=self._best_chunk(self._units[i], set(terms)), score=s, rank=r) for r, (i, s) in enumerate(hits, start=1)]

    def _best_chunk(self, unit: list[Chunk], terms: set[str]) -> Chunk:
        if len(unit) == 1:
            return unit[0]
        shared = [len(terms.intersection(words)) for words in self._tokens([c.indexed_text for c in unit])]
        return unit[shared.index(max(shared))]

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "k1": self.k1, "b": self.b, "stem": self.stem, **({"unit": self.unit} if self.unit != "chunk" else {})}


def _page_text(chunks: list[Chunk]) -> str:
    """A document's text from its chunks: the first chunk's context (the title when the text
    does not hold it), then the spans in order, each overlap once (chunks cut from one text by
    offsets)."""
    chunks = sorted(chunks, key=lambda c: c.start)
    parts = [chunks[0].context]
    end = -1
    for c in chunks:
        parts.append(c.text[max(0, end - c.start):] if c.start < end else c.text)
        end = max(end, c.end)
    return " ".join(p for p in parts if p)
