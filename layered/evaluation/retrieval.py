"""Retrieval evaluation on BEIR-format data: recall@k, MRR@k and nDCG@k.

BEIR data is ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and a qrels TSV (``query-id``, ``corpus-id``, ``score``, with a header row).
Retrievers return chunks; a document's rank is the rank of its best chunk.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from layered.errors import DocumentLoadError, InputError, SourceNotFoundError
from layered.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from layered.jsonl import records
from layered.protocols import Retriever
from layered.retrieval.loaders import FileLoader
from layered.types import Document

Qrels = Mapping[str, Mapping[str, int]]
log = logging.getLogger(__name__)

#: Chunks for BEIR corpora: 250 tokens, 40 shared, the setting every retrieval number in
#: README and benchmarks/results was measured with (the library default is TokenChunker's).
BEIR_CHUNK_SIZE, BEIR_CHUNK_OVERLAP = 250, 40


@dataclass(frozen=True)
class BeirData:
    corpus: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _find(folder: Path, patterns: Sequence[str], what: str) -> Path:
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise SourceNotFoundError(f"{folder}: no {what} file (looked for {', '.join(patterns)})")


def load_beir(folder: str | Path, *, split: str | None = None) -> BeirData:
    """Load a BEIR folder; ``split`` picks ``queries_<split>.jsonl``/``qrels_<split>.tsv`` when several exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceNotFoundError(f"{folder}: no such folder")
    s = f"*{split}*" if split else "*"
    corpus_path = _find(folder, ["corpus.jsonl", "corpus.jsonl.gz"], "corpus")
    queries_path = _find(folder, ["queries.jsonl", f"queries{s}.jsonl"], "queries")
    qrels_path = _find(folder, [f"qrels{s}.tsv", f"qrels/{split or 'test'}.tsv", "qrels/*.tsv"], "qrels")
    corpus = list(FileLoader(text_fields=("title", "text"), id_field="_id").load(corpus_path))
    queries = {}
    for n, q in records(queries_path.read_text(encoding="utf-8").splitlines(), str(queries_path)):
        if "_id" not in q or "text" not in q:
            raise DocumentLoadError(f"{queries_path}:{n}: expected a JSON object with _id and text")
        queries[str(q["_id"])] = str(q["text"])
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        for row in rows:
            if not row or row[0] in ("query-id", "query_id"):
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2]) if len(row) > 2 else 1
    qrels = {q: r for q, r in qrels.items() if q in queries}
    if not qrels:
        raise InputError(f"{qrels_path}: no judged queries match {queries_path}")
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


def rank_documents(retriever: Retriever, query: str, *, k: int, depth: int | None = None) -> list[str]:
    """Document ids for ``query``, best first, at most ``k`` (best chunk per document)."""
    seen: list[str] = []
    for hit in retriever.retrieve(query, k=depth or k * 3):
        if hit.chunk.doc_id not in seen:
            seen.append(hit.chunk.doc_id)
    return seen[:k]


def evaluate_retriever(retriever: Retriever, queries: Mapping[str, str], qrels: Qrels, *, k: int = 10) -> dict[str, float]:
    """Mean recall@k, MRR@k and nDCG@k over the judged queries."""
    judged = [q for q in qrels if q in queries]
    if not judged:
        raise InputError("no judged queries to evaluate")
    totals = {f"recall@{k}": 0.0, f"mrr@{k}": 0.0, f"ndcg@{k}": 0.0}
    for qid in judged:
        ranked = rank_documents(retriever, queries[qid], k=k)
        totals[f"recall@{k}"] += recall_at_k(ranked, qrels[qid], k)
        totals[f"mrr@{k}"] += mrr_at_k(ranked, qrels[qid], k)
        totals[f"ndcg@{k}"] += ndcg_at_k(ranked, qrels[qid], k)
    return {name: total / len(judged) for name, total in totals.items()} | {"queries": float(len(judged))}


def markdown_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """One row per retriever, one column per metric."""
    metrics = [m for m in next(iter(results.values())) if m != "queries"]
    lines = ["| retriever | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)


def run_beir(
    data: str | Path, *, split: str | None = None, k: int = 10, retriever: str = "all", custom: str | None = None,
    max_queries: int | None = None, layout: str = "passages", progress: bool = False,
) -> dict[str, dict[str, float]]:
    """The ``layered eval retrieval`` workflow: ``{retriever name: metrics}`` on the BEIR folder ``data``.

    ``retriever`` picks one of :func:`build_retrievers` (``"all"``: each); ``custom``
    (``FILE.py:NAME`` or ``module:NAME``) names a callable that takes the corpus documents and
    returns a retriever, evaluated instead. ``max_queries`` keeps the first N judged queries;
    ``layout``: one of :data:`layered.retrieval.defaults.LAYOUTS`.
    """
    from layered.registry import load_object

    beir = load_beir(data, split=split)
    qrels = dict(list(beir.qrels.items())[:max_queries]) if max_queries else beir.qrels
    log.info("%d documents, %d judged queries", len(beir.corpus), len(qrels))
    if custom:
        retrievers = {custom.rpartition(":")[2]: load_object(custom)(beir.corpus)}
        names = list(retrievers)
    else:
        retrievers = build_retrievers(beir.corpus, layout=layout, progress=progress)
        names = list(retrievers) if retriever == "all" else [retriever]
    return {name: evaluate_retriever(retrievers[name], beir.queries, qrels, k=k) for name in names}


def build_retrievers(
    docs: Sequence[Document],
    *,
    embedder: object | None = None,
    chunk_size: int = BEIR_CHUNK_SIZE,
    chunk_overlap: int = BEIR_CHUNK_OVERLAP,
    layout: str = "passages",
    fusion: str = "zscore",
    progress: bool = False,
) -> dict[str, Retriever]:
    """Dense, BM25 and hybrid retrievers over one index of ``docs`` (embedded once), wired as
    :func:`layered.retrieval.defaults.layout_retriever` wires them (``chunk_size``/``chunk_overlap``:
    the ``passages`` layout's; ``fusion``: the hybrid's, ``"rrf"`` or ``"zscore"``)."""
    from layered.retrieval.defaults import layout_retriever

    hybrid = layout_retriever(layout, embedder, hybrid=True, fusion=fusion, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    hybrid.add_documents(docs, progress=progress)
    return {"bm25": hybrid.bm25, "dense": hybrid.dense, "hybrid": hybrid}
