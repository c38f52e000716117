"""Re-ranking: re-order a retriever's candidates with a stronger (slower) model.

:class:`CrossEncoderReranker` scores (query, passage) pairs with a sentence-transformers
cross-encoder read from a local folder the user supplies (none is shipped: layered never
downloads one). :class:`RerankingRetriever` puts any reranker on top of any retriever.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from layered import models, registry
from layered.errors import ConfigError
from layered.protocols import Filters, Reranker, Retriever
from layered.retrieval.wrapped import WrappedRetriever
from layered.types import Hit


class CrossEncoderReranker:
    """Cross-encoder scores, higher is better; ties keep the retriever's order."""

    kind = "cross-encoder"

    def __init__(self, model: str | Path, *, batch_size: int = 32, max_length: int = 512) -> None:
        self.model = str(model)
        self.batch_size = batch_size
        self.max_length = max_length
        self._lock = threading.Lock()
        self._ce: Any = None

    def _load(self) -> Any:
        with self._lock:
            if self._ce is None:
                path = models.resolve(self.model)
                with models.loading("the cross-encoder", path):
                    from sentence_transformers import CrossEncoder

                    self._ce = CrossEncoder(str(path), device="cpu", max_length=self.max_length, local_files_only=True)
            return self._ce

    def warm_up(self) -> None:
        self._load()

    def scores(self, query: str, hits: Sequence[Hit]) -> list[float]:
        if not hits:
            return []
        out = self._load().predict([(query, h.chunk.indexed_text) for h in hits], batch_size=self.batch_size, show_progress_bar=False)
        return [float(s) for s in out]

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        scores = self.scores(query, hits)
        order = sorted(range(len(hits)), key=lambda i: -scores[i])
        return [Hit(chunk=hits[i].chunk, score=scores[i], rank=r) for r, i in enumerate(order, start=1)]

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "batch_size": self.batch_size, "max_length": self.max_length}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CrossEncoderReranker":
        return cls(config["model"], batch_size=int(config.get("batch_size", 32)), max_length=int(config.get("max_length", 512)))


class RerankingRetriever(WrappedRetriever):
    """``base`` fetches ``candidates`` hits (filters applied there); ``reranker`` picks the top ``k``."""

    kind = "reranked"
    _own = ("base", "reranker", "candidates")

    def __init__(self, base: Retriever, reranker: Reranker, *, candidates: int = 20) -> None:
        if candidates < 1:
            raise ConfigError(f"candidates must be positive, got {candidates}")
        self.base, self.reranker, self.candidates = base, reranker, candidates

    def retrieve(self, query: str, *, k: int = 4, filters: Filters | None = None) -> list[Hit]:
        hits = self.base.retrieve(query, k=max(k, self.candidates), filters=filters)
        return self.reranker.rerank(query, hits)[:k]

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "base": self.base.config(), "reranker": self.reranker.config(),  # type: ignore[attr-defined]
            "candidates": self.candidates,
        }

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "RerankingRetriever":
        return cls(cls.load_base(folder, config), registry.build("reranker", config["reranker"]), candidates=int(config["candidates"]))
