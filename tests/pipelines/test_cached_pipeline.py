"""The assistants' index cache: reused only when built from the same data *and* embedded the same way."""

from __future__ import annotations

import logging

from layered import Pipeline
from layered.pipelines import cached_pipeline
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder


def test_cache_is_reused_only_when_every_expected_item_matches(tmp_path, tiny_generator, docs, caplog):
    built: list[dict[str, str]] = []

    def build(meta: dict[str, str]):
        def make() -> Pipeline:
            built.append(meta)
            retriever = DenseRetriever(embedder=HashingEmbedder(64), chunker=TokenChunker(size=60, overlap=0))
            retriever.add_documents(docs[:5])
            return Pipeline(generator=tiny_generator, retriever=retriever, k=2, metadata=meta)
        return make

    cache = tmp_path / "demo"
    first = {"corpus_sha256": "abc", "embed_precision": "bfloat16"}
    _, reused = cached_pipeline(cache, expect=first, build=build(first))
    assert not reused and len(built) == 1
    pipe, reused = cached_pipeline(cache, expect=first, build=build(first))
    assert reused and len(built) == 1 and pipe.metadata["embed_precision"] == "bfloat16"

    # Same corpus, another embedding precision: the old index must not be served.
    second = {"corpus_sha256": "abc", "embed_precision": "float32"}
    with caplog.at_level(logging.INFO, logger="layered.pipelines"):
        pipe, reused = cached_pipeline(cache, expect=second, build=build(second))
    assert not reused and len(built) == 2 and pipe.metadata["embed_precision"] == "float32"
    assert "embed_precision" in caplog.text
    _, reused = cached_pipeline(cache, expect=second, build=build(second))
    assert reused and len(built) == 2
