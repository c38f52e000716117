"""nDCG@10 of BM25, dense (all-MiniLM-L6-v2) and hybrid retrieval (fused by z-scores and by RRF) on SciFact, one run.

    .venv/bin/python benchmarks/scifact_retrieval.py PATH/TO/scifact [--split train] [--layout passages|sentences]
        [--precision auto|bfloat16|float32|int8] [--out results.json]

PATH holds BEIR-format SciFact (corpus.jsonl.gz, queries_train.jsonl, qrels_train.tsv); the
data is read from there, never copied into the repository. All three retrievers share one
index (the corpus is embedded once), so the comparison is like for like. Only the train split
is used: nothing here is tuned on a test split.
"""

from __future__ import annotations

import argparse
import time

from layered.artifacts import atomic_write_json
from layered.evaluation.retrieval import build_retrievers, evaluate_retriever, load_beir, markdown_table
from layered.retrieval.defaults import LAYOUTS
from layered.retrieval.embedders import PRECISIONS, SentenceTransformerEmbedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--split", default="train")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--layout", choices=LAYOUTS, default="passages")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto", help="the embedder's (README's table before 2026-12: bfloat16)")
    ap.add_argument("--out")
    args = ap.parse_args()
    data = load_beir(args.data, split=args.split)
    t = time.perf_counter()
    retrievers = build_retrievers(data.corpus, embedder=SentenceTransformerEmbedder(precision=args.precision), layout=args.layout,
                                  progress=True)
    zscore = retrievers.pop("hybrid")
    retrievers["hybrid (RRF)"] = zscore.with_fusion(fusion="rrf")
    retrievers["hybrid (z-scores)"] = zscore
    print(f"indexed {len(data.corpus)} documents in {time.perf_counter() - t:.0f}s; {len(data.qrels)} judged queries")
    results = {}
    for name, retriever in retrievers.items():
        t = time.perf_counter()
        results[name] = evaluate_retriever(retriever, data.queries, data.qrels, k=args.k)
        results[name]["seconds"] = time.perf_counter() - t
    print(markdown_table({n: {m: v for m, v in r.items() if m != "seconds"} for n, r in results.items()}))
    best_single = max(results["bm25"][f"ndcg@{args.k}"], results["dense"][f"ndcg@{args.k}"])
    for name in ("hybrid (RRF)", "hybrid (z-scores)"):
        print(f"{name} - best single retriever: {results[name][f'ndcg@{args.k}'] - best_single:+.4f} nDCG@{args.k}")
    if args.out:
        atomic_write_json(args.out, {"split": args.split, "k": args.k, "layout": args.layout, "precision": args.precision, "results": results})


if __name__ == "__main__":
    main()
