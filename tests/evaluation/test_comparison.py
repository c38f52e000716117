"""The strategy comparison and auto-PEFT on a tiny real Llama with a real (hashing) retriever."""

from __future__ import annotations

import json

import pytest

from layered import Pipeline
from layered.cli import main
from layered.errors import ConfigError, InputError
from layered.evaluation.comparison import PLAIN, bar_chart, compare, markdown_table, score_answers, strategy_setups
from layered.prompts.template import ChatPromptTemplate
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.tuning.config import TuneConfig
from layered.tuning.search import base_copy, search_lora
from layered.types import Answer, Citation, Document, Example, Generation

COLOURS = ["red", "blue", "green"]
DOCS = [Document(id=f"item{i}", text=f"Item {i} is painted {COLOURS[i % 3]}.", source="catalogue") for i in range(40)]


def example(i: int) -> Example:
    return Example(question=f"What colour is item {i}?", answer=f"Item {i} is {COLOURS[i % 3]}.", metadata={"doc_ids": [f"item{i}"]})


TRAIN, VAL, TEST = [example(i) for i in range(30)], [example(i) for i in range(30, 34)], [example(i) for i in range(34, 40)]
CONFIG = TuneConfig(rank=8, learning_rate=1e-2, max_steps=60, batch_size=8, eval_every=30, checkpoint_every=60)


def rag_pipeline(generator) -> Pipeline:
    retriever = DenseRetriever(embedder=HashingEmbedder(256), chunker=TokenChunker(size=30, overlap=0))
    retriever.add_documents(DOCS)
    return Pipeline(generator=generator, retriever=retriever, prompt=ChatPromptTemplate(), k=2)


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tmp_path_factory):
    from layered.generation.transformers_generator import TransformersGenerator

    pipe = rag_pipeline(TransformersGenerator(str(tiny_model_dir), max_new_tokens=10, context_window=1024))
    pipe.fit(TRAIN, val=VAL, config=CONFIG, out_dir=tmp_path_factory.mktemp("fit"), progress=False, check_forgetting=False)
    return pipe


def test_k_zero_retrieves_nothing_and_negative_k_is_refused(tiny_generator):
    pipe = rag_pipeline(tiny_generator)
    assert pipe.retrieve("What colour is item 3?", k=0) == []
    assert pipe.build_prompt("What colour is item 3?", k=0).context == ()
    assert pipe.retrieve("What colour is item 3?")[0].chunk.doc_id == "item3"
    with pytest.raises(InputError, match="k must be 0 or more"):
        pipe.retrieve("What colour is item 3?", k=-1)


def test_each_strategy_sends_what_it_claims(tuned):
    setups = strategy_setups(tuned, few_shot_pool=TRAIN, shots=2)
    assert list(setups) == list(PLAIN)
    q = TEST[0].question
    prompts = {name: pipe.build_prompt(q, k=opts.get("k")) for name, (pipe, opts) in setups.items()}
    assert prompts["prompt-only"].context == () and prompts["prompt-only"].metadata["shots"] == 0
    assert len(prompts["prompt-only"].messages) == 2  # system + question
    assert prompts["few-shot"].context == () and prompts["few-shot"].metadata["shots"] == 2
    # Similarity-picked shots: the training questions nearest the test question, as chat turns.
    assert len(prompts["few-shot"].messages) == 6 and "What colour is item" in prompts["few-shot"].messages[1].content
    assert len(prompts["rag"].context) == 2 and prompts["rag"].context[0].chunk.doc_id == "item34"
    assert prompts["rag"].messages == prompts["rag+adapter"].messages
    assert setups["rag"][1] == {"adapter": "base"} and setups["rag+adapter"][1] == {"adapter": "default"}
    assert setups["prompt-only"][1] == {"adapter": "base", "k": 0}


