"""Incremental ingestion: only changed documents are re-embedded; deletes stick; crashes are atomic."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time


from layered.artifacts import verify_manifest
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.hybrid import HybridRetriever
from layered.retrieval.stores import FaissStore
from layered.types import Document


class CountingEmbedder(HashingEmbedder):
    """The real hashing embedder, counting how many texts it embeds."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.embedded = 0

    def embed(self, texts):
        self.embedded += len(texts)
        return super().embed(texts)


def _corpus(n=1000):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma".split()
    return [Document(id=f"doc{i}", text=f"record {i} " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 120))))
            for i in range(n)]


def test_editing_one_of_a_thousand_reembeds_only_its_chunks():
    emb = CountingEmbedder(128)
    hybrid = HybridRetriever(DenseRetriever(embedder=emb, chunker=TokenChunker(size=40, overlap=8)))
    docs = _corpus()
    first = hybrid.add_documents(docs)
    assert first.added == 1000 and emb.embedded == first.chunks_embedded == len(hybrid)

    edited = list(docs)
    edited[500] = Document(id="doc500", text="record 500 rewritten about unicorns " * 12)
    emb.embedded = 0
    report = hybrid.add_documents(edited)
    new_chunks = [c for c in hybrid.store.chunks() if c.doc_id == "doc500"]
    assert (report.updated, report.unchanged, report.added) == (1, 999, 0)
    assert emb.embedded == report.chunks_embedded == len(new_chunks)  # nothing else was embedded
    assert all("unicorns" in c.text for c in new_chunks)
    assert hybrid.retrieve("unicorns rewritten", k=1)[0].chunk.doc_id == "doc500"

    emb.embedded = 0
    assert hybrid.add_documents(edited).unchanged == 1000 and emb.embedded == 0


def test_deleted_documents_never_come_back():
    hybrid = HybridRetriever(DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=40, overlap=8)))
    docs = _corpus(200)
    hybrid.add_documents(docs)
    gone = {f"doc{i}" for i in range(0, 200, 3)}
    assert hybrid.delete_documents(gone | {"never-indexed"}) == len(gone)
    for d in docs[:30]:
        query = d.text[:80]
        for retriever in (hybrid.bm25, hybrid.dense, hybrid):
            assert not {h.chunk.doc_id for h in retriever.retrieve(query, k=50)} & gone
    hybrid.add_documents(docs[1:2])  # an unrelated update must not resurrect anything
    assert not {c.doc_id for c in hybrid.store.chunks()} & gone


def test_duplicates_and_emptied_documents():
    dense = DenseRetriever(embedder=HashingEmbedder(64), chunker=TokenChunker(size=20, overlap=2))
    report = dense.add_documents([Document(id="a", text="same words here"), Document(id="b", text="same words here")])
    assert (report.added, report.duplicates) == (1, 1)
    report = dense.add_documents([Document(id="a", text="   ")])
    assert report.empty == 1 and len(dense) == 0


CRASH_SCRIPT = r"""
import sys
from pathlib import Path
from layered.artifacts import save_folder_atomically
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.types import Document

folder, n = Path(sys.argv[1]), int(sys.argv[2])
docs = lambda v: [Document(id=f"d{i}", text=f"document {i} " + f"version{v} filler " * 40) for i in range(n)]
r = DenseRetriever(embedder=HashingEmbedder(64), chunker=TokenChunker(size=30, overlap=4))
r.add_documents(docs(0))
save_folder_atomically(folder, r.save)
print("ready", flush=True)
v = 0
while True:
    v = 1 - v
    r.add_documents(docs(v))
    save_folder_atomically(folder, r.save)
"""


def test_kill_9_during_index_updates_leaves_old_or_new_state(tmp_path):
    folder, n = tmp_path / "index", 300
    rng = random.Random(1)
    states = set()
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(folder), str(n)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        verify_manifest(folder)  # loads: complete and untampered
        store = FaissStore.load(folder / "store", {"dim": 64})
        versions = {v for c in store.chunks() for v in re.findall(r"version(\d)", c.text)}
        assert len(versions) == 1, "a mix of old and new chunks"
        assert {c.doc_id for c in store.chunks()} == {f"d{i}" for i in range(n)}
        q = HashingEmbedder(64).embed(["document 7 filler"])[0]
        assert len(store.search(q, k=5)) == 5
        states |= versions
    assert states <= {"0", "1"}
    subprocess.run([sys.executable, "-c", CRASH_SCRIPT.replace("while True", "while v == 0"), str(folder), str(n)], check=True,
                   capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # killed writers' temp folders are cleaned up
