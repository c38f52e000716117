"""The medical assistant's retrieval options, measured on its own validation split (never test).

    .venv/bin/python benchmarks/medical_retrieval.py [--precisions float32 int8] [--out benchmarks/results/medical_retrieval.md]

Each option indexes all 16,407 MedQuAD pages exactly as the assistant does (one passage per page,
its first 200 tokens, the embedder reading 128: ``pipelines/medical.build_base``) with the
embedder at one precision, then answers the validation questions of ``medical.splits()`` (topics
split 80/10/10, seed 0) dense and hybrid (BM25 fused by RRF, and by z-scores, the library's
default since 2026-12-04). Relevant:
the question's own page. Reported: index time, query p50, hit@3 (the assistant serves k=3),
MRR@10 and nDCG@10. Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from layered.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from layered.pipelines import medical
from layered.retrieval.hybrid import HybridRetriever


def score(retriever, questions) -> tuple[dict[str, float], float]:
    hits3, mrr, ndcg, times = [], [], [], []
    for ex in questions:
        relevant = {d: 1 for d in ex.metadata["doc_ids"]}
        t = time.perf_counter()
        ranked = [h.chunk.doc_id for h in retriever.retrieve(ex.question, k=10)]
        times.append(time.perf_counter() - t)
        hits3.append(recall_at_k(ranked, relevant, 3))
        mrr.append(mrr_at_k(ranked, relevant, 10))
        ndcg.append(ndcg_at_k(ranked, relevant, 10))
    n = len(questions)
    return {"hit@3": sum(hits3) / n, "MRR@10": sum(mrr) / n, "nDCG@10": sum(ndcg) / n}, statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precisions", nargs="+", default=[medical.EMBED_PRECISION],
                    help=f"embedder precisions (default: the assistant's, {medical.EMBED_PRECISION})")
    ap.add_argument("--out", default="benchmarks/results/medical_retrieval.md")
    args = ap.parse_args()
    questions = medical.splits().validation
    rows = []
    for precision in args.precisions:
        t = time.perf_counter()
        pipe = medical.build_base(progress=True, precision=precision)
        built = time.perf_counter() - t
        dense = pipe.retriever
        runs_as = dense.embedder.runs_as
        options = (("dense", dense), ("hybrid (RRF)", HybridRetriever(dense, fusion="rrf")), ("hybrid (z-scores)", HybridRetriever(dense)))
        for name, retriever in options:
            metrics, p50 = score(retriever, questions)
            rows.append((runs_as, name, built, p50, metrics))
            print(runs_as, name, f"index {built:.0f} s", f"query p50 {p50:.1f} ms", metrics, flush=True)
    lines = [
        "# Medical assistant retrieval options (its validation split)",
        "",
        f"`benchmarks/medical_retrieval.py`: all 16,407 MedQuAD pages indexed as the assistant does; {len(questions)} "
        "validation questions (topics never in train or test); relevant = the question's own page.",
        "",
        "| embedder | retriever | index s | query p50 ms | hit@3 | MRR@10 | nDCG@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for runs_as, name, built, p50, m in rows:
        lines.append(f"| {runs_as} | {name} | {built:.0f} | {p50:.1f} | {m['hit@3']:.4f} | {m['MRR@10']:.4f} | {m['nDCG@10']:.4f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
