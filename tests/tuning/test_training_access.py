"""Training runs as a principal: restricted passages never enter the prompts an adapter learns from."""

from __future__ import annotations

from layered import Pipeline
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.filters import User
from layered.tuning.config import TuneConfig
from layered.tuning.formatting import format_example
from layered.types import Document, Example

MEMO = Document(id="hr-memo", text="Restricted HR memo: the merger code word is BLUEHERON, layoffs start in March.",
                metadata={"access": ["user:alice"]})
QUESTION = "What is the merger code word in the HR memo?"


def _pipe(generator, docs):
    retriever = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    retriever.add_documents([*docs[:8], MEMO])
    return Pipeline(generator=generator, retriever=retriever, k=3)


def test_training_prompts_hold_only_what_the_principal_may_see(tiny_generator, docs):
    pipe = _pipe(tiny_generator, docs)
    assert "hr-memo" in {h.chunk.doc_id for h in pipe.retrieve(QUESTION)}  # serving without a user would find it
    example = Example(question=QUESTION, answer="I cannot say.", metadata={"doc_ids": ["hr-memo"]})
    public = format_example(pipe, example)
    assert "hr-memo" not in public.documents and public.documents
    assert "BLUEHERON" not in tiny_generator.tokenizer.decode(public.input_ids)
    abstain = format_example(pipe, example, abstain=True)
    assert "hr-memo" not in abstain.documents
    alice = format_example(pipe, example, user=User("alice"))
    assert "hr-memo" in alice.documents and "BLUEHERON" in tiny_generator.tokenizer.decode(alice.input_ids)
    assert "hr-memo" not in format_example(pipe, example, user=User("bob")).documents


def test_the_report_records_the_access_scope_and_the_documents_trained_on(tiny_generator, docs, tmp_path):
    pipe = _pipe(tiny_generator, docs)
    examples = [Example(question=d.text.splitlines()[0], answer="An answer.") for d in docs[:6]] + [Example(question=QUESTION, answer="No.")]
    config = TuneConfig(rank=4, learning_rate=1e-2, max_steps=1, batch_size=4, eval_every=1, checkpoint_every=1)
    report = pipe.fit(examples[:5], val=examples[5:], config=config, out_dir=tmp_path / "run", check_forgetting=False, progress=False)
    assert report.access_scope == ["*"]
    assert report.documents and "hr-memo" not in report.documents
    assert set(report.documents) <= {d.id for d in docs[:8]}
