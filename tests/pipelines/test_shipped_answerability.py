"""The bundled assistants' answerability decisions and dev sets are reproducible from what ships."""

from __future__ import annotations

import json

import pytest

from layered.answerability import SIGNALS, Answerability, calibrate_rows, headings, signals
from layered.artifacts import sha256_file
from layered.pipelines import assistant, medical_dev, support_dev
from layered.types import Hit

DEV = {"medical": medical_dev, "support": support_dev}


def _shipped(task: str) -> tuple[Answerability, list[dict]]:
    data = json.loads(assistant(task).ANSWERABILITY_PATH.read_text(encoding="utf-8"))
    rows = data.pop("rows")
    return Answerability.from_dict(data), rows


@pytest.mark.parametrize("task", ["medical", "support"])
def test_the_dev_set_builder_reproduces_the_shipped_dev_set(task):
    built = DEV[task].build()
    assert [(e.question, dict(e.metadata)) for e in built] == [(e.question, dict(e.metadata)) for e in DEV[task].load()]
    tune, test = DEV[task].load(split="tune"), DEV[task].load(split="test")
    assert tune and test and not {e.question for e in tune} & {e.question for e in test}
    assert any(not e.metadata["answerable"] for e in test) and any(e.metadata["answerable"] for e in test)


@pytest.mark.parametrize("task", ["medical", "support"])
def test_the_shipped_decision_is_refitted_from_its_rows_on_the_tune_split_only(task):
    shipped, rows = _shipped(task)
    report = dict(shipped.report)
    assert report["dev_sha256"] == sha256_file(DEV[task].DEV_PATH) and report["split"] == "tune"
    assert {r["question"] for r in rows} == {e.question for e in DEV[task].load(split="tune")}  # never the test split
    given = {k: report[k] for k in ("dev_set", "dev_sha256", "split", "k", "recipe")}
    refit = calibrate_rows(rows, max_answered_unanswerable=report["max_answered_unanswerable"], report=given, reorder=False, keep=0.0)
    assert refit.answerability == shipped


@pytest.mark.slow
def test_the_medical_rows_signals_are_what_the_decision_computes_from_the_passages():
    """The stored signals are recomputed from the bundled pages, chunked as the assistant chunks them
    (the retrieval score is the index's and is taken as stored)."""
    from layered.pipelines.medical import EMBED_PRECISION, EMBED_TOKENS, KB_PATH, PASSAGE_TOKENS
    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.embedders import SentenceTransformerEmbedder
    from layered.retrieval.loaders import load_documents

    _, rows = _shipped("medical")
    sample = [r for r in rows if r.get("chunk_id")][::25]
    wanted = {r["doc_id"] for r in sample}
    docs = [d for d in load_documents(KB_PATH) if d.id in wanted]
    chunker = TokenChunker(size=PASSAGE_TOKENS, overlap=0, max_chunks=1,
                           tokenizer=SentenceTransformerEmbedder(max_seq_length=EMBED_TOKENS).tokenizer())
    chunks = {c.id: c for c in chunker.split(docs)}
    embed = SentenceTransformerEmbedder(max_seq_length=EMBED_TOKENS, precision=EMBED_PRECISION).embed
    for row in sample:
        hit = Hit(chunks[row["chunk_id"]], score=row["retrieval"])
        got = signals(row["question"], hit, heading=headings(row["question"], [hit], embed)[0])
        assert {s: round(got[s], 4) for s in SIGNALS} == {s: round(row[s], 4) for s in SIGNALS}
