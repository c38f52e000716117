import numpy as np
import pytest

from layered.artifacts import save_folder_atomically, verify_manifest
from layered.errors import InputError
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.stores import FaissStore
from layered.types import Chunk

EMB = HashingEmbedder(64)


def _chunks(n, group=lambda i: "a" if i % 2 else "b"):
    return [Chunk(id=f"c{i}", doc_id=f"d{i}", text=f"text number {i} about topic {i % 5}", metadata={"group": group(i)}) for i in range(n)]


def _store(chunks):
    store = FaissStore(EMB.dim)
    store.add(chunks, EMB.embed([c.text for c in chunks]))
    return store


def test_search_is_exact_cosine_best_first():
    chunks = _chunks(20)
    store = _store(chunks)
    q = EMB.embed(["text number 7 about topic 2"])[0]
    hits = store.search(q, k=5)
    assert hits[0].chunk.id == "c7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    brute = EMB.embed([c.text for c in chunks]) @ q
    assert [h.score for h in hits] == pytest.approx(sorted(brute, reverse=True)[:5], abs=1e-5)


def test_filters_apply_inside_the_query_and_still_return_k():
    store = _store(_chunks(40, group=lambda i: "rare" if i in (3, 30) else "common"))
    q = EMB.embed(["text number 7 about topic 2"])[0]
    hits = store.search(q, k=2, filters={"group": "rare"})
    assert sorted(h.chunk.id for h in hits) == ["c3", "c30"]
    assert len(store.search(q, k=10, filters={"group": ["rare", "common"]})) == 10
    assert store.search(q, k=3, filters={"group": "nobody"}) == []


def test_upsert_and_delete():
    store = _store(_chunks(5))
    new = Chunk(id="c1", doc_id="d1", text="a replaced chunk about llamas", metadata={})
    store.add([new], EMB.embed([new.text]))
    assert len(store) == 5
    assert store.search(EMB.embed(["a replaced chunk about llamas"])[0], k=1)[0].chunk.text == "a replaced chunk about llamas"
    assert store.delete(["c1", "c2", "missing"]) == 2
    assert len(store) == 3 and "c1" not in store
    left = store.search(EMB.embed(["a replaced chunk about llamas"])[0], k=5)
    assert len(left) == 3 and all(h.chunk.id not in ("c1", "c2") for h in left)  # the 3 remaining chunks


def test_bad_vectors_are_rejected():
    store = FaissStore(EMB.dim)
    with pytest.raises(InputError, match="shape"):
        store.add(_chunks(2), np.zeros((2, 3), dtype=np.float32))


def test_save_load_roundtrip(tmp_path):
    chunks = _chunks(30)
    store = _store(chunks)
    store.delete(["c4"])
    save_folder_atomically(tmp_path / "s", store.save)
    verify_manifest(tmp_path / "s")
    loaded = FaissStore.load(tmp_path / "s", store.config())
    q = EMB.embed(["topic 3"])[0]
    assert [(h.chunk, h.score) for h in loaded.search(q, k=8)] == [(h.chunk, h.score) for h in store.search(q, k=8)]
    extra = Chunk(id="new", doc_id="n", text="fresh")
    loaded.add([extra], EMB.embed(["fresh"]))  # ids keep counting after a reload
    assert len(loaded) == 30 and loaded.search(EMB.embed(["fresh"])[0], k=1)[0].chunk.id == "new"


def test_hnsw_agrees_with_exact_search_and_filters_keep_k():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    chunks = [Chunk(id=f"c{i}", doc_id=f"d{i}", text="", metadata={"rare": i % 500 == 0}) for i in range(3000)]
    exact, approx = FaissStore(32, index="flat"), FaissStore(32, index="auto", hnsw_threshold=1000)
    for store in (exact, approx):
        store.add(chunks, vectors)
    assert approx.uses_hnsw and not exact.uses_hnsw
    overlap = []
    for q in rng.standard_normal((50, 32)).astype(np.float32):
        want = {h.chunk.id for h in exact.search(q, k=10)}
        overlap.append(len(want & {h.chunk.id for h in approx.search(q, k=10)}) / 10)
        rare = approx.search(q, k=10, filters={"rare": True})
        assert len(rare) == 6 and all(h.chunk.metadata["rare"] for h in rare)  # 6 rare chunks exist
    assert np.mean(overlap) >= 0.95
    approx.delete(["c0"])
    after = approx.search(vectors[0], k=5)
    assert len(after) == 5 and all(h.chunk.id != "c0" for h in after)
