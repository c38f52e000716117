"""Ingest throughput of real text: one process vs Ray Data with 1 and 2 embedding actors.

    /path/to/venv/bin/python benchmarks/ingest_workers.py [--pages 2000] [--out benchmarks/results/ingest_workers.md]

(the venv needs the ``ray`` extra: ``pip install -e '.[ray]'``). The first ``--pages`` MedQuAD
pages of the packaged corpus (``pipelines/data/medquad.jsonl.gz``) are indexed the way
``layered index`` indexes them (the default MiniLM embedder, 200-token chunks with 40 tokens of
overlap, a FAISS store), by ``DenseRetriever.add_documents`` in this process, then with
``embed=RayEmbedding(workers=N)`` on a local Ray started for the run. Each row is one fresh
retriever: ingest seconds cover loading nothing (the documents are read once, before), then
chunking, embedding (on Ray: starting the actors and loading the model in each) and writing
the store; ``ray.init`` is timed apart. Every Ray row's vectors are compared with the
single-process ones (max |difference|) and the chunk ids must be equal.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from layered.pipelines.medical import KB_PATH
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.retrieval.loaders import load_documents


def retriever() -> DenseRetriever:
    embedder = SentenceTransformerEmbedder()  # what Pipeline.from_defaults (and `layered index`) uses
    embedder.warm_up()  # the driver's own model load is not ingest work in either mode
    return DenseRetriever(embedder=embedder, chunker=TokenChunker(size=200, overlap=40, tokenizer=embedder.tokenizer()))


def vectors(r: DenseRetriever) -> tuple[list[str], np.ndarray]:
    store = r.store
    ids = [c.id for c in store.chunks()]
    return ids, np.vstack([store._index.reconstruct(store._ids[i]) for i in ids])  # type: ignore[attr-defined]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2000, help="MedQuAD pages to index (default 2000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray actor counts to measure (default 1 2)")
    parser.add_argument("--out", default="benchmarks/results/ingest_workers.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    from layered.retrieval.distributed import RayEmbedding

    docs = load_documents(KB_PATH)[: args.pages]
    rows = []

    r = retriever()
    t = time.perf_counter()
    report = r.add_documents(docs)
    seconds = time.perf_counter() - t
    ref_ids, ref_vectors = vectors(r)
    chunks = report.chunks_embedded
    rows.append(("one process (torch, 2 threads)", "", f"{seconds:.1f}", f"{chunks / seconds:.1f}", "", "reference"))
    print(rows[-1], flush=True)

    for n in args.workers:
        t = time.perf_counter()
        ray.init(num_cpus=n, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False,
                 configure_logging=False, logging_level=logging.WARNING)
        init = time.perf_counter() - t
        try:
            r = retriever()
            t = time.perf_counter()
            report = r.add_documents(docs, embed=RayEmbedding(workers=n))
            seconds = time.perf_counter() - t
        finally:
            ray.shutdown()
        ids, got = vectors(r)
        assert ids == ref_ids and report.chunks_embedded == chunks, "the Ray index differs from the single-process one"
        diff = float(np.abs(got - ref_vectors).max())
        rows.append((f"Ray Data, {n} actor{'s' if n > 1 else ''} (1 thread each)", f"{init:.1f}", f"{seconds:.1f}",
                     f"{chunks / seconds:.1f}", f"{chunks / (seconds + init):.1f}", f"{diff:.1e}"))
        print(rows[-1], flush=True)

    lines = [
        "# Ingest throughput: one process vs Ray Data actors",
        "",
        f"{len(docs):,} MedQuAD pages ({chunks:,} chunks of 200 tokens, 40 overlap) embedded with all-MiniLM-L6-v2 "
        "(bf16 autocast where the CPU has it, as by default) into a FAISS store, as `layered index` does.",
        f"Machine: {os.cpu_count()} CPU cores ({cpu_name()}), shared; measured with no other test or benchmark running.",
        "",
        "| mode | ray.init (s) | ingest (s) | chunks/s | chunks/s incl. ray.init | max abs vector diff vs one process |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        "Ingest seconds: chunking, embedding (on Ray also starting the actors and loading the model in each) and the "
        "FAISS writes, for documents already read. Chunk ids, texts and metadata are identical in every row; the "
        "vectors too (each actor embeds the same length-sorted batches of 64 as one process).",
        "",
        f"Rerun: `.venv/bin/python benchmarks/ingest_workers.py --pages {args.pages} --workers {' '.join(map(str, args.workers))}` "
        "(with the `ray` extra installed).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
