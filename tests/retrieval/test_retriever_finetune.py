"""Training the retriever: grouped folds without leakage, a fine-tuned embedder saved with the
pipeline and loaded back, an index refused with another embedder, and an interrupted
re-embedding that leaves the old index loadable.

Real models throughout (the packaged all-MiniLM-L6-v2), real MedQuAD pages (the packaged sample).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layered import Pipeline, models
from layered.errors import ArtifactError, InputError
from layered.generation.transformers_generator import TransformersGenerator
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.errors import ConfigError
from layered.retrieval.bm25 import BM25Retriever
from layered.retrieval.finetune import (Pair, RetrieverTuneConfig, data_hash, fine_tune_embedder, grouped_folds, grouped_split,
                                        mine_triplets, pairs_from_qrels, pairs_from_sentences, validation_pool)
from layered.retrieval.hybrid import HybridRetriever
from layered.types import Chunk, Document
from tests.helpers import medquad_topics


def test_queries_sharing_a_relevant_document_share_a_group_and_never_straddle_folds():
    queries = {f"q{i}": f"question {i}" for i in range(40)}
    # q0..q19 each judge their own document; q20..q39 chain through shared documents in pairs.
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(20)}
    qrels.update({f"q{i}": {f"d{i}": 1, f"d{i + 1}": 1} for i in range(20, 40, 2)})
    qrels.update({f"q{i}": {f"d{i}": 1} for i in range(21, 40, 2)})
    qrels["q5"]["d6"] = 0  # a zero grade is not relevance
    pairs = pairs_from_qrels(queries, qrels)
    group = {p.query: p.group for p in pairs}
    assert group["question 20"] == group["question 21"] != group["question 22"]
    assert group["question 5"] != group["question 6"]
    folds = grouped_folds(pairs, 5, seed=1)
    tested = [p for _, test in folds for p in test]
    assert sorted(tested, key=repr) == sorted(pairs, key=repr)  # every pair tested exactly once
    for train, test in folds:
        assert test and train
        assert not {p.group for p in train} & {p.group for p in test}
        assert not {p.query for p in train} & {p.query for p in test}


def test_training_refuses_validation_groups_seen_in_training():
    pairs = [Pair("what is gout?", "d1", "gout"), Pair("gout treatment?", "d2", "gout")]
    with pytest.raises(InputError, match="both the training and validation"):
        fine_tune_embedder(pairs[:1], val_pairs=pairs[1:], retriever=None, base_model="unused", out_dir="unused")


def test_a_folder_of_other_files_is_refused_as_out_dir_before_training(tmp_path):
    (tmp_path / "thesis.txt").write_bytes(b"years of work")
    pairs = [Pair("what is gout?", "d1", "gout"), Pair("what is acne?", "d2", "acne")]
    with pytest.raises(ArtifactError, match="not a sentence-transformers model"):
        fine_tune_embedder(pairs[:1], val_pairs=pairs[1:], retriever=None, base_model="unused", out_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.txt"]


def test_sentence_pairs_read_only_the_pages_and_take_the_sentence_out():
    docs = [Document("d1", "Gout is a form of arthritis. It causes sudden severe pain in the joints. Short one."),
            Document("d2", "Too short."), Document("d3", "Shingles is a painful rash caused by a virus in nerve cells. Antivirals help."),
            Document("d4", "A single sentence page is never emptied into a passage.")]
    pairs = pairs_from_sentences(docs, keep=0.0, seed=3)
    assert {p.doc_id for p in pairs} == {"d1", "d3"}  # d2: no sentence of 6 words; d4: nothing left without it
    for p in pairs:
        page = next(d.text for d in docs if d.id == p.doc_id)
        assert p.query in page and p.query not in p.passage and len(p.query.split()) >= 6
        assert p.group.startswith("sentence:" + p.doc_id)
    assert [p for p in pairs_from_sentences(docs, keep=1.0, seed=3) if p.doc_id == "d1"][0].passage == docs[0].text
    assert pairs_from_sentences(docs, seed=3) == pairs_from_sentences(docs, seed=3)
    # The passage is part of the data hash, so two corpora's sentence pairs never hash alike.
    assert data_hash(pairs) != data_hash([Pair(p.query, p.doc_id, p.group) for p in pairs])


def test_each_pair_gets_the_configured_number_of_mined_negatives_none_a_positive():
    texts = [f"gout arthritis joint pain note {i} " + " ".join(f"w{i}x{j}" for j in range(i)) for i in range(12)]
    chunks = [Chunk(f"d{i}#0", f"d{i}", t, end=len(t)) for i, t in enumerate(texts)]

    class Source:
        version = 1

        def chunks(self) -> list[Chunk]:
            return chunks

    bm25 = BM25Retriever(Source())
    docs = [Document(f"d{i}", t) for i, t in enumerate(texts)]
    pairs = [Pair("gout joint pain note 3", "d3", "g3"), Pair("gout joint pain note 3", "d4", "g3"),
             Pair("arthritis note 7", "d7", "g7", passage="my own passage")]
    config = RetrieverTuneConfig(negatives=3, negative_skip=1, negative_depth=10)
    rows = mine_triplets(pairs, bm25, chunks, config)
    assert len(rows) == 3 and all(len(r) == 2 + 3 for r in rows)
    positives = {"d3": docs[3].text, "d4": docs[4].text}
    assert rows[2][1] == "my own passage"
    for r in rows[:2]:
        assert not set(r[2:]) & set(positives.values())  # neither of the query's positives is a negative
    queries, corpus, relevant = validation_pool(pairs, bm25, chunks, depth=5)
    assert set(queries.values()) == {"gout joint pain note 3", "arthritis note 7"}
    qid = next(q for q, text in queries.items() if text == "gout joint pain note 3")
    assert {corpus[pid] for pid in relevant[qid]} == set(positives.values())
    assert len(corpus) > len(relevant[qid]) + 1  # retrieved non-positives are in the pool too
    with pytest.raises(ConfigError, match="negatives"):
        RetrieverTuneConfig(negatives=0)


@pytest.fixture(scope="module")
def small():
    return medquad_topics(40)


def _pipeline(docs, embedder=None) -> Pipeline:
    dense = DenseRetriever(embedder=embedder or SentenceTransformerEmbedder(max_seq_length=128))
    pipe = Pipeline(generator=TransformersGenerator(), retriever=HybridRetriever(dense))  # the generator never loads here
    pipe.add_documents(docs)
    return pipe


@pytest.mark.slow
def test_a_fine_tuned_embedder_is_saved_with_the_pipeline_and_loads_back_the_same(tmp_path, small):
    docs, pairs = small
    pipe = _pipeline(docs)
    before = pipe.retriever
    train, val = grouped_split(pairs, 0.25, seed=0)
    report = pipe.fit_retriever(train, val_pairs=val, config=RetrieverTuneConfig(epochs=1, batch_size=16, negatives=2, keep="tuned"),
                                out_dir=tmp_path / "model")
    assert report.kept == "tuned" and report.triplets > 0 and report.epochs_run == 1
    assert len(report.data_sha256) == 64 and report.val_ndcg_base > 0
    tuned = pipe.retriever
    assert tuned is not before and before.embedder.owned is False  # the old retriever was never modified
    assert tuned.embedder.owned and len(tuned) == len(before)
    assert sorted(c.id for c in tuned.store.chunks()) == sorted(c.id for c in before.store.chunks())
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not list((tmp_path / "model").rglob("*.bin")) and not list((tmp_path / "model").rglob("*.pkl"))
    question = val[0].query
    old_vec, new_vec = before.embedder.embed([question])[0], tuned.embedder.embed([question])[0]
    assert float(old_vec @ new_vec) < 0.99999  # the weights really changed

    folder = pipe.save(tmp_path / "pipe")
    shutil.rmtree(tmp_path / "model")  # the saved pipeline holds its own copy
    assert (folder / "embedder" / "model.safetensors").is_file()
    config = json.loads((folder / "pipeline.json").read_text())["retriever"]["dense"]
    assert config["embedder"]["owned"] is True and config["embedder"]["model"] == "embedder"
    assert config["embedder_sha256"] == tuned.embedder.fingerprint != before.embedder.fingerprint
    loaded = Pipeline.load(folder)
    assert np.allclose(loaded.retriever.embedder.embed([question]), tuned.embedder.embed([question]), atol=1e-5)
    assert [h.chunk.id for h in loaded.retrieve(question, k=5)] == [h.chunk.id for h in pipe.retrieve(question, k=5)]


@pytest.mark.slow
def test_an_index_is_refused_with_an_embedder_other_than_the_one_that_built_it(tmp_path, small):
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "my-embedder"
    shutil.copytree(models.resolve(models.DEFAULT_EMBEDDER.name), model_dir)
    docs, _ = small
    folder = _pipeline(docs[:20], SentenceTransformerEmbedder(str(model_dir), max_seq_length=128)).save(tmp_path / "pipe")
    Pipeline.load(folder)  # the same weights: fine
    weights = load_file(model_dir / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] * 1.01  # another model at the same path (an upgrade, a retrain)
    save_file(weights, model_dir / "model.safetensors")
    with pytest.raises(ArtifactError, match="built by another embedder"):
        Pipeline.load(folder)


@pytest.mark.slow
def test_kill_9_while_re_embedding_leaves_the_old_index_loadable(tmp_path):
    docs, pairs = medquad_topics(40)
    pipe = _pipeline(docs)
    chunks = len(pipe.retriever)
    folder = pipe.save(tmp_path / "pipe")
    old = json.loads((folder / "pipeline.json").read_text())
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": p.query, "doc_id": p.doc_id, "group": p.group}) + "\n" for p in pairs))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "layered.cli", "tune-retriever", str(data), "--pipeline", str(folder),
                             "--epochs", "1", "--negatives", "1", "--keep", "tuned"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[2])
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "re-embedding" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    loaded = Pipeline.load(folder)  # the manifest verifies: nothing half-written
    assert json.loads((folder / "pipeline.json").read_text()) == old
    assert loaded.retriever.embedder.owned is False and len(loaded.retriever) == chunks
    assert loaded.retrieve(pairs[0].query, k=3)
