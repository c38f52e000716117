"""Re-ranking: re-order a retriever's candidates with a stronger (slower) model.

:class:`CrossEncoderReranker` scores (query, passage) pairs with a sentence-transformers
cross-encoder read from a local folder (none is shipped: layered never downloads one), the
user's own or one trained here by :func:`fit_cross_encoder`. :class:`RerankingRetriever` puts
any reranker on top of any retriever.
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


def fit_cross_encoder(
    pairs: Sequence[Any],
    *,
    retriever: Any,
    base_model: str | Path,
    out_dir: str | Path,
    negatives: int = 4,
    epochs: int = 1,
    learning_rate: float = 2e-5,
    batch_size: int = 16,
    max_length: int = 256,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> Path:
    """Train a cross-encoder for :class:`CrossEncoderReranker` from the same pairs that tune the
    embedder (:class:`~layered.retrieval.finetune.Pair`: a query and its document's id).

    Starts from the encoder weights of ``base_model`` (e.g. the packaged all-MiniLM-L6-v2) with a
    new one-logit head; each pair gives its positive passage (label 1) and ``negatives`` hard
    negatives mined from ``retriever``'s index, never a known positive (label 0), learned with
    binary cross-entropy (positives weighted ``negatives`` times) for ``epochs`` epochs, seeded.
    Writes the model to ``out_dir`` (safetensors; a new or empty folder) and returns it.

    These defaults are sentence-transformers' documented recipe. Cross-validated on SciFact
    train (about 3,700 rows per fold; ``benchmarks/results/retriever_finetune.md``, run 14), they
    left the head near its random start, and reranking lost to the hybrid it reordered. So
    score the reranker on a validation split before serving it.
    """
    import contextlib
    import sys
    import tempfile

    import torch

    from layered.errors import ArtifactError, EmptyDatasetError
    from layered.hardware import cpu_supports_bf16
    from layered.retrieval.finetune import RetrieverTuneConfig, mine_triplets

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"{out} exists and is not an empty folder; choose a new one for the cross-encoder")
    if not pairs:
        raise EmptyDatasetError("no training pairs")
    try:
        from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    except ImportError as e:  # sentence-transformers < 4
        raise ConfigError(f"training a cross-encoder needs sentence-transformers >= 4 ({e})") from e
    from datasets import Dataset

    mining = RetrieverTuneConfig(negatives=negatives, seed=seed)
    triplets = mine_triplets(pairs, retriever, list(retriever.store.chunks()), mining)
    rows = [(t[0], passage, 1.0 if j == 0 else 0.0) for t in triplets for j, passage in enumerate(t[1:])]
    if len(rows) < batch_size:
        raise EmptyDatasetError(f"{len(rows)} training rows: fewer than one batch of {batch_size}")
    models.force_offline()
    torch.manual_seed(seed)
    device = device or "cpu"
    model = CrossEncoder(str(models.resolve(str(base_model))), num_labels=1, max_length=max_length, device=device, local_files_only=True)
    data = Dataset.from_dict({"query": [r[0] for r in rows], "passage": [r[1] for r in rows], "label": [r[2] for r in rows]})
    with tempfile.TemporaryDirectory(prefix="layered-cross-encoder-") as work:
        args = CrossEncoderTrainingArguments(
            output_dir=work, num_train_epochs=epochs, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
            warmup_steps=0.1, seed=seed, data_seed=seed, bf16=device != "cpu" or cpu_supports_bf16(), use_cpu=device == "cpu",
            save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=not progress, dataloader_num_workers=0,
        )
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(negatives)))
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout is the caller's data
            CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    model.save_pretrained(str(out), safe_serialization=True)
    return out
