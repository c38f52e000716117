"""Embedding throughput and quality per precision option, same texts, same process.

    .venv/bin/python benchmarks/embedding_speed.py [--chunks 512] [--repeats 2] [--beir PATH/TO/scifact] [--out benchmarks/results/embedding_speed.md]

Throughput: chunks/s embedding MedQuAD chunks (200 tokens, the sample's pages) with
all-MiniLM-L6-v2 as raw sentence-transformers fp32 (``SentenceTransformer.encode``, which
already sorts by length: the baseline), then through ``SentenceTransformerEmbedder`` with
each precision (fp32, bf16 autocast, int8 on OpenVINO with per-channel weight scales),
best of ``--repeats``. Query latency:
p50 of embedding one question at a time. Quality: dense nDCG@10 and recall@10 of each option
on the 1,000 MedQuAD sample questions against their own answer pages (question -> page), and
the smallest cosine between an option's vectors and fp32's; with ``--beir``, also dense and hybrid
nDCG@10 on that BEIR folder's train split (SciFact train here). Ratios, not absolute targets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from layered.evaluation.retrieval import build_retrievers, evaluate_retriever, load_beir
from layered.pipelines.medical import SAMPLE_PATH
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever, embed_in_batches
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.retrieval.loaders import load_documents
from layered.types import Document


def rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--beir", help="a BEIR folder: also report dense/hybrid nDCG@10 on its train split per option")
    args = ap.parse_args()
    options = {name: SentenceTransformerEmbedder(precision=name) for name in ("float32", "bfloat16", "int8")}
    chunks = TokenChunker(tokenizer=options["float32"].tokenizer()).split(load_documents(SAMPLE_PATH))[: args.chunks]
    texts = [c.text for c in chunks]
    rows = [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = [Document(id=r["id"], text=r["answer"]) for r in rows]
    queries = {r["id"]: r["question"] for r in rows}
    qrels = {r["id"]: {r["id"]: 1} for r in rows}

    raw = options["float32"]._model()  # the plain SentenceTransformer, fp32: the baseline
    raw.encode(texts[:8])
    # The baseline at its best batch size (sentence-transformers' default is 32).
    raw_rates = {bs: rate(lambda bs=bs: raw.encode(texts, batch_size=bs, normalize_embeddings=True), len(texts), args.repeats)
                 for bs in (8, 16, 32, 64)}
    raw_bs, raw_rate = max(raw_rates.items(), key=lambda kv: kv[1])
    print("raw fp32 chunks/s by batch size:", {bs: round(r, 1) for bs, r in raw_rates.items()}, flush=True)
    base_vectors = raw.encode(texts, batch_size=32, normalize_embeddings=True)
    beir = load_beir(args.beir, split="train") if args.beir else None
    extra = " BEIR dense nDCG@10 | BEIR hybrid nDCG@10 |" if beir else ""
    table = ["| option | chunks/s | vs raw fp32 | query p50 ms | min cosine to fp32 | nDCG@10 | recall@10 |" + extra,
             "|---|---|---|---|---|---|---|" + "---|---|" * bool(beir)]
    table.append(f"| sentence-transformers encode, fp32 (raw, batch {raw_bs}) | {raw_rate:.1f} | 1.00x | | 1.00000 | | |" + " |" * 2 * bool(beir))
    for name, emb in options.items():
        emb.embed(texts[:8])  # loads the model (and exports the int8 file once, outside the timing)
        r = rate(lambda emb=emb: embed_in_batches(emb, texts), len(texts), args.repeats)
        vectors = embed_in_batches(emb, texts)
        cos = float((vectors * base_vectors).sum(axis=1).min())
        lat = []
        for q in list(queries.values())[:50]:
            t = time.perf_counter()
            emb.embed([q])
            lat.append(1000 * (time.perf_counter() - t))
        dense = DenseRetriever(embedder=emb, chunker=TokenChunker(tokenizer=emb.tokenizer(), size=200, overlap=0))
        dense.add_documents(docs)
        quality = evaluate_retriever(dense, queries, qrels)
        scores = ""
        if beir:
            found = build_retrievers(beir.corpus, embedder=emb)
            scores = "".join(f" {evaluate_retriever(found[k], beir.queries, beir.qrels)['ndcg@10']:.4f} |" for k in ("dense", "hybrid"))
        label = {"int8": "int8 (OpenVINO, per-channel weights)"}.get(name, name)
        table.append(f"| layered, {label} | {r:.1f} | {r / raw_rate:.2f}x | {statistics.median(lat):.1f} | {cos:.5f} "
                     f"| {quality['ndcg@10']:.4f} | {quality['recall@10']:.4f} |{scores}")
        print(table[-1], flush=True)
    lines = ["# Embedding throughput and quality per precision (all-MiniLM-L6-v2, this CPU)", "",
             f"{len(texts)} MedQuAD chunks; quality on the {len(queries)} MedQuAD sample questions (question -> its page, "
             f"{len(docs)} pages){'; BEIR columns: ' + args.beir + ' train split' if beir else ''}; "
             "`benchmarks/embedding_speed.py`.", "", *table, ""]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
