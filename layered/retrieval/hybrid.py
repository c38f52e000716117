"""Hybrid retrieval: dense and BM25 results fused with weighted reciprocal-rank fusion.

RRF scores a chunk by ``sum_i weight_i / (rrf_k + rank_i)`` over the rankings it appears
in (Cormack et al., 2009). It needs no score calibration between retrievers, which is why
it is the default way to combine cosine similarities with BM25 scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from layered.errors import ConfigError
from layered.protocols import Filters
from layered.retrieval.bm25 import BM25Retriever
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.ingest import IngestReport
from layered.types import Document, Hit


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], *, weights: Sequence[float], rrf_k: int = 60) -> list[Hit]:
    """Fuse rankings (best first) into one; ties keep the order of first appearance."""
    scores: dict[str, float] = {}
    chunks: dict[str, Hit] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk.id] = scores.get(hit.chunk.id, 0.0) + weight / (rrf_k + rank)
            chunks.setdefault(hit.chunk.id, hit)
    order = sorted(scores, key=lambda cid: -scores[cid])
    return [Hit(chunk=chunks[cid].chunk, score=scores[cid], rank=r) for r, cid in enumerate(order, start=1)]


class HybridRetriever:
    """Dense + BM25 over the same chunks, fused with RRF.

    ``weights`` are (dense, bm25); each side contributes its top ``candidates`` hits.
    Indexing goes through the dense side's store, and BM25 follows the store, so both
    always cover the same chunks. Filters are applied inside both queries.
    """

    kind = "hybrid"

    def __init__(
        self,
        dense: DenseRetriever,
        *,
        weights: tuple[float, float] = (1.0, 1.0),
        rrf_k: int = 60,
        candidates: int = 50,
        bm25: BM25Retriever | None = None,
    ) -> None:
        if len(weights) != 2 or min(weights) < 0 or max(weights) == 0:
            raise ConfigError(f"weights must be two non-negative numbers, not both 0; got {weights}")
        if rrf_k < 1 or candidates < 1:
            raise ConfigError("rrf_k and candidates must be positive")
        self.dense = dense
        self.bm25 = bm25 if bm25 is not None else BM25Retriever(dense.store)
        self.weights = (float(weights[0]), float(weights[1]))
        self.rrf_k = rrf_k
        self.candidates = candidates

    @property
    def embedder(self) -> Any:
        return self.dense.embedder

    @property
    def store(self) -> Any:
        return self.dense.store

    def __len__(self) -> int:
        return len(self.dense)

    def add_documents(self, docs: Iterable[Document], *, progress: bool = False, **options: Any) -> IngestReport:
        return self.dense.add_documents(docs, progress=progress, **options)

    def delete_documents(self, doc_ids: Iterable[str]) -> int:
        return self.dense.delete_documents(doc_ids)

    def reembedded(self, embedder: Any, *, progress: bool = False) -> "HybridRetriever":
        """The same hybrid (weights, BM25 settings) over a re-embedded copy of the dense side."""
        dense = self.dense.reembedded(embedder, progress=progress)
        bm25 = BM25Retriever(dense.store, k1=self.bm25.k1, b=self.bm25.b, stem=self.bm25.stem)
        return HybridRetriever(dense, weights=self.weights, rrf_k=self.rrf_k, candidates=self.candidates, bm25=bm25)

    def retrieve(self, query: str, *, k: int = 4, filters: Filters | None = None) -> list[Hit]:
        n = max(k, self.candidates)
        rankings = [self.dense.retrieve(query, k=n, filters=filters), self.bm25.retrieve(query, k=n, filters=filters)]
        return reciprocal_rank_fusion(rankings, weights=self.weights, rrf_k=self.rrf_k)[:k]

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "dense": self.dense.config(), "bm25": self.bm25.config(),
            "weights": list(self.weights), "rrf_k": self.rrf_k, "candidates": self.candidates,
        }

    def save(self, folder: Path) -> None:
        self.dense.save(folder)

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "HybridRetriever":
        dense = DenseRetriever.load(folder, config["dense"])
        b = config.get("bm25", {})
        bm25 = BM25Retriever(dense.store, k1=b.get("k1", 1.5), b=b.get("b", 0.75), stem=b.get("stem", True))
        return cls(dense, weights=tuple(config["weights"]), rrf_k=int(config["rrf_k"]), candidates=int(config["candidates"]), bm25=bm25)
