import pytest

from layered.evaluation.retrieval import build_retrievers, evaluate_retriever, load_beir, rank_documents
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.hybrid import HybridRetriever, reciprocal_rank_fusion
from layered.types import Chunk, Hit
from tests.helpers import write_beir


def _h(cid, rank):
    return Hit(chunk=Chunk(id=cid, doc_id=cid, text=cid), score=1.0, rank=rank)


def test_rrf_fuses_by_weighted_reciprocal_rank():
    fused = reciprocal_rank_fusion([[_h("a", 1), _h("b", 2)], [_h("b", 1), _h("c", 2)]], weights=[1.0, 1.0], rrf_k=60)
    assert [h.chunk.id for h in fused] == ["b", "a", "c"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    only_second = reciprocal_rank_fusion([[_h("a", 1)], [_h("c", 1)]], weights=[0.0, 1.0])
    assert only_second[0].chunk.id == "c"


def _retriever(docs):
    dense = DenseRetriever(embedder=HashingEmbedder(256), chunker=TokenChunker(size=80, overlap=10))
    dense.add_documents(docs)
    return HybridRetriever(dense)


def test_bm25_finds_rare_terms_and_follows_deletes(docs):
    hybrid = _retriever(docs)
    target = docs[7]
    others = {w for d in docs if d is not target for w in d.text.lower().split()}
    rare = next(w for w in target.text.lower().split() if w.isalpha() and len(w) > 6 and w not in others)
    hits = hybrid.bm25.retrieve(rare, k=3)
    assert hits and any(h.chunk.doc_id == target.id for h in hits)
    hybrid.store.delete([c.id for c in hybrid.store.chunks() if c.doc_id == target.id])
    # a second word found only in other documents, so every retriever has something to return
    own = set(target.text.lower().split())
    other = next(w for w in sorted(others) if w.isalpha() and len(w) > 6 and w not in own)
    for retriever in (hybrid.bm25, hybrid.dense, hybrid):
        after = retriever.retrieve(f"{rare} {other}", k=10)
        assert after and all(h.chunk.doc_id != target.id for h in after)


def test_filters_hold_in_bm25_and_hybrid(docs):
    hybrid = _retriever(docs)
    qtype = docs[0].metadata["qtype"]
    for retriever in (hybrid.bm25, hybrid):
        hits = retriever.retrieve("symptoms treatment genetic", k=5, filters={"qtype": qtype})
        assert hits and all(h.chunk.metadata["qtype"] == qtype for h in hits)


def test_with_fusion_shares_the_indexes_and_changes_only_what_is_asked(docs):
    hybrid = HybridRetriever(_retriever(docs).dense, rrf_k=20, candidates=30, fuse="document")
    rrf = hybrid.with_fusion(fusion="rrf")
    assert rrf.dense is hybrid.dense and rrf.bm25 is hybrid.bm25 and rrf.fusion == "rrf" and hybrid.fusion == "zscore"
    assert {k: v for k, v in rrf.config().items() if k != "fusion"} == {k: v for k, v in hybrid.config().items() if k != "fusion"}
    query = "inherited genetic changes"
    assert [h.chunk.id for h in rrf.retrieve(query, k=6)] == [h.chunk.id for h in HybridRetriever(
        hybrid.dense, rrf_k=20, candidates=30, fuse="document", fusion="rrf", bm25=hybrid.bm25).retrieve(query, k=6)]
    weighted = hybrid.with_fusion(weights=(2.0, 1.0))
    assert weighted.weights == (2.0, 1.0) and weighted.fusion == "zscore" and weighted.config()["rrf_k"] == 20


def test_hybrid_save_load_roundtrip(docs, tiny_generator, tmp_path):
    from layered import Pipeline

    pipe = Pipeline(generator=tiny_generator, retriever=_retriever(docs))
    before = [h.chunk.id for h in pipe.retrieve("inherited genetic changes", k=6)]
    pipe.save(tmp_path / "p")
    loaded = Pipeline.load(tmp_path / "p")
    assert isinstance(loaded.retriever, HybridRetriever)
    assert [h.chunk.id for h in loaded.retrieve("inherited genetic changes", k=6)] == before


def test_beir_folder_end_to_end(tmp_path, docs):
    assert write_beir(tmp_path, docs, n_docs=20, step=4) == 5
    data = load_beir(tmp_path, split="train")
    assert len(data.corpus) == 20 and data.corpus[0].text.startswith(docs[0].metadata["focus"])
    retrievers = build_retrievers(data.corpus, embedder=HashingEmbedder(256))
    for retriever in retrievers.values():
        ranked = rank_documents(retriever, data.queries["q0"], k=10)
        assert len(ranked) == len(set(ranked)) <= 10
        scores = evaluate_retriever(retriever, data.queries, data.qrels, k=10)
        assert scores["queries"] == 5 and 0 < scores["ndcg@10"] <= 1
    assert evaluate_retriever(retrievers["bm25"], data.queries, data.qrels)["recall@10"] == 1.0
