"""One contract per role, checked on every member of the role (as test_store_conformance does
for stores): chunkers, retrievers and routers. A new member joins its table and inherits the
whole contract. Real parts throughout; the hashing embedder keeps them cheap (no model)."""

from __future__ import annotations

import re

import pytest

from layered import registry
from layered.errors import ConfigError
from layered.protocols import Chunker, Retriever, Router
from layered.retrieval.chunkers import SemanticChunker, SentenceChunker, TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.hybrid import HybridRetriever
from layered.retrieval.scoped import ScopedRetriever
from layered.routing import EmbeddingRouter, KeywordRouter
from layered.types import Document

# -- chunkers --------------------------------------------------------------------------------

CHUNKERS = {
    "token": lambda: TokenChunker(size=40, overlap=8),
    "token-first-only": lambda: TokenChunker(size=40, overlap=0, max_chunks=1),
    "sentence": lambda: SentenceChunker(window=3, overlap=1),
    "semantic": lambda: SemanticChunker(HashingEmbedder(64), max_tokens=40),
}


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunks_point_back_into_their_document(name, docs):
    chunker = CHUNKERS[name]()
    assert isinstance(chunker, Chunker)
    corpus = [*docs[:6], Document(id="empty", text=""), Document(id="blank", text="  \n ")]
    chunks = chunker.split(corpus)
    by_id = {d.id: d for d in corpus}
    assert chunks and len({c.id for c in chunks}) == len(chunks)  # ids are unique
    for chunk in chunks:
        doc = by_id[chunk.doc_id]
        assert doc.text[chunk.start:chunk.end] == chunk.text and chunk.text.strip()
    assert not [c for c in chunks if c.doc_id in ("empty", "blank")]
    for doc in docs[:6]:  # every document with text gets at least one chunk
        assert any(c.doc_id == doc.id for c in chunks)
    if name != "token-first-only":  # all of a document's words are in some chunk
        for doc in docs[:6]:
            covered = [False] * len(doc.text)
            for c in (c for c in chunks if c.doc_id == doc.id):
                covered[c.start:c.end] = [True] * (c.end - c.start)
            missed = [m.group() for m in re.finditer(r"\w+", doc.text) if not all(covered[m.start():m.end()])]
            assert not missed, missed[:5]


@pytest.mark.parametrize("name", CHUNKERS)
def test_a_chunker_rebuilt_from_its_config_cuts_the_same_chunks(name, docs):
    chunker = CHUNKERS[name]()
    embedder = getattr(chunker, "embedder", HashingEmbedder(64))
    again = registry.build_chunker(chunker.config(), embedder)
    assert [(c.id, c.start, c.end) for c in again.split(docs[:4])] == [(c.id, c.start, c.end) for c in chunker.split(docs[:4])]


# -- retrievers ------------------------------------------------------------------------------

def _dense(docs):
    dense = DenseRetriever(embedder=HashingEmbedder(512), chunker=TokenChunker(size=60, overlap=10))
    dense.add_documents(docs)
    return dense


RETRIEVERS = {
    "dense": _dense,
    "bm25": lambda docs: HybridRetriever(_dense(docs)).bm25,
    "hybrid": lambda docs: HybridRetriever(_dense(docs)),
    "scoped": lambda docs: ScopedRetriever(HybridRetriever(_dense(docs)), KeywordRouter({"a": ["inherited"]}), {"a": "inheritance"},
                                           key="qtype"),
}


@pytest.fixture
def corpus(docs):
    return docs[:30]


@pytest.mark.parametrize("name", RETRIEVERS)
def test_hits_are_at_most_k_best_first_and_of_indexed_chunks(name, corpus):
    retriever = RETRIEVERS[name](corpus)
    assert isinstance(retriever, Retriever)
    ids = {d.id for d in corpus}
    for k in (1, 3, 8):
        hits = retriever.retrieve(corpus[4].text[:200], k=k)
        assert 0 < len(hits) <= k
        assert all(h.chunk.doc_id in ids for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert len({h.chunk.id for h in hits}) == len(hits)  # no chunk twice


@pytest.mark.parametrize("name", RETRIEVERS)
def test_a_page_is_found_by_its_own_opening(name, corpus):
    retriever = RETRIEVERS[name](corpus)
    found = sum(doc.id in {h.chunk.doc_id for h in retriever.retrieve(doc.text[:300], k=3)} for doc in corpus[:10])
    assert found >= 8, found


@pytest.mark.parametrize("name", RETRIEVERS)
def test_filters_are_honoured_for_every_hit(name, corpus):
    retriever = RETRIEVERS[name](corpus)
    qtype = corpus[0].metadata["qtype"]
    wanted = sum(d.metadata["qtype"] == qtype for d in corpus)
    assert 0 < wanted < len(corpus)  # the filter must exclude something to be tested
    for query in (corpus[1].text[:200], "symptoms and treatment"):
        hits = retriever.retrieve(query, k=5, filters={"qtype": qtype})
        assert hits and all(h.chunk.metadata["qtype"] == qtype for h in hits)
    assert retriever.retrieve(corpus[1].text[:200], k=5, filters={"qtype": "no-such-type"}) == []


# -- routers ---------------------------------------------------------------------------------

EXAMPLES = {"billing": ["How do I get a refund?", "Why was my card charged twice?"],
            "shipping": ["Where is my parcel?", "When will my order be delivered?"]}
ROUTERS = {
    "keywords": lambda: KeywordRouter({"billing": ["refund", "charged"], "shipping": ["parcel", "delivered"]}, default="base"),
    "embedding": lambda: EmbeddingRouter(EXAMPLES, embedder=HashingEmbedder(256), threshold=0.4, default="base"),
}
ASKED = {"I want a refund for the charge": "billing", "Has my parcel been delivered yet?": "shipping",
         "What is the capital of France?": "base"}


@pytest.mark.parametrize("name", ROUTERS)
def test_routes_name_a_known_adapter_or_the_default(name):
    router = ROUTERS[name]()
    assert isinstance(router, Router)
    assert {q: router.route(q) for q in ASKED} == ASKED


@pytest.mark.parametrize("name", ROUTERS)
def test_a_router_rebuilt_from_its_config_routes_the_same(name):
    router = ROUTERS[name]()
    again = registry.build("router", router.config())
    assert type(again) is type(router) and [again.route(q) for q in ASKED] == [router.route(q) for q in ASKED]


@pytest.mark.parametrize("bad", [{}, {"billing": []}, {"billing": ["", " "]}, {"billing": "refund"}])
@pytest.mark.parametrize("name", ["keywords", "embedding"])
def test_empty_or_malformed_tables_are_refused(name, bad):
    with pytest.raises(ConfigError):
        KeywordRouter(bad) if name == "keywords" else EmbeddingRouter(bad, embedder=HashingEmbedder(64))