def test_compare_measures_every_strategy_and_the_adapter_helps(tuned, tmp_path):
    results = compare(tuned, TEST, few_shot_pool=TRAIN, shots=2)
    by = {r.strategy: r for r in results}
    assert [r.strategy for r in results] == list(PLAIN) and all(r.questions == len(TEST) for r in results)
    for name in ("prompt-only", "few-shot"):
        assert by[name].recall is None and by[name].mrr is None and by[name].citation_precision is None
    # The hashing retriever finds each item's own page first.
    assert by["rag"].recall == 1.0 and by["rag"].mrr == 1.0 and by["rag+adapter"].recall == 1.0
    # Cost: shots and passages make longer prompts than the bare question.
    assert by["few-shot"].prompt_tokens > by["prompt-only"].prompt_tokens
    assert by["rag"].prompt_tokens > by["prompt-only"].prompt_tokens
    assert all(r.latency_s > 0 and r.completion_tokens > 0 for r in results)
    # The randomly initialised base model babbles; the adapter learned the answer's form.
    assert by["rag+adapter"].token_f1 > by["rag"].token_f1 + 0.2
    # Pipeline.evaluate scores the pipeline as it serves: the same numbers as the matching rows.
    assert tuned.evaluate(TEST).token_f1 == by["rag+adapter"].token_f1
    assert tuned.evaluate(TEST, adapter="base").rouge_l == by["rag"].rouge_l
    table = markdown_table(results)
    assert table.count("\n") == 5 and "| prompt-only |" in table and "n/a" in table
    png = bar_chart(results, tmp_path / "c.png", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scores_follow_their_definitions():
    def cite(n: int, doc: str) -> Citation:
        return Citation(number=n, chunk_id=f"{doc}#0", doc_id=doc, source="s", score=0.5, text="t")

    examples = [Example("q1", "alpha beta", metadata={"doc_ids": ["a"]}), Example("q2", "gamma", metadata={"doc_ids": ["b"]})]
    answers = [
        # relevant passage at rank 2; cites it and one irrelevant passage
        Answer("alpha beta", citations=(cite(1, "x"), cite(2, "a")), sources=(cite(1, "x"), cite(2, "a")),
               generation=Generation("alpha beta", prompt_tokens=10, completion_tokens=2)),
        # refused: no passages, no generation
        Answer("I cannot answer", metadata={"refused": True}),
    ]
    r = score_answers(answers, examples, [1.0, 3.0], strategy="rag", retrieved=True)
    assert r.recall == 0.5 and r.mrr == pytest.approx(0.25) and r.citation_precision == 0.5
    assert r.token_f1 == pytest.approx(0.5) and r.refused == 0.5 and r.latency_s == 2.0
    assert r.prompt_tokens == 5 and r.completion_tokens == 1
    unjudged = [Example("q1", "alpha beta"), Example("q2", "gamma")]
    r = score_answers(answers, unjudged, [1.0, 1.0], strategy="rag", retrieved=True)
    assert r.recall is None and r.citation_precision is None
    with pytest.raises(InputError, match="line up"):
        score_answers(answers[:1], examples, [1.0], strategy="rag", retrieved=True)


def test_bad_setups_are_refused(tiny_generator):
    pipe = rag_pipeline(tiny_generator)
    with pytest.raises(ConfigError, match="rag\\+adapter needs a tuned adapter"):
        strategy_setups(pipe, few_shot_pool=TRAIN)
    with pytest.raises(ConfigError, match="unknown strategies"):
        strategy_setups(pipe, strategies=["rag", "magic"])
    with pytest.raises(InputError, match="pool of training examples"):
        strategy_setups(pipe, strategies=["few-shot"])
    with pytest.raises(ConfigError, match="need a pipeline with a retriever"):
        strategy_setups(Pipeline(generator=tiny_generator), strategies=["rag"])
    with pytest.raises(InputError, match="at least one test example"):
        compare(pipe, [], strategies=["prompt-only"])
    with pytest.raises(InputError, match="at least one example"):
        pipe.evaluate([])


def test_auto_peft_keeps_the_configuration_with_the_lowest_validation_loss(tiny_generator, tmp_path):
    base = rag_pipeline(tiny_generator)
    config = CONFIG.model_copy(update={"max_steps": 6, "eval_every": 6, "checkpoint_every": 6})
    result = search_lora(lambda: base_copy(base), TRAIN, VAL, ranks=(2, 8), learning_rates=(1e-4, 1e-2), config=config,
                         out_dir=tmp_path)
    assert [(t.rank, t.learning_rate) for t in result.trials] == [(2, 1e-4), (2, 1e-2), (8, 1e-4), (8, 1e-2)]
    assert result.best.val_loss == min(t.val_loss for t in result.trials)
    assert result.pipeline.generator.adapters["default"]["rank"] == result.best.rank
    assert result.pipeline.retriever is base.retriever and base.generator.adapters == {}  # the base stays untuned
    assert "| yes |" in result.markdown_table()


def test_compare_cli_on_a_saved_pipeline_writes_table_json_and_chart(tiny_generator, tmp_path, capsys):
    rag_pipeline(tiny_generator).save(tmp_path / "pipe")
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"question": e.question, "answer": e.answer, "doc_ids": e.metadata["doc_ids"]})
                              for e in [*TRAIN, *VAL, *TEST]), encoding="utf-8")
    code = main(["-q", "compare", str(tmp_path / "pipe"), "--data", str(data), "--test", "3", "--steps", "4",
                 "--max-new-tokens", "6", "--out", str(tmp_path / "out")])
    assert code == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("| strategy |") and stdout.count("\n") == 6
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["strategy"] for r in saved["results"]] == list(PLAIN) and saved["test_questions"] == 3
    assert saved["results"][2]["recall"] is not None  # doc_ids were read from the data
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 1000
    assert main(["-q", "compare", str(tmp_path / "pipe")]) == 1  # a folder without --data: one-line error
