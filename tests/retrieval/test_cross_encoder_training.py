"""A cross-encoder trained here from the embedder's own pairs (the packaged all-MiniLM-L6-v2's
encoder, a new head): it learns to put each query's passage above mined hard negatives, is
saved as safetensors, and serves in the reranker slot. Real model, real MedQuAD pages."""

from __future__ import annotations

import pytest

from layered.errors import ArtifactError
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.retrieval.finetune import RetrieverTuneConfig, mine_triplets
from layered.retrieval.rerank import CrossEncoderReranker, RerankingRetriever, fit_cross_encoder
from tests.helpers import medquad_topics

pytestmark = pytest.mark.slow


def test_a_cross_encoder_trained_on_the_pairs_ranks_their_passages_first_and_reranks(tmp_path):
    docs, pairs = medquad_topics(30)
    dense = DenseRetriever(embedder=SentenceTransformerEmbedder(max_seq_length=128))
    dense.add_documents(docs)
    base_model = dense.embedder.path
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an empty folder"):
        fit_cross_encoder(pairs, retriever=dense, base_model=base_model, out_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

    out = fit_cross_encoder(pairs, retriever=dense, base_model=base_model, out_dir=tmp_path / "ce", negatives=2, epochs=3,
                            learning_rate=5e-5, batch_size=16)
    assert (out / "model.safetensors").is_file() and not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    reranker = CrossEncoderReranker(out, max_length=256)
    # On its own training pairs the positive passage must beat both mined negatives far above
    # chance (1 in 3): the head was random before training.
    triplets = mine_triplets(pairs, dense, list(dense.store.chunks()), RetrieverTuneConfig(negatives=2, seed=1))
    wins, ce = 0, reranker._load()
    for query, positive, *negatives in triplets:
        scores = ce.predict([(query, positive), *((query, n) for n in negatives)], show_progress_bar=False)
        wins += bool(scores[0] > max(scores[1:]))
    assert wins / len(triplets) > 0.7, f"{wins} of {len(triplets)}"
    # In the reranker slot: the top 10 candidates reordered by the cross-encoder's scores.
    retriever = RerankingRetriever(dense, reranker, candidates=10)
    hits = retriever.retrieve(pairs[0].query, k=3)
    assert len(hits) == 3 and [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score
