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


def _layered(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "layered.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


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
