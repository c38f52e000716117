"""Distributed ingestion on a real local Ray (2 embedding actors, the real MiniLM embedder, MedQuAD text).

The index built with ``layered index --workers 2`` must equal the single-process one: the same
chunk ids, texts and metadata (content hashes included), vectors within 1e-5, the same manifest
entries; re-running embeds nothing; an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from layered.cli import main
from layered.retrieval import distributed
from layered.retrieval.distributed import RayEmbedding
from tests.conftest import MEDQUAD_SAMPLE

pytestmark = pytest.mark.slow  # a local Ray and the real embedder: about a minute here

N_DOCS = 60  # ~100 chunks: enough for several batches per actor, seconds to embed


def _ray():  # type: ignore[no-untyped-def]
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is not installed: the dev extra installs it (pip install -e '.[dev]')")
        pytest.skip("ray is not installed (pip install 'layered[ray]')")
    return ray


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    """One local Ray for the module: 2 CPUs, no dashboard, a small object store; shut down after."""
    ray = _ray()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             configure_logging=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "medquad.jsonl"
    path.write_text("".join(MEDQUAD_SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:N_DOCS]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus) -> Path:
    """The reference: the same corpus indexed by today's single-process path."""
    out = tmp_path_factory.mktemp("single") / "index"
    assert main(["-q", "index", str(corpus), "--out", str(out)]) == 0
    return out


