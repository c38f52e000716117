"""One suite every vector store passes: FAISS (embedded), Milvus Lite and a Milvus server (real, no mock).

The server is a real Milvus standalone process started on loopback for this module
(tests/milvus_server.py); it runs the same suite with AUTOINDEX, HNSW and IVF_FLAT, and the
ingestion tests below cut its TCP connection mid-ingest through a loopback proxy.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layered.artifacts import save_folder_atomically, verify_manifest
from layered.errors import InputError, StoreUnavailableError
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.filters import matches
from layered.types import Chunk, Document
from tests.milvus_server import (
    FaultProxy,
    MilvusServerProcess,
    MilvusUnavailable,
    in_ci,
)

EMB = HashingEmbedder(64)
GROUPS = ["alpha", "beta", 'quote"s', "back\\slash", "x' or 1==1 or '", "ünïcødé", ""]
SERVER_INDEX = {"milvus-server": "AUTOINDEX", "milvus-server-hnsw": "HNSW", "milvus-server-ivf": "IVF_FLAT"}


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """A real Milvus server on a free loopback port, its data in a temp folder, killed after this module."""
    server = MilvusServerProcess(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
    except MilvusUnavailable as e:
        if in_ci():
            pytest.fail(f"CI=true and the Milvus server cannot run: {e}")
        pytest.skip(str(e))
    yield server
    server.stop()


def _open(kind, folder, collection="conf", server=None, fresh=True):
    if kind.startswith("faiss"):
        from layered.retrieval.stores import FaissStore

        return FaissStore(EMB.dim, index="hnsw" if kind == "faiss-hnsw" else "flat")
    from layered.connectors.milvus import MilvusStore

    if kind in SERVER_INDEX:  # one server for the module: a fresh collection per test, or one per kind
        name = f"{collection}_{uuid.uuid4().hex[:12]}" if fresh else f"{collection}_{kind.replace('-', '_')}"
        return MilvusStore(EMB.dim, uri=server.uri, collection=name, index_type=SERVER_INDEX[kind])
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


@pytest.fixture
def server_for(request):
    """``server_for(kind)``: the module's Milvus server when ``kind`` needs one (started on first use)."""
    return lambda kind: request.getfixturevalue("milvus_server") if kind in SERVER_INDEX else None


@pytest.fixture(params=["faiss", "faiss-hnsw", "milvus", "milvus-server"])
def kind(request):
    return request.param


@pytest.mark.parametrize("kind", ["faiss", "faiss-hnsw", "milvus", *SERVER_INDEX])
def test_add_search_delete_persist(kind, tmp_path, server_for):
    store = _open(kind, tmp_path, server=server_for(kind))
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
def test_filters_are_data_and_return_k(kind, tmp_path, group, server_for):
    # The same 42 chunks for every group: on the server, one collection upserted again (collections are slow to make).
    store = _open(kind, tmp_path, collection="filters", server=server_for(kind), fresh=False)
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


@pytest.mark.parametrize("where", ["milvus", "milvus-server"])
def test_pipeline_on_milvus_saves_and_loads(tmp_path, tiny_generator, docs, where, server_for):
    from layered import Pipeline
    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.dense import DenseRetriever

    store = _open(where, tmp_path, collection="kb", server=server_for(where))
    retriever = DenseRetriever(embedder=EMB, store=store, chunker=TokenChunker(size=60, overlap=10))
    retriever.add_documents(docs)
    pipe = Pipeline(generator=tiny_generator, retriever=retriever)
    before = [h.chunk.id for h in pipe.retrieve("genetic changes", k=5)]
    pipe.save(tmp_path / "p")
    store.close()
    trust = store.uri if where in SERVER_INDEX else False  # a folder naming a server contacts it only when allowed
    loaded = Pipeline.load(tmp_path / "p", trust_remote_endpoint=trust)
    assert [h.chunk.id for h in loaded.retrieve("genetic changes", k=5)] == before
    assert loaded.retriever.add_documents(docs).unchanged == len(docs)  # the hashes live in Milvus too


