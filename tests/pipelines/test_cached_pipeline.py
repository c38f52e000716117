"""The assistants' index cache: reused only when built from the same data *and* embedded the same way."""

from __future__ import annotations

import logging

import pytest

from layered import Pipeline
from layered.errors import ArtifactError, ConfigError
from layered.pipelines import cached_pipeline
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder


def _builder(built: list[dict[str, str]], tiny_generator, docs):
    def build(meta: dict[str, str]):
        def make() -> Pipeline:
            built.append(meta)
            retriever = DenseRetriever(embedder=HashingEmbedder(64), chunker=TokenChunker(size=60, overlap=0))
            retriever.add_documents(docs[:5])
            return Pipeline(generator=tiny_generator, retriever=retriever, k=2, metadata=meta)
        return make
    return build


def test_cache_is_reused_only_when_every_expected_item_matches(tmp_path, tiny_generator, docs, caplog):
    built: list[dict[str, str]] = []
    build = _builder(built, tiny_generator, docs)

    cache = tmp_path / "demo"
    first = {"corpus_sha256": "abc", "embed_precision": "bfloat16"}
    _, reused = cached_pipeline(cache, name="medical", expect=first, build=build(first))
    assert not reused and len(built) == 1
    pipe, reused = cached_pipeline(cache, name="medical", expect=first, build=build(first))
    assert reused and len(built) == 1 and pipe.metadata["embed_precision"] == "bfloat16"

    # Same corpus, another embedding precision: the old index must not be served.
    second = {"corpus_sha256": "abc", "embed_precision": "float32"}
    with caplog.at_level(logging.INFO, logger="layered.pipelines"):
        pipe, reused = cached_pipeline(cache, name="medical", expect=second, build=build(second))
    assert not reused and len(built) == 2 and pipe.metadata["embed_precision"] == "float32"
    assert "embed_precision" in caplog.text
    _, reused = cached_pipeline(cache, name="medical", expect=second, build=build(second))
    assert reused and len(built) == 2


def test_another_assistants_cache_is_refused_and_left_as_it_was(tmp_path, tiny_generator, docs):
    built: list[dict[str, str]] = []
    build = _builder(built, tiny_generator, docs)
    cache = tmp_path / "shared"
    meta = {"corpus_sha256": "abc", "embed_precision": "float32"}
    pipe, _ = cached_pipeline(cache, name="medical", expect=meta, build=build(meta))
    assert pipe.metadata["assistant"] == "medical"
    saved = {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    for rebuild in (False, True):
        with pytest.raises(ConfigError, match="holds the medical assistant's index"):
            cached_pipeline(cache, name="support", expect={"bitext_sha256": "def"}, build=build({}), rebuild=rebuild)
    assert len(built) == 1  # nothing rebuilt, and the medical index is byte for byte as it was
    assert {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()} == saved
    _, reused = cached_pipeline(cache, name="medical", expect=meta, build=build(meta))
    assert reused


def test_a_folder_of_other_files_is_refused_before_indexing(tmp_path, tiny_generator, docs):
    built: list[dict[str, str]] = []
    cache = tmp_path / "home"
    cache.mkdir()
    (cache / "photo.jpg").write_bytes(b"not an index")
    with pytest.raises(ArtifactError, match="did not save"):
        cached_pipeline(cache, name="medical", expect={}, build=_builder(built, tiny_generator, docs)({}))
    assert not built and (cache / "photo.jpg").read_bytes() == b"not an index"
