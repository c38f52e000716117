"""Embedding throughput: bf16 autocast vs fp32 on the same MedQuAD chunks, same process.

    .venv/bin/python benchmarks/embedding_speed.py [--chunks 512] [--repeats 2]

Prints chunks/s for both, their ratio, and the smallest cosine between the two vectors
of a chunk. The default embedder uses bf16 when the CPU supports it natively; this is the
measurement behind that choice. Reports ratios, not absolute targets (machines are noisy).
"""

from __future__ import annotations

import argparse
import time

from layered.pipelines.medical import SAMPLE_PATH
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import embed_in_batches
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.retrieval.loaders import load_documents


def best_rate(embedder: SentenceTransformerEmbedder, texts: list[str], repeats: int) -> tuple[float, object]:
    best, vectors = 0.0, None
    for _ in range(repeats):
        t = time.perf_counter()
        vectors = embed_in_batches(embedder, texts)
        best = max(best, len(texts) / (time.perf_counter() - t))
    return best, vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    fp32 = SentenceTransformerEmbedder(precision="float32")
    bf16 = SentenceTransformerEmbedder(precision="bfloat16")
    chunks = TokenChunker(tokenizer=fp32.tokenizer()).split(load_documents(SAMPLE_PATH))[: args.chunks]
    texts = [c.text for c in chunks]
    for e in (fp32, bf16):
        e.warm_up()
        e.embed(texts[:8])  # first-call overheads out of the timing
    rate32, v32 = best_rate(fp32, texts, args.repeats)
    rate16, v16 = best_rate(bf16, texts, args.repeats)
    cos = float((v32 * v16).sum(axis=1).min())  # type: ignore[operator]
    print(f"| precision | chunks/s |\n|---|---|\n| float32 | {rate32:.1f} |\n| bfloat16 autocast | {rate16:.1f} |")
    print(f"\nspeed-up bf16/fp32: {rate16 / rate32:.2f}x on {len(texts)} chunks; min cosine(bf16, fp32) = {cos:.5f}")


if __name__ == "__main__":
    main()