# -- a Milvus server whose connection drops mid-ingest --------------------------------------------

def _corpus():
    """30 documents of 1 to 4 chunks each (with the chunker below), so batches must cut between documents."""
    words = ["fever", "cough", "rash", "fatigue", "nausea", "headache", "dizziness", "pain", "swelling", "itching"]
    return [Document(id=f"doc{i}", text=" ".join(f"{words[(i + j) % 10]}{j}" for j in range(12 + 14 * (i % 4))), source="s",
                     metadata={"group": GROUPS[i % 3]}) for i in range(30)]


def _retriever(uri, collection, *, timeout=60.0):
    from layered.connectors.milvus import MilvusStore

    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.dense import DenseRetriever

    store = MilvusStore(EMB.dim, uri=uri, collection=collection, batch_size=5, timeout=timeout)
    return DenseRetriever(embedder=EMB, store=store, chunker=TokenChunker(size=16, overlap=0))


def _stored(uri, collection):
    """``{doc_id: {chunk ids}}`` in the collection, read over a direct connection."""
    r = _retriever(uri, collection)
    out = {}
    for c in r.store.chunks():
        out.setdefault(c.doc_id, set()).add(c.id)
    r.store.close()
    return out


@pytest.fixture
def proxied(milvus_server):
    proxy = FaultProxy(milvus_server.port)
    yield proxy
    proxy.close()


def _half_of_an_ingest(proxy, docs):
    """Bytes a full ingest of ``docs`` sends through ``proxy``, halved: where to cut the next one."""
    r = _retriever(proxy.uri, f"measure_{uuid.uuid4().hex[:8]}")
    before = proxy.sent
    r.add_documents(docs)
    r.store.close()
    return (proxy.sent - before) // 2


def test_a_connection_dropped_mid_ingest_is_retried(milvus_server, proxied):
    docs = _corpus()
    expected = {}
    for c in _retriever(milvus_server.uri, f"ref_{uuid.uuid4().hex[:8]}").chunker.split(docs):
        expected.setdefault(c.doc_id, set()).add(c.id)
    assert len({len(v) for v in expected.values()}) >= 3  # documents of different sizes
    cut = _half_of_an_ingest(proxied, docs)
    collection = f"retried_{uuid.uuid4().hex[:8]}"
    r = _retriever(proxied.uri, collection)
    proxied.drop_after(cut, refuse=False)
    report = r.add_documents(docs)
    assert proxied.drops == 1  # the line really went down mid-ingest
    assert report.added == 30 and _stored(milvus_server.uri, collection) == expected


def test_a_connection_that_stays_down_fails_in_one_line_and_records_no_document_by_half(milvus_server, proxied):
    docs = _corpus()
    cut = _half_of_an_ingest(proxied, docs)
    collection = f"down_{uuid.uuid4().hex[:8]}"
    r = _retriever(proxied.uri, collection, timeout=3.0)
    proxied.drop_after(cut, refuse=True)
    with pytest.raises(StoreUnavailableError) as failure:
        r.add_documents(docs)
    message = str(failure.value)
    assert "\n" not in message and collection in message and "did not answer" in message
    stored = _stored(milvus_server.uri, collection)
    direct = _retriever(milvus_server.uri, collection)
    for c in direct.chunker.split(docs):  # every stored document has all of its chunks
        if c.doc_id in stored:
            assert c.id in stored[c.doc_id], f"{c.doc_id} is half stored"
    assert 0 < len(stored) < 30  # the drop came mid-ingest
    report = direct.add_documents(docs)  # the same command again, once the server is reachable
    assert (report.unchanged, report.added) == (len(stored), 30 - len(stored))
    assert len(_stored(milvus_server.uri, collection)) == 30
