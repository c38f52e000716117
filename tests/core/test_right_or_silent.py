"""Right or silent: the answerability decision, grounded streams, abstention training examples."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered import Pipeline
from layered.answerability import Answerability, SIGNALS, calibrate, fit_answerability, signals
from layered.answers import ground, is_refusal, stream_grounded
from layered.errors import ArtifactError, ConfigError, InputError
from layered.prompts.grounding import split_sentences
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.types import Chunk, Example, Hit, Prompt

from tests.conftest import MEDQUAD_SAMPLE

_ALL = [json.loads(line) for line in MEDQUAD_SAMPLE.read_text(encoding="utf-8").splitlines()[:40]]
ROWS = list({r["focus"]: r for r in reversed(_ALL)}.values())[::-1]  # one page per topic, three topics or more


def _hit(n: int, row: dict) -> Hit:
    text = f"{row['question']}\n\n{row['answer']}"[:900]
    return Hit(Chunk(id=f"c{n}", doc_id=row["id"], text=text, metadata={"focus": row["focus"]}), score=0.5, rank=n)


CONTEXT = tuple(_hit(n, r) for n, r in enumerate(ROWS[:3], start=1))
PROMPT = Prompt(messages=(), context=CONTEXT)
PASSAGE_SENTENCES = [s for h in CONTEXT for s in split_sentences(h.chunk.text) if len(s.split()) > 4][:12]
INVENTED = ["Zebras migrate across the Serengeti every spring season.", "The warranty covers tents for one year from purchase.",
            "Quantum computers factor large numbers quickly today."]
SHORT = ["Yes.", "See a doctor.", "[1]"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(PASSAGE_SENTENCES + INVENTED + SHORT), min_size=1, max_size=6),
       st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30), st.sampled_from([" ", "\n", " [2] "]))
def test_a_stream_shows_exactly_what_ask_returns_and_never_a_dropped_sentence(sentences, cuts, joiner):
    text = joiner.join(sentences)
    pieces, at = [], 0
    for cut in cuts:
        if at >= len(text):
            break
        pieces.append(text[at:at + cut])
        at += cut
    pieces.append(text[at:])
    streamed = "".join(stream_grounded("what is it", pieces, PROMPT))
    kept, report = ground("what is it", text, PROMPT, "drop")
    assert streamed == kept
    for dropped in report["unsupported"]:
        if dropped not in kept:  # a dropped sentence never reaches the reader
            assert dropped not in streamed


def test_a_refusal_is_recognised_on_its_first_sentence_and_the_stream_stops_there():
    refusal = "I could not find this in my sources, so I cannot answer it. Ask a doctor."
    assert is_refusal("I could not find this in my sources, so I cannot answer it.", refusal)
    assert not is_refusal("Graves disease is treated with drugs.", refusal)
    pulled = []

    def pieces():
        for piece in ["I could not find this ", "in my sources, so I ", "cannot answer it. ", "Graves disease is", " treated."]:
            pulled.append(piece)
            yield piece

    shown = "".join(stream_grounded("q", pieces(), PROMPT, refusal=refusal))
    assert shown.startswith(refusal) and "closest passages" in shown and ROWS[0]["focus"] in shown
    assert len(pulled) < 5  # decoding stopped once the refusal was clear


def _judged_hits(question: str) -> list[Hit]:
    return list(CONTEXT)


def test_answerability_prefers_the_passage_that_names_what_is_asked_and_declines_off_topic():
    focus = ROWS[1]["focus"]
    on = signals(f"what are the symptoms of {focus.lower()}?", CONTEXT[1])
    off = signals("can the birth control ocella cause dvt", CONTEXT[1])
    assert set(on) == set(SIGNALS) and on["coverage"] > off["coverage"] and on["subject"] > off["subject"]
    misspelt = focus.lower().replace(focus.lower()[2:4], focus.lower()[3] + focus.lower()[2], 1)
    assert signals(f"what is {misspelt}", CONTEXT[1])["subject"] > 0  # one edit still names the subject
    model = Answerability(weights={"retrieval": 1.0, "coverage": 4.0, "subject": 4.0, "heading": 0.0}, bias=-4.0, threshold=0.5)
    yes = model.decide(f"what is {focus.lower()}", list(CONTEXT))
    assert yes.answerable and yes.order[0] == 1  # the passage about it is put first
    no = model.decide("What is the capital of Australia?", list(CONTEXT))
    assert not no.answerable and no.score < 0.5
    heading = Answerability(weights={**model.weights, "heading": 2.0}, bias=-4.0)
    with pytest.raises(ConfigError, match="needs the retriever's embedder"):
        heading.decide("what is it", list(CONTEXT))
    near = heading.decide(ROWS[1]["question"], list(CONTEXT), embed=HashingEmbedder(256).embed)
    assert near.signals[1]["heading"] > 0.99  # the page's own question is its first line


def test_fitting_is_deterministic_and_configs_are_checked(tmp_path):
    rows = [({"retrieval": r, "coverage": c, "subject": s, "heading": r}, y) for r, c, s, y in
            [(0.6, 0.9, 1.0, True), (0.5, 0.8, 0.5, True), (0.3, 0.2, 0.0, False), (0.4, 0.3, 0.0, False), (0.5, 0.6, 0.0, False),
             (0.45, 0.7, 1.0, True)]]
    assert fit_answerability(rows) == fit_answerability(list(rows))
    weights, bias = fit_answerability(rows)
    model = Answerability(weights=weights, bias=bias, threshold=0.4)
    assert Answerability.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    with pytest.raises(ConfigError, match="exactly retrieval, coverage, subject, heading"):
        Answerability(weights={"retrieval": 1.0}, bias=0.0)
    with pytest.raises(ConfigError, match="probability"):
        Answerability(weights=weights, bias=bias, threshold=3)
    with pytest.raises(ConfigError, match="both"):
        fit_answerability([r for r in rows if r[1]])
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        Answerability.from_file(tmp_path / "bad.json")


def test_calibrate_picks_the_threshold_on_tuning_questions_within_the_allowed_answered_unanswerable():
    examples = [Example(question=f"what is {r['focus'].lower()}", answer="", metadata={"answerable": True, "doc_ids": [r["id"]]})
                for r in ROWS[:3]]
    examples += [Example(question=q, answer="", metadata={"answerable": False, "doc_ids": []})
                 for q in ("capital of australia", "how do i bake bread", "best laptop for programming")]
    cal = calibrate(_judged_hits, examples, embed=HashingEmbedder(64).embed, max_answered_unanswerable=0.0, report={"data": "unit"})
    chosen = cal.answerability.report["on_tuning_questions"]
    assert chosen["answered_unanswerable"] == 0.0 and chosen["answered_right"] == 1.0
    assert len(cal.rows) == 18 and cal.answerability.report["data"] == "unit"


def _pipe(generator, docs, **kw):
    retriever = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    retriever.add_documents(docs)
    return Pipeline(generator=generator, retriever=retriever, **kw)


STRICT = Answerability(weights={"retrieval": 0.0, "coverage": 6.0, "subject": 6.0, "heading": 0.0}, bias=-7.0, threshold=0.5)


def test_a_pipeline_declines_what_no_passage_answers_names_what_it_found_and_keeps_its_decision(tiny_generator, docs, tmp_path):
    pipe = _pipe(tiny_generator, docs, k=3, abstain=STRICT, refusal="Not in my sources.")
    off = pipe.ask("can the birth control ocella cause dvt")
    assert off.metadata["refused"] and off.generation is None and off.text.startswith("Not in my sources.")
    assert "closest passages I found are about" in off.text
    assert off.metadata["answerability"]["answerable"] is False
    streamed = pipe.stream("can the birth control ocella cause dvt")
    assert "".join(streamed) == off.text and streamed.metadata["refused"]
    focus = docs[0].metadata["focus"]
    on = pipe.ask(f"what is {focus.lower()}?")
    assert not on.metadata.get("refused") and on.metadata["answerability"]["answerable"]
    assert on.sources[0].doc_id == docs[0].id or focus.lower() in on.sources[0].text.lower()
    pipe.save(tmp_path / "p")
    loaded = Pipeline.load(tmp_path / "p")
    assert loaded.abstain == STRICT and loaded.ask("can the birth control ocella cause dvt").text == off.text
    with pytest.raises(ConfigError, match="abstain must be an Answerability"):
        Pipeline(generator=tiny_generator, abstain={"weights": {}})  # type: ignore[arg-type]


def test_a_saved_folder_with_a_malformed_decision_is_one_line(tiny_generator, docs, tmp_path):
    from layered.artifacts import write_manifest

    _pipe(tiny_generator, docs, abstain=STRICT).save(tmp_path / "p")
    config = tmp_path / "p" / "pipeline.json"
    data = json.loads(config.read_text())
    data["abstain"]["weights"] = {"retrieval": 1}
    config.write_text(json.dumps(data))
    write_manifest(tmp_path / "p")
    with pytest.raises(ArtifactError, match="answerability weights"):
        Pipeline.load(tmp_path / "p")


def test_streams_with_drop_show_what_ask_returns_on_a_real_generator(tiny_generator, docs):
    pipe = _pipe(tiny_generator, docs, k=3, grounding="drop")
    for question in ("What are the symptoms?", "How is it inherited?"):
        assert "".join(pipe.stream(question)) == pipe.ask(question).text


def test_abstention_examples_are_formatted_exactly_as_served(tiny_generator, docs):
    from layered.generation.common import chat_messages
    from layered.tuning.fit import abstention_picks
    from layered.tuning.formatting import format_example

    pipe = _pipe(tiny_generator, docs, k=3, refusal="Not in my sources.")
    focus = docs[0].metadata["focus"]
    example = Example(question=f"what is {focus.lower()}?", answer="An answer.", metadata={"doc_ids": [docs[0].id]})
    features = format_example(pipe, example, abstain=True)
    hits, _ = pipe.passages(example.question, exclude=[docs[0].id])
    assert len(hits) == 3 and docs[0].id not in {h.chunk.doc_id for h in hits}
    served = pipe.pack_chat(example.question, (), hits, {})
    tokenizer = tiny_generator.tokenizer
    prompt_ids = list(tokenizer.apply_chat_template(chat_messages(served, tokenizer), add_generation_prompt=True,
                                                    return_dict=True)["input_ids"])
    assert features.input_ids[: len(prompt_ids)] == prompt_ids  # the prompt a request would get without the page
    target = tokenizer.decode([t for t in features.labels if t != -100], skip_special_tokens=True)
    assert target.strip() == "Not in my sources."
    plain = format_example(pipe, example)
    assert plain.input_ids != features.input_ids
    many = [Example(question=f"q{i}", answer="a", metadata={"doc_ids": [str(i)]}) for i in range(10)]
    assert len(abstention_picks(many, 0.3, seed=0)) == 3 and abstention_picks(many, 0.3, seed=0) == abstention_picks(many, 0.3, seed=0)
    with pytest.raises(InputError, match="doc_ids"):
        format_example(pipe, Example(question="q", answer="a"), abstain=True)
    with pytest.raises(InputError, match="abstain_share"):
        abstention_picks(many, 1.5, seed=0)
