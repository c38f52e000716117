"""Document-level access control: no chunk a user may not see, and k results when k exist."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layered.artifacts import save_folder_atomically
from layered.errors import InputError
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.filters import User, matches, with_access
from layered.retrieval.hybrid import HybridRetriever
from layered.types import Document

USERS = ["ann", "bob", "cy", "dee"]
GROUPS = ["staff", "doctors", "admins"]
WORDS = "fever cough rash pain heart lung liver kidney blood bone skin nerve".split()

principal = st.one_of(
    st.sampled_from(USERS).map(lambda u: f"user:{u}"),
    st.sampled_from(GROUPS).map(lambda g: f"group:{g}"),
    st.just("*"),
)
document = st.tuples(
    st.lists(st.sampled_from(WORDS), min_size=3, max_size=40).map(" ".join),
    st.one_of(st.none(), st.lists(principal, max_size=3)),
)
user = st.builds(User, st.sampled_from(USERS + ["eve"]), st.lists(st.sampled_from(GROUPS), max_size=2, unique=True).map(tuple))


def _visible(chunk_metadata, u):
    return matches(chunk_metadata, with_access(None, u))


def _check(retriever, users, queries, k):
    for u in users:
        visible = sum(_visible(c.metadata, u) for c in retriever.store.chunks())
        for q in queries:
            hits = retriever.retrieve(q, k=k, filters=with_access(None, u))
            assert all(_visible(h.chunk.metadata, u) for h in hits), "leaked a chunk"
            assert len(hits) == min(k, visible), "fewer than k although k visible chunks exist"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    docs=st.lists(document, min_size=1, max_size=25),
    users=st.lists(user, min_size=1, max_size=4),
    queries=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join), min_size=1, max_size=3),
    k=st.integers(1, 8),
    delete_every=st.integers(2, 5),
)
def test_no_leaks_and_k_results_across_deletes_and_reload(tmp_path_factory, docs, users, queries, k, delete_every):
    documents = [
        Document(id=f"d{i}", text=text, metadata={} if access is None else {"access": access})
        for i, (text, access) in enumerate(docs)
    ]
    dense = DenseRetriever(embedder=HashingEmbedder(64), chunker=TokenChunker(size=12, overlap=3))
    dense.add_documents(documents)
    hybrid = HybridRetriever(dense, candidates=4)
    for r in (dense, hybrid):
        _check(r, users, queries, k)

    dense.store.delete([c.id for c in dense.store.chunks() if int(c.doc_id[1:]) % delete_every == 0])
    for r in (dense, hybrid):
        _check(r, users, queries, k)

    folder = tmp_path_factory.mktemp("acl")
    save_folder_atomically(folder / "r", hybrid.save)
    reloaded = HybridRetriever.load(folder / "r", hybrid.config())
    for r in (reloaded.dense, reloaded):
        _check(r, users, queries, k)


def test_acl_in_milvus_store(tmp_path):
    from layered.connectors.milvus import MilvusStore

    emb = HashingEmbedder(64)
    store = MilvusStore(64, uri=str(tmp_path / "m.db"), collection="acl")
    dense = DenseRetriever(embedder=emb, store=store, chunker=TokenChunker(size=20, overlap=2))
    dense.add_documents([
        Document(id="pub", text="fever and cough"),
        Document(id="ann", text="fever notes for ann", metadata={"access": ["user:ann"]}),
        Document(id="doc", text="fever notes for doctors", metadata={"access": ["group:doctors"]}),
    ])
    seen = lambda u: sorted(h.chunk.doc_id for h in dense.retrieve("fever", k=10, filters=with_access(None, u)))  # noqa: E731
    assert seen(User("ann")) == ["ann", "pub"]
    assert seen(User("bob", ("doctors",))) == ["doc", "pub"]
    assert seen(User("x' or 1==1 or '")) == ["pub"]
    store.close()


def test_pipeline_applies_the_user_and_drops_leaks_from_custom_retrievers(tiny_generator):
    from layered import Pipeline
    from layered.types import Chunk, Hit

    class Leaky:
        def retrieve(self, query, *, k, filters=None):  # ignores filters on purpose
            chunks = [Chunk(id="s#0", doc_id="s", text="secret", metadata={"access": ["user:boss"]}),
                      Chunk(id="p#0", doc_id="p", text="public", metadata={"access": ["*"]})]
            return [Hit(chunk=c, score=1.0, rank=i) for i, c in enumerate(chunks, 1)]

    pipe = Pipeline(generator=tiny_generator, retriever=Leaky())
    assert [h.chunk.id for h in pipe.retrieve("q", user=User("intern"))] == ["p#0"]
    assert [h.chunk.id for h in pipe.retrieve("q", user=User("boss"))] == ["s#0", "p#0"]
    with pytest.raises(InputError, match="user="):
        pipe.retrieve("q", filters={"access": "x"}, user=User("boss"))


def test_bad_access_lists_are_rejected():
    dense = DenseRetriever(embedder=HashingEmbedder(32))
    with pytest.raises(InputError, match="list of principals"):
        dense.add_documents([Document(id="a", text="t", metadata={"access": "user:ann"})])
    assert len(dense) == 0
