"""Reranking with a real (tiny, randomly initialised) cross-encoder built in the test."""

from __future__ import annotations

import pytest

from layered import Pipeline
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.rerank import CrossEncoderReranker, RerankingRetriever


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from layered.models import DEFAULT_EMBEDDER

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(DEFAULT_EMBEDDER.path()))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    folder = tmp_path_factory.mktemp("ce")
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def test_reranker_orders_by_cross_encoder_score(tiny_cross_encoder, docs):
    dense = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    dense.add_documents(docs)
    reranker = CrossEncoderReranker(tiny_cross_encoder)
    retriever = RerankingRetriever(dense, reranker, candidates=12)
    query = "What are the symptoms?"
    hits = retriever.retrieve(query, k=5, filters={"qtype": "symptoms"})
    candidates = dense.retrieve(query, k=12, filters={"qtype": "symptoms"})
    scores = dict(zip((h.chunk.id for h in candidates), reranker.scores(query, candidates)))
    best = sorted(scores, key=lambda cid: -scores[cid])[:5]
    assert [h.chunk.id for h in hits] == best
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.chunk.metadata["qtype"] == "symptoms" for h in hits)


def test_reranked_pipeline_saves_and_loads(tiny_cross_encoder, tiny_generator, docs, tmp_path):
    dense = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    dense.add_documents(docs)
    pipe = Pipeline(generator=tiny_generator, retriever=RerankingRetriever(dense, CrossEncoderReranker(tiny_cross_encoder)))
    before = [h.chunk.id for h in pipe.retrieve("genetic changes")]
    pipe.save(tmp_path / "p")
    assert [h.chunk.id for h in Pipeline.load(tmp_path / "p").retrieve("genetic changes")] == before
