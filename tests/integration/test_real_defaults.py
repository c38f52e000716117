"""End-to-end with the real packaged models (MiniLM + SmolLM2). Slow: tens of seconds each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from layered import Pipeline
from tests.helpers import write_beir

pytestmark = pytest.mark.slow
QUESTION = "What are the treatments for Graves disease?"


def _layered(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "layered.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def test_demo_medical_builds_then_reuses_its_index(tmp_path):
    cache = tmp_path / "cache"
    first = _layered("demo", "medical", "--cache-dir", str(cache), "--question", QUESTION, "--max-new-tokens", "24")
    assert first.returncode == 0, first.stderr
    assert "indexed the bundled MedQuAD sample" in first.stderr
    saved_ids = {json.loads(line)["id"] for line in (cache / "store" / "chunks.jsonl").read_text().splitlines()}
    assert len(saved_ids) > 1000
    rows = [line.split() for line in first.stdout.splitlines() if line.lstrip(" *").startswith("[")]
    assert rows and {r[1] for r in rows} <= saved_ids
    assert any("graves" in r[2].lower() for r in rows)  # the sources are the topic's pages
    manifest_mtime = (cache / "manifest.json").stat().st_mtime_ns

    second = _layered("demo", "medical", "--cache-dir", str(cache), "--question", QUESTION, "--max-new-tokens", "24")
    assert second.returncode == 0, second.stderr
    assert "reusing the saved index" in second.stderr and "nothing re-embedded" in second.stderr
    assert "embedding" not in second.stderr
    assert (cache / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert second.stdout == first.stdout  # greedy decoding: same answer, same sources

    asked = _layered("-q", "ask", str(cache), QUESTION, "--json", "--max-new-tokens", "16")
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["sources"] and {s["chunk_id"] for s in answer["sources"]} <= saved_ids
    assert {c["chunk_id"] for c in answer["citations"]} <= {s["chunk_id"] for s in answer["sources"]}


def test_saved_pipeline_gives_same_hits_and_answer(tmp_path, docs):
    pipe = Pipeline.from_defaults(docs[:25], max_new_tokens=20)
    before_hits = [(h.chunk.id, h.score) for h in pipe.retrieve("How is it inherited?")]
    before = pipe.ask("How is it inherited?")
    pipe.save(tmp_path / "p")
    loaded = Pipeline.load(tmp_path / "p")
    after_hits = [(h.chunk.id, h.score) for h in loaded.retrieve("How is it inherited?")]
    assert [i for i, _ in after_hits] == [i for i, _ in before_hits]
    assert np.allclose([s for _, s in after_hits], [s for _, s in before_hits], atol=1e-6)
    after = loaded.ask("How is it inherited?")
    assert after.text == before.text and before.text
    streamed = "".join(loaded.stream("How is it inherited?"))
    assert streamed.strip() == before.text


def test_bf16_embeddings_match_fp32(docs):
    from layered.retrieval.embedders import SentenceTransformerEmbedder

    texts = [d.text for d in docs[:16]]
    fp32 = SentenceTransformerEmbedder(precision="float32").embed(texts)
    bf16 = SentenceTransformerEmbedder(precision="bfloat16").embed(texts)
    assert fp32.shape == (16, 384) and np.allclose(np.linalg.norm(fp32, axis=1), 1, atol=1e-5)
    assert float((fp32 * bf16).sum(axis=1).min()) > 0.999


def test_eval_retrieval_cli_on_a_beir_folder(tmp_path, docs):
    assert write_beir(tmp_path, docs, n_docs=30, step=3) == 10
    out = tmp_path / "results.json"
    proc = _layered("-q", "eval", "retrieval", str(tmp_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "| retriever | recall@10 | mrr@10 | ndcg@10 |"
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"bm25", "dense", "hybrid"}
    assert all(0.5 < r["ndcg@10"] <= 1.0 and r["queries"] == 10 for r in results.values())


def test_demo_support_trains_once_then_routes_from_the_cache(tmp_path):
    """First run indexes, trains the policy adapter (a few steps here) and caches it; the second reuses it."""
    cache = tmp_path / "support"
    args = ("demo", "support", "--cache-dir", str(cache), "--steps", "2", "--max-new-tokens", "16",
            "--question", "How do I cancel my order?", "--question", "What is the warranty on the TrailMaster X4 Tent?")
    first = _layered(*args)
    assert first.returncode == 0, first.stderr
    assert "training the policy adapter (2 steps)" in first.stderr and "built, tuned and saved" in first.stderr
    assert (cache / "generator" / "adapters" / "policy.safetensors").is_file()
    assert "[adapter: policy]" in first.stdout and "[adapter: base]" in first.stdout
    sources = [line.split() for line in first.stdout.splitlines() if line.lstrip(" *").startswith("[")]
    # Routed scopes: the cancel question searches the ABCD guidelines, the tent one the manuals.
    assert any(s[1].startswith("abcd/") for s in sources) and any("abcd/" not in s[1] for s in sources)

    second = _layered(*args)
    assert second.returncode == 0, second.stderr
    assert "reusing the cached pipeline" in second.stderr and "first run" not in second.stderr
    assert second.stdout == first.stdout
