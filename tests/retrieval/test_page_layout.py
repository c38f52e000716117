"""Chunks read with their page's title, BM25 over whole pages, fusion by page and by z-score."""

import numpy as np
import pytest

from layered.errors import ConfigError
from layered.evaluation.retrieval import build_retrievers
from layered.retrieval.bm25 import BM25Retriever, _page_text
from layered.retrieval.chunkers import SentenceChunker, TokenChunker, document_title
from layered.retrieval.defaults import layout_retriever
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.hybrid import HybridRetriever
from layered.types import Chunk, Document

BODY = " ".join(f"Sentence {i} talks about topic{i} and more words here." for i in range(30))
PAGE = Document("p1", "Vitamin D and bone density\n\n" + BODY)


def test_title_is_the_context_of_chunks_that_lack_it():
    chunks = TokenChunker(size=40, overlap=5, title=True).split([PAGE])
    assert len(chunks) > 2
    assert chunks[0].context == "" and chunks[0].text.startswith("Vitamin D")
    for c in chunks[1:]:
        assert c.context == "Vitamin D and bone density"
        assert c.indexed_text == f"Vitamin D and bone density\n\n{c.text}"
    assert all(PAGE.text[c.start:c.end] == c.text for c in chunks)  # the span contract is unchanged
    assert all(c.context == "" for c in TokenChunker(size=40, overlap=5).split([PAGE]))
    sentences = SentenceChunker(window=3, overlap=1, title=True).split([PAGE])
    assert sentences[0].context == "" and {c.context for c in sentences[1:]} == {"Vitamin D and bone density"}


def test_document_title_comes_from_metadata_or_a_short_first_paragraph():
    assert document_title(PAGE) == ("Vitamin D and bone density", 26)
    assert document_title(Document("x", "Answer text only.", metadata={"title": "Shingles"})) == ("Shingles", 0)
    assert document_title(Document("x", "x" * 400 + "\n\nrest")) == ("", 0)  # a long opening paragraph is no title
    assert document_title(Document("x", "no paragraphs at all")) == ("", 0)
    # A title that is not in the text is every chunk's context, the first one's too.
    chunks = TokenChunker(size=40, overlap=5, title=True).split([Document("x", BODY, metadata={"title": "Shingles"})])
    assert {c.context for c in chunks} == {"Shingles"}


def test_context_survives_serialisation_and_old_records_load():
    c = Chunk(id="d#1", doc_id="d", text="body", context="Title")
    assert Chunk.from_dict(c.to_dict()) == c
    old = {k: v for k, v in c.to_dict().items() if k != "context"}
    assert Chunk.from_dict(old).context == "" and Chunk.from_dict(old).indexed_text == "body"


def test_page_text_joins_overlapping_chunks_once():
    chunks = TokenChunker(size=40, overlap=10, title=True).split([PAGE])
    assert _page_text(chunks).split() == PAGE.text.split()  # the title (in the text) once, every word once
    untitled = TokenChunker(size=40, overlap=10, title=True).split([Document("x", BODY, metadata={"title": "Shingles"})])
    assert _page_text(untitled).split() == ["Shingles", *BODY.split()]


class _Source:
    def __init__(self, chunks):
        self.version, self._chunks = 1, chunks

    def chunks(self):
        return self._chunks


def test_bm25_by_document_scores_whole_pages_and_returns_their_best_chunk():
    a = Document("a", "Alpha page\n\nThe zebrafish heart regenerates. " + "Filler words go here. " * 30 + "Cardiomyocytes proliferate after injury.")
    b = Document("b", "Beta page\n\nThe zebrafish swims in schools. " + "Other filler text. " * 5)
    chunks = TokenChunker(size=30, overlap=5, title=True).split([a, b])
    by_chunk, by_page = BM25Retriever(_Source(chunks)), BM25Retriever(_Source(chunks), unit="document")
    query = "zebrafish cardiomyocytes proliferate"
    page_hits = by_page.retrieve(query, k=5)
    assert [h.chunk.doc_id for h in page_hits] == ["a", "b"]  # one hit per page; a holds all three terms, across chunks
    assert "Cardiomyocytes" in page_hits[0].chunk.text  # the chunk sharing most query terms
    assert all(h.chunk.text.count("zebrafish") + h.chunk.text.count("Cardio") for h in by_chunk.retrieve(query, k=3))
    scores = by_page.scores(query, ["a", "b", "nope"])
    assert set(scores) == {"a", "b"} and scores["a"] == pytest.approx(page_hits[0].score)
    assert by_page.scores("unrelatedword", ["a"]) == {"a": 0.0}
    with pytest.raises(ConfigError):
        BM25Retriever(_Source(chunks), unit="page")