def _contents(folder: Path) -> tuple[list[dict], np.ndarray, dict]:
    """(chunk records in store order, their vectors in that order, manifest) of a saved pipeline folder."""
    import faiss

    records = [json.loads(line) for line in (folder / "store" / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    index = faiss.deserialize_index(np.frombuffer((folder / "store" / "index.faiss").read_bytes(), dtype=np.uint8))
    vectors = np.vstack([index.reconstruct(int(r.pop("faiss_id"))) for r in records])
    return records, vectors, json.loads((folder / "manifest.json").read_text())


def _assert_same_index(folder: Path, reference: Path) -> None:
    records, vectors, manifest = _contents(folder)
    ref_records, ref_vectors, ref_manifest = _contents(reference)
    assert len(records) == len(ref_records) > N_DOCS
    assert records == ref_records  # chunk ids, texts, doc ids, metadata with content hashes, in order
    assert all(r["metadata"]["content_sha256"] for r in records)
    np.testing.assert_allclose(vectors, ref_vectors, atol=1e-5, rtol=0)
    assert manifest.keys() == ref_manifest.keys() and manifest["files"].keys() == ref_manifest["files"].keys()
    for name in manifest["files"]:  # config and payloads byte for byte; the FAISS file holds the vectors compared above
        if name != "store/index.faiss":
            assert manifest["files"][name] == ref_manifest["files"][name], name


def test_index_with_two_ray_workers_equals_single_process_and_rerun_adds_nothing(local_ray, corpus, single, tmp_path, caplog):
    out = tmp_path / "index"
    assert main(["-q", "index", str(corpus), "--out", str(out), "--workers", "2"]) == 0
    _assert_same_index(out, single)
    assert not (tmp_path / "index.ingest").exists()  # the checkpoint goes once the index is saved

    caplog.set_level(logging.INFO, logger="layered")
    assert main(["index", str(corpus), "--out", str(out), "--workers", "2"]) == 0
    assert f"0 added, 0 updated, {N_DOCS} unchanged" in caplog.text and "0 chunks embedded" in caplog.text
    assert "on Ray" not in caplog.text  # dedup happens before Ray: nothing was sent to it
    _assert_same_index(out, single)


def test_interrupted_ray_run_resumes_and_embeds_only_the_rest(local_ray, corpus, single, tmp_path, monkeypatch):
    from layered.retrieval.dense import DenseRetriever
    from layered.retrieval.loaders import load_documents

    reference = {r["id"]: v for r, v in zip(*_contents(single)[:2])}
    checkpoint = tmp_path / "ingest"
    written = []
    real_write = distributed._write_part

    def write_then_stop(path, keys, sizes, vectors):  # a Ctrl-C right after the first part reached the disk
        real_write(path, keys, sizes, vectors)
        written.append(int(sizes.sum()))
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "_write_part", write_then_stop)
    docs = load_documents(corpus)
    interrupted = DenseRetriever(embedder=_embedder())
    with pytest.raises(KeyboardInterrupt):  # flush_rows=1: every finished batch (64 chunks) is a part
        interrupted.add_documents(docs, embed=RayEmbedding(workers=2, checkpoint_dir=checkpoint, flush_rows=1))
    assert len(interrupted) == 0  # the store is written last: nothing half-indexed
    assert len(list(checkpoint.glob("part-*.npz"))) == 1 and written == [64]

    monkeypatch.setattr(distributed, "_write_part", real_write)
    resumed_embed = RayEmbedding(workers=2, checkpoint_dir=checkpoint, flush_rows=1)
    resumed = DenseRetriever(embedder=_embedder())
    report = resumed.add_documents(docs, embed=resumed_embed)
    total = len(reference)
    assert report.added == N_DOCS and report.chunks_embedded == total == len(resumed)
    assert resumed_embed.stats == {"texts": total, "reused": 64, "embedded": total - 64}
    for chunk in resumed.store.chunks():  # the same vectors as one uninterrupted process
        vector = resumed.store._index.reconstruct(resumed.store._ids[chunk.id])
        np.testing.assert_allclose(vector, reference[chunk.id], atol=1e-5, rtol=0)
    resumed_embed.clear()
    assert not checkpoint.exists()


KILLED_RUN = r"""
import os, signal, sys
from layered.cli import main
from layered.retrieval import distributed

real_write, real_beside = distributed._write_part, distributed.RayEmbedding.beside.__func__


def write_then_die(*args):  # SIGKILL to the driver and its local Ray as soon as the first part is on disk
    real_write(*args)
    os.killpg(os.getpgrp(), signal.SIGKILL)


distributed._write_part = write_then_die
distributed.RayEmbedding.beside = classmethod(lambda cls, out, **o: real_beside(cls, out, flush_rows=1, **o))  # a part per batch
sys.exit(main(["-q", "index", sys.argv[1], "--out", sys.argv[2], "--workers", "2"]))
"""


def test_kill_9_of_a_ray_ingest_then_the_same_command_resumes_and_equals_one_process(local_ray, corpus, single, tmp_path, caplog):
    """SIGKILL to the driver and its local Ray (the whole process group: no handler, no
    ``finally`` runs) the moment the first batch's part is on disk; the same command then reuses
    that part, embeds only the rest, and saves the index one process makes."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "index"
    parts = out.with_name(out.name + ".ingest")
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(corpus), str(out)], start_new_session=True,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "manifest.json").exists()  # nothing was indexed before every vector was in
    assert len(list(parts.glob("part-*.npz"))) == 1

    caplog.set_level(logging.INFO, logger="layered")
    assert main(["index", str(corpus), "--out", str(out), "--workers", "2"]) == 0
    assert "resumed: 64 chunks from the interrupted run" in caplog.text
    _assert_same_index(out, single)
    assert not parts.exists()


def _embedder():  # type: ignore[no-untyped-def]
    from layered.retrieval.embedders import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


def test_ray_embedded_chunks_written_to_milvus_lite_by_the_driver(local_ray, corpus, single, tmp_path):
    pytest.importorskip("pymilvus")
    from layered.connectors.milvus import MilvusStore
    from layered.pipeline import Pipeline
    from layered.retrieval.dense import DenseRetriever
    from layered.retrieval.loaders import load_documents

    reference = Pipeline.load(single).retriever
    docs = load_documents(corpus)
    embedder = _embedder()
    milvus = DenseRetriever(embedder=embedder, store=MilvusStore(embedder.dim, uri=str(tmp_path / "milvus.db"), collection="ray"))
    report = milvus.add_documents(docs, embed=RayEmbedding(workers=2))
    assert report.added == N_DOCS and report.chunks_embedded == len(reference)
    assert sorted((c.id, c.text, c.metadata["content_sha256"]) for c in milvus.store.chunks()) == \
        sorted((c.id, c.text, c.metadata["content_sha256"]) for c in reference.store.chunks())
    for question in ("What are the symptoms of body lice?", "How is the disease treated?"):
        got, want = milvus.retrieve(question, k=5), reference.retrieve(question, k=5)
        assert [h.chunk.id for h in got] == [h.chunk.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
    again = RayEmbedding(workers=2)
    assert milvus.add_documents(docs, embed=again).unchanged == N_DOCS and again.stats["texts"] == 0
