"""One suite every vector store passes: FAISS (embedded) and Milvus Lite (real, no mock)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layered.artifacts import save_folder_atomically, verify_manifest
from layered.errors import InputError
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.filters import matches
from layered.types import Chunk

EMB = HashingEmbedder(64)
GROUPS = ["alpha", "beta", 'quote"s', "back\\slash", "x' or 1==1 or '", "ünïcødé", ""]


def _open(kind, folder, collection="conf"):
    if kind.startswith("faiss"):
        from layered.retrieval.stores import FaissStore

        return FaissStore(EMB.dim, index="hnsw" if kind == "faiss-hnsw" else "flat")
    from layered.connectors.milvus import MilvusStore

    return MilvusStore(EMB.dim, uri=str(folder / "milvus.db"), collection=collection)


def _reopen(kind, store, folder):
    """Persist and open again, as a new process would."""
    if kind.startswith("faiss"):
        from layered.retrieval.stores import FaissStore

        save_folder_atomically(folder / "faiss", store.save)
        verify_manifest(folder / "faiss")
        return FaissStore.load(folder / "faiss", store.config())
    from layered.connectors.milvus import MilvusStore

    config = store.config()
    store.close()
    return MilvusStore.load(folder, config)


def _chunks(n):
    return [
        Chunk(id=f"doc{i}#0", doc_id=f"doc{i}", text=f"passage {i} about subject {i % 4} and words {i * 7}",
              source="s", metadata={"group": GROUPS[i % len(GROUPS)], "n": i % 3})
        for i in range(n)
    ]


@pytest.fixture(params=["faiss", "faiss-hnsw", "milvus"])
def kind(request):
    return request.param


def test_add_search_delete_persist(kind, tmp_path):
    store = _open(kind, tmp_path)
    chunks = _chunks(30)
    store.add(chunks, EMB.embed([c.text for c in chunks]))
    assert len(store) == 30 and "doc3#0" in store and "nope" not in store
    q = EMB.embed([chunks[5].text])[0]
    hits = store.search(q, k=4)
    assert hits[0].chunk == chunks[5] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.rank for h in hits] == [1, 2, 3, 4] and all(a.score >= b.score - 1e-6 for a, b in zip(hits, hits[1:]))

    replaced = Chunk(id="doc5#0", doc_id="doc5", text="entirely new llama text", metadata={"group": "alpha", "n": 0})
    store.add([replaced], EMB.embed([replaced.text]))
    assert len(store) == 30
    assert store.search(EMB.embed([replaced.text])[0], k=1)[0].chunk == replaced

    assert store.delete(["doc1#0", "doc2#0", "missing"]) == 2
    assert len(store) == 28
    left = store.search(EMB.embed([chunks[1].text])[0], k=28)
    assert len(left) == 28 and all(h.chunk.id not in ("doc1#0", "doc2#0") for h in left)

    store = _reopen(kind, store, tmp_path)
    assert len(store) == 28 and {c.id for c in store.chunks()} == {c.id for c in chunks} - {"doc1#0", "doc2#0"}
    assert store.search(EMB.embed([replaced.text])[0], k=1)[0].chunk == replaced


@pytest.mark.parametrize("group", GROUPS)
def test_filters_are_data_and_return_k(kind, tmp_path, group):
    store = _open(kind, tmp_path)
    chunks = _chunks(42)
    store.add(chunks, EMB.embed([c.text for c in chunks]))
    visible = [c for c in chunks if c.metadata["group"] == group]
    hits = store.search(EMB.embed(["passage subject words"])[0], k=len(visible), filters={"group": group})
    assert sorted(h.chunk.id for h in hits) == sorted(c.id for c in visible)  # k found, none foreign
    two = store.search(EMB.embed(["passage"])[0], k=100, filters={"group": [group, "beta"], "n": 1})
    assert {h.chunk.id for h in two} == {c.id for c in chunks if matches(c.metadata, {"group": [group, "beta"], "n": 1})}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=20))
def test_naughty_filter_values_never_match_foreign_rows_in_milvus(tmp_path_factory, value):
    folder = tmp_path_factory.mktemp("naughty")
    store = _open("milvus", folder)
    chunks = _chunks(14)
    store.add(chunks, EMB.embed([c.text for c in chunks]))
    try:
        if any(ord(ch) < 32 or ch == "\x7f" for ch in value):
            with pytest.raises(InputError, match="control characters"):
                store.search(EMB.embed(["passage"])[0], k=14, filters={"group": value})
            return
        hits = store.search(EMB.embed(["passage"])[0], k=14, filters={"group": value})
        assert {h.chunk.id for h in hits} == {c.id for c in chunks if c.metadata["group"] == value}
    finally:
        store.close()


def test_pipeline_on_milvus_saves_and_loads(tmp_path, tiny_generator, docs):
    from layered import Pipeline
    from layered.connectors.milvus import MilvusStore
    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.dense import DenseRetriever

    store = MilvusStore(EMB.dim, uri=str(tmp_path / "kb.db"), collection="kb")
    retriever = DenseRetriever(embedder=EMB, store=store, chunker=TokenChunker(size=60, overlap=10))
    retriever.add_documents(docs)
    pipe = Pipeline(generator=tiny_generator, retriever=retriever)
    before = [h.chunk.id for h in pipe.retrieve("genetic changes", k=5)]
    pipe.save(tmp_path / "p")
    store.close()
    loaded = Pipeline.load(tmp_path / "p")
    assert [h.chunk.id for h in loaded.retrieve("genetic changes", k=5)] == before
    assert loaded.retriever.add_documents(docs).unchanged == len(docs)  # the hashes live in Milvus too