def _hybrid(docs, **options):
    dense = DenseRetriever(embedder=HashingEmbedder(256), chunker=SentenceChunker(window=2, overlap=0, title=True))
    dense.add_documents(docs)
    return HybridRetriever(dense, bm25=BM25Retriever(dense.store, unit="document"), fuse="document", **options)


def test_fusion_by_document_returns_one_hit_per_page(docs):
    for fusion in ("rrf", "zscore"):
        hits = _hybrid(docs, fusion=fusion).retrieve("symptoms of inherited genetic changes", k=8)
        assert len(hits) == 8 and len({h.chunk.doc_id for h in hits}) == 8
        assert [h.rank for h in hits] == list(range(1, 9)) and all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_zscore_fusion_scores_every_candidate_on_both_sides(docs):
    hybrid = _hybrid(docs, fusion="zscore", candidates=5)
    query = "treatment of inherited genetic changes"
    vector = hybrid.embedder.embed([query])[0]
    chunks = hybrid.store.chunks()
    # A page only BM25 found gets its real best cosine similarity from the stored vectors.
    exact = {d: max(float(np.dot(hybrid.store.vectors([c.id])[0], vector / np.linalg.norm(vector))) for c in chunks if c.doc_id == d)
             for d in {c.doc_id for c in chunks}}
    got = hybrid._dense_scores(vector, sorted(exact))
    assert got == pytest.approx(exact, abs=1e-5)
    # The fused score is the sum of the two sides' z-scores over the candidates.
    hits = hybrid.retrieve(query, k=50)
    pages = [h.chunk.doc_id for h in hits]
    bm = hybrid.bm25.scores(query, pages)
    dz, bz = (np.array([side[p] for p in pages]) for side in (exact, bm))
    fused = (dz - dz.mean()) / dz.std() + (bz - bz.mean()) / bz.std()
    assert [h.score for h in hits] == pytest.approx(fused.tolist(), abs=1e-4)


def test_layout_and_fusion_survive_save_and_load(docs, tiny_generator, tmp_path):
    from layered import Pipeline

    pipe = Pipeline(generator=tiny_generator, retriever=_hybrid(docs, fusion="zscore", weights=(1.0, 2.0)))
    before = [(h.chunk.id, round(h.score, 5)) for h in pipe.retrieve("inherited genetic changes", k=6)]
    pipe.save(tmp_path / "p")
    loaded = Pipeline.load(tmp_path / "p").retriever
    assert (loaded.fuse, loaded.fusion, loaded.bm25.unit, loaded.weights) == ("document", "zscore", "document", (1.0, 2.0))
    assert loaded.dense.chunker.title and any(c.context for c in loaded.store.chunks())
    assert [(h.chunk.id, round(h.score, 5)) for h in loaded.retrieve("inherited genetic changes", k=6)] == before
    with pytest.raises(ConfigError):
        HybridRetriever(loaded.dense, fusion="max")


def test_layouts_wire_chunker_bm25_and_fusion(docs):
    retrievers = build_retrievers(docs[:10], embedder=HashingEmbedder(64), layout="sentences")
    assert retrievers["hybrid"].fuse == "document" and retrievers["bm25"].unit == "document"
    assert retrievers["hybrid"].fusion == "zscore" and isinstance(retrievers["dense"].chunker, SentenceChunker)
    passages = layout_retriever("passages", HashingEmbedder(64), hybrid=True, fusion="rrf")
    assert (passages.fuse, passages.fusion, passages.bm25.unit) == ("chunk", "rrf", "chunk")
    dense = layout_retriever("sentences", HashingEmbedder(64))
    assert isinstance(dense, DenseRetriever) and dense.chunker.title
    with pytest.raises(ConfigError, match="unknown index layout"):
        build_retrievers(docs[:10], embedder=HashingEmbedder(64), layout="pages")


def test_hybrids_saved_before_zscore_fusion_load_as_rrf(docs, tmp_path):
    hybrid = _hybrid(docs)
    hybrid.save(tmp_path)
    assert HybridRetriever.load(tmp_path, hybrid.config()).fusion == "zscore"
    old = {k: v for k, v in hybrid.config().items() if k != "fusion"}  # what a hybrid saved before 2026-12-04 wrote
    assert HybridRetriever.load(tmp_path, old).fusion == "rrf"
