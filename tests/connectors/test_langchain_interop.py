"""LangChain interop with real langchain-core objects (no mocks): Runnable, retrievers both ways, documents."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document as LCDocument
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore

from layered import Pipeline
from layered.connectors.langchain import (
    LangChainRetriever,
    LayeredEmbeddings,
    LayeredRetriever,
    as_runnable,
    from_langchain_document,
    to_langchain_document,
)
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.filters import User
from layered.types import Document

QUESTION = "What are the symptoms of thyroid disease?"


@pytest.fixture
def pipe(tiny_model_dir, docs):
    from layered.generation.transformers_generator import TransformersGenerator

    retriever = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    retriever.add_documents(docs[:12])
    # Token-by-token streaming (the default guard streams whole sentences, and the tiny random
    # model writes none), so the test sees LangChain pass on every piece.
    generator = TransformersGenerator(str(tiny_model_dir), max_new_tokens=12, context_window=1024, whole_sentences=False)
    return Pipeline(generator=generator, retriever=retriever, k=3)


def test_a_pipeline_is_a_runnable_sync_async_batch_and_streaming(pipe):
    runnable = as_runnable(pipe)
    expected = pipe.ask(QUESTION).text
    assert runnable.invoke(QUESTION) == expected
    assert runnable.invoke({"question": QUESTION, "k": 3}) == expected
    assert runnable.batch([QUESTION, QUESTION]) == [expected, expected]
    assert "".join(runnable.stream(QUESTION)) == expected
    assert asyncio.run(runnable.ainvoke(QUESTION)) == expected

    async def collect():
        return [piece async for piece in runnable.astream(QUESTION)]

    pieces = asyncio.run(collect())
    assert len(pieces) > 1 and "".join(pieces) == expected

    async def first_piece_only():
        async for piece in runnable.astream(QUESTION):
            return piece

    assert asyncio.run(first_piece_only()) == pieces[0]
    assert runnable.invoke(QUESTION) == expected  # the abandoned stream released the generator
    chain = RunnableLambda(lambda row: row["q"]) | runnable | RunnableLambda(str.upper)  # LCEL composition
    assert chain.invoke({"q": QUESTION}) == expected.upper()
    answer = as_runnable(pipe, output="answer").invoke(QUESTION)
    assert answer.text == expected and answer.sources


def test_layered_retrieval_as_a_langchain_retriever_keeps_ids_scores_and_access(pipe):
    hits = pipe.retrieve(QUESTION, k=3)
    docs = LayeredRetriever(pipeline=pipe, k=3).invoke(QUESTION)
    assert [d.id for d in docs] == [h.chunk.id for h in hits]
    assert [d.metadata["layered_score"] for d in docs] == [h.score for h in hits]
    assert all(isinstance(d, LCDocument) and d.page_content for d in docs)
    secret = Document(id="secret", text="thyroid disease symptoms staff memo", source="memo", metadata={"access": ["group:staff"]})
    pipe.add_documents([secret])
    outsider = LayeredRetriever(pipeline=pipe, k=13, user=User("ann")).invoke(QUESTION)
    insider = LayeredRetriever(pipeline=pipe, k=13, user=User("bob", groups=("staff",))).invoke(QUESTION)
    assert "secret" not in {d.metadata["layered_id"] for d in outsider}
    assert "secret" in {d.metadata["layered_id"] for d in insider}


def test_a_langchain_vector_store_retriever_serves_a_pipeline(tiny_generator, docs):
    store = InMemoryVectorStore(embedding=LayeredEmbeddings(HashingEmbedder(128)))
    store.add_documents([to_langchain_document(d) for d in docs[:12]])
    pipe = Pipeline(generator=tiny_generator, retriever=LangChainRetriever(store.as_retriever(search_kwargs={"k": 6})), k=3)
    hits = pipe.retrieve(QUESTION)
    assert len(hits) == 3 and [h.rank for h in hits] == [1, 2, 3]
    assert {h.chunk.doc_id for h in hits} <= {d.id for d in docs[:12]}
    answer = pipe.ask(QUESTION)
    assert [s.doc_id for s in answer.sources] == [h.chunk.doc_id for h in hits]
    only = pipe.retrieve(QUESTION, filters={"qtype": docs[0].metadata["qtype"]})
    assert only and all(h.chunk.metadata["qtype"] == docs[0].metadata["qtype"] for h in only)


def test_documents_round_trip_with_metadata(docs):
    doc = Document(id="d1", text="Graves disease is an autoimmune disorder.", source="nih.gov/graves", metadata={"qtype": "information", "year": 2019})
    lc = to_langchain_document(doc)
    assert lc.id == "d1" and lc.metadata["qtype"] == "information" and lc.metadata["layered_source"] == "nih.gov/graves"
    assert from_langchain_document(lc) == doc
    plain = from_langchain_document(LCDocument(page_content="hello", metadata={"source": "web", "lang": "en"}))
    assert plain.source == "web" and plain.metadata == {"source": "web", "lang": "en"} and len(plain.id) == 16
